//! The release examples, built and started for real: `examples/rebar3` (relx, `vm.args.src`)
//! and `examples/mix` (`rel/vm.args.eex`, `rel/env.sh.eex`). Each is copied to a scratch
//! directory, gets the plug's source from `edist erl-flags --plug-source` (the documented
//! step), is built offline, and started behind gateway gw-b; `edist ping` and `edist rpc`
//! reach it from behind gw-a, across the QUIC fabric.
//!
//! Skipped, with a message, only when `rebar3` or `mix` is not installed (scripts/setup.sh
//! installs both with EDIST_WITH_TEST_DEPS=1).

use edist_testkit as common;

use anyhow::{ensure, Context, Result};
use common::{host, require_erl, unique, until};
use edist_gateway::config::{Config, PeerConfig};
use edist_gateway::gateway::Gateway;
use edist_gateway::pki;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;
use tokio::process::Command;

const EDIST: &str = env!("CARGO_BIN_EXE_edist");

/// One release at a time (two cores; each starts a BEAM and builds).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn have(tool: &str) -> bool {
    std::process::Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

/// Copies `examples/NAME` (without build output) to a scratch directory.
fn copy_example(name: &str, to: &Path) -> Result<()> {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples").join(name);
    fn walk(from: &Path, to: &Path) -> Result<()> {
        std::fs::create_dir_all(to)?;
        for e in std::fs::read_dir(from)? {
            let e = e?;
            let name = e.file_name();
            if name == "_build" || name == "deps" || name == "edist_epmd.erl" {
                continue;
            }
            if e.file_type()?.is_dir() {
                walk(&e.path(), &to.join(&name))?;
            } else {
                std::fs::copy(e.path(), to.join(&name))?;
            }
        }
        Ok(())
    }
    walk(&from, to)
}

/// The documented step: the plug's source becomes a module of the release.
fn add_plug(project: &Path) -> Result<()> {
    let out = std::process::Command::new(EDIST).args(["erl-flags", "--plug-source"]).output()?;
    ensure!(out.status.success() && out.stdout.starts_with(b"%%"), "edist erl-flags --plug-source");
    std::fs::create_dir_all(project.join("src"))?;
    Ok(std::fs::write(project.join("src/edist_epmd.erl"), out.stdout)?)
}

fn check(what: &str, out: &Output) -> Result<()> {
    ensure!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// gw-a and gw-b, gw-b dialling gw-a, certificates in `dir`.
async fn gateways(dir: &Path, cookie: &str) -> Result<(Gateway, Gateway)> {
    pki::init_ca(dir, "rel", &pki::CaOptions::default())?;
    let config = |name: &str| -> Result<Config> {
        pki::issue(dir, name, 1, pki::IssueOptions::default())?;
        let mut c = Config { name: name.into(), cookie: Some(cookie.into()), ..Config::default() };
        c.local.control = "127.0.0.1:0".parse()?;
        c.fabric.listen = "127.0.0.1:0".parse()?;
        c.fabric.certs = dir.to_path_buf();
        Ok(c)
    };
    let ga = Gateway::start(config("gw-a")?).await?;
    let mut cb = config("gw-b")?;
    cb.peers.push(PeerConfig::new("gw-a", ga.fabric_addr().context("fabric")?));
    Ok((ga, Gateway::start(cb).await?))
}

/// A scratch project directory and the two gateways; cleaned up by the caller.
struct Setup {
    dir: PathBuf,
    project: PathBuf,
    cookie: String,
    ga: Gateway,
    gb: Gateway,
}

async fn setup(example: &str) -> Result<Setup> {
    require_erl();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique(&format!("release-{example}-")));
    let project = dir.join(example);
    copy_example(example, &project)?;
    add_plug(&project)?;
    let cookie = unique("relcookie");
    let (ga, gb) = gateways(&dir.join("certs"), &cookie).await?;
    until("the gateways' link", || ga.status().peers == ["gw-b"]).await?;
    Ok(Setup { dir, project, cookie, ga, gb })
}

/// The release `node` (behind gw-b) answers `edist ping` and `edist rpc` from behind gw-a.
async fn reach(s: &Setup, node: &str, module: &str) -> Result<()> {
    until(&format!("{node} to register with gw-b"), || s.gb.status().local_nodes.iter().any(|(n, _)| n == node))
        .await?;
    until("gw-a to learn it", || s.ga.status().remote_nodes.iter().any(|(n, _)| n == node)).await?;
    let ga = s.ga.control_addr().to_string();
    let edist = |args: &[&str]| {
        std::process::Command::new(EDIST).args(args).args(["--cookie", &s.cookie, "--gateway", &ga]).output()
    };
    let o = edist(&["ping", node])?;
    check("edist ping", &o)?;
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "pong");
    let o = edist(&["rpc", node, module, "hello", "[from_gw_a]"])?;
    check("edist rpc", &o)?;
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), format!("{{hello,from_gw_a,{node}}}"));
    // It went over the fabric: gw-a relayed it.
    ensure!(s.ga.status().bytes_out > 0, "{:?}", s.ga.status());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebar3_release_runs_through_the_gateway() -> Result<()> {
    if !have("rebar3") {
        eprintln!(
            "SKIPPED: rebar3 is not installed (apt-get install rebar3, or EDIST_WITH_TEST_DEPS=1 scripts/setup.sh)"
        );
        return Ok(());
    }
    let _serial = SERIAL.lock().await;
    let s = setup("rebar3").await?;
    let out = Command::new("rebar3").arg("release").current_dir(&s.project).env("REBAR_OFFLINE", "1").output().await?;
    check("rebar3 release", &out)?;
    let alive = unique("rebar");
    let node = format!("{alive}@{}", host());
    let mut rel = Command::new(s.project.join("_build/default/rel/hello_edist/bin/hello_edist"))
        .arg("foreground")
        .env("NODE_NAME", &alive)
        .env("COOKIE", &s.cookie)
        .env("EDIST_GATEWAY", s.gb.control_addr().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let r = async {
        reach(&s, &node, "hello_edist_app").await?;
        // relx's helpers, through nodetool with the plug in ERL_FLAGS (examples/rebar3/README.md).
        let gb = s.gb.control_addr().to_string();
        let flags = std::process::Command::new(EDIST).args(["erl-flags", "--gateway", &gb]).output()?;
        check("edist erl-flags", &flags)?;
        let o = Command::new(s.project.join("_build/default/rel/hello_edist/bin/hello_edist"))
            .args(["eval", "hello_edist_app:hello(helper)."])
            .env("NODE_NAME", &alive)
            .env("COOKIE", &s.cookie)
            .env("EDIST_GATEWAY", &gb)
            .env("USE_NODETOOL", "1")
            .env("ERL_FLAGS", String::from_utf8(flags.stdout)?.trim())
            .output()
            .await?;
        check("bin/hello_edist eval", &o)?;
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), format!("{{hello,helper,{node}}}"));
        Ok::<(), anyhow::Error>(())
    }
    .await;
    let _ = rel.kill().await;
    r?;
    s.ga.shutdown();
    s.gb.shutdown();
    let _ = std::fs::remove_dir_all(&s.dir);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mix_release_runs_through_the_gateway() -> Result<()> {
    if !have("mix") {
        eprintln!("SKIPPED: mix is not installed (apt-get install elixir, or EDIST_WITH_TEST_DEPS=1 scripts/setup.sh)");
        return Ok(());
    }
    let _serial = SERIAL.lock().await;
    let s = setup("mix").await?;
    let out = Command::new("mix")
        .args(["release", "--overwrite"])
        .current_dir(&s.project)
        .env("MIX_ENV", "prod")
        .env("HEX_OFFLINE", "1")
        .output()
        .await?;
    check("mix release", &out)?;
    let alive = unique("mix");
    let node = format!("{alive}@{}", host());
    let bin = s.project.join("_build/prod/rel/hello_edist/bin/hello_edist");
    let release = |cmd: &str| {
        let mut c = Command::new(&bin);
        c.arg(cmd)
            .env("RELEASE_NODE", &alive)
            .env("RELEASE_COOKIE", &s.cookie)
            .env("EDIST_GATEWAY", s.gb.control_addr().to_string())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    };
    let mut rel = release("start").stdout(Stdio::null()).spawn()?;
    let r = async {
        reach(&s, &node, "Elixir.HelloEdist").await?;
        // The release's own helper commands find the node through the gateway too (env.sh.eex).
        let o = release("rpc").arg("IO.inspect(HelloEdist.hello(:helper))").output().await?;
        check("bin/hello_edist rpc", &o)?;
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), format!("{{:hello, :helper, :{node}}}"));
        check("bin/hello_edist stop", &release("stop").output().await?)?;
        let gone = tokio::time::timeout(Duration::from_secs(20), rel.wait()).await;
        ensure!(gone.is_ok(), "the release did not stop");
        Ok::<(), anyhow::Error>(())
    }
    .await;
    let _ = rel.kill().await;
    r?;
    s.ga.shutdown();
    s.gb.shutdown();
    let _ = std::fs::remove_dir_all(&s.dir);
    Ok(())
}
