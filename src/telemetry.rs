//! The tracing subscriber, set up once by `main`.
//!
//! The filter comes from `RELAY_LOG`, falling back to `RUST_LOG`, then `info`.
//! `RELAY_LOG_FORMAT=json` switches to one JSON object per line. Logs go to stderr (the daemon's
//! stderr is the log file when started in the background).

use tracing_subscriber::EnvFilter;

use crate::home::Environment;

/// Installs the global subscriber. Later calls do nothing.
pub fn init(env: &dyn Environment) {
    let filter = env
        .var("RELAY_LOG")
        .or_else(|| env.var("RUST_LOG"))
        .unwrap_or_else(|| "info".to_owned());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let _ = if env.var("RELAY_LOG_FORMAT").as_deref() == Some("json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
