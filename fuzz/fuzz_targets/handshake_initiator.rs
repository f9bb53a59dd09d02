//! The initiating side of the handshake, with the input as the acceptor's bytes.
//!
//! Input: one configuration byte (odd: ask for a dynamic name with NAME_ME), then chunks (a
//! length byte and up to 255 bytes) fed to `Initiator::handle` one at a time; whenever the
//! machine stops for a decision the next input byte makes it (`answer_alive` true/false,
//! whether to `reply` to the challenge). Runs until the handshake errors, ends, or the input is
//! used up. Checks: nothing panics, out-of-order calls are refused, and a completed handshake
//! is with the dialled peer and agreed on every mandatory flag.
#![no_main]

use edist_fuzz::{initiator_config, Input};
use edist_proto::dist::handshake::{valid_node_name, HandshakeError, Initiator, InitiatorEvent, Status};
use edist_proto::dist::DFlags;
use libfuzzer_sys::fuzz_target;

fn out_of_order<T: std::fmt::Debug>(r: Result<T, HandshakeError>) {
    assert!(matches!(r, Err(HandshakeError::OutOfOrder(_))), "an out-of-order call was accepted: {r:?}");
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let cfg = initiator_config(input.byte());
    let peer = cfg.peer.clone();
    let mut ini = Initiator::new(cfg);
    assert!(!ini.take_output().is_empty(), "send_name is queued at once");
    out_of_order(ini.reply());
    out_of_order(ini.answer_alive(true));
    while let Some(chunk) = input.chunk() {
        if ini.handle(chunk).is_err() {
            return;
        }
        loop {
            let ev = match ini.poll() {
                Ok(Some(ev)) => ev,
                Ok(None) => break,
                Err(_) => return,
            };
            match ev {
                InitiatorEvent::Status(Status::Alive) => {
                    out_of_order(ini.reply());
                    ini.answer_alive(input.byte() & 1 == 0).expect("answer_alive after alive");
                }
                InitiatorEvent::Status(st) => {
                    if let Status::Named { name, .. } = &st {
                        assert!(valid_node_name(name));
                    }
                    out_of_order(ini.reply());
                    out_of_order(ini.answer_alive(true));
                }
                InitiatorEvent::Challenge { name, .. } => {
                    assert_eq!(name, peer);
                    out_of_order(ini.answer_alive(true));
                    if input.byte() & 1 == 1 {
                        return; // the user declines to answer
                    }
                    ini.reply().expect("reply after the challenge");
                    out_of_order(ini.reply());
                }
                InitiatorEvent::Connected(c) => {
                    assert_eq!(c.peer, peer);
                    assert!(c.flags.missing(DFlags::MANDATORY_25).is_empty(), "connected without mandatory flags");
                    out_of_order(ini.reply());
                }
            }
        }
        let _ = ini.take_output();
    }
    let _ = ini.take_remaining();
});
