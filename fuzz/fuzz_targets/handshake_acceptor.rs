//! The accepting side of the handshake, with the input as the initiator's bytes.
//!
//! Input: one configuration byte, then chunks (a length byte and up to 255 bytes) that are fed
//! to `Acceptor::handle` one at a time; whenever the machine stops for a decision, the next
//! input byte makes it (which status to `respond` with, whether to `complete`), sometimes
//! trying a call out of order first, which must be refused. Runs until the handshake errors,
//! ends, or the input is used up. Checks: nothing panics, out-of-order calls are refused, and a
//! completed handshake agreed on flags with every mandatory bit.
#![no_main]

use edist_fuzz::{acceptor_config, Input};
use edist_proto::dist::handshake::{Acceptor, AcceptorEvent, HandshakeError, Status};
use edist_proto::dist::DFlags;
use libfuzzer_sys::fuzz_target;

fn out_of_order<T: std::fmt::Debug>(r: Result<T, HandshakeError>) {
    assert!(matches!(r, Err(HandshakeError::OutOfOrder(_))), "an out-of-order call was accepted: {r:?}");
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let cfg = acceptor_config(input.byte());
    let ours = cfg.flags;
    let mut acc = Acceptor::new(cfg);
    out_of_order(acc.complete());
    out_of_order(acc.respond(Status::Ok));
    let mut peer_flags = None;
    while let Some(chunk) = input.chunk() {
        if acc.handle(chunk).is_err() {
            return;
        }
        loop {
            let ev = match acc.poll() {
                Ok(Some(ev)) => ev,
                Ok(None) => break,
                Err(_) => return,
            };
            match ev {
                AcceptorEvent::Name { name, flags, creation: _ } => {
                    assert!(!name.is_empty());
                    assert!(flags.missing(DFlags::MANDATORY_25).is_empty());
                    peer_flags = Some(flags);
                    let d = input.byte();
                    let status = match d % 8 {
                        0 | 6 | 7 => Status::Ok,
                        1 => Status::OkSimultaneous,
                        2 => Status::Nok,
                        3 => Status::NotAllowed,
                        4 => Status::Alive,
                        _ => Status::Named { name: "dyn@host".into(), creation: u32::from(d) },
                    };
                    if d % 8 == 6 {
                        out_of_order(acc.complete());
                    }
                    acc.respond(status.clone()).expect("respond after the name");
                    if d % 8 == 7 {
                        out_of_order(acc.respond(status));
                    }
                }
                AcceptorEvent::AliveAnswer(_) => out_of_order(acc.complete()),
                AcceptorEvent::Authenticated => {
                    out_of_order(acc.respond(Status::Ok));
                    if input.byte() & 1 == 1 {
                        return; // the user declines to finish
                    }
                    let c = acc.complete().expect("complete after authentication");
                    let theirs = peer_flags.expect("authenticated without a name");
                    assert_eq!(c.flags, DFlags::negotiate(ours, theirs));
                    assert!(c.flags.missing(DFlags::MANDATORY_25).is_empty(), "connected without mandatory flags");
                    out_of_order(acc.complete());
                }
            }
        }
        let _ = acc.take_output();
    }
    let _ = acc.take_remaining();
});
