//! Two Rust nodes: simultaneous connects resolve to one connection, as between OTP nodes.

use edist_testkit as common;

use anyhow::{ensure, Result};
use common::{host, unique, Epmd};
use edist_node::{Node, NodeConfig};
use edist_proto::Term;
use std::time::Duration;

async fn node(epmd: &Epmd) -> Result<Node> {
    let mut cfg = NodeConfig::new(format!("{}@{}", unique("r"), host()), "pair");
    cfg.epmd_port = epmd.port;
    Ok(Node::start(cfg).await?)
}

#[tokio::test(flavor = "multi_thread")]
async fn simultaneous_connects_end_with_one_connection() -> Result<()> {
    let _ = tracing_subscriber::fmt().with_env_filter(std::env::var("EDIST_LOG").unwrap_or_default()).try_init();
    let epmd = Epmd::start().await?;
    for _ in 0..10 {
        let (a, b) = (node(&epmd).await?, node(&epmd).await?);
        let (ra, rb) = tokio::join!(a.connect(b.name()), b.connect(a.name()));
        ra?;
        rb?;
        ensure!(a.nodes() == vec![b.name().to_string()] && b.nodes() == vec![a.name().to_string()]);
        // The surviving connection carries traffic both ways.
        let (mut ma, mut mb) = (a.register("inbox")?, b.register("inbox")?);
        ma.send_named("inbox", b.name(), Term::atom("to_b")).await?;
        mb.send_named("inbox", a.name(), Term::atom("to_a")).await?;
        ensure!(mb.recv_message(Duration::from_secs(10)).await? == Term::atom("to_b"));
        ensure!(ma.recv_message(Duration::from_secs(10)).await? == Term::atom("to_a"));
        ensure!(a.ping(b.name()).await && b.ping(a.name()).await);
    }
    Ok(())
}
