//! Membership datagrams: the envelope as anyone on the network sends it, and the payload as a
//! hostile *member* (one with a valid certificate) sends it.
//!
//! Byte 0 even: `Opener::open` on the rest (a cluster CA made once per process). Byte 0 odd:
//! a fresh `Membership` takes the rest as datagrams (`u16 length` + bytes) from two senders,
//! each followed by whatever it asks for (timers fired at once, a tick).
//! Checks: nothing panics; everything membership sends fits a datagram.
#![no_main]

use edist_gateway::fabric::envelope::{Opener, MAX_DATAGRAM};
use edist_gateway::fabric::membership::{MemberId, Membership, Output};
use libfuzzer_sys::fuzz_target;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

fn opener() -> &'static Mutex<Opener> {
    static O: OnceLock<Mutex<Opener>> = OnceLock::new();
    O.get_or_init(|| {
        use edist_gateway::fabric::{identity, tls};
        use edist_gateway::pki;
        let dir = std::env::temp_dir().join(format!("edist-fuzz-membership-{}", std::process::id()));
        pki::init_ca(&dir, "fuzz", &pki::CaOptions { force: true, ..Default::default() }).expect("ca");
        pki::issue(&dir, "gw-0", 30, pki::IssueOptions { force: true, ..Default::default() }).expect("cert");
        let id = identity::TlsIdentity::load(&dir, "gw-0").expect("identity");
        let _ = std::fs::remove_dir_all(&dir);
        Mutex::new(Opener::new(tls::membership_verifier(&id).expect("verifier"), identity::crypto_provider()))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    if sel % 2 == 0 {
        let mut o = opener().lock().unwrap_or_else(|e| e.into_inner());
        let _ = o.open(rest, 1_700_000_000_000);
        return;
    }
    let addr = "10.0.0.1:4372".parse().expect("addr");
    let mut m = Membership::new(MemberId { name: "gw-0".into(), gossip: addr, fabric: addr, bump: 1 }, 8);
    m.announce("10.0.0.2:4372".parse().expect("addr"));
    let now = Instant::now();
    let mut rest = rest;
    let mut i = 0;
    while let Some((len, r)) = rest.split_first_chunk::<2>() {
        let n = usize::from(u16::from_be_bytes(*len)).min(r.len());
        let (dg, r) = r.split_at(n);
        rest = r;
        i += 1;
        let _ = m.handle_datagram(if i % 2 == 0 { "gw-1" } else { "gw-2" }, dg, now);
        m.tick(now);
        let mut budget = 1000;
        while let Some(out) = m.poll() {
            budget -= 1;
            if budget == 0 {
                break;
            }
            match out {
                Output::Send { payload, .. } => assert!(payload.len() <= MAX_DATAGRAM, "{} bytes", payload.len()),
                Output::Timer { timer, .. } => m.handle_timer(timer),
                _ => {}
            }
        }
    }
});
