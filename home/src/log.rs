//! Logging for the relay and the supervisor, set up once by each `main`: `tracing` events on
//! stderr with a timestamp and a level.
//!
//! - The filter comes from `RELAY_LOG`, falling back to `RUST_LOG`, then `info`.
//! - `RELAY_LOG_FORMAT=json` writes one JSON object per line instead.
//! - Under systemd (stderr is the journal: `JOURNAL_STREAM` names it), each line starts with its
//!   syslog priority (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug), which journald turns
//!   into the entry's priority, so `journalctl -p warning` finds what matters; the journal keeps
//!   its own timestamp.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Installs the global subscriber for `program`. Later calls do nothing.
pub fn init(program: &'static str) {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let filter = var("RELAY_LOG")
        .or_else(|| var("RUST_LOG"))
        .unwrap_or_else(|| "info".to_owned());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false);
    let _ = if var("RELAY_LOG_FORMAT").as_deref() == Some("json") {
        builder.json().try_init()
    } else if stderr_is_the_journal() {
        // A panic's own text reaches the journal at the default priority (info); an error line
        // first makes it show under `journalctl -p err`.
        let print = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            tracing::error!("{}", panic_line(info.location(), info.payload()));
            print(info);
        }));
        builder
            .event_format(Prefixed {
                program,
                priority: true,
                inner: Format::default()
                    .without_time()
                    .with_target(false)
                    .with_ansi(false),
            })
            .try_init()
    } else {
        // The program's name first: the supervisor and its relays share one log file.
        builder
            .event_format(Prefixed {
                program,
                priority: false,
                inner: Format::default().with_target(false).with_ansi(ansi),
            })
            .try_init()
    };
}

/// Whether stderr is the systemd journal's stream (`JOURNAL_STREAM=<dev>:<ino>` of stderr).
fn stderr_is_the_journal() -> bool {
    use std::os::fd::AsFd as _;
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stat) = nix::sys::stat::fstat(std::io::stderr().as_fd()) else {
        return false;
    };
    stream == format!("{}:{}", stat.st_dev, stat.st_ino)
}

/// A panic in one line (journald gives each line its own priority): where, then what.
fn panic_line(location: Option<&std::panic::Location<'_>>, payload: &dyn std::any::Any) -> String {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned());
    let what = what.replace('\n', " ");
    match location {
        Some(at) => format!("panicked at {}:{}: {what}", at.file(), at.line()),
        None => format!("panicked: {what}"),
    }
}

/// The syslog priority of a level, as journald reads it at the start of a line.
#[must_use]
pub fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Lines that start with the program's name, and for journald with the priority:
/// `[<priority>]program: [time] LEVEL message fields`.
struct Prefixed<T> {
    program: &'static str,
    priority: bool,
    inner: Format<Full, T>,
}

impl<S, N, T> FormatEvent<S, N> for Prefixed<T>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    T: FormatTime,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if self.priority {
            write!(writer, "<{}>", priority(*event.metadata().level()))?;
        }
        write!(writer, "{}: ", self.program)?;
        self.inner.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_one_line_with_where_and_what() {
        let here = std::panic::Location::caller();
        let line = panic_line(Some(here), &String::from("bad\nthing"));
        assert_eq!(
            line,
            format!("panicked at {}:{}: bad thing", here.file(), here.line())
        );
        assert_eq!(panic_line(None, &"static"), "panicked: static");
        assert_eq!(panic_line(None, &42_u8), "panicked: (no message)");
    }

    #[derive(Clone, Default)]
    struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn journald_lines_start_with_their_priority() {
        assert_eq!(priority(Level::ERROR), 3);
        assert_eq!(priority(Level::DEBUG), 7);
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .event_format(Prefixed {
                program: "wireleap-relay-supervisor",
                priority: true,
                inner: Format::default()
                    .without_time()
                    .with_target(false)
                    .with_ansi(false),
            })
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(version = "0.9.0", "rolled back");
            tracing::info!("serving");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("<4>wireleap-relay-supervisor: ")
                && lines[0].contains("WARN")
                && lines[0].contains("rolled back")
                && lines[0].contains("version=\"0.9.0\""),
            "{text}"
        );
        assert!(
            lines[1].starts_with("<6>wireleap-relay-supervisor: "),
            "{text}"
        );
    }
}
