//! A command's output on stdout. `println!` panics when stdout is a pipe whose reader has gone
//! (`wireleap-relay status | head -1`); a Go program, the reference, is ended by SIGPIPE there
//! instead. [`out!`](crate::out) and [`outp!`](crate::outp) end the command quietly with 141
//! (128 + SIGPIPE, what a shell reports for it), and any other error writing stdout with a line
//! on stderr and 1. The daemon does not use them: nothing on its stdout may end it.

use std::io::Write as _;

/// Writes `args` (and a newline with `newline`) to stdout; see the module docs.
pub fn write(args: std::fmt::Arguments<'_>, newline: bool) {
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
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(141),
        Err(e) => {
            eprintln!("error: could not write to stdout: {e}");
            std::process::exit(1);
        }
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
