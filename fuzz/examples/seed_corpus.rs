//! Writes seed inputs for every fuzz target into `corpus/<target>/` (run from `fuzz/`):
//!
//! ```sh
//! cargo +nightly run --example seed_corpus
//! ```
//!
//! Seeds are built with edist-proto itself (typical terms, every control message, full
//! handshakes between the real state machines, EPMD captures) and, when `erl` is on the PATH,
//! with OTP's own `term_to_binary` (compressed terms, funs, Latin-1 atoms, old tags) and `~0tp`.
//! Existing files are left alone; file names are the seeds' labels.

use edist_fuzz::{acceptor_config, initiator_config, put_chunks, DIST_FLAG_SETS, OTP25_FLAGS};
use edist_proto::dist::control::{encode_message, Control, ProcRef};
use edist_proto::dist::fragment::frame_message;
use edist_proto::dist::handshake::{Acceptor, AcceptorEvent, Initiator, InitiatorEvent, Status};
use edist_proto::dist::DFlags;
use edist_proto::epmd::{Alive2Req, Alive2Resp, NamesResp, NodeInfo, Port2Resp, Request};
use edist_proto::etf::{encode_versioned, Atom, Fun, Pid, Port, Ref, Term};
use std::fs;
use std::path::Path;
use std::process::Command;

fn write(target: &str, label: &str, data: &[u8]) {
    let dir = Path::new("corpus").join(target);
    if let Err(e) = fs::create_dir_all(&dir) {
        panic!("cannot create {}: {e}", dir.display());
    }
    let path = dir.join(format!("seed-{label}"));
    if !path.exists() {
        if let Err(e) = fs::write(&path, data) {
            panic!("cannot write {}: {e}", path.display());
        }
    }
}

fn a(s: &str) -> Term {
    Term::atom(s)
}

fn pid(n: u32) -> Pid {
    Pid { node: Atom::from("a@host"), id: n, serial: 0, creation: 7 }
}

fn rf() -> Ref {
    Ref { node: Atom::from("a@host"), creation: 7, ids: vec![1, 2, 3] }
}

fn terms() -> Vec<(&'static str, Term)> {
    let big = Term::from_bigint("123456789012345678901234567890".parse().unwrap_or_default());
    vec![
        ("atom", a("hello")),
        ("atom_quoted", a("hello world")),
        ("atom_utf8", a("日本")),
        ("int_small", Term::Int(42)),
        ("int_neg", Term::Int(-123456)),
        ("int_i64", Term::Int(i64::MIN)),
        ("big", big.clone()),
        ("float", Term::Float(2.5)),
        ("float_exp", Term::Float(1.0e-300)),
        ("nil", Term::Nil),
        ("string", Term::String(b"hello\n".to_vec())),
        ("list", Term::list([Term::Int(1), a("two"), Term::Int(1000)])),
        ("improper", Term::List(vec![a("a")], Box::new(a("b")))),
        ("tuple", Term::tuple([a("ok"), Term::Int(1), Term::tuple([])])),
        ("map", Term::Map(vec![(a("k"), Term::Int(1)), (Term::binary(*b"b"), Term::list([a("x")]))])),
        ("binary", Term::binary(*b"plain text")),
        ("binary_bytes", Term::binary([0, 1, 2, 255])),
        ("bits", Term::BitBinary { data: vec![1, 2, 24], bits: 5 }),
        ("export", Term::Export { module: Atom::from("lists"), function: Atom::from("map"), arity: 2 }),
        ("pid", Term::Pid(pid(84))),
        ("port", Term::Port(Port { node: Atom::from("a@host"), id: 3, creation: 7 })),
        ("port_v4", Term::Port(Port { node: Atom::from("a@host"), id: 1 << 40, creation: 7 })),
        ("ref", Term::Ref(rf())),
        (
            "fun",
            Term::Fun(Box::new(Fun {
                arity: 1,
                uniq: [7; 16],
                index: 3,
                module: Atom::from("erl_eval"),
                old_index: 45,
                old_uniq: 65746770,
                pid: pid(1),
                free_vars: vec![Term::Int(1), a("x")],
            })),
        ),
        (
            "nested",
            Term::tuple([
                a("reply"),
                Term::list([Term::tuple([a("k"), Term::binary(*b"v")]), Term::Map(vec![(Term::Int(1), big)])]),
                Term::tuple([Term::tuple([Term::tuple([Term::Nil])])]),
            ]),
        ),
    ]
}

/// Hand-written encodings with tags our encoder never writes.
fn old_tags() -> Vec<(&'static str, Vec<u8>)> {
    let mut float = vec![131, 99];
    let mut text = b"1.50000000000000000000e+00".to_vec();
    text.resize(31, 0);
    float.extend_from_slice(&text);
    vec![
        ("old_float", float),
        ("atom_latin1", vec![131, 100, 0, 5, b'h', 0xe9, b'l', b'l', b'o']),
        ("small_atom", vec![131, 115, 2, b'o', b'k']),
        ("old_pid", vec![131, 103, 115, 1, b'n', 0, 0, 0, 1, 0, 0, 0, 2, 3]),
        ("old_port", vec![131, 102, 115, 1, b'n', 0, 0, 0, 9, 1]),
        ("old_ref", vec![131, 101, 115, 1, b'n', 0, 0, 0, 9, 1]),
        ("new_ref", vec![131, 114, 0, 2, 115, 1, b'n', 1, 0, 0, 0, 1, 0, 0, 0, 2]),
        ("large_tuple", vec![131, 105, 0, 0, 0, 2, 97, 1, 106]),
        ("large_big", vec![131, 111, 0, 0, 0, 9, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
        ("list_zero", vec![131, 108, 0, 0, 0, 0, 97, 5]),
        ("list_string_tail", vec![131, 108, 0, 0, 0, 1, 97, 1, 107, 0, 2, b'a', b'b']),
        ("map_dup_keys", vec![131, 116, 0, 0, 0, 2, 97, 1, 97, 2, 97, 1, 97, 3]),
        ("bits_padding", vec![131, 77, 0, 0, 0, 1, 3, 0xff]),
        ("deep", [vec![131], [104u8, 1].repeat(40), vec![104, 0]].concat()),
    ]
}

fn etf_and_text() {
    for (label, t) in terms() {
        write("etf_term", label, &encode_versioned(&t));
        write("text_parse", label, t.to_string().as_bytes());
    }
    for (label, b) in old_tags() {
        write("etf_term", label, &b);
    }
    for (label, s) in [
        ("syntax_numbers", "[16#FF, 2#1010, $a, $\\n, -1.5e-3, 1_000_000, 36#Zz]."),
        ("syntax_binaries", "<<1:3, 2:16/little, \"é\"/utf8, 1.5/float, \"ab\":16, 7:2/unit:8>>"),
        ("syntax_strings", "{\"a\\x{41}\\101\\^a\" \"cont\", 'q\\'a', % comment\n []}"),
        ("syntax_maps", "#{a => 1, \"b\" => [x|y], a => 3, <<\"k\">> => #{}}"),
        ("syntax_fun", "fun 'a b':c/3"),
    ] {
        write("text_parse", label, s.as_bytes());
    }
}

/// Runs `erl` (if present) for OTP's encodings and text of a few terms.
fn from_otp() {
    const SCRIPT: &str = r#"
Node = node(),
Terms = [
  {compressed, term_to_binary(lists:duplicate(200, hello), [compressed])},
  {compressed_bin, term_to_binary(binary:copy(<<"abc">>, 1000), [{compressed, 9}])},
  {fun_closure, term_to_binary(begin X = 42, fun(Y) -> X + Y end end)},
  {fun_export, term_to_binary(fun lists:map/2)},
  {default_v1, term_to_binary({'h\x{e9}llo', [a, "str", 1.5, <<1:3>>], #{k => v}, self(), make_ref()})},
  {minor0_float, term_to_binary(3.14, [{minor_version, 0}])},
  {v2_utf8, term_to_binary({'\x{65E5}\x{672C}', open_port({spawn, "true"}, [])}, [{minor_version, 2}])},
  {big_neg, term_to_binary(-(1 bsl 200))}
],
lists:foreach(fun({Name, Bin}) -> io:format("~s ~s~n", [Name, binary:encode_hex(Bin)]) end, Terms),
lists:foreach(fun({Name, T}) ->
    io:format("text_~s ~s~n", [Name, binary:encode_hex(unicode:characters_to_binary(io_lib:format("~0tp", [T])))])
  end, [{mixed, {ok, [1, 2.5, "s", <<"b">>, <<1:1>>, #{a => [b | c]}]}}, {utf8, {'\x{65E5}', <<"\x{e9}"/utf8>>}}]),
halt(0).
"#;
    let Ok(out) = Command::new("erl").args(["-noshell", "-eval", SCRIPT]).output() else {
        eprintln!("no `erl` on the PATH: skipping OTP-made seeds");
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in stdout.lines() {
        let Some((name, hex)) = line.split_once(' ') else { continue };
        let bytes: Vec<u8> =
            (0..hex.len() / 2).filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()).collect();
        match name.strip_prefix("text_") {
            Some(n) => write("text_parse", &format!("otp_{n}"), &bytes),
            None => write("etf_term", &format!("otp_{name}"), &bytes),
        }
    }
}

fn controls() -> Vec<Control> {
    let t = || a("tok");
    vec![
        Control::Link { from: pid(1), to: pid(2) },
        Control::Send { to: pid(2) },
        Control::Exit { from: pid(1), to: pid(2), reason: a("kill") },
        Control::NodeLink,
        Control::RegSend { from: pid(1), to: Atom::from("rex") },
        Control::RegSendTT { from: pid(1), to: Atom::from("n"), token: t() },
        Control::MonitorP { from: pid(1), to: ProcRef::Name(Atom::from("n")), reference: rf() },
        Control::MonitorPExit { from: ProcRef::Pid(pid(3)), to: pid(1), reference: rf(), reason: a("noproc") },
        Control::SendSender { from: pid(1), to: pid(2) },
        Control::PayloadExit { from: pid(1), to: pid(2) },
        Control::PayloadMonitorPExit { from: ProcRef::Name(Atom::from("n")), to: pid(2), reference: rf() },
        Control::SpawnRequest {
            req_id: rf(),
            from: pid(1),
            group_leader: pid(4),
            module: Atom::from("erpc"),
            function: Atom::from("execute_call"),
            arity: 4,
            opts: Term::list([a("monitor")]),
        },
        Control::SpawnReply { req_id: rf(), to: pid(1), flags: 2, result: Term::Pid(pid(9)) },
        Control::AliasSend { from: pid(1), alias: rf() },
        Control::UnlinkId { id: u64::MAX, from: pid(1), to: pid(2) },
    ]
}

fn dist() {
    // §6.2: OTP's real atom-cache header (from header.rs's test), then a message reusing a slot.
    let mut p = vec![131, 68, 4, 0x88, 0xdc, 0x00, 0x22, 4];
    p.extend_from_slice(b"b@vm");
    p.extend_from_slice(&[0x05, 0]);
    p.extend_from_slice(&[0x78, 3]);
    p.extend_from_slice(b"rex");
    p.extend_from_slice(&[0x61, 16]);
    p.extend_from_slice(b"features_request");
    // {6, Pid, '', rex} with the pid's node and the atoms from the cache, then a payload.
    p.extend_from_slice(&[0x68, 4, 0x61, 6, 0x58, 0x52, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]);
    p.extend_from_slice(&[0x52, 1, 0x52, 2, 0x68, 2, 0x52, 3, 0x6a]);
    let p2 = [
        131, 68, 1, 0x00, 0x22, 0x68, 4, 0x61, 6, 0x58, 0x52, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0x77, 0, 0x77, 1,
        b'x', 0x6a,
    ];
    let mut s = vec![0u8]; // OTP 25 flags: atom cache
    for pkt in [&p[..], &p2[..]] {
        s.extend_from_slice(&(pkt.len() as u32).to_be_bytes());
        s.extend_from_slice(pkt);
    }
    s.extend_from_slice(&[0, 0, 0, 0]); // tick
    write("dist_packet", "otp_atom_cache", &s);

    for (sel, flags) in DIST_FLAG_SETS.iter().enumerate() {
        let flags = DFlags(*flags);
        let mut stream = vec![sel as u8];
        for (i, c) in controls().iter().enumerate() {
            let payload = c.has_payload().then(|| Term::tuple([a("hello"), Term::binary(vec![7; 40])]));
            let (ctrl, pl) = encode_message(c, payload.as_ref());
            let mut packets = Vec::new();
            frame_message(&mut packets, flags, i as u64 + 1, &ctrl, &pl, 1 << 16);
            let one: Vec<u8> = packets.concat();
            write("dist_packet", &format!("flags{sel}_op{}", c.op()), &[&[sel as u8][..], &one].concat());
            stream.extend_from_slice(&one);
        }
        write("dist_packet", &format!("flags{sel}_all"), &stream);
        // A fragmented message (fragments of 32 bytes) interleaved with a tick.
        let c = Control::RegSend { from: pid(1), to: Atom::from("sink") };
        let (ctrl, pl) = encode_message(&c, Some(&Term::binary(vec![1; 100])));
        let mut packets = Vec::new();
        frame_message(&mut packets, flags, 9, &ctrl, &pl, 32);
        let mut frag = vec![sel as u8];
        for (i, p) in packets.iter().enumerate() {
            frag.extend_from_slice(p);
            if i == 0 {
                frag.extend_from_slice(&[0, 0, 0, 0]);
            }
        }
        write("dist_packet", &format!("flags{sel}_fragments"), &frag);
    }
}

/// Runs a real initiator against a real acceptor and records what each side receives, in the
/// targets' input format (see `Input`): config byte, chunks, decision bytes.
fn handshakes() {
    for (label, variant, status) in [
        ("ok", 0u8, Status::Ok),
        ("ok_otp_flags", 1, Status::Ok),
        ("alive", 0, Status::Alive),
        ("named", 1, Status::Named { name: "dyn@host".into(), creation: 5 }),
        ("nok", 0, Status::Nok),
    ] {
        let name_me = matches!(status, Status::Named { .. });
        let mut ini = Initiator::new(initiator_config(u8::from(name_me)));
        let mut acc = Acceptor::new(acceptor_config(variant));
        let mut to_acc = vec![variant];
        let mut to_ini = vec![u8::from(name_me)];
        // Name.
        let m = ini.take_output();
        put_chunks(&mut to_acc, &m);
        let _ = acc.handle(&m);
        let Ok(Some(AcceptorEvent::Name { .. })) = acc.poll() else { panic!("no name event") };
        to_acc.push(match &status {
            Status::Ok => 0,
            Status::Nok => 2,
            Status::Alive => 4,
            _ => 5,
        });
        let _ = acc.respond(status.clone());
        let m = acc.take_output();
        put_chunks(&mut to_ini, &m);
        let _ = ini.handle(&m);
        let mut done = false;
        while !done {
            match ini.poll() {
                Ok(Some(InitiatorEvent::Status(Status::Alive))) => {
                    to_ini.push(0);
                    let _ = ini.answer_alive(true);
                    let m = ini.take_output();
                    put_chunks(&mut to_acc, &m);
                    let _ = acc.handle(&m);
                    let Ok(Some(AcceptorEvent::AliveAnswer(true))) = acc.poll() else { panic!("no alive answer") };
                    let m = acc.take_output();
                    put_chunks(&mut to_ini, &m);
                    let _ = ini.handle(&m);
                }
                Ok(Some(InitiatorEvent::Status(_))) => {}
                Ok(Some(InitiatorEvent::Challenge { .. })) => {
                    to_ini.push(0);
                    let _ = ini.reply();
                    let m = ini.take_output();
                    put_chunks(&mut to_acc, &m);
                    let _ = acc.handle(&m);
                    let Ok(Some(AcceptorEvent::Authenticated)) = acc.poll() else { panic!("not authenticated") };
                    to_acc.push(0);
                    let _ = acc.complete();
                    let m = acc.take_output();
                    // The first data frame (a tick) arrives right behind the ack.
                    let m = [&m[..], &[0, 0, 0, 0]].concat();
                    put_chunks(&mut to_ini, &m);
                    let _ = ini.handle(&m);
                }
                Ok(Some(InitiatorEvent::Connected(_))) | Ok(None) | Err(_) => done = true,
            }
        }
        write("handshake_acceptor", label, &to_acc);
        write("handshake_initiator", label, &to_ini);
    }
    // The missing-flags message from handshake.rs's test.
    let mut msg = vec![0, 0, b'N'];
    msg.extend_from_slice(&0u64.to_be_bytes());
    msg.extend_from_slice(&1u32.to_be_bytes());
    msg.extend_from_slice(&3u16.to_be_bytes());
    msg.extend_from_slice(b"a@h");
    let len = (msg.len() - 2) as u16;
    msg[..2].copy_from_slice(&len.to_be_bytes());
    let mut s = vec![0];
    put_chunks(&mut s, &msg);
    write("handshake_acceptor", "missing_flags", &s);
    let _ = OTP25_FLAGS;
}

fn epmd() {
    let info =
        NodeInfo { port: 9999, node_type: 77, protocol: 0, high: 6, low: 5, name: "probe".into(), extra: vec![] };
    let mut all = Vec::new();
    for (label, req) in [
        ("alive2", Request::Alive2(Alive2Req::new("probe", 9999, false))),
        ("port_please2", Request::PortPlease2 { name: "probe".into() }),
        ("names", Request::Names),
        ("dump", Request::Dump),
        ("kill", Request::Kill),
        ("stop", Request::Stop { name: "probe".into() }),
    ] {
        let Ok(b) = req.encode() else { continue };
        write("epmd", &format!("req_{label}"), &b);
        all.extend_from_slice(&b);
    }
    write("epmd", "req_all", &all);
    write("epmd", "alive2_x_resp", &Alive2Resp { result: 0, creation: 1_795_521_342 }.encode());
    write("epmd", "alive2_resp", &Alive2Resp { result: 1, creation: 99 }.encode_v5().unwrap_or_default());
    write("epmd", "port2_ok", &Port2Resp::Ok(info).encode().unwrap_or_default());
    write("epmd", "port2_err", &Port2Resp::Err(1).encode().unwrap_or_default());
    let names = NamesResp { epmd_port: 4369, entries: vec![("probe".into(), 9999), ("x at port 1".into(), 2)] };
    write("epmd", "names_resp", &names.encode().unwrap_or_default());
}

/// The `ingress` target's records: kind (0, 1: from the peer on lane 0 or 1; 2: sent by the
/// local node), u16 length, packet without its u32 prefix. The peer's node is `dev@h`, ours
/// `srv@h`: a session of pings, calls, handed pids, links, spawns and refused attacks.
fn ingress() {
    let flags = DFlags(OTP25_FLAGS & !(DFlags::DIST_HDR_ATOM_CACHE | DFlags::ATOM_CACHE | DFlags::HIDDEN_ATOM_CACHE));
    let dev = |n: u32| Pid { node: Atom::from("dev@h"), id: n, serial: 0, creation: 5 };
    let srv = |n: u32| Pid { node: Atom::from("srv@h"), id: n, serial: 0, creation: 6 };
    let dref = |n: u32| Ref { node: Atom::from("dev@h"), creation: 5, ids: vec![n, 0, 0] };
    let sref = |n: u32| Ref { node: Atom::from("srv@h"), creation: 6, ids: vec![n, 0, 0] };
    let call = |from: Pid, r: Ref, req: Term| {
        let tag = Term::List(vec![a("alias")], Box::new(Term::Ref(r)));
        Term::tuple([a("$gen_call"), Term::tuple([Term::Pid(from), tag]), req])
    };
    let rec = |kind: u8, c: &Control, payload: Option<&Term>, frag: usize| -> Vec<u8> {
        let (ctrl, pl) = encode_message(c, payload);
        let mut packets = Vec::new();
        frame_message(&mut packets, flags, 3, &ctrl, &pl, frag);
        let mut out = Vec::new();
        for p in packets {
            let body = &p[4..];
            out.push(kind);
            out.extend_from_slice(&(body.len() as u16).to_be_bytes());
            out.extend_from_slice(body);
        }
        out
    };
    let nk = || Atom::from("net_kernel");
    let kv = || Atom::from("kv");
    let session: Vec<(&str, Vec<u8>)> = vec![
        ("ping_monitor", rec(0, &Control::MonitorP { from: dev(1), to: ProcRef::Name(nk()), reference: dref(1) }, None, 0)),
        (
            "ping_call",
            rec(
                0,
                &Control::RegSend { from: dev(1), to: nk() },
                Some(&call(dev(1), dref(1), Term::tuple([a("is_auth"), a("dev@h")]))),
                0,
            ),
        ),
        (
            "disconnect",
            rec(
                0,
                &Control::RegSend { from: dev(1), to: nk() },
                Some(&call(dev(1), dref(2), Term::tuple([a("disconnect"), a("t@h")]))),
                0,
            ),
        ),
        ("kv_call", rec(0, &Control::RegSend { from: dev(1), to: kv() }, Some(&call(dev(1), dref(3), a("get"))), 0)),
        ("hand_pid", rec(2, &Control::SendSender { from: srv(2), to: dev(1) }, Some(&Term::Pid(srv(9))), 0)),
        ("send_handed", rec(1, &Control::SendSender { from: dev(1), to: srv(9) }, Some(&a("hi")), 0)),
        ("link_refused", rec(0, &Control::Link { from: dev(1), to: srv(9) }, None, 0)),
        ("local_link", rec(2, &Control::Link { from: srv(9), to: dev(1) }, None, 0)),
        ("exit_over_link", rec(0, &Control::Exit { from: dev(1), to: srv(9), reason: a("boom") }, None, 0)),
        ("local_monitor", rec(2, &Control::MonitorP { from: srv(2), to: ProcRef::Pid(dev(1)), reference: sref(4) }, None, 0)),
        (
            "down",
            rec(
                1,
                &Control::MonitorPExit { from: ProcRef::Pid(dev(1)), to: srv(2), reference: sref(4), reason: a("x") },
                None,
                0,
            ),
        ),
        (
            "local_spawn",
            rec(
                2,
                &Control::SpawnRequest {
                    req_id: sref(5),
                    from: srv(2),
                    group_leader: srv(3),
                    module: Atom::from("erpc"),
                    function: Atom::from("execute_call"),
                    arity: 4,
                    opts: Term::list([a("monitor"), a("link")]),
                },
                Some(&Term::list([Term::Ref(sref(6)), a("erlang"), a("node"), Term::Nil])),
                0,
            ),
        ),
        (
            "spawn_reply",
            rec(0, &Control::SpawnReply { req_id: sref(5), to: srv(2), flags: 3, result: Term::Pid(dev(7)) }, None, 0),
        ),
        (
            "rpc_refused",
            rec(
                0,
                &Control::SpawnRequest {
                    req_id: dref(8),
                    from: dev(1),
                    group_leader: dev(1),
                    module: Atom::from("erpc"),
                    function: Atom::from("execute_call"),
                    arity: 4,
                    opts: Term::list([a("monitor")]),
                },
                Some(&Term::list([Term::Ref(dref(9)), a("os"), a("cmd"), Term::list([Term::String(b"id".to_vec())])])),
                0,
            ),
        ),
        ("exit2", rec(0, &Control::Exit2 { from: dev(1), to: srv(9), reason: a("kill") }, None, 0)),
        ("group_leader", rec(0, &Control::GroupLeader { from: dev(1), to: srv(9) }, None, 0)),
        (
            "atoms",
            rec(0, &Control::RegSend { from: dev(1), to: kv() }, Some(&Term::tuple((0..20).map(|i| a(&format!("x{i}"))).collect::<Vec<_>>())), 0),
        ),
        (
            "fragmented",
            rec(1, &Control::RegSend { from: dev(1), to: kv() }, Some(&Term::binary(vec![7; 200])), 64),
        ),
        ("fun", rec(0, &Control::RegSend { from: dev(1), to: kv() }, Some(&Term::Export { module: Atom::from("os"), function: Atom::from("cmd"), arity: 1 }), 0)),
    ];
    let all: Vec<u8> = session.iter().flat_map(|(_, r)| r.clone()).collect();
    for sel in 0u8..4 {
        write("ingress", &format!("role{sel}_session"), &[&[sel][..], &all].concat());
        for (label, r) in &session {
            write("ingress", &format!("role{sel}_{label}"), &[&[sel][..], r].concat());
        }
    }
}

fn main() {
    etf_and_text();
    from_otp();
    dist();
    handshakes();
    epmd();
    ingress();
    for t in ["etf_term", "text_parse", "dist_packet", "handshake_acceptor", "handshake_initiator", "epmd", "ingress"] {
        let n = fs::read_dir(Path::new("corpus").join(t)).map(|d| d.count()).unwrap_or(0);
        println!("corpus/{t}: {n} files");
    }
}
