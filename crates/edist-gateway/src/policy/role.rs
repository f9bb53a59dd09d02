//! Roles: what a peer gateway's nodes may do to the nodes behind this gateway, and the limits
//! on what they send. Configured as `[roles.NAME]`; `trusted` and `device` are built in (a
//! `[roles.device]` table overrides single fields of the built-in one).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The rules of one role, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Role {
    /// `spawn_request` (and so `erpc`/`rpc` calls) of these `module:function/arity` patterns
    /// (`*` matches any run of characters); `erpc` calls are checked against the MFA they run.
    /// Empty: no spawning at all.
    pub spawn: Vec<String>,
    /// Sends to registered names matching these patterns are refused, and so are monitors of
    /// them (answered `noproc` at once, so a `gen_server:call` fails fast).
    pub deny_names: Vec<String>,
    /// When set, only sends to registered names matching these patterns are allowed.
    pub allow_names: Option<Vec<String>>,
    /// Sends to pids.
    pub send_to_pids: bool,
    /// Sends to process aliases (replies of `gen_server:call` and `erpc`).
    pub alias_send: bool,
    /// Links, unlinks and the exit signals of broken links.
    pub links: bool,
    /// Process monitors and their `DOWN` signals.
    pub monitors: bool,
    /// Exit signals sent with `exit(Pid, Reason)` (remote kill).
    pub exit_signals: bool,
    /// Group-leader changes.
    pub group_leader: bool,
    /// Largest message (control and payload, bytes); 0: unlimited.
    pub max_message: usize,
    /// Deepest term nesting in a message; 0: unlimited.
    pub max_depth: u32,
    /// Distinct atoms a peer may send in all (per peer gateway, for the gateway's lifetime),
    /// so an atom flood stops before the node's atom table fills; 0: unlimited.
    pub atom_budget: usize,
    /// Messages per second per peer gateway (traffic above is delayed, not dropped); 0: unlimited.
    pub messages_per_sec: u64,
    /// Bytes per second per peer gateway (delayed above, like `messages_per_sec`); 0: unlimited.
    pub bytes_per_sec: u64,
}

impl Default for Role {
    fn default() -> Self {
        Role::trusted()
    }
}

/// Registered names a `device` may not reach: code loading and execution, remote control of
/// the node, its I/O and its distribution (the list of WhatsApp's erldist_filter and more).
pub const DEVICE_DENIED_NAMES: &[&str] = &[
    "rex",
    "erpc",
    "code_server",
    "erts_code_purger",
    "init",
    "erl_prim_loader",
    "application_controller",
    "kernel_sup",
    "kernel_safe_sup",
    "kernel_refc",
    "user",
    "user_drv",
    "standard_error",
    "standard_error_sup",
    "global_name_server",
    "global_group",
    "global_group_check",
    "net_kernel",
    "net_sup",
    "auth",
    "erl_epmd",
    "edist_epmd",
    "dist_ac",
    "inet_db",
    "file_server_2",
    "logger",
    "logger_sup",
    "logger_proxy",
    "error_logger",
    "erl_signal_server",
    "timer_server",
    "os_server",
    "disk_log_server",
    "pg",
    "socket_registry",
    "ssl_manager",
    "tls_connection_sup",
    "observer_backend",
    "dbg",
    "ttb",
    "sys",
];

impl Role {
    /// Everything allowed, no limits: plain Erlang distribution.
    pub fn trusted() -> Role {
        Role {
            spawn: vec!["*".into()],
            deny_names: Vec::new(),
            allow_names: None,
            send_to_pids: true,
            alias_send: true,
            links: true,
            monitors: true,
            exit_signals: true,
            group_leader: true,
            max_message: 0,
            max_depth: 0,
            atom_budget: 0,
            messages_per_sec: 0,
            bytes_per_sec: 0,
        }
    }

    /// Messages, links and monitors, but no code execution or remote control, and limits.
    pub fn device() -> Role {
        Role {
            spawn: Vec::new(),
            deny_names: DEVICE_DENIED_NAMES.iter().map(|s| s.to_string()).collect(),
            allow_names: None,
            send_to_pids: true,
            alias_send: true,
            links: true,
            monitors: true,
            exit_signals: false,
            group_leader: false,
            max_message: 8 << 20,
            max_depth: 64,
            atom_budget: 10_000,
            messages_per_sec: 10_000,
            bytes_per_sec: 16 << 20,
        }
    }

    /// True when nothing needs to be looked at: packets pass untouched (the fast path).
    pub fn is_open(&self) -> bool {
        *self == Role::trusted()
    }
}

/// The built-in roles, overridden and extended by `[roles.NAME]` tables. A table for a built-in
/// name starts from the built-in's fields; a new name starts from `trusted`'s.
pub fn resolve_roles(configured: &BTreeMap<String, toml::Table>) -> Result<BTreeMap<String, Role>, String> {
    let mut roles = BTreeMap::from([("trusted".to_string(), Role::trusted()), ("device".to_string(), Role::device())]);
    for (name, table) in configured {
        let base = roles.get(name).cloned().unwrap_or_else(Role::trusted);
        let mut merged = toml::Table::try_from(&base).map_err(|e| format!("role {name}: {e}"))?;
        for (k, v) in table {
            merged.insert(k.clone(), v.clone());
        }
        let role: Role = merged.try_into().map_err(|e| format!("[roles.{name}]: {e}"))?;
        roles.insert(name.clone(), role);
    }
    Ok(roles)
}

/// `*`-glob matching (`*` is any run of characters, everything else literal).
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some(pi);
                mark = ti;
                pi += 1;
            }
            Some(&c) if c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some(s) => {
                    pi = s + 1;
                    mark += 1;
                    ti = mark;
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*", ""));
        assert!(glob("rex", "rex"));
        assert!(!glob("rex", "rexx"));
        assert!(glob("os:*/*", "os:cmd/1"));
        assert!(!glob("os:*/2", "os:cmd/1"));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYY"));
        assert!(glob("*@*", "node@host"));
    }

    #[test]
    fn role_tables_override_fields_of_builtins() {
        let t: BTreeMap<String, toml::Table> = toml::from_str(
            "[device]\natom_budget = 5\n[sensor]\nspawn = []\nexit_signals = false\n[bad]\nno_such = 1\n",
        )
        .unwrap();
        let err = resolve_roles(&t).unwrap_err();
        assert!(err.contains("roles.bad"), "{err}");
        let mut t = t;
        t.remove("bad");
        let roles = resolve_roles(&t).unwrap();
        assert_eq!(roles["device"].atom_budget, 5);
        assert_eq!(roles["device"].spawn, Vec::<String>::new());
        assert!(roles["device"].deny_names.iter().any(|n| n == "rex"));
        assert!(roles["sensor"].links && !roles["sensor"].exit_signals && roles["sensor"].spawn.is_empty());
        assert!(roles["trusted"].is_open() && !roles["device"].is_open());
    }
}
