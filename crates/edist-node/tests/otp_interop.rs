//! The Rust node against real OTP 25 nodes, through a real (private) epmd.

use edist_testkit as common;

use anyhow::{bail, ensure, Context, Result};
use common::{host, unique, Epmd, Erl};
use edist_node::{Event, Node, NodeConfig, NodeError, RpcError, RpcFailure};
use edist_proto::dist::control::ProcRef;
use edist_proto::Term;
use md5::{Digest, Md5};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

async fn rust_node(epmd: &Epmd, cookie: &str) -> Result<Node> {
    let mut cfg = NodeConfig::new(format!("{}@{}", unique("rust"), host()), cookie);
    cfg.epmd_port = epmd.port;
    Ok(Node::start(cfg).await?)
}

fn atom(s: &str) -> Term {
    Term::atom(s)
}

fn tuple(items: &[Term]) -> Term {
    Term::tuple(items.to_vec())
}

/// OTP code registering `echo`: replies `{echo, Msg}` to `{From, Msg}`.
const ECHO: &str = "register(echo, spawn(fun Loop() -> receive {From, Msg} -> From ! {echo, Msg}, Loop() end end))";

#[tokio::test(flavor = "multi_thread")]
async fn rust_dials_otp_ping_rpc_and_named_sends() -> Result<()> {
    let epmd = Epmd::start().await?;
    let erl = Erl::start(&epmd, &unique("otp"), "c1", ECHO).await?;
    let node = rust_node(&epmd, "c1").await?;

    ensure!(node.ping(&erl.name).await, "ping should give pong");
    let v =
        node.rpc(&erl.name, "erlang", "list_to_binary", vec![Term::list([Term::String(b"abc".to_vec())])], T).await?;
    assert_eq!(v, Term::binary(b"abc".to_vec()));
    assert_eq!(v.to_string(), "<<\"abc\">>");
    let v = node.rpc(&erl.name, "erlang", "node", vec![], T).await?;
    assert_eq!(v, atom(&erl.name));
    // The OTP side sees us as a hidden node.
    let v = node.rpc(&erl.name, "erlang", "nodes", vec![atom("hidden")], T).await?;
    assert_eq!(v, Term::list([atom(node.name())]));

    // A hidden peer never holds up global's name syncing.
    let v = node.rpc(&erl.name, "global", "sync", vec![], T).await?;
    assert_eq!(v, atom("ok"));

    // Exceptions come back typed.
    match node.rpc(&erl.name, "erlang", "binary_to_atom", vec![Term::Int(1)], T).await {
        Err(RpcError::Raised { class, reason }) => assert_eq!((class.as_str(), reason), ("error", atom("badarg"))),
        other => bail!("expected badarg, got {other:?}"),
    }
    match node.rpc(&erl.name, "no_such_module", "f", vec![], T).await {
        Err(RpcError::Raised { class, reason }) => {
            assert_eq!(class, "error");
            assert_eq!(reason, atom("undef"));
        }
        other => bail!("expected undef, got {other:?}"),
    }
    match node.rpc(&erl.name, "erlang", "throw", vec![atom("ball")], T).await {
        Err(RpcError::Raised { class, reason }) => assert_eq!((class.as_str(), reason), ("throw", atom("ball"))),
        other => bail!("expected a throw, got {other:?}"),
    }

    // Registered-name send to OTP, reply by pid.
    let mut mb = node.register("inbox")?;
    mb.send_named("echo", &erl.name, tuple(&[Term::Pid(mb.pid().clone()), atom("hello")])).await?;
    assert_eq!(mb.recv_message(T).await?, tuple(&[atom("echo"), atom("hello")]));
    // And OTP sends to our registered name.
    let reply = node
        .rpc(&erl.name, "erlang", "send", vec![tuple(&[atom("inbox"), atom(node.name())]), atom("by_name")], T)
        .await?;
    assert_eq!(reply, atom("by_name"));
    assert_eq!(mb.recv_message(T).await?, atom("by_name"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn otp_dials_rust_ping_rpc_and_named_sends() -> Result<()> {
    let epmd = Epmd::start().await?;
    let node = rust_node(&epmd, "c2").await?;
    let mut inbox = node.register("inbox")?;
    node.register_rpc("rust_math", "add", |args| match args.as_slice() {
        [Term::Int(a), Term::Int(b)] => Ok(Term::Int(a + b)),
        _ => Err(RpcFailure::Error(Term::atom("badarg"))),
    });
    let me = node.name().to_string();
    let eval = format!(
        "R = net_adm:ping('{me}'), \
         A = rpc:call('{me}', rust_math, add, [2, 3]), \
         B = (catch erpc:call('{me}', rust_math, add, [x, 3])), \
         C = (catch erpc:call('{me}', nomod, nofun, [])), \
         N = rpc:call('{me}', erlang, node, []), \
         {{inbox, '{me}'}} ! {{results, self(), R, A, B, C, N, nodes(hidden)}}"
    );
    let erl = Erl::start(&epmd, &unique("otp"), "c2", &eval).await?;
    let msg = inbox.recv_message(T).await?;
    let items = msg.as_tuple().context("a tuple")?;
    assert_eq!(items[0], atom("results"));
    assert_eq!(items[2], atom("pong"));
    assert_eq!(items[3], Term::Int(5));
    // erpc re-raises remote errors as error:{exception, Reason, Stack}.
    let exception = |t: &Term| {
        let r = t.as_tuple()?.get(1)?.as_tuple()?.first()?.as_tuple()?.to_vec();
        (r.first() == Some(&atom("exception"))).then(|| r.get(1).cloned()).flatten()
    };
    assert_eq!(exception(&items[4]), Some(atom("badarg")), "{}", items[4]);
    assert_eq!(exception(&items[5]), Some(atom("undef")), "{}", items[5]);
    // ... with the call in the stack trace, exactly as OTP's own undef.
    assert!(items[5].to_string().starts_with("{'EXIT',{{exception,undef,[{nomod,nofun,[],[]}]}"), "{}", items[5]);
    assert_eq!(items[6], atom(&me));
    assert_eq!(items[7], Term::list([atom(&me)]));
    assert_eq!(node.nodes(), vec![erl.name.clone()]);
    Ok(())
}

/// OTP code: `victim` dies with the reason it is sent; `watcher` (trapping exits) links to or
/// monitors what it is told and reports exits and DOWNs to `{inbox, RustNode}`.
fn signals_eval(rust: &str) -> String {
    format!(
        "register(victim, spawn(fun() -> receive {{die, R}} -> exit(R) end end)), \
         register(victim2, spawn(fun() -> receive {{die, R}} -> exit(R) end end)), \
         register(victim3, spawn(fun() -> receive never -> ok end end)), \
         register(watcher, spawn(fun() -> process_flag(trap_exit, true), \
            (fun L() -> receive \
               {{link, P}} -> link(P), {{inbox, '{rust}'}} ! linked, L(); \
               {{monitor, Name}} -> erlang:monitor(process, {{Name, '{rust}'}}), {{inbox, '{rust}'}} ! monitored, L(); \
               {{'EXIT', _, R}} -> {{inbox, '{rust}'}} ! {{saw_exit, R}}, L(); \
               {{'DOWN', _, process, _, R}} -> {{inbox, '{rust}'}} ! {{saw_down, R}}, L() \
             end end)() end))"
    )
}

async fn whereis(node: &Node, otp: &str, name: &str) -> Result<edist_proto::etf::Pid> {
    let v = node.rpc(otp, "erlang", "whereis", vec![atom(name)], T).await?;
    v.as_pid().cloned().with_context(|| format!("{name} is not a pid: {v}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn links_and_monitors_both_ways_and_noconnection() -> Result<()> {
    let epmd = Epmd::start().await?;
    let node = rust_node(&epmd, "c3").await?;
    let mut inbox = node.register("inbox")?;
    let mut erl = Erl::start(&epmd, &unique("otp"), "c3", &signals_eval(node.name())).await?;
    let victim = whereis(&node, &erl.name, "victim").await?;

    // Rust links to and monitors an OTP process; it dies with `boom`.
    let mut mb = node.mailbox();
    mb.link(&victim).await?;
    let mref = mb.monitor(&victim).await?;
    let name_ref = mb.monitor_named("victim2", &erl.name).await?;
    mb.send(&victim, tuple(&[atom("die"), atom("boom")])).await?;
    let mut got_exit = false;
    let mut got_down = false;
    while !(got_exit && got_down) {
        match mb.recv_timeout(T).await? {
            Event::Exit { from, reason, .. } if from == victim => {
                assert_eq!(reason, atom("boom"));
                got_exit = true;
            }
            Event::Down { reference, reason, .. } if reference == mref => {
                assert_eq!(reason, atom("boom"));
                got_down = true;
            }
            other => bail!("unexpected {other:?}"),
        }
    }
    // Monitor by registered name.
    mb.send_named("victim2", &erl.name, tuple(&[atom("die"), atom("by_name")])).await?;
    match mb.recv_timeout(T).await? {
        Event::Down { reference, reason, from } => {
            assert_eq!(reference, name_ref);
            assert_eq!(reason, atom("by_name"));
            assert!(matches!(from, ProcRef::Name(n) if n == "victim2"));
        }
        other => bail!("unexpected {other:?}"),
    }
    // Monitors and links to things that do not exist answer noproc.
    mb.monitor_named("nobody_here", &erl.name).await?;
    assert!(matches!(mb.recv_timeout(T).await?, Event::Down { reason, .. } if reason == atom("noproc")));
    mb.link(&victim).await?;
    assert!(matches!(mb.recv_timeout(T).await?, Event::Exit { reason, .. } if reason == atom("noproc")));

    // OTP links to and monitors a Rust mailbox; dropping it gives EXIT and DOWN `normal`.
    let tmp = node.register("tmp")?;
    inbox.send_named("watcher", &erl.name, tuple(&[atom("link"), Term::Pid(tmp.pid().clone())])).await?;
    assert_eq!(inbox.recv_message(T).await?, atom("linked"));
    inbox.send_named("watcher", &erl.name, tuple(&[atom("monitor"), atom("tmp")])).await?;
    assert_eq!(inbox.recv_message(T).await?, atom("monitored"));
    drop(tmp);
    let mut seen = vec![inbox.recv_message(T).await?, inbox.recv_message(T).await?];
    seen.sort_by_key(|t| t.to_string());
    assert_eq!(seen, vec![tuple(&[atom("saw_down"), atom("normal")]), tuple(&[atom("saw_exit"), atom("normal")])]);
    // OTP monitoring a Rust name that is not registered gets noproc.
    inbox.send_named("watcher", &erl.name, tuple(&[atom("monitor"), atom("not_registered")])).await?;
    assert_eq!(inbox.recv_message(T).await?, atom("monitored"));
    assert_eq!(inbox.recv_message(T).await?, tuple(&[atom("saw_down"), atom("noproc")]));

    // Killing the OTP node: links and monitors fire with noconnection.
    let victim3 = whereis(&node, &erl.name, "victim3").await?;
    let mut mb3 = node.mailbox();
    mb3.link(&victim3).await?;
    let r3 = mb3.monitor(&victim3).await?;
    // Make sure both signals reached OTP before the kill (a round trip on the same connection).
    node.rpc(&erl.name, "erlang", "node", vec![], T).await?;
    erl.kill().await?;
    let mut events = [mb3.recv_timeout(T).await?, mb3.recv_timeout(T).await?];
    events.sort_by_key(|e| matches!(e, Event::Down { .. }));
    assert_eq!(events[0], Event::Exit { from: victim3.clone(), reason: atom("noconnection"), exit2: false });
    assert_eq!(events[1], Event::Down { reference: r3, from: ProcRef::Pid(victim3), reason: atom("noconnection") });
    ensure!(node.nodes().is_empty(), "connection should be gone: {:?}", node.nodes());
    Ok(())
}

fn md5(b: &[u8]) -> Vec<u8> {
    Md5::digest(b).to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_megabytes_both_ways_and_interleaved_fragments() -> Result<()> {
    let epmd = Epmd::start().await?;
    // `md5er` answers {md5, erlang:md5(Bin), Bin}; `twins` has four processes build their
    // binaries, then send them all at the same moment.
    let eval = ECHO.to_string()
        + ", register(md5er, spawn(fun L() -> receive {From, Bin} -> From ! {md5, erlang:md5(Bin), Bin}, L() end end)), \
                register(twins, spawn(fun L() -> receive {From, N} -> Self = self(), \
                    Ps = [spawn(fun() -> B = binary:copy(<<I>>, N), M = erlang:md5(B), Self ! ready, \
                                         receive go -> From ! {twin, I, M, B} end end) || I <- [1, 2, 3, 4]], \
                    [receive ready -> ok end || _ <- Ps], [P ! go || P <- Ps], L() end end))";
    let erl = Erl::start(&epmd, &unique("otp"), "c4", &eval).await?;
    let node = rust_node(&epmd, "c4").await?;
    let mut mb = node.mailbox();

    let big: Vec<u8> = (0..50u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    let want = md5(&big);
    mb.send_named("md5er", &erl.name, tuple(&[Term::Pid(mb.pid().clone()), Term::binary(big.clone())])).await?;
    let reply = mb.recv_message(Duration::from_secs(60)).await?;
    let items = reply.as_tuple().context("tuple")?;
    // (ensure!, not assert_eq!: a failure must not print 50 MB)
    ensure!(items[1] == Term::binary(want.clone()), "OTP saw the 50 MB binary intact");
    ensure!(items[2] == Term::binary(big), "the 50 MB binary came back intact");
    assert!(node.stats().fragmented_received >= 1);

    // Four OTP processes send 10 MB each at the same moment: their fragments interleave.
    mb.send_named("twins", &erl.name, tuple(&[Term::Pid(mb.pid().clone()), Term::Int(10 << 20)])).await?;
    for _ in 0..4 {
        let m = mb.recv_message(Duration::from_secs(60)).await?;
        let t = m.as_tuple().context("tuple")?;
        let Term::Binary(b) = &t[3] else { bail!("not a binary") };
        assert_eq!(b.len(), 10 << 20);
        assert_eq!(t[2], Term::binary(md5(b)));
    }
    let s = node.stats();
    ensure!(s.peak_open_reassemblies >= 2, "fragments of the two senders should have interleaved: {s:?}");

    // Two Rust senders: a 50 MB message from one does not hold up the other's small message,
    // because our writer interleaves senders' fragments (lanes). The small echo comes back first.
    let (big_sender, small_sender) = (node.mailbox(), node.mailbox());
    let big = Term::binary(vec![1u8; 50 << 20]);
    big_sender.send_named("md5er", &erl.name, tuple(&[Term::Pid(mb.pid().clone()), big])).await?;
    small_sender.send_named("echo", &erl.name, tuple(&[Term::Pid(mb.pid().clone()), atom("small")])).await?;
    let first = mb.recv_message(Duration::from_secs(60)).await?;
    let second = mb.recv_message(Duration::from_secs(60)).await?;
    let small_reply = tuple(&[atom("echo"), atom("small")]);
    let big_md5 = Term::binary(md5(&vec![1u8; 50 << 20]));
    ensure!(second.as_tuple().and_then(|t| t.get(1)) == Some(&big_md5), "the 50 MB message arrived intact");
    ensure!(first == small_reply, "the small message should overtake the 50 MB one; {:?}", node.stats());
    let s = node.stats();
    ensure!(s.peak_active_lanes >= 2, "our writer should have interleaved the two senders: {s:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_cookie_is_refused_both_ways() -> Result<()> {
    let epmd = Epmd::start().await?;
    let node = rust_node(&epmd, "right").await?;
    let me = node.name().to_string();
    let mut erl =
        Erl::start(&epmd, &unique("otp"), "wrong", &format!("io:format(\"~p~n\", [net_adm:ping('{me}')])")).await?;
    assert_eq!(erl.line(T).await?, "pang", "OTP with another cookie must not get in");
    match node.ping_result(&erl.name).await {
        Err(NodeError::CookieRejected(n)) => assert_eq!(n, erl.name),
        other => bail!("expected CookieRejected, got {other:?}"),
    }
    let err = node.ping_result(&erl.name).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("wrong cookie"), "{err}");
    assert!(node.nodes().is_empty());
    Ok(())
}
