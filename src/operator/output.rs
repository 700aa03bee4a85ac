//! A command's output on stdout. `println!` panics when stdout is a pipe whose reader has gone
//! (`wireleap-relay status | head -1`); a Go program, the reference, is ended by SIGPIPE there
//! instead. [`out!`](crate::out) and [`outp!`](crate::outp) never end a command in the middle of
//! its work (a rollback half done, a withdrawal sent): once stdout fails they write nothing more,
//! and the command finishes; [`exit_code`] then turns its success into 141 (128 + SIGPIPE, what a
//! shell reports for a reader that went away) or 1 (any other error, said once on stderr). The
//! daemon does not use them: nothing on its stdout may change how it ends.

use std::io::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};

/// 0 while stdout works; else the exit code its failure calls for.
static FAILED: AtomicU8 = AtomicU8::new(0);

/// Writes `args` (and a newline with `newline`) to stdout; see the module docs.
pub fn write(args: std::fmt::Arguments<'_>, newline: bool) {
    if FAILED.load(Ordering::Relaxed) != 0 {
        return;
    }
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| {
            if newline {
                out.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| out.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            FAILED.store(141, Ordering::Relaxed)
        }
        Err(e) => {
            eprintln!("error: could not write to stdout: {e}");
            FAILED.store(1, Ordering::Relaxed);
        }
    }
}

/// The command's exit code `code`, or, when it succeeded but its output could not all be
/// written, 141 (the reader went away) or 1.
#[must_use]
pub fn exit_code(code: u8) -> u8 {
    match FAILED.load(Ordering::Relaxed) {
        0 => code,
        failed if code == 0 => failed,
        _ => code,
    }
}

/// `println!` for a command's output (see [`crate::operator::output`]).
#[macro_export]
macro_rules! out {
    () => {
        $crate::operator::output::write(format_args!(""), true)
    };
    ($($arg:tt)*) => {
        $crate::operator::output::write(format_args!($($arg)*), true)
    };
}

/// `print!` for a command's output (see [`crate::operator::output`]).
#[macro_export]
macro_rules! outp {
    ($($arg:tt)*) => {
        $crate::operator::output::write(format_args!($($arg)*), false)
    };
}
