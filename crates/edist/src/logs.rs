//! Log output: plain text or one JSON object per line (`--log-format json`), always on stderr.
//!
//! Colour (ANSI escapes) only when stderr is a terminal and `NO_COLOR` is unset, so that
//! `edist gateway 2> gw.log` and journald get plain lines; in JSON every line, the fatal error
//! that ends the process included, is one JSON object.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// Installs the subscriber. `EDIST_LOG` (an `EnvFilter`) wins over `default_filter`.
pub fn init(format: Format, default_filter: &str) {
    let filter = EnvFilter::try_from_env("EDIST_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        Format::Json => logs.json().init(),
        Format::Text => logs.with_ansi(colour).init(),
    }
}

/// Reports the error that ends the process: as a log event in JSON (so the stream stays
/// parseable), else as `edist: ...` on stderr.
pub fn fatal(format: Format, error: &anyhow::Error) {
    match format {
        Format::Json => tracing::error!("edist: {error:#}"),
        Format::Text => eprintln!("edist: {error:#}"),
    }
}
