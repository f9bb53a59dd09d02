//! docs/config.md cannot drift from the configuration types: every TOML block in it parses
//! (unknown keys are errors), the first block is exactly the defaults, and every field of every
//! configuration struct appears in some block.

use edist_gateway::config::{Config, DevicesConfig, FabricConfig, LocalConfig, PeerConfig, PolicyConfig};
use edist_gateway::metrics::MetricsConfig;
use edist_gateway::policy::Role;
use serde::de::DeserializeOwned;
use std::collections::BTreeSet;

const DOC: &str = include_str!("../../../docs/config.md");

fn toml_blocks() -> Vec<String> {
    let mut blocks = vec![];
    let mut cur: Option<Vec<&str>> = None;
    for line in DOC.lines() {
        match (&mut cur, line.trim_end()) {
            (None, "```toml") => cur = Some(vec![]),
            (Some(b), "```") => {
                blocks.push(b.join("\n"));
                cur = None;
            }
            (Some(b), l) => b.push(l),
            (None, _) => {}
        }
    }
    blocks
}

/// The fields serde knows for `T`, from its unknown-field error (which lists them all).
fn fields<T: DeserializeOwned>() -> Vec<String> {
    let err = match toml::from_str::<T>("zz_not_a_field = 1") {
        Ok(_) => panic!("a probe key was accepted: is deny_unknown_fields missing?"),
        Err(e) => e.to_string(),
    };
    let expected = err.split("expected").nth(1).unwrap_or_else(|| panic!("unexpected error: {err}"));
    expected.split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

/// Keys in a TOML block as paths: `name`, `local.control`, `peers.addr`; commented-out keys
/// (`# key = ...` at the start of a line) count as documented.
fn keys(block: &str, out: &mut BTreeSet<String>) {
    let mut section = String::new();
    for line in block.lines() {
        let l = line.trim();
        if let Some(s) = l.strip_prefix("[[").and_then(|s| s.strip_suffix("]]")) {
            section = format!("{s}.");
        } else if let Some(s) = l.strip_prefix('[').and_then(|s| s.split(']').next()) {
            section = format!("{s}.");
            out.insert(s.to_string());
        } else {
            let l = l.strip_prefix("# ").unwrap_or(l);
            if let Some((k, _)) = l.split_once('=') {
                let k = k.trim();
                if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    out.insert(format!("{section}{k}"));
                }
            }
        }
    }
}

#[test]
fn every_block_parses_and_the_first_is_the_defaults() {
    let blocks = toml_blocks();
    assert!(blocks.len() >= 3, "docs/config.md has its TOML blocks");
    for b in &blocks {
        Config::from_toml(b, "docs/config.md".as_ref()).unwrap_or_else(|e| panic!("{e}\n{b}"));
    }
    let first = Config::from_toml(&blocks[0], "docs/config.md".as_ref()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(format!("{first:?}"), format!("{:?}", Config::default()), "the first block must show the defaults");
}

#[test]
fn every_field_is_documented() {
    let mut documented = BTreeSet::new();
    for b in toml_blocks() {
        keys(&b, &mut documented);
    }
    // "peers" is an array of tables: documented by its [[peers]] block and the reference line.
    documented.insert("peers".into());
    // Roles are a map of tables: `[roles.NAME]` documents `roles`, its keys are Role's fields.
    let documented: BTreeSet<String> = documented
        .into_iter()
        .map(|k| match k.strip_prefix("roles.").map(|r| r.split_once('.')) {
            Some(Some((_, field))) => format!("role.{field}"),
            Some(None) => "roles".into(),
            None => k,
        })
        .collect();
    let sections: [(&str, Vec<String>); 8] = [
        ("devices.", fields::<DevicesConfig>()),
        ("", fields::<Config>()),
        ("local.", fields::<LocalConfig>()),
        ("fabric.", fields::<FabricConfig>()),
        ("peers.", fields::<PeerConfig>()),
        ("metrics.", fields::<MetricsConfig>()),
        ("policy.", fields::<PolicyConfig>()),
        ("role.", fields::<Role>()),
    ];
    let mut missing = vec![];
    for (prefix, fields) in &sections {
        assert!(!fields.is_empty(), "no fields found for {prefix:?}");
        for f in fields {
            let path = format!("{prefix}{f}");
            if !documented.contains(&path) {
                missing.push(path);
            }
        }
    }
    assert!(missing.is_empty(), "fields missing from docs/config.md: {missing:?}");
    // A table in Config without an entry above would have its fields unchecked.
    for top in &sections[0].1 {
        let is_table = documented.iter().any(|k| k.starts_with(&format!("{top}.")));
        let listed = sections.iter().any(|(p, _)| *p == format!("{top}.")) || top == "roles";
        assert!(!is_table || listed, "add the struct of [{top}] to this test");
    }
    // And every documented key is a real one.
    for k in &documented {
        let (prefix, field) = k.rsplit_once('.').map(|(p, f)| (format!("{p}."), f)).unwrap_or((String::new(), k));
        let known = sections.iter().any(|(p, fs)| *p == prefix && fs.iter().any(|f| f == field));
        assert!(known, "docs/config.md documents {k:?}, which is not a configuration key");
    }
}
