//! The ingress policy inspector (`edist_gateway::policy::Ingress`) over the packets a hostile
//! peer's lane brings.
//!
//! Input: byte 0 picks the role (device with tiny limits, device, trusted-with-limits); the
//! rest is packets, each `u16 length` + bytes (a u32 length prefix is added, as on a lane).
//! Checks: nothing panics; every forwarded packet is one of the input packets (at most as often);
//! the peer's atom set never exceeds the budget; a trusted role forwards everything untouched.
#![no_main]

use edist_gateway::policy::{Ingress, Role, SharedPeer};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, mut rest)) = data.split_first() else { return };
    let mut role = Role::device();
    match sel % 3 {
        0 => {
            role.max_message = 4096;
            role.max_depth = 8;
            role.atom_budget = 16;
        }
        1 => {}
        _ => role = Role::trusted(),
    }
    let open = role.is_open();
    let peer = SharedPeer::default();
    let mut ingress = Ingress::new(Arc::new(role), peer.clone());
    let mut inputs: Vec<Vec<u8>> = Vec::new();
    let mut forwarded: Vec<Vec<u8>> = Vec::new();
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let body = &rest[2..2 + len];
        rest = &rest[2 + len..];
        let mut packet = (len as u32).to_be_bytes().to_vec();
        packet.extend_from_slice(body);
        inputs.push(packet.clone());
        match ingress.packet(packet) {
            Ok(v) => forwarded.extend(v.forward),
            Err(_) => break, // the relay would end here
        }
    }
    // Forwarded packets are input packets, each at most as often as it was sent. (Not
    // necessarily in input order: a fragmented message is held until complete while whole
    // messages of other senders on the lane pass.)
    let mut left = inputs.clone();
    for f in &forwarded {
        let i = left.iter().position(|p| p == f).expect("forwarded a packet that was not sent");
        left.swap_remove(i);
    }
    if open {
        assert_eq!(forwarded, inputs);
    }
    if sel % 3 == 0 {
        assert!(peer.lock().map(|p| p.atoms_seen()).unwrap_or(0) <= 16);
    }
});
