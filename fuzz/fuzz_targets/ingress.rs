//! The ingress policy (`edist_gateway::policy::Ingress`) over the packets a hostile peer's lanes
//! bring, with its egress observer (`policy::Egress`) over what the local node sends the peer —
//! the source of the peer's capabilities and free atoms — sharing one session's state.
//!
//! Input: byte 0 picks the role (0: device with tiny limits — 4 KiB messages, depth 8, 16
//! atoms, 8 capabilities; 1: device; 2: trusted; 3: device in audit mode with tiny limits);
//! the rest is records `u8 kind`, `u16 length`, bytes (a u32 length prefix is added, as on a
//! lane): kind 0 or 1 a packet from the peer on lane 0 or 1, kind 2 a packet the local node
//! sends the peer.
//! Checks: nothing panics; every forwarded packet is one of the input packets (at most as
//! often), or a `DEMONITOR_P` the policy made for a refused call, from a process of the peer's
//! node; a refused message (not in audit mode) forwards no input packet; the peer's charged
//! atoms never exceed the budget, its capabilities never exceed `max_grants`; a trusted role
//! forwards everything untouched; audit mode refuses nothing; once the session is dropped, no
//! link, monitor or capability of it is left.
#![no_main]

use edist_gateway::policy::{Role, Session, SharedPeer};
use edist_proto::dist::control::{decode_message, Control};
use edist_proto::dist::header::{parse_packet, AtomCache, Packet};
use edist_proto::dist::DFlags;
use edist_proto::etf::Limits;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use std::time::Instant;

const REMOTE: &str = "dev@h";

/// A `DEMONITOR_P` from a process of the peer's node, as the policy frames it.
fn is_policy_demonitor(p: &[u8]) -> bool {
    let mut cache = AtomCache::default();
    let flags = match p.get(4) {
        Some(112) => DFlags(0),
        _ => DFlags(DFlags::FRAGMENTS),
    };
    let Ok(Packet::Message { body, atom_refs, versioned }) = parse_packet(&p[4..], flags, &mut cache) else {
        return false;
    };
    matches!(
        decode_message(body, &atom_refs, versioned, &Limits::default()).map(|m| m.control),
        Ok(Control::DemonitorP { from, .. }) if from.node.as_str() == REMOTE
    )
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, mut rest)) = data.split_first() else { return };
    let mut role = Role::device();
    let tiny = |r: &mut Role| {
        r.max_message = 4096;
        r.max_depth = 8;
        r.atom_budget = 16;
        r.max_grants = 8;
    };
    match sel % 4 {
        0 => tiny(&mut role),
        1 => {}
        2 => role = Role::trusted(),
        _ => {
            tiny(&mut role);
            role.audit = true;
        }
    }
    let (open, audit, budget, grants) = (role.is_open(), role.audit, role.atom_budget, role.max_grants);
    let peer = SharedPeer::default();
    let session = Session::new(Arc::new(role), peer.clone(), "srv@h", REMOTE);
    let mut lanes = [session.ingress(), session.ingress()];
    let mut egress = session.egress();
    let now = Instant::now();
    let mut inputs: Vec<Vec<u8>> = Vec::new();
    let mut forwarded: Vec<Vec<u8>> = Vec::new();
    let mut made = 0usize;
    while rest.len() >= 3 {
        let kind = rest[0] % 3;
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let body = &rest[3..3 + len];
        rest = &rest[3 + len..];
        let mut packet = (len as u32).to_be_bytes().to_vec();
        packet.extend_from_slice(body);
        if kind == 2 {
            egress.packet(&packet);
            continue;
        }
        inputs.push(packet.clone());
        match lanes[usize::from(kind)].packet(packet, now) {
            Ok(v) => {
                if audit {
                    assert!(v.refused.as_ref().is_none_or(|r| r.audit), "audit mode refused: {:?}", v.refused);
                }
                let refused = v.refused.as_ref().is_some_and(|r| !r.audit);
                for f in v.forward {
                    if refused || !inputs.contains(&f) {
                        assert!(is_policy_demonitor(&f), "forwarded something that was not sent: {f:?}");
                        made += 1;
                    } else {
                        forwarded.push(f);
                    }
                }
            }
            Err(_) => break, // the relay would end here
        }
        let p = peer.lock().map(|p| p.usage()).unwrap_or_default();
        if budget != 0 {
            assert!(p.atoms_charged <= budget as u64, "{p:?}");
        }
        assert!(p.grants <= grants as u64 && p.links <= grants as u64 && p.monitors <= grants as u64, "{p:?}");
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
        assert_eq!((forwarded, made), (inputs, 0));
    }
    // The connection ends: what it made goes with it.
    drop((lanes, egress, session));
    let u = peer.lock().map(|p| p.usage()).unwrap_or_default();
    assert_eq!((u.grants, u.links, u.monitors), (0, 0, 0), "{u:?}");
});
