//! Where the cookie comes from when none is given, as `erl` does it.

use std::path::PathBuf;

/// `EDIST_COOKIE`, else the contents of `~/.erlang.cookie` (trimmed), else `None`.
pub fn default_cookie() -> Option<String> {
    if let Ok(c) = std::env::var("EDIST_COOKIE") {
        if !c.is_empty() {
            return Some(c);
        }
    }
    let home = std::env::var_os("HOME").map(PathBuf::from)?;
    let text = std::fs::read_to_string(home.join(".erlang.cookie")).ok()?;
    let c = text.trim();
    (!c.is_empty()).then(|| c.to_string())
}
