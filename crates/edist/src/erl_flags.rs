//! `edist erl-flags`: the VM flags that plug a stock `erl` into the local edist gateway.
//!
//! The `edist_epmd` module is embedded in this binary; it is compiled with `erlc` once into
//! `$XDG_CACHE_HOME/edist/<hash>/` (or `~/.cache/edist/<hash>/`) and reused from there. The
//! printed line carries only what it must (DESIGN fact 12: users put it in `ERL_FLAGS`, which
//! lands at the end of every `erl` command line):
//!
//! ```text
//! -epmd_module edist_epmd -start_epmd false -pa <dir> [-edist_gateway HOST:PORT]
//! ```

use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The plug's source, compiled on demand.
pub const PLUG_SOURCE: &str = include_str!("../../edist-gateway/erl/edist_epmd.erl");
/// The device connector (`-proto_dist edist_device`), for devices without a gateway: shipped
/// as source for the device's own release (docs/devices.md).
pub const DEVICE_SOURCE: &str = include_str!("../../edist-gateway/erl/edist_device_dist.erl");

/// The gateway's control address the plug uses without `-edist_gateway`: the control port's
/// default (the plug, in Erlang, writes it too; a test below keeps the two equal).
pub const DEFAULT_GATEWAY: &str = edist_gateway::local::control::DEFAULT_ADDR;

const MODULE: &str = "edist_epmd";

/// Prints the flags line.
pub fn run(gateway: Option<&str>) -> Result<()> {
    println!("{}", flags(gateway)?);
    Ok(())
}

/// The flags line, compiling the plug first if needed.
pub fn flags(gateway: Option<&str>) -> Result<String> {
    let gateway = gateway.map(parse_gateway).transpose()?.flatten();
    let dir = plug_dir()?;
    Ok(flags_line(&dir, gateway.as_deref()))
}

fn flags_line(dir: &Path, gateway: Option<&str>) -> String {
    let mut line = format!("-epmd_module {MODULE} -start_epmd false -pa {}", dir.display());
    if let Some(g) = gateway {
        line.push_str(" -edist_gateway ");
        line.push_str(g);
    }
    line
}

/// Checks `HOST:PORT` (`[V6]:PORT` for IPv6). `None` when it is the default address, which the
/// plug uses anyway.
fn parse_gateway(s: &str) -> Result<Option<String>> {
    let bad = || format!("--gateway {s:?} must be HOST:PORT, e.g. 127.0.0.1:4370 (IPv6: [::1]:4370)");
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        rest.split_once("]:").with_context(bad)?
    } else {
        s.rsplit_once(':').with_context(bad)?
    };
    let port_ok =
        !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok_and(|p| p > 0);
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '[' || c == ']') || !port_ok {
        bail!(bad());
    }
    if !s.starts_with('[') && host.contains(':') {
        bail!(bad()); // an IPv6 address without brackets
    }
    let default: Option<SocketAddr> = DEFAULT_GATEWAY.parse().ok();
    if s.parse::<SocketAddr>().ok() == default {
        return Ok(None);
    }
    Ok(Some(s.to_owned()))
}

/// The directory holding a compiled `edist_epmd.beam`, compiling it if needed.
pub fn plug_dir() -> Result<PathBuf> {
    let erlc = find_in_path("erlc").context(
        "`erlc` was not found in PATH; `edist erl-flags` needs it to compile the edist_epmd plug. \
         Install Erlang/OTP 25 or newer (Debian/Ubuntu: `apt-get install erlang-base`; \
         Fedora: `dnf install erlang`; macOS: `brew install erlang`; or https://www.erlang.org/downloads)",
    )?;
    let root = cache_root()?.join("edist");
    plug_dir_in(&root, &erlc)
}

fn plug_dir_in(root: &Path, erlc: &Path) -> Result<PathBuf> {
    // A beam compiled by a newer erlc may not load in an older VM: the erlc used is part of the
    // key, next to the source.
    let erlc_id = std::fs::canonicalize(erlc).unwrap_or_else(|_| erlc.to_path_buf());
    let key = fnv1a64(&[PLUG_SOURCE.as_bytes(), b"\0", erlc_id.to_string_lossy().as_bytes()]);
    let dir = root.join(format!("{key:016x}"));
    if dir.to_string_lossy().contains(char::is_whitespace) {
        bail!(
            "the cache directory {} contains white space, which cannot be passed in ERL_FLAGS; \
             set XDG_CACHE_HOME to a path without spaces",
            dir.display()
        );
    }
    let beam = dir.join(format!("{MODULE}.beam"));
    if beam.is_file() {
        return Ok(dir);
    }
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    // Compile into a private directory, then rename it into place: readers see either no
    // directory or a complete one, even with concurrent `edist erl-flags`.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let tmp = root.join(format!(".tmp-{key:016x}-{}-{nanos}", std::process::id()));
    let result = compile_into(&tmp, erlc).and_then(|()| match std::fs::rename(&tmp, &dir) {
        Ok(()) => Ok(()),
        Err(_) if beam.is_file() => Ok(()), // another process won the race
        Err(e) => Err(e).with_context(|| format!("moving {} to {}", tmp.display(), dir.display())),
    });
    let _ = std::fs::remove_dir_all(&tmp);
    result?;
    Ok(dir)
}

fn compile_into(tmp: &Path, erlc: &Path) -> Result<()> {
    std::fs::create_dir(tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let src = tmp.join(format!("{MODULE}.erl"));
    std::fs::write(&src, PLUG_SOURCE).with_context(|| format!("writing {}", src.display()))?;
    let out = Command::new(erlc)
        .arg("-o")
        .arg(tmp)
        .arg(&src)
        .output()
        .with_context(|| format!("running {}", erlc.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}) compiling the edist_epmd plug:\n{}{}",
            erlc.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if !tmp.join(format!("{MODULE}.beam")).is_file() {
        bail!("{} produced no {MODULE}.beam in {}", erlc.display(), tmp.display());
    }
    Ok(())
}

/// `$XDG_CACHE_HOME` when set to an absolute path, else `$HOME/.cache`.
fn cache_root() -> Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME") {
        let x = PathBuf::from(x);
        if x.is_absolute() {
            return Ok(x);
        }
    }
    match std::env::var_os("HOME") {
        Some(h) if !h.is_empty() => Ok(PathBuf::from(h).join(".cache")),
        _ => bail!("neither XDG_CACHE_HOME nor HOME is set: no place to keep the compiled edist_epmd plug"),
    }
}

pub(crate) fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    {
        p.is_file()
    }
}

/// FNV-1a, 64 bits: stable across Rust releases, unlike `DefaultHasher`.
fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The plug's default gateway (Erlang, in its own source) is the control port's default.
    #[test]
    fn the_plugs_default_is_the_control_ports() {
        assert!(PLUG_SOURCE.contains(&format!("-define(DEFAULT_GATEWAY, \"{DEFAULT_GATEWAY}\").")));
    }

    #[test]
    fn gateway_argument() {
        assert_eq!(parse_gateway("127.0.0.1:4370").unwrap(), None);
        assert_eq!(parse_gateway("127.0.0.1:4371").unwrap().as_deref(), Some("127.0.0.1:4371"));
        assert_eq!(parse_gateway("localhost:9").unwrap().as_deref(), Some("localhost:9"));
        assert_eq!(parse_gateway("[::1]:4370").unwrap().as_deref(), Some("[::1]:4370"));
        for bad in ["", "4370", "host", "host:", ":1", "h:0", "h:65536", "h:+1", "::1:4370", "a b:1", "[::1]4370"] {
            assert!(parse_gateway(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn line_format() {
        let dir = Path::new("/c/edist/0123");
        assert_eq!(flags_line(dir, None), "-epmd_module edist_epmd -start_epmd false -pa /c/edist/0123");
        assert_eq!(
            flags_line(dir, Some("127.0.0.1:5")),
            "-epmd_module edist_epmd -start_epmd false -pa /c/edist/0123 -edist_gateway 127.0.0.1:5"
        );
    }

    #[test]
    fn fnv_known_values() {
        assert_eq!(fnv1a64(&[b""]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(&[b"a"]), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(&[b"fo", b"obar"]), fnv1a64(&[b"foobar"]));
    }

    #[test]
    fn compiles_once_and_reuses() {
        let Some(erlc) = find_in_path("erlc") else {
            eprintln!("erlc not installed: skipped");
            return;
        };
        let root = std::env::temp_dir().join(format!("edist-erl-flags-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = plug_dir_in(&root, &erlc).unwrap();
        let beam = dir.join("edist_epmd.beam");
        let mtime = std::fs::metadata(&beam).unwrap().modified().unwrap();
        assert_eq!(plug_dir_in(&root, &erlc).unwrap(), dir);
        assert_eq!(std::fs::metadata(&beam).unwrap().modified().unwrap(), mtime, "recompiled");
        // No temporary directories left behind.
        let leftovers: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
        let _ = std::fs::remove_dir_all(&root);
    }
}
