//! The gateway's TOML configuration (`edist_gateway::config::Config::from_toml`), as an operator
//! (or a tampered file) writes it.
//!
//! Checks: nothing panics; a configuration that loads has roles that resolve, and every role it
//! names exists.
#![no_main]

use edist_gateway::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(cfg) = Config::from_toml(text, std::path::Path::new("fuzz.toml")) {
        let roles = cfg.roles().expect("a loaded config's roles resolve");
        assert!(roles.contains_key(&cfg.policy.default_role));
        for p in &cfg.peers {
            if let Some(r) = &p.role {
                assert!(roles.contains_key(r));
            }
        }
    }
});
