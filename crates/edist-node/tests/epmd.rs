//! The EPMD client against the real `epmd` daemon (and a real `erl` node).
//!
//! Every test runs its own private `epmd -port <free port>` as a child process (killed on drop),
//! so the tests neither depend on nor disturb a system epmd on 4369.

use common::{free_port, Epmd};
use edist_testkit as common;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use edist_node::epmd::{self, EpmdClient, EpmdClientError};
use edist_proto::epmd::{NODE_TYPE_HIDDEN, NODE_TYPE_NORMAL};
use tokio::process::Command;
use tokio::time::{sleep, Instant};

/// Polls `f` until it returns `Some`, or fails after `within`.
async fn poll_until<T, F, Fut>(within: Duration, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn register_lookup_duplicate_unregister() -> Result<()> {
    let epmd = Epmd::start().await?;
    let addr = epmd.addr();

    let reg = epmd::register(addr, "edist_probe", 9999, false).await?;
    assert_ne!(reg.creation, 0, "creation 0 is reserved");
    assert_eq!(reg.name(), "edist_probe");
    assert_eq!(reg.port(), 9999);

    let names = epmd::names(addr).await?;
    assert!(names.contains(&("edist_probe".to_string(), 9999)), "{names:?}");

    let info = epmd::port_please(addr, "edist_probe").await?.context("registered name not found")?;
    assert_eq!(info.port, 9999);
    assert_eq!(info.node_type, NODE_TYPE_NORMAL);
    assert_eq!(info.protocol, 0);
    assert_eq!((info.high, info.low), (6, 5));
    assert_eq!(info.name, "edist_probe");
    assert!(info.extra.is_empty());

    // Same name again: refused while the first registration lives.
    match epmd::register(addr, "edist_probe", 10000, false).await {
        Err(EpmdClientError::NameTaken { name, result, .. }) => {
            assert_eq!(name, "edist_probe");
            assert_ne!(result, 0);
        }
        other => panic!("expected NameTaken, got {other:?}"),
    }
    let err = epmd::register(addr, "edist_probe", 10000, false).await.err().context("second register succeeded")?;
    assert!(err.to_string().contains("already taken"), "{err}");
    // The refused attempt did not disturb the original.
    assert_eq!(epmd::port_please(addr, "edist_probe").await?.map(|i| i.port), Some(9999));

    // Dropping the registration closes the socket and epmd forgets the name.
    let first_creation = reg.creation;
    drop(reg);
    poll_until(Duration::from_secs(5), "name to disappear", || async {
        let gone = !epmd::names(addr).await?.iter().any(|(n, _)| n == "edist_probe");
        let unknown = epmd::port_please(addr, "edist_probe").await?.is_none();
        Ok((gone && unknown).then_some(()))
    })
    .await?;

    // The name is free again, and the new incarnation gets a different creation.
    let again = epmd::register(addr, "edist_probe", 9998, false).await?;
    assert_ne!(again.creation, first_creation);
    assert_eq!(epmd::port_please(addr, "edist_probe").await?.map(|i| i.port), Some(9998));
    drop(again);

    epmd.stop().await
}

#[tokio::test]
async fn unknown_name_and_hidden_node() -> Result<()> {
    let epmd = Epmd::start().await?;
    let addr = epmd.addr();

    assert_eq!(epmd::port_please(addr, "no_such_node").await?, None);
    assert_eq!(epmd::names(addr).await?, vec![]);

    let reg = epmd::register(addr, "edist_hidden", 4242, true).await?;
    let info = epmd::port_please(addr, "edist_hidden").await?.context("hidden node not found")?;
    assert_eq!(info.node_type, NODE_TYPE_HIDDEN);
    assert!(info.is_hidden());
    assert_eq!(info.port, 4242);

    // A full node name is rejected locally rather than silently answered with "unknown".
    assert!(matches!(
        epmd::port_please(addr, "edist_hidden@localhost").await,
        Err(EpmdClientError::InvalidRequest { .. })
    ));
    assert!(matches!(epmd::register(addr, "", 1, false).await, Err(EpmdClientError::InvalidRequest { .. })));

    // epmd going away ends the registration, and `closed` reports it.
    let mut reg = reg;
    epmd.stop().await?;
    tokio::time::timeout(Duration::from_secs(5), reg.closed())
        .await
        .context("registration not closed after epmd died")??;
    Ok(())
}

#[tokio::test]
async fn real_erl_node_is_found() -> Result<()> {
    let epmd = Epmd::start().await?;
    let addr = epmd.addr();
    let mut erl = Command::new("erl")
        .args(["-sname", "edist_epmd_x", "-setcookie", "c", "-noshell"])
        .env("ERL_EPMD_PORT", addr.port().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("spawning erl")?;

    let info = poll_until(Duration::from_secs(60), "erl to register", || {
        let exited = erl.try_wait();
        async move {
            if let Some(status) = exited? {
                bail!("erl exited early: {status}");
            }
            Ok(epmd::port_please(addr, "edist_epmd_x").await?)
        }
    })
    .await?;
    assert_ne!(info.port, 0);
    assert_eq!(info.node_type, NODE_TYPE_NORMAL);
    assert!(info.high >= 6, "OTP 25+ registers high version 6, got {}", info.high);
    assert_eq!(info.name, "edist_epmd_x");
    let names = epmd::names(addr).await?;
    assert!(names.contains(&("edist_epmd_x".to_string(), info.port)), "{names:?}");

    // The name is taken while erl runs.
    assert!(matches!(epmd::register(addr, "edist_epmd_x", 1, false).await, Err(EpmdClientError::NameTaken { .. })));

    erl.kill().await?;
    poll_until(Duration::from_secs(5), "erl's name to disappear", || async {
        Ok(epmd::port_please(addr, "edist_epmd_x").await?.is_none().then_some(()))
    })
    .await?;
    epmd.stop().await
}

#[tokio::test]
async fn env_port_default() {
    // Only reads the environment; other tests never set ERL_EPMD_PORT in-process.
    let expected = std::env::var("ERL_EPMD_PORT").ok().and_then(|v| v.trim().parse::<u16>().ok()).filter(|p| *p != 0);
    assert_eq!(epmd::default_epmd_port(), expected.unwrap_or(4369));
    assert_eq!(epmd::default_epmd_addr().port(), epmd::default_epmd_port());
}

#[tokio::test]
async fn silent_or_closing_server_gives_errors_not_hangs() -> Result<()> {
    // A "server" that accepts and never answers.
    let silent = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let silent_addr = silent.local_addr()?;
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let client = EpmdClient::new(silent_addr).with_timeout(Duration::from_millis(300));
    let started = Instant::now();
    for result in [
        client.port_please("x").await.map(|_| ()),
        client.names().await.map(|_| ()),
        client.register("x", 1, false).await.map(|_| ()),
    ] {
        match result {
            Err(e @ EpmdClientError::Timeout { .. }) => {
                assert!(e.to_string().contains("did not complete"), "{e}")
            }
            other => panic!("expected Timeout, got {other:?}"),
        }
    }
    ensure!(started.elapsed() < Duration::from_secs(3), "timeouts took {:?}", started.elapsed());
    hold.abort();

    // A "server" that accepts and closes at once.
    let closing = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let closing_addr = closing.local_addr()?;
    let closer = tokio::spawn(async move {
        while let Ok((s, _)) = closing.accept().await {
            drop(s);
        }
    });
    let client = EpmdClient::new(closing_addr).with_timeout(Duration::from_secs(2));
    assert!(matches!(client.port_please("x").await, Err(EpmdClientError::Closed { .. } | EpmdClientError::Io { .. })));
    assert!(matches!(client.names().await, Err(EpmdClientError::Closed { .. } | EpmdClientError::Io { .. })));
    closer.abort();

    // Nothing listening at all.
    let nobody = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
    assert!(matches!(epmd::names(nobody).await, Err(EpmdClientError::Connect { .. })));
    Ok(())
}
