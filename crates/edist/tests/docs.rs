//! The command lines in the docs work as written.
//!
//! * Every `erl` and `iex` line of a shell snippet (```sh blocks, and inline code that shows
//!   `erl ...` or `-kernel ...`) is run through a real `bash`, with `erl` and `iex` standing in
//!   to print the arguments they would get: every `-kernel`/`-stdlib`/`-sasl` setting must
//!   arrive as a `Key Value` pair whose value is an Erlang term. (Unquoted, `{127,0,0,1}` is
//!   brace-expanded by the shell into `127 0 0 1` and the node fails with `badarg`.)
//! * Every `edist` line's subcommand and flags are accepted (`edist --parse-only`).
//! * `vm.args` blocks and the examples' `vm.args` templates (read by `erl` itself, no shell)
//!   follow the same rule.

use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};

const EDIST: &str = env!("CARGO_BIN_EXE_edist");

/// Stand-ins: `erl`/`iex` print their arguments NUL-separated; `edist erl-flags` prints the
/// plug's flags; any other `edist` call only checks its command line.
const PRELUDE: &str = r#"
erl() { printf 'erl\0'; printf '%s\0' "$@"; printf '\n'; }
iex() { printf 'iex\0'; printf '%s\0' "$@"; printf '\n'; }
edist() {
  if [ "$1" = erl-flags ] && [ "$#" = 1 ]; then echo "-epmd_module edist_epmd -start_epmd false -pa /tmp/edist-plug";
  else "$EDIST_BIN" --parse-only "$@" >/dev/null || { echo "edist $*: refused" >&2; exit 3; }; fi
}
hostname() { echo host; }
ssh() { shift; "$@"; }
"#;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// README.md, docs/*.md, examples/*/README.md.
fn markdown_files() -> Result<Vec<PathBuf>> {
    let root = repo();
    let mut files = vec![root.join("README.md")];
    for dir in ["docs", "examples"] {
        for e in std::fs::read_dir(root.join(dir))? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "md") {
                files.push(p);
            } else if p.join("README.md").exists() {
                files.push(p.join("README.md"));
            }
        }
    }
    files.sort();
    Ok(files)
}

/// What a snippet is.
#[derive(Debug, PartialEq)]
enum Kind {
    /// A shell command line.
    Shell,
    /// A `vm.args` line: flags as `erl` reads them from a file, no shell in between.
    VmArgs,
}

/// (file:line, kind, text) of every snippet worth checking in `md`.
fn snippets(path: &Path, md: &str) -> Vec<(String, Kind, String)> {
    let mut out = vec![];
    let mut fence: Option<(String, Vec<(usize, String)>)> = None;
    let at = |n: usize| format!("{}:{}", path.display(), n + 1);
    for (n, line) in md.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(info) = trimmed.strip_prefix("```") {
            match fence.take() {
                None => fence = Some((info.trim().to_string(), vec![])),
                Some((info, lines)) => {
                    let shell = matches!(info.as_str(), "sh" | "bash" | "shell");
                    let vm_args = info.is_empty()
                        && !lines.is_empty()
                        && lines.iter().all(|(_, l)| l.trim().is_empty() || l.trim_start().starts_with('-'));
                    for (n, l) in lines {
                        if shell {
                            out.push((at(n), Kind::Shell, l));
                        } else if vm_args && !l.contains("...") && !l.trim().is_empty() {
                            out.push((at(n), Kind::VmArgs, l.trim().to_string()));
                        }
                    }
                }
            }
            continue;
        }
        if let Some((_, lines)) = &mut fence {
            lines.push((n, line.to_string()));
            continue;
        }
        // Inline code: `...` spans that show erl flags (not those with a placeholder, `N`).
        let placeholder = |w: &str| w.chars().all(|c| c.is_ascii_uppercase() || c == '_');
        for (i, span) in line.split('`').enumerate() {
            // (`-kernel net_ticktime` alone names a flag; with a value it shows one.)
            let shows_flags =
                span.starts_with("erl ") || (span.starts_with("-kernel ") && span.split_whitespace().count() >= 3);
            if i % 2 == 1 && shows_flags && !span.split_whitespace().any(placeholder) {
                let cmd = if span.starts_with('-') { format!("erl {span}") } else { span.to_string() };
                out.push((at(n), Kind::Shell, cmd));
            }
        }
    }
    out
}

/// The command a shell line runs, past `ssh HOST`, `export` and `VAR=value` prefixes.
fn command_word(line: &str) -> Option<&str> {
    let mut words = line.split_whitespace().peekable();
    loop {
        match *words.peek()? {
            "ssh" => {
                words.next();
                words.next();
            }
            w if w.contains('=') && !w.starts_with('-') => {
                words.next();
            }
            _ => return words.next(),
        }
    }
}

/// Checks the flags `erl` would get: `-kernel Key Value ...` pairs with Erlang terms as values.
fn check_erl_args(args: &[String]) -> Result<()> {
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if !matches!(a.as_str(), "-kernel" | "-stdlib" | "-sasl") {
            continue;
        }
        let params: Vec<&String> = args[i..].iter().take_while(|p| !p.starts_with('-')).collect();
        i += params.len();
        ensure!(!params.is_empty() && params.len().is_multiple_of(2), "{a} {params:?}: not Key Value pairs");
        for pair in params.chunks(2) {
            let (key, value) = (pair[0], pair[1]);
            let key_ok = key.starts_with(|c: char| c.is_ascii_lowercase())
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            ensure!(key_ok, "{a} {key} {value}: {key:?} is not an application parameter name");
            edist_proto::etf::text::parse(value)
                .map_err(|e| anyhow::anyhow!("{a} {key} {value}: {value:?} is not an Erlang term: {e}"))?;
        }
    }
    Ok(())
}

/// Runs a shell line with the stand-ins; returns the argument lists `erl` got (`iex --erl`
/// flags included).
fn run_shell(line: &str, cwd: &Path) -> Result<Vec<Vec<String>>> {
    let line = line.trim_end().trim_end_matches('&');
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("{PRELUDE}\n{line}"))
        .env("EDIST_BIN", EDIST)
        .current_dir(cwd)
        .output()
        .context("running bash")?;
    if !out.status.success() {
        bail!("exit {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    let mut calls = vec![];
    for call in out.stdout.split(|b| *b == b'\n').filter(|c| c.contains(&0)) {
        let words: Vec<String> = call
            .split(|b| *b == 0)
            .filter(|w| !w.is_empty())
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect();
        let Some((prog, args)) = words.split_first() else { continue };
        match prog.as_str() {
            "erl" => calls.push(args.to_vec()),
            "iex" => {
                // iex --erl "FLAGS": the flags reach erl split on whitespace.
                let mut erl = vec![];
                let mut it = args.iter();
                while let Some(a) = it.next() {
                    if a == "--erl" {
                        erl.extend(it.next().map(|f| f.split_whitespace().map(str::to_owned)).into_iter().flatten());
                    }
                }
                calls.push(erl);
            }
            _ => {}
        }
    }
    Ok(calls)
}

#[test]
fn the_docs_command_lines_work_as_written() -> Result<()> {
    let cwd = std::env::temp_dir().join(format!("edist-docs-{}", std::process::id()));
    std::fs::create_dir_all(cwd.join("src"))?;
    let mut failures = vec![];
    let mut checked = 0;
    for file in markdown_files()? {
        let md = std::fs::read_to_string(&file)?;
        let rel = file.strip_prefix(repo()).unwrap_or(&file).to_path_buf();
        for (at, kind, text) in snippets(&rel, &md) {
            let result = match kind {
                Kind::VmArgs => check_erl_args(&text.split_whitespace().map(str::to_owned).collect::<Vec<_>>()),
                Kind::Shell => match command_word(&text) {
                    Some("erl" | "iex" | "edist") => {
                        run_shell(&text, &cwd).and_then(|calls| calls.iter().try_for_each(|c| check_erl_args(c)))
                    }
                    _ => continue,
                },
            };
            checked += 1;
            if let Err(e) = result {
                failures.push(format!("{at}: {text}\n    {e:#}"));
            }
        }
    }
    // The examples' vm.args templates (`## ` comments; `${VAR}` filled in at release start).
    for file in ["examples/mix/rel/vm.args.eex", "examples/rebar3/config/vm.args.src"] {
        let text = std::fs::read_to_string(repo().join(file)).with_context(|| file.to_string())?;
        for (n, line) in text.lines().enumerate().filter(|(_, l)| l.starts_with('-') && !l.contains("${")) {
            checked += 1;
            if let Err(e) = check_erl_args(&line.split_whitespace().map(str::to_owned).collect::<Vec<_>>()) {
                failures.push(format!("{file}:{}: {line}\n    {e:#}", n + 1));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&cwd);
    assert!(checked >= 20, "only {checked} snippets found: is the extraction broken?");
    assert!(failures.is_empty(), "doc snippets that do not work as written:\n{}", failures.join("\n"));
    Ok(())
}

#[test]
fn the_check_catches_unquoted_braces_and_unknown_flags() -> Result<()> {
    let cwd = std::env::temp_dir();
    let calls = run_shell("erl -kernel inet_dist_use_interface {127,0,0,1} -sname a", &cwd)?;
    assert!(check_erl_args(&calls[0]).is_err(), "{calls:?}");
    let calls = run_shell("erl $(edist erl-flags) -kernel inet_dist_use_interface '{127,0,0,1}'", &cwd)?;
    check_erl_args(&calls[0])?;
    assert!(calls[0].contains(&"-epmd_module".to_string()));
    let calls = run_shell(r#"iex --erl "$(edist erl-flags) -kernel net_ticktime 20" --sname a"#, &cwd)?;
    check_erl_args(&calls[0])?;
    assert!(calls[0].contains(&"net_ticktime".to_string()));
    assert!(run_shell("edist status --gateway 127.0.0.1:4370 --json", &cwd).is_ok());
    assert!(run_shell("edist status --no-such-flag", &cwd).is_err());
    assert!(run_shell("ssh host-a edist reload", &cwd).is_ok());
    assert_eq!(command_word("ssh h EDIST_LOG=debug edist gateway"), Some("edist"));
    let md = "x `-kernel a {1,2}` y\n```\n-kernel b true\n-sname n\n```\n```sh\nerl -sname a\n```\n";
    let s = snippets(Path::new("t.md"), md);
    assert_eq!(s.len(), 4, "{s:?}");
    assert_eq!((s[1].1 == Kind::VmArgs, s[1].2.as_str()), (true, "-kernel b true"));
    Ok(())
}
