//! Golden vectors against a real Erlang/OTP node.
//!
//! One `erl` run produces `term_to_binary/1,2` bytes and `~0tp` text for a list of terms (and
//! `float_to_list(F, [short])` for thousands of floats); the tests decode them, compare with
//! terms built in Rust, re-encode them byte for byte, and check the printer and parser against
//! OTP's text. A second `erl` run decodes terms encoded here and compares them (`=:=`) with the
//! same terms written in Erlang syntax by our printer, and checks OTP re-encodes them to the
//! same bytes.
//!
//! OTP 25's `term_to_binary/1` defaults to `minor_version` 1, which writes atoms as Latin-1
//! ATOM_EXT (tag 100) whenever they fit; the distribution and `minor_version` 2 write
//! SMALL_ATOM_UTF8_EXT / ATOM_UTF8_EXT, as our encoder does. So byte identity is checked against
//! the `minor_version` 2 bytes, and the default bytes are checked to decode to the same term.
//!
//! These tests need `erl` on the PATH (Debian/Ubuntu: `apt-get install erlang-base`); without it
//! they fail rather than skip.

use edist_proto::etf::{decode_versioned, encode, encode_versioned, parse, Atom, DecodeError, Limits, Term};
use num_bigint::BigInt;
use std::collections::HashMap;
use std::process::Command;
use std::sync::OnceLock;

/// Runs an Erlang expression sequence in a fresh `erl -noshell` and returns its stdout.
fn erl(body: &str) -> String {
    let script = format!(
        "try\n{body}\ncatch C:R:S -> io:format(standard_error, \"golden script failed: ~p~n\", [{{C, R, S}}]), \
         halt(2)\nend,\nhalt(0)."
    );
    let out = match Command::new("erl").args(["-noshell", "-eval", &script]).env("ERL_CRASH_DUMP_SECONDS", "0").output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`erl` was not found on the PATH: the golden ETF tests need a real Erlang/OTP node. \
             Install it (Debian/Ubuntu: `apt-get install erlang-base`) and rerun."
        ),
        Err(e) => panic!("cannot run `erl`: {e}"),
    };
    assert!(out.status.success(), "erl exited with {}:\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    match String::from_utf8(out.stdout) {
        Ok(s) => s,
        Err(e) => panic!("erl printed non-UTF-8 output: {e}"),
    }
}

const FORWARD: &str = r#"
Hex = fun(B) -> binary:encode_hex(B) end,
Show = fun(T) -> Hex(unicode:characters_to_binary(io_lib:format("~0tp", [T]))) end,
X = 42,
Y = node(),
Cases = [
  {atom_ascii, hello},
  {atom_latin1, 'h\x{e9}llo'},
  {atom_cjk, '\x{65E5}\x{672C}'},
  {atom_255, list_to_atom(lists:duplicate(255, $a))},
  {atom_255_cjk, list_to_atom(lists:duplicate(255, 16#65E5))},
  {atom_empty, ''},
  {atom_quoted, 'hello world'},
  {atom_reserved, 'end'},
  {int_0, 0}, {int_255, 255}, {int_256, 256}, {int_neg1, -1},
  {int_i32_min, -2147483648}, {int_i32_max, 2147483647}, {int_2p31, 2147483648},
  {int_neg_2p31_1, -2147483649},
  {int_i64_max, 9223372036854775807}, {int_i64_min, -9223372036854775808},
  {int_2p63, 1 bsl 63}, {int_2p64, 1 bsl 64}, {int_neg_2p100, -(1 bsl 100)},
  {int_2000_digits, list_to_integer(lists:duplicate(2000, $7))},
  {int_neg_2000_digits, -list_to_integer(lists:duplicate(2000, $7))},
  {float_0, 0.0}, {float_neg_0, -0.0}, {float_neg_1_5, -1.5}, {float_1e300, 1.0e300},
  {float_pi, math:pi()}, {float_tiny, 5.0e-324}, {float_1000, 1000.0},
  {bin_empty, <<>>}, {bin_abc, <<"abc">>}, {bin_bytes, <<0,1,2,255>>},
  {bin_utf8, <<"h\x{e9}llo"/utf8>>}, {bin_latin1, <<"h\x{e9}llo">>},
  {bin_100k, binary:copy(<<0,1,2,3,4,5,6,7>>, 12800)},
  {bits_3, <<1:3>>}, {bits_mixed, <<1,2,3:5>>}, {bits_15, <<16#7FFF:15>>},
  {tuple_empty, {}}, {tuple_pair, {ok, 1}}, {tuple_255, list_to_tuple(lists:seq(1, 255))},
  {tuple_300, list_to_tuple(lists:seq(1, 300))},
  {nil, []}, {list_nested, [a, [b, [c, [d]]], {e, [f]}, [[]]]},
  {improper, [a | b]}, {improper_long, [1, 2 | 3]}, {improper_nested, [[x | y] | {z}]},
  {string, "hello"}, {string_escapes, "a\"b\\c\n\t"}, {string_latin1, "h\x{e9}llo"},
  {string_65535, lists:duplicate(65535, $x)}, {string_70000, lists:duplicate(70000, $x)},
  {unicode_list, [1000, 2000]}, {list_bytes_and_more, [1, 2, 300]}, {list_negative, [-1]},
  {map_empty, #{}}, {map_small, #{a => 1, b => "two", 3 => [c]}},
  {map_nested, #{k => #{inner => {1, 2}}, [] => <<>>}},
  {map_100, maps:from_list([{K, integer_to_binary(K)} || K <- lists:seq(1, 100)])},
  {export, fun lists:map/2}, {export_quoted, fun 'A':'b c'/0},
  {pid, self()}, {port, hd(erlang:ports())}, {ref, make_ref()},
  {fun_free, fun() -> {X, Y} end},
  {mixed, {[1, 2.5, "s", <<"b">>], #{x => [{}]}, 'A', -7}}
],
lists:foreach(fun({N, T}) ->
    io:format("T ~s ~s ~s ~s~n",
              [N, Hex(term_to_binary(T)), Hex(term_to_binary(T, [{minor_version, 2}])), Show(T)])
  end, Cases),
Big = {lists:seq(1, 1000), binary:copy(<<"abc">>, 1000), lists:duplicate(500, hello)},
io:format("Z compressed ~s~n", [Hex(term_to_binary(Big, [compressed]))]),
io:format("Z compressed_9 ~s~n", [Hex(term_to_binary(Big, [{compressed, 9}, {minor_version, 2}]))]),
rand:seed(exsss, {17, 4, 2023}),
Gen = fun(I) ->
    case I rem 5 of
      0 -> <<R:64>> = <<(rand:uniform(1 bsl 64) - 1):64>>,
           try <<F:64/float>> = <<R:64>>, F catch _:_ -> none end;
      1 -> (rand:uniform() - 0.5) * math:pow(10, rand:uniform(60) - 30);
      2 -> float(rand:uniform(1 bsl 60)) * math:pow(2, rand:uniform(20) - 10);
      3 -> float(rand:uniform(1000000)) / math:pow(10, rand:uniform(12));
      %% Many exact ties between two shortest digit strings (Ryu rounds them to even).
      4 -> float(rand:uniform(1 bsl (40 + rand:uniform(12)))) + 0.125 * rand:uniform(7)
    end
  end,
Special = [math:pow(10, E) || E <- lists:seq(-30, 30)] ++ [float(1 bsl N) || N <- lists:seq(0, 64)]
  ++ [float((1 bsl 53) - 1), float(1 bsl 53), 9007199254740993.0, 4503599627370497.0,
      1801439850948198.5, 720575940379279.4, 1.0e22, 1.0e23, 2.2250738585072014e-308,
      1.7976931348623157e308, 0.1, 0.2, 0.30000000000000004, 1/3, 2/3, 123456.0, 1234567.0],
Floats = Special ++ [F || F <- lists:map(Gen, lists:seq(1, 5000)), is_float(F)],
lists:foreach(fun(F) -> io:format("F ~s ~s~n", [Hex(<<F:64/float>>), float_to_list(F, [short])]) end, Floats)
"#;

/// One term from the forward run.
struct Case {
    name: String,
    /// `term_to_binary(T)` (minor version 1: Latin-1 atoms).
    v1: Vec<u8>,
    /// `term_to_binary(T, [{minor_version, 2}])` (UTF-8 atoms, as the distribution).
    v2: Vec<u8>,
    /// `io_lib:format("~0tp", [T])`.
    text: String,
}

struct Forward {
    cases: Vec<Case>,
    compressed: Vec<(String, Vec<u8>)>,
    floats: Vec<(u64, String)>,
}

fn unhex(s: &str) -> Vec<u8> {
    match hex::decode(s) {
        Ok(b) => b,
        Err(e) => panic!("bad hex from erl ({e}): {s:.80}"),
    }
}

fn forward() -> &'static Forward {
    static FORWARD_RUN: OnceLock<Forward> = OnceLock::new();
    FORWARD_RUN.get_or_init(|| {
        let out = erl(FORWARD);
        let mut fwd = Forward { cases: Vec::new(), compressed: Vec::new(), floats: Vec::new() };
        for line in out.lines() {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts.as_slice() {
                ["T", name, v1, v2, text] => fwd.cases.push(Case {
                    name: (*name).to_owned(),
                    v1: unhex(v1),
                    v2: unhex(v2),
                    text: match String::from_utf8(unhex(text)) {
                        Ok(s) => s,
                        Err(e) => panic!("{name}: ~tp text is not UTF-8: {e}"),
                    },
                }),
                ["Z", name, bin] => fwd.compressed.push(((*name).to_owned(), unhex(bin))),
                ["F", bits, text] => {
                    let b: [u8; 8] = match unhex(bits).try_into() {
                        Ok(b) => b,
                        Err(_) => panic!("bad float line {line}"),
                    };
                    fwd.floats.push((u64::from_be_bytes(b), (*text).to_owned()));
                }
                _ => panic!("unexpected line from erl: {line:.200}"),
            }
        }
        assert!(fwd.cases.len() > 60, "erl produced only {} cases", fwd.cases.len());
        fwd
    })
}

fn case(name: &str) -> &'static Case {
    match forward().cases.iter().find(|c| c.name == name) {
        Some(c) => c,
        None => panic!("no case {name} from erl"),
    }
}

fn decode(bytes: &[u8]) -> Term {
    match decode_versioned(bytes, &Limits::default()) {
        Ok(t) => t,
        Err(e) => panic!("decode failed: {e} (first bytes {:?})", &bytes[..bytes.len().min(32)]),
    }
}

// ---- terms built in Rust ----------------------------------------------------------------------

fn a(s: &str) -> Term {
    Term::atom(s)
}
fn i(v: i64) -> Term {
    Term::Int(v)
}
fn big(s: &str) -> Term {
    match BigInt::parse_bytes(s.as_bytes(), 10) {
        Some(b) => Term::from_bigint(b),
        None => panic!("bad bignum {s}"),
    }
}
fn pow2(n: u32) -> BigInt {
    BigInt::from(1) << n
}
fn s(text: &str) -> Term {
    Term::String(text.as_bytes().to_vec())
}
fn ints(v: &[i64]) -> Term {
    Term::list(v.iter().map(|x| Term::Int(*x)).collect::<Vec<_>>())
}
fn improper(items: Vec<Term>, tail: Term) -> Term {
    Term::List(items, Box::new(tail))
}

/// The term each forward case denotes, for the cases whose value Rust knows exactly.
fn expected(name: &str) -> Option<Term> {
    Some(match name {
        "atom_ascii" => a("hello"),
        "atom_latin1" => a("héllo"),
        "atom_cjk" => a("日本"),
        "atom_255" => a(&"a".repeat(255)),
        "atom_255_cjk" => a(&"日".repeat(255)),
        "atom_empty" => a(""),
        "atom_quoted" => a("hello world"),
        "atom_reserved" => a("end"),
        "int_0" => i(0),
        "int_255" => i(255),
        "int_256" => i(256),
        "int_neg1" => i(-1),
        "int_i32_min" => i(i64::from(i32::MIN)),
        "int_i32_max" => i(i64::from(i32::MAX)),
        "int_2p31" => i(1 << 31),
        "int_neg_2p31_1" => i(-(1 << 31) - 1),
        "int_i64_max" => i(i64::MAX),
        "int_i64_min" => i(i64::MIN),
        "int_2p63" => Term::from_bigint(pow2(63)),
        "int_2p64" => Term::from_bigint(pow2(64)),
        "int_neg_2p100" => Term::from_bigint(-pow2(100)),
        "int_2000_digits" => big(&"7".repeat(2000)),
        "int_neg_2000_digits" => big(&format!("-{}", "7".repeat(2000))),
        "float_0" => Term::Float(0.0),
        "float_neg_0" => Term::Float(-0.0),
        "float_neg_1_5" => Term::Float(-1.5),
        "float_1e300" => Term::Float(1.0e300),
        "float_pi" => Term::Float(std::f64::consts::PI),
        "float_tiny" => Term::Float(5.0e-324),
        "float_1000" => Term::Float(1000.0),
        "bin_empty" => Term::binary([]),
        "bin_abc" => Term::binary(*b"abc"),
        "bin_bytes" => Term::binary([0, 1, 2, 255]),
        "bin_utf8" => Term::binary("héllo".as_bytes()),
        "bin_latin1" => Term::binary(*b"h\xe9llo"),
        "bin_100k" => Term::binary((0..102_400).map(|x| (x % 8) as u8).collect::<Vec<u8>>()),
        "bits_3" => Term::BitBinary { data: vec![0x20], bits: 3 },
        "bits_mixed" => Term::BitBinary { data: vec![1, 2, 24], bits: 5 },
        "bits_15" => Term::BitBinary { data: vec![0xff, 0xfe], bits: 7 },
        "tuple_empty" => Term::tuple([]),
        "tuple_pair" => Term::tuple([a("ok"), i(1)]),
        "tuple_255" => Term::tuple((1..=255).map(i).collect::<Vec<_>>()),
        "tuple_300" => Term::tuple((1..=300).map(i).collect::<Vec<_>>()),
        "nil" => Term::Nil,
        "list_nested" => Term::list([
            a("a"),
            Term::list([a("b"), Term::list([a("c"), Term::list([a("d")])])]),
            Term::tuple([a("e"), Term::list([a("f")])]),
            Term::list([Term::Nil]),
        ]),
        "improper" => improper(vec![a("a")], a("b")),
        "improper_long" => improper(vec![i(1), i(2)], i(3)),
        "improper_nested" => improper(vec![improper(vec![a("x")], a("y"))], Term::tuple([a("z")])),
        "string" => s("hello"),
        "string_escapes" => s("a\"b\\c\n\t"),
        "string_latin1" => Term::String(b"h\xe9llo".to_vec()),
        "string_65535" => Term::String(vec![b'x'; 65535]),
        "string_70000" => Term::String(vec![b'x'; 70000]),
        "unicode_list" => ints(&[1000, 2000]),
        "list_bytes_and_more" => ints(&[1, 2, 300]),
        "list_negative" => ints(&[-1]),
        "map_empty" => Term::Map(vec![]),
        "map_small" => Term::Map(vec![(i(3), Term::list([a("c")])), (a("a"), i(1)), (a("b"), s("two"))]),
        "map_nested" => Term::Map(vec![
            (a("k"), Term::Map(vec![(a("inner"), Term::tuple([i(1), i(2)]))])),
            (Term::Nil, Term::binary([])),
        ]),
        "map_100" => Term::Map((1..=100).map(|k| (i(k), Term::binary(k.to_string().into_bytes()))).collect()),
        "export" => Term::Export { module: Atom::from("lists"), function: Atom::from("map"), arity: 2 },
        "export_quoted" => Term::Export { module: Atom::from("A"), function: Atom::from("b c"), arity: 0 },
        "mixed" => Term::tuple([
            Term::list([i(1), Term::Float(2.5), s("s"), Term::binary(*b"b")]),
            Term::Map(vec![(a("x"), Term::list([Term::tuple([])]))]),
            a("A"),
            i(-7),
        ]),
        "compressed" | "compressed_9" => Term::tuple([
            Term::list((1..=1000).map(i).collect::<Vec<_>>()),
            Term::binary(b"abc".repeat(1000)),
            Term::list(vec![a("hello"); 500]),
        ]),
        _ => return None,
    })
}

/// Sorts map pairs (recursively) by key encoding, so maps compare regardless of order.
fn canon(t: &Term) -> Term {
    match t {
        Term::Map(pairs) => {
            let mut v: Vec<(Term, Term)> = pairs.iter().map(|(k, v)| (canon(k), canon(v))).collect();
            v.sort_by_key(|(k, _)| encode(k));
            Term::Map(v)
        }
        Term::Tuple(items) => Term::Tuple(items.iter().map(canon).collect()),
        Term::List(items, tail) => Term::List(items.iter().map(canon).collect(), Box::new(canon(tail))),
        other => other.clone(),
    }
}

fn contains(t: &Term, needle: &Term) -> bool {
    if t == needle {
        return true;
    }
    match t {
        Term::Tuple(items) => items.iter().any(|x| contains(x, needle)),
        Term::List(items, tail) => items.iter().any(|x| contains(x, needle)) || contains(tail, needle),
        Term::Map(pairs) => pairs.iter().any(|(k, v)| contains(k, needle) || contains(v, needle)),
        Term::Fun(f) => f.free_vars.iter().any(|x| contains(x, needle)),
        _ => false,
    }
}

const IDENTIFIERS: &[&str] = &["pid", "port", "ref", "fun_free"];

// ---- forward: OTP bytes -> Rust ----------------------------------------------------------------

#[test]
fn otp_terms_decode_to_the_expected_terms() {
    let mut checked = 0;
    for c in &forward().cases {
        if IDENTIFIERS.contains(&c.name.as_str()) {
            continue;
        }
        let Some(want) = expected(&c.name) else {
            panic!("case {} has no expected term", c.name);
        };
        let got2 = decode(&c.v2);
        let got1 = decode(&c.v1);
        assert_eq!(canon(&got2), canon(&want), "{} (minor_version 2)", c.name);
        assert_eq!(canon(&got1), canon(&want), "{} (minor_version 1)", c.name);
        if let (Term::Float(x), Term::Float(y)) = (&got2, &want) {
            assert_eq!(x.to_bits(), y.to_bits(), "{}: float bits", c.name);
        }
        checked += 1;
    }
    assert!(checked > 60);
}

#[test]
fn otp_bytes_reencode_byte_identically() {
    for c in &forward().cases {
        let t = decode(&c.v2);
        let again = encode_versioned(&t);
        assert!(
            again == c.v2,
            "{}: re-encoding differs\n otp:  {:02x?}\n ours: {:02x?}",
            c.name,
            head(&c.v2),
            head(&again)
        );
        // The default (minor_version 1) form differs only in atom tags.
        let t1 = decode(&c.v1);
        assert_eq!(encode_versioned(&t1), c.v2, "{}: minor_version 1 bytes re-encode to the utf8 form", c.name);
    }
}

fn head(b: &[u8]) -> &[u8] {
    &b[..b.len().min(64)]
}

#[test]
fn otp_uses_the_tags_we_expect() {
    // SMALL_ATOM_UTF8 for short atoms, ATOM_UTF8 when over 255 bytes; NEW_PID, NEW_PORT,
    // NEWER_REFERENCE, NEW_FUN, EXPORT; and ATOM_EXT under the default minor_version 1.
    assert_eq!(case("atom_ascii").v2, b"\x83\x77\x05hello");
    assert_eq!(case("atom_ascii").v1, b"\x83\x64\x00\x05hello");
    assert_eq!(case("atom_empty").v2, [131, 119, 0]);
    assert_eq!(&case("atom_255_cjk").v2[..4], [131, 118, 0x02, 0xfd]); // 765 bytes
    assert_eq!(case("atom_cjk").v1[1], 119, "non-Latin-1 atoms are UTF-8 even in minor_version 1");
    assert_eq!(case("pid").v2[1], 88);
    assert_eq!(case("port").v2[1], 89);
    assert_eq!(case("ref").v2[1], 90);
    assert_eq!(case("fun_free").v2[1], 112);
    assert_eq!(case("export").v2[1], 113);
    assert_eq!(case("string_65535").v2[1], 107);
    assert_eq!(case("string_70000").v2[1], 108);
    assert_eq!(case("int_2000_digits").v2[1], 111);
    assert_eq!(case("tuple_255").v2[1], 104);
    assert_eq!(case("tuple_300").v2[1], 105);
    assert_eq!(case("float_pi").v2[1], 70);
}

#[test]
fn otp_identifiers_have_the_expected_structure() {
    let node = Atom::from("nonode@nohost");
    let Term::Pid(pid) = decode(&case("pid").v2) else { panic!("pid case is not a pid") };
    assert_eq!(pid.node, node);
    assert_eq!(pid.serial, 0);
    assert_eq!(pid.creation, 0, "a non-distributed node has creation 0");
    assert!(pid.id > 0);

    let Term::Port(port) = decode(&case("port").v2) else { panic!("port case is not a port") };
    assert_eq!(port.node, node);
    assert_eq!(port.creation, 0);

    let Term::Ref(r) = decode(&case("ref").v2) else { panic!("ref case is not a ref") };
    assert_eq!(r.node, node);
    assert_eq!(r.ids.len(), 3);
    assert!(r.ids[0] < 1 << 18, "the first id word holds 18 bits");

    let Term::Fun(f) = decode(&case("fun_free").v2) else { panic!("fun case is not a fun") };
    assert_eq!(f.module, Atom::from("erl_eval"));
    assert_eq!(f.arity, 0);
    assert_eq!(f.pid.node, node);
    assert_eq!(i64::from(f.index), f.old_index);
    assert!(!f.free_vars.is_empty());
    // The environment holds the bindings X = 42 and Y = node().
    let x = Term::tuple([a("X"), i(42)]);
    let y = Term::tuple([a("Y"), a("nonode@nohost")]);
    assert!(f.free_vars.iter().any(|v| contains(v, &x)), "X = 42 not in {:?}", f.free_vars);
    assert!(f.free_vars.iter().any(|v| contains(v, &y)));

    // The v1 encoding (ATOM_EXT node names) decodes to the same values.
    for name in IDENTIFIERS {
        let c = case(name);
        assert_eq!(decode(&c.v1), decode(&c.v2), "{name}");
    }
}

#[test]
fn compressed_terms_decode() {
    let fwd = forward();
    assert_eq!(fwd.compressed.len(), 2);
    for (name, bin) in &fwd.compressed {
        assert_eq!(bin.get(1), Some(&80), "{name} is compressed");
        let want = expected(name);
        assert_eq!(Some(decode(bin)), want, "{name}");
        // The inflated size is announced up front; a smaller limit refuses it.
        let small = Limits { max_inflated: 1000, ..Limits::default() };
        assert!(matches!(decode_versioned(bin, &small), Err(DecodeError::InflateTooLarge(_))), "{name}");
        // Corrupting the zlib stream is an error, not a panic.
        let mut bad = bin.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x55;
        assert!(decode_versioned(&bad, &Limits::default()).is_err());
        bad.truncate(mid);
        assert!(decode_versioned(&bad, &Limits::default()).is_err());
    }
}

// ---- text: printer and parser against OTP's ~0tp ------------------------------------------------

/// How our printer deliberately differs from `~0tp` for a case: pids, ports and refs show the
/// node name where OTP shows its local node number 0.
fn otp_text_as_ours(name: &str, otp: &str) -> String {
    match name {
        "pid" => otp.replacen("<0.", "<nonode@nohost.", 1),
        "port" => otp.replacen("#Port<0.", "#Port<nonode@nohost.", 1),
        "ref" => otp.replacen("#Ref<0.", "#Ref<nonode@nohost.", 1),
        _ => otp.to_owned(),
    }
}

#[test]
fn printer_matches_otp_text() {
    for c in &forward().cases {
        if c.name == "map_100" {
            // OTP prints a large (hash) map in its own key order; compare as sets below.
            continue;
        }
        let ours = decode(&c.v2).to_string();
        assert_eq!(ours, otp_text_as_ours(&c.name, &c.text), "{}", c.name);
    }
}

#[test]
fn parser_reads_otp_text() {
    for c in &forward().cases {
        if IDENTIFIERS.contains(&c.name.as_str()) {
            assert!(parse(&c.text).is_err(), "{} has no term syntax", c.name);
            continue;
        }
        let parsed = match parse(&c.text) {
            Ok(t) => t,
            Err(e) => panic!("{}: cannot parse OTP's text {:.200}: {e}", c.name, c.text),
        };
        assert_eq!(canon(&parsed), canon(&decode(&c.v2)), "{}", c.name);
        assert_eq!(encode_versioned(&canon(&parsed)), encode_versioned(&canon(&decode(&c.v2))), "{}", c.name);
    }
}

#[test]
fn floats_print_like_otp_short() {
    let floats = &forward().floats;
    assert!(floats.len() > 4500, "only {} floats", floats.len());
    let mut bad = Vec::new();
    for (bits, otp) in floats {
        let f = f64::from_bits(*bits);
        let ours = Term::Float(f).to_string();
        if &ours != otp {
            bad.push(format!("{bits:016x}: otp {otp} ours {ours}"));
        }
        match parse(otp) {
            Ok(Term::Float(g)) if g.to_bits() == *bits => {}
            other => bad.push(format!("{bits:016x}: parse({otp}) = {other:?}")),
        }
    }
    assert!(bad.is_empty(), "{} of {} floats differ:\n{}", bad.len(), floats.len(), bad.join("\n"));
}

// ---- reverse: Rust bytes -> OTP -----------------------------------------------------------------

/// Terms built in Rust, encoded by us and checked by OTP. `true` when OTP must re-encode the
/// decoded term to exactly our bytes.
fn rust_terms() -> Vec<(&'static str, Term, bool)> {
    let node = Atom::from("b@host");
    let pid = edist_proto::etf::Pid { node: node.clone(), id: 84, serial: 3, creation: 0x1234_5678 };
    vec![
        ("atom", a("hello"), true),
        ("atom_unicode", a("héllo ☃ 日本"), true),
        ("atom_empty", a(""), true),
        ("atom_reserved", a("receive"), true),
        ("atom_255", a(&"z".repeat(255)), true),
        ("atom_255_cjk", a(&"本".repeat(255)), true),
        ("atom_escapes", a("a'b\"c\\d\ne\u{7f}\u{80}"), true),
        (
            "ints",
            Term::tuple([i(0), i(255), i(256), i(-1), i(-256), i(i64::from(i32::MAX)), i(i64::from(i32::MIN))]),
            true,
        ),
        ("ints_wide", Term::tuple([i(1 << 31), i(-(1 << 31) - 1), i(i64::MAX), i(i64::MIN), i(1 << 40)]), true),
        (
            "bigs",
            Term::tuple([
                Term::from_bigint(pow2(64)),
                Term::from_bigint(-pow2(100)),
                Term::from_bigint(pow2(63)),
                big(&"12345678901234567890".repeat(100)),
                big(&format!("-{}", "9".repeat(700))),
            ]),
            true,
        ),
        (
            "floats",
            Term::tuple([
                Term::Float(0.0),
                Term::Float(-1.5),
                Term::Float(1.0e300),
                Term::Float(5.0e-324),
                Term::Float(std::f64::consts::PI),
                Term::Float(0.1 + 0.2),
                Term::Float(1000.0),
                Term::Float(-2.5e-7),
                Term::Float(9007199254740993.0),
            ]),
            true,
        ),
        (
            "binaries",
            Term::tuple([
                Term::binary([]),
                Term::binary(*b"abc"),
                Term::binary("héllo".as_bytes()),
                Term::binary([0, 1, 2, 255]),
                Term::binary(*b"h\xe9llo"),
            ]),
            true,
        ),
        ("binary_70k", Term::binary((0..70_000u32).map(|x| (x * 7 % 251) as u8).collect::<Vec<u8>>()), true),
        (
            "bitstrings",
            Term::tuple([
                Term::BitBinary { data: vec![0x20], bits: 3 },
                Term::BitBinary { data: vec![1, 2, 24], bits: 5 },
                Term::BitBinary { data: vec![0xff, 0xfe], bits: 7 },
            ]),
            true,
        ),
        ("tuples", Term::tuple([Term::tuple([]), Term::tuple([Term::tuple([Term::tuple([])])])]), true),
        ("tuple_255", Term::tuple((0..255).map(i).collect::<Vec<_>>()), true),
        ("tuple_256", Term::tuple((0..256).map(i).collect::<Vec<_>>()), true),
        (
            "lists",
            Term::tuple([
                Term::Nil,
                Term::list([a("a"), Term::list([a("b"), Term::Nil])]),
                improper(vec![a("a")], a("b")),
                improper(vec![i(1), i(2)], i(3)),
                improper(vec![i(1)], Term::binary(*b"t")),
            ]),
            true,
        ),
        // A proper list of small integers is a string to OTP, however it was built.
        ("byte_list", ints(&[104, 105]), true),
        ("byte_list_max", Term::list(vec![i(120); 65535]), true),
        ("byte_list_65536", Term::list(vec![i(120); 65536]), true),
        (
            "strings",
            Term::tuple([
                s("hello"),
                s("a\"b\\c\n\t"),
                Term::String(b"h\xe9llo".to_vec()),
                Term::String(vec![0, 1, 2]),
            ]),
            true,
        ),
        ("string_70000", Term::String(vec![b'y'; 70000]), true),
        ("unicode_list", ints(&[1000, 2000]), true),
        ("mixed_list", ints(&[1, 2, 300, -1]), true),
        // Small maps: keys in Erlang term order, as OTP writes them.
        (
            "maps",
            Term::tuple([
                Term::Map(vec![]),
                Term::Map(vec![(i(3), Term::list([a("c")])), (a("a"), i(1)), (a("b"), s("two"))]),
                Term::Map(vec![
                    (a("k"), Term::Map(vec![(a("inner"), Term::tuple([i(1), i(2)]))])),
                    (Term::tuple([]), Term::Nil),
                    (Term::Nil, Term::binary([])),
                    (s("str"), Term::Float(1.5)),
                    (Term::binary(*b"bin"), a("v")),
                ]),
            ]),
            true,
        ),
        // A large map: OTP's own key order is its hash order, so only the value is compared.
        ("map_100", Term::Map((1..=100).map(|k| (i(k), Term::binary(k.to_string().into_bytes()))).collect()), false),
        (
            "exports",
            Term::tuple([
                Term::Export { module: Atom::from("lists"), function: Atom::from("map"), arity: 2 },
                Term::Export { module: Atom::from("A"), function: Atom::from("b c"), arity: 0 },
            ]),
            true,
        ),
        ("pid", Term::Pid(pid.clone()), true),
        ("port", Term::Port(edist_proto::etf::Port { node: node.clone(), id: 7, creation: 0x1234_5678 }), true),
        ("port_v4", Term::Port(edist_proto::etf::Port { node: node.clone(), id: 1 << 40, creation: 5 }), true),
        ("ref", Term::Ref(edist_proto::etf::Ref { node: node.clone(), creation: 9, ids: vec![1, 2, 3] }), true),
        ("ref_5", Term::Ref(edist_proto::etf::Ref { node: node.clone(), creation: 9, ids: vec![1, 2, 3, 4, 5] }), true),
        ("ids_nested", Term::tuple([Term::Pid(pid), Term::list([a("x")])]), true),
    ]
}

/// What the Erlang side compares a decoded term with: its Erlang text, or a type check for
/// terms without syntax.
fn erlang_expectation(name: &str, t: &Term) -> String {
    match t {
        Term::Pid(_) => "'$pid'".into(),
        Term::Port(_) => "'$port'".into(),
        Term::Ref(_) => "'$ref'".into(),
        Term::Fun(_) => "'$fun'".into(),
        Term::Tuple(items) if name == "ids_nested" => {
            assert!(matches!(items.first(), Some(Term::Pid(_))));
            "'$tuple'".into()
        }
        _ => t.to_string(),
    }
}

fn zlib(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    if let Err(e) = z.write_all(data) {
        panic!("zlib: {e}");
    }
    match z.finish() {
        Ok(v) => v,
        Err(e) => panic!("zlib: {e}"),
    }
}

/// `x`, compressed, compressed again.
fn nested_compression() -> Vec<u8> {
    let mut enc = encode(&a("x"));
    for _ in 0..2 {
        let mut outer = vec![80];
        outer.extend_from_slice(&(enc.len() as u32).to_be_bytes());
        outer.extend_from_slice(&zlib(&enc));
        enc = outer;
    }
    [vec![131], enc].concat()
}

const REVERSE: &str = r#"
{ok, Cases} = file:consult(Path),
lists:foreach(fun({Name, Hex, Exp}) ->
    B = binary:decode_hex(Hex),
    R = try binary_to_term(B) of
            T when Exp =:= '$badarg' -> {unexpectedly_decoded, T};
            T ->
                Same = case Exp of
                    '$pid' -> is_pid(T);
                    '$port' -> is_port(T);
                    '$ref' -> is_reference(T);
                    '$fun' -> is_function(T);
                    '$tuple' -> is_tuple(T) andalso is_pid(element(1, T)) andalso element(2, T) =:= [x];
                    _ -> T =:= Exp
                end,
                case {Same, term_to_binary(T, [{minor_version, 2}]) =:= B} of
                    {true, true} -> ok;
                    {true, false} -> bytes_differ;
                    {false, _} -> {mismatch, T}
                end
        catch
            _:_ when Exp =:= '$badarg' -> ok;
            C:E -> {badarg, C, E}
        end,
    io:format("~s ~0tp~n", [Name, R])
end, Cases)
"#;

#[test]
fn otp_decodes_rust_encodings() {
    let mut cases: Vec<(String, Vec<u8>, String, bool)> = rust_terms()
        .into_iter()
        .map(|(name, t, exact)| (name.to_owned(), encode_versioned(&t), erlang_expectation(name, &t), exact))
        .collect();
    // OTP's own pids, ports, refs and funs, decoded and re-encoded by us.
    for name in IDENTIFIERS {
        let t = decode(&case(name).v2);
        cases.push((format!("otp_{name}"), encode_versioned(&t), erlang_expectation(name, &t), true));
    }
    // Every forward case, decoded and re-encoded (values compared via our printer's text).
    for c in &forward().cases {
        if IDENTIFIERS.contains(&c.name.as_str()) {
            continue;
        }
        let t = decode(&c.v1);
        cases.push((format!("fwd_{}", c.name), encode_versioned(&t), t.to_string(), true));
    }

    // Bytes both sides must refuse: a compressed term inside a compressed term.
    let nested = nested_compression();
    assert!(matches!(decode_versioned(&nested, &Limits::default()), Err(DecodeError::UnknownTag { tag: 80, .. })));
    cases.push(("nested_compression".into(), nested, "'$badarg'".into(), true));

    let mut file = String::from("%% -*- coding: utf-8 -*-\n");
    for (name, bytes, exp, _) in &cases {
        file.push_str(&format!("{{'{name}', <<\"{}\">>, {exp}}}.\n", hex::encode_upper(bytes)));
    }
    let path = std::env::temp_dir().join(format!("edist-golden-{}.terms", std::process::id()));
    if let Err(e) = std::fs::write(&path, file) {
        panic!("cannot write {}: {e}", path.display());
    }
    let out = erl(&format!("Path = \"{}\",\n{REVERSE}", path.display()));
    let _ = std::fs::remove_file(&path);

    let results: HashMap<&str, &str> = out.lines().filter_map(|l| l.split_once(' ')).collect();
    let mut failures = Vec::new();
    for (name, _, exp, exact) in &cases {
        match results.get(name.as_str()) {
            Some(&"ok") => {}
            Some(&"bytes_differ") if !exact => {}
            Some(r) => failures.push(format!("{name}: {r:.300} (expected {exp:.200})")),
            None => failures.push(format!("{name}: no result from erl")),
        }
    }
    assert_eq!(results.len(), cases.len(), "erl output:\n{out:.2000}");
    assert!(
        failures.is_empty(),
        "OTP disagrees on {} of {} terms:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
