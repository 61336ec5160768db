//! Standard output that its reader may close first (`keel status --watch | head -1`).
//!
//! `println!` panics when the pipe is closed; a command writing through [`outln!`] and
//! [`out!`] then ends quietly with status 0, as `cat` does, and any other failure to write
//! is an error of its own (status 1).

use std::io::{ErrorKind, Write};

/// Writes `text` to standard output and flushes it (see the module documentation).
pub(crate) fn write(text: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_fmt(text).and_then(|()| stdout.flush()) {
        Ok(()) => {}
        Err(error) if error.kind() == ErrorKind::BrokenPipe => std::process::exit(0),
        Err(error) => {
            eprintln!("error: cannot write to standard output: {error}");
            std::process::exit(1);
        }
    }
}

/// `print!` through [`write`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::stdout::write(format_args!($($arg)*))
    };
}

/// `println!` through [`write`].
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::stdout::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {out, outln};

/// `1 delivery`, `3 deliveries`: a count with its noun.
pub(crate) fn counted(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}
