//! Writing to standard output and error without panicking: `shoal service ps | head -1` closes
//! the pipe early, and the CLI must then end quietly (exit 0), as docker's does, not with
//! "failed printing to stdout" and a backtrace. Every line the CLI prints goes through here.

use std::io::Write;

/// Writes formatted text to standard output; a closed pipe ends the process quietly.
pub fn stdout(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        gone(&e);
    }
}

/// Writes formatted text to standard error; a closed pipe ends the process quietly.
pub fn stderr(args: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    if let Err(e) = err.write_fmt(args) {
        gone(&e);
    }
}

fn gone(e: &std::io::Error) -> ! {
    // Nobody reads any more: that is how `| head` and `| grep -q` say they have enough.
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    // Anything else (a full disk behind a redirect) is worth one line, if stderr still works.
    let _ = writeln!(std::io::stderr(), "Error: cannot write output: {e}");
    std::process::exit(1);
}

/// `println!` that ends quietly on a closed pipe.
macro_rules! outln {
    () => { $crate::out::stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::out::stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` that ends quietly on a closed pipe.
macro_rules! out {
    ($($arg:tt)*) => { $crate::out::stdout(format_args!($($arg)*)) };
}

/// `eprintln!` that ends quietly on a closed pipe.
macro_rules! errln {
    ($($arg:tt)*) => { $crate::out::stderr(format_args!("{}\n", format_args!($($arg)*))) };
}
