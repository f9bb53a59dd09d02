//! The `edist` binary against a plain `erl -sname b -setcookie C`: the issue's acceptance lines.

use edist_testkit as common;

use anyhow::Result;
use common::{unique, Epmd, Erl};
use std::process::Output;

fn edist(epmd: &Epmd, args: &[&str], envs: &[(&str, &str)]) -> Result<Output> {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_edist"));
    cmd.args(args).env("ERL_EPMD_PORT", epmd.port.to_string()).env_remove("EDIST_COOKIE");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    Ok(cmd.output()?)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn ping_and_rpc_against_plain_erl() -> Result<()> {
    let epmd = Epmd::start().await?;
    let erl = Erl::start(&epmd, &unique("b"), "C", "").await?;
    let b = erl.name.as_str();

    let o = edist(&epmd, &["ping", b, "--cookie", "C"], &[])?;
    assert_eq!((stdout(&o).as_str(), o.status.success()), ("pong", true));
    let o = edist(&epmd, &["rpc", b, "erlang", "list_to_binary", r#"["abc"]"#, "--cookie", "C"], &[])?;
    assert_eq!(stdout(&o), r#"<<"abc">>"#);
    let o = edist(
        &epmd,
        &[
            "rpc",
            b,
            "erlang",
            "tuple_to_list",
            r#"[{<<"abc">>, 42, {ok, "x"}, #{k => [1.5, -7]}, 'a b'}]"#,
            "--cookie",
            "C",
        ],
        &[],
    )?;
    assert_eq!(stdout(&o), r#"[<<"abc">>,42,{ok,"x"},#{k => [1.5,-7]},'a b']"#);
    // Output of the called function reaches our stdout, as with erl's rpc.
    let o = edist(&epmd, &["rpc", b, "io", "format", r#"["hi ~p~n", [there]]"#, "--cookie", "C"], &[])?;
    assert_eq!(stdout(&o), "hi there\nok");

    // Errors: a raised exception, a wrong cookie, a node that is not there, bad ARGS.
    let o = edist(&epmd, &["rpc", b, "erlang", "binary_to_atom", "[1]", "--cookie", "C"], &[])?;
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("error: badarg"));
    let o = edist(&epmd, &["ping", b, "--cookie", "wrong"], &[])?;
    assert_eq!((stdout(&o).as_str(), o.status.success()), ("pang", false));
    assert!(String::from_utf8_lossy(&o.stderr).contains("wrong cookie"), "{}", String::from_utf8_lossy(&o.stderr));
    let nobody = format!("nobody@{}", common::host());
    let o = edist(&epmd, &["ping", &nobody, "--cookie", "C"], &[])?;
    assert_eq!(stdout(&o), "pang");
    assert!(String::from_utf8_lossy(&o.stderr).contains("not registered"));
    let o = edist(&epmd, &["rpc", b, "erlang", "node", "[1,", "--cookie", "C"], &[])?;
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("not an Erlang term"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn cookie_comes_from_env_then_home() -> Result<()> {
    let epmd = Epmd::start().await?;
    let erl = Erl::start(&epmd, &unique("b"), "envcookie", "").await?;
    let b = erl.name.as_str();
    let home = std::env::temp_dir().join(unique("home"));
    std::fs::create_dir_all(&home)?;
    let home_s = home.to_string_lossy().to_string();

    // No cookie anywhere: a clear error.
    let o = edist(&epmd, &["ping", b], &[("HOME", &home_s)])?;
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("no cookie"));
    // ~/.erlang.cookie, as erl reads it.
    std::fs::write(home.join(".erlang.cookie"), "envcookie\n")?;
    let o = edist(&epmd, &["ping", b], &[("HOME", &home_s)])?;
    assert_eq!(stdout(&o), "pong");
    // EDIST_COOKIE wins over the file.
    std::fs::write(home.join(".erlang.cookie"), "stale")?;
    let o = edist(&epmd, &["ping", b], &[("HOME", &home_s), ("EDIST_COOKIE", "envcookie")])?;
    assert_eq!(stdout(&o), "pong");
    std::fs::remove_dir_all(&home)?;
    Ok(())
}
