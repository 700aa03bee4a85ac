//! The tracing subscriber, set up once by `main`: [`wireleap_home::log`], shared with the
//! supervisor (timestamps and levels on stderr, `RELAY_LOG` / `RUST_LOG` filters,
//! `RELAY_LOG_FORMAT=json`, journald priorities under systemd). The daemon's stderr is the log
//! file when started in the background.

/// Installs the global subscriber. Later calls do nothing.
pub fn init() {
    wireleap_home::log::init("wireleap-relay");
}
