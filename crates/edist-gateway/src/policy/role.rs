//! Roles: what a peer gateway's nodes may do to the nodes behind this gateway, and the limits
//! on what they send. Configured as `[roles.NAME]`; `trusted` and `device` are built in (a
//! `[roles.device]` table overrides single fields of the built-in one; a new name starts from
//! `device`'s fields, or from those of the role its `base` names).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The rules of one role, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Role {
    /// The role a `[roles.NAME]` table of a new name starts from (default `device`; a built-in
    /// role's table changes the built-in and has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
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
    /// Pids, aliases and links are capabilities: the peer may address (send to, monitor, pass
    /// on in a message) only pids, aliases and ports the nodes here handed to it, plus
    /// registered names; it may link only to processes it spawned (a link a local process made
    /// works both ways); exit signals (`exit/2`, group leaders) reach only processes it spawned.
    pub capabilities: bool,
    /// `net_adm:ping` works: `{is_auth, Node}` calls to `net_kernel` (and monitors of it) pass,
    /// whatever the name lists say; nothing else reaches `net_kernel` unless they allow it.
    pub ping: bool,
    /// The peer's nodes and ours connect as hidden nodes (the relayed handshake clears the
    /// published flag both ways): they are not in each other's `nodes()`, and `global`, `pg`
    /// and `net_kernel:monitor_nodes/1` leave them out, so `global:sync()` never waits for them.
    pub hidden: bool,
    /// Funs and external funs (`fun m:f/a`) inside messages.
    pub funs: bool,
    /// Audit mode: what the rules would refuse is logged and counted (as `audit`) but passes.
    pub audit: bool,
    /// Most capabilities (granted pids, aliases and ports; links; monitors; spawn requests in
    /// flight) kept per peer gateway, each kind; beyond, the oldest are forgotten.
    pub max_grants: usize,
    /// Largest message (control and payload, bytes); 0: unlimited.
    pub max_message: usize,
    /// Deepest term nesting in a message; 0: unlimited.
    pub max_depth: u32,
    /// Atoms new to the nodes here that a peer may send in all (per peer gateway, for the
    /// gateway's lifetime), so an atom flood stops before a node's atom table fills; atoms the
    /// nodes here sent to the peer, OTP's common atoms and node names are free; 0: unlimited.
    pub atom_budget: usize,
    /// Messages per second per peer gateway (traffic above is delayed, not dropped); refused
    /// messages do not count; 0: unlimited.
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
            base: None,
            spawn: vec!["*".into()],
            deny_names: Vec::new(),
            allow_names: None,
            send_to_pids: true,
            alias_send: true,
            links: true,
            monitors: true,
            exit_signals: true,
            group_leader: true,
            capabilities: false,
            ping: true,
            hidden: false,
            funs: true,
            audit: false,
            max_grants: 10_000,
            max_message: 0,
            max_depth: 0,
            atom_budget: 0,
            messages_per_sec: 0,
            bytes_per_sec: 0,
        }
    }

    /// Messages to allowed names and to the pids it was handed, links local processes make,
    /// monitors, ping; no code execution or remote control; hidden; limits.
    pub fn device() -> Role {
        Role {
            base: None,
            spawn: Vec::new(),
            deny_names: DEVICE_DENIED_NAMES.iter().map(|s| s.to_string()).collect(),
            allow_names: None,
            send_to_pids: true,
            alias_send: true,
            links: true,
            monitors: true,
            exit_signals: false,
            group_leader: false,
            capabilities: true,
            ping: true,
            hidden: true,
            funs: false,
            audit: false,
            max_grants: 10_000,
            max_message: 8 << 20,
            max_depth: 64,
            atom_budget: 10_000,
            messages_per_sec: 10_000,
            bytes_per_sec: 16 << 20,
        }
    }

    /// True when nothing needs to be looked at: packets pass untouched (the fast path).
    pub fn is_open(&self) -> bool {
        Role { base: None, ..self.clone() } == Role::trusted()
    }

    /// Whether a send to (or monitor of) registered name `name` passes the name lists.
    pub fn name_allowed(&self, name: &str) -> bool {
        !self.deny_names.iter().any(|p| glob(p, name))
            && self.allow_names.as_ref().is_none_or(|a| a.iter().any(|p| glob(p, name)))
    }

    /// Rules that cannot hold together.
    fn check(&self) -> Result<(), String> {
        if !self.is_open() && !self.hidden && !self.name_allowed("global_name_server") {
            // The node here would start global's sync with the peer's nodes and wait for
            // answers the policy drops: global:sync() and every global:register_name would hang.
            return Err("refuses global_name_server but its nodes are visible: global:sync() on the nodes \
                        here would wait for them forever (set hidden = true, or allow global_name_server)"
                .into());
        }
        if self.capabilities && self.max_grants == 0 {
            return Err("capabilities need max_grants > 0".into());
        }
        Ok(())
    }
}

/// The built-in roles, overridden and extended by `[roles.NAME]` tables. A table for a built-in
/// name starts from the built-in's fields; a new name starts from the fields of the role its
/// `base` key names (a built-in or another table; default `device`, so a forgotten field
/// stays closed).
pub fn resolve_roles(configured: &BTreeMap<String, toml::Table>) -> Result<BTreeMap<String, Role>, String> {
    let mut roles = builtins();
    let mut done = std::collections::BTreeSet::new();
    let mut pending: Vec<&String> = configured.keys().collect();
    // A table whose base is another table waits for it (a `[roles.device]` table changes the
    // `device` its heirs start from); a round that resolves nothing is a cycle.
    while !pending.is_empty() {
        let before = pending.len();
        let mut waiting = Vec::new();
        for name in pending {
            let Some(table) = configured.get(name) else { continue };
            let mut table = table.clone();
            let base = match table.remove("base") {
                None => None,
                Some(toml::Value::String(b)) => Some(b),
                Some(_) => return Err(format!("[roles.{name}]: base must be a role name")),
            };
            let start = match base {
                Some(_) if is_builtin_name(name) => {
                    return Err(format!("[roles.{name}]: a built-in role has no base (the table changes it)"))
                }
                None if is_builtin_name(name) => name.clone(),
                None => "device".to_string(),
                Some(b) if b == *name => return Err(format!("[roles.{name}]: base names itself")),
                Some(b) if !roles.contains_key(&b) && !configured.contains_key(&b) => {
                    return Err(format!("[roles.{name}]: unknown base {b:?}"));
                }
                Some(b) => b,
            };
            if start != *name && configured.contains_key(&start) && !done.contains(&start) {
                waiting.push(name);
                continue;
            }
            let base_role = roles.get(&start).cloned().unwrap_or_else(Role::device);
            let mut merged = toml::Table::try_from(&base_role).map_err(|e| format!("role {name}: {e}"))?;
            for (k, v) in table {
                merged.insert(k, v);
            }
            if !is_builtin_name(name) {
                merged.insert("base".into(), toml::Value::String(start.clone()));
            }
            let role: Role = merged.try_into().map_err(|e| format!("[roles.{name}]: {e}"))?;
            roles.insert(name.clone(), role);
            done.insert(name.clone());
        }
        if waiting.len() == before {
            return Err(format!("[roles.{}]: its base chain loops", waiting.first().map_or("?", |n| n.as_str())));
        }
        pending = waiting;
    }
    for (name, role) in &roles {
        role.check().map_err(|e| format!("role {name}: {e}"))?;
    }
    Ok(roles)
}

fn is_builtin_name(name: &str) -> bool {
    matches!(name, "trusted" | "device")
}

fn builtins() -> BTreeMap<String, Role> {
    BTreeMap::from([("trusted".to_string(), Role::trusted()), ("device".to_string(), Role::device())])
}

/// `edist policy explain`: the effective rules of role `name`, in words, then as TOML.
pub fn explain(name: &str, role: &Role) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let yes = |b: bool| if b { "yes" } else { "no" };
    let limit = |n: u64, unit: &str| if n == 0 { "unlimited".to_string() } else { format!("{n} {unit}") };
    let from = role.base.as_ref().map(|b| format!(" (from {b})")).unwrap_or_default();
    let open = if role.is_open() { " (trusted: packets pass untouched)" } else { "" };
    let _ = writeln!(out, "role {name}{from}{open}");
    if role.audit {
        let _ = writeln!(out, "  AUDIT MODE: refusals below are only logged and counted; everything passes");
    }
    let names = match &role.allow_names {
        Some(a) => format!("only {}", a.join(", ")),
        None => "any".into(),
    };
    let _ = writeln!(out, "  registered names:   {names}");
    if !role.deny_names.is_empty() {
        let _ = writeln!(out, "    except:           {}", role.deny_names.join(", "));
    }
    let _ = writeln!(
        out,
        "  ping (net_kernel):  {}",
        if role.ping { "yes: {is_auth, Node} calls only" } else { "no (net_adm:ping answers pang)" }
    );
    let _ = writeln!(
        out,
        "  global, pg:         {}",
        match (role.hidden, role.name_allowed("global_name_server")) {
            (true, _) => "hidden from each other: global and pg leave the peer's nodes out",
            (false, true) => "the peer's nodes take part (they can register, lock and sync global names)",
            (false, false) => "refused, nodes visible (invalid: global:sync() would hang)",
        }
    );
    let spawn =
        if role.spawn.is_empty() { "none (rpc, erpc, spawn refused)".to_string() } else { role.spawn.join(", ") };
    let _ = writeln!(out, "  spawn / rpc:        {spawn}");
    let pids = match (role.send_to_pids, role.capabilities) {
        (false, _) => "no sends to pids",
        (true, true) => "only pids, aliases and ports handed to the peer (capabilities)",
        (true, false) => "any pid",
    };
    let _ = writeln!(out, "  pids:               {pids}");
    let links = match (role.links, role.capabilities) {
        (false, _) => "no",
        (true, true) => "links local processes made, and to processes the peer spawned",
        (true, false) => "any (a link from the peer can kill any process it can name)",
    };
    let _ = writeln!(out, "  links:              {links}");
    let _ = writeln!(out, "  monitors:           {}", yes(role.monitors));
    let _ = writeln!(
        out,
        "  exit/2:             {}",
        match (role.exit_signals, role.capabilities) {
            (false, _) => "no",
            (true, true) => "only to processes the peer spawned",
            (true, false) => "any process",
        }
    );
    let _ = writeln!(out, "  group leaders:      {}", yes(role.group_leader));
    let _ = writeln!(out, "  funs in messages:   {}", yes(role.funs));
    let _ = writeln!(out, "  max message:        {}", limit(role.max_message as u64, "bytes"));
    let _ = writeln!(out, "  max depth:          {}", limit(u64::from(role.max_depth), "levels"));
    let _ = writeln!(out, "  atom budget:        {}", limit(role.atom_budget as u64, "new atoms per peer gateway"));
    let _ = writeln!(
        out,
        "  rate:               {}, {}",
        limit(role.messages_per_sec, "messages/s"),
        limit(role.bytes_per_sec, "bytes/s")
    );
    if role.capabilities {
        let _ = writeln!(out, "  capabilities kept:  {} of each kind per peer gateway", role.max_grants);
    }
    let _ = writeln!(out, "\n[roles.{name}]");
    match toml::to_string(role) {
        Ok(t) => out.push_str(&t),
        Err(e) => {
            let _ = writeln!(out, "# (cannot print: {e})");
        }
    }
    out
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
            Some(&c) if t.get(ti) == Some(&c) => {
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
    p.get(pi..).unwrap_or_default().iter().all(|&c| c == b'*')
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

    #[test]
    fn new_roles_start_from_device_or_their_base() {
        let t: BTreeMap<String, toml::Table> = toml::from_str(
            "[device]\natom_budget = 5\n\
             [sensor]\nallow_names = [\"telemetry\"]\n\
             [gauge]\nbase = \"sensor\"\nmax_message = 100\n\
             [partner]\nbase = \"trusted\"\nspawn = [\"api:*/*\"]\n",
        )
        .unwrap();
        let roles = resolve_roles(&t).unwrap();
        // Forgetting `spawn = []` no longer allows rpc: a new role starts closed.
        let sensor = &roles["sensor"];
        assert!(sensor.spawn.is_empty() && sensor.capabilities && sensor.hidden);
        assert_eq!(sensor.atom_budget, 5, "from the device as configured here");
        let gauge = &roles["gauge"];
        assert_eq!((gauge.allow_names.clone(), gauge.max_message), (Some(vec!["telemetry".to_string()]), 100));
        let partner = &roles["partner"];
        assert!(partner.links && !partner.capabilities && partner.spawn == vec!["api:*/*".to_string()]);
        for (toml, want) in [
            ("[a]\nbase = \"b\"\n[b]\nbase = \"a\"\n", "loops"),
            ("[a]\nbase = \"nope\"\n", "unknown base"),
            ("[a]\nbase = \"a\"\n", "itself"),
            ("[device]\nbase = \"trusted\"\n", "built-in"),
            ("[a]\nbase = 1\n", "role name"),
        ] {
            let t: BTreeMap<String, toml::Table> = toml::from_str(toml).unwrap();
            let err = resolve_roles(&t).unwrap_err();
            assert!(err.contains(want), "{toml}: {err}");
        }
    }

    #[test]
    fn roles_that_would_stall_global_are_refused() {
        let t: BTreeMap<String, toml::Table> = toml::from_str("[visible]\nhidden = false\n").unwrap();
        let err = resolve_roles(&t).unwrap_err();
        assert!(err.contains("global:sync()"), "{err}");
        let t: BTreeMap<String, toml::Table> =
            toml::from_str("[visible]\nhidden = false\ndeny_names = [\"rex\"]\n").unwrap();
        assert!(resolve_roles(&t).is_ok(), "global allowed: visible is fine");
    }

    #[test]
    fn explain_says_what_a_role_allows() {
        let t: BTreeMap<String, toml::Table> =
            toml::from_str("[device]\nallow_names = [\"kv\"]\naudit = true\n").unwrap();
        let roles = resolve_roles(&t).unwrap();
        let text = explain("device", &roles["device"]);
        for want in ["AUDIT MODE", "only kv", "is_auth", "hidden", "none (rpc, erpc, spawn refused)", "[roles.device]"]
        {
            assert!(text.contains(want), "{want}: {text}");
        }
        // The TOML part reads back as the same role.
        let toml_part = text.split("[roles.device]\n").nth(1).unwrap();
        assert_eq!(toml::from_str::<Role>(toml_part).unwrap(), roles["device"]);
        assert!(explain("trusted", &Role::trusted()).contains("packets pass untouched"));
    }
}
