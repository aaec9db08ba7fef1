//! Lines for a person or a pipe, on stdout and stderr, for `sae` and `sae-bench`: a reader
//! that went away early (`sae diff | head -1`) never turns into a panic.

use std::io::Write as _;

use crate::error::{Error, Result};

/// Writes `text` and a newline to stdout. When the reader has gone (EPIPE: Rust ignores
/// SIGPIPE, so the write fails instead of killing the process) the rest is dropped and
/// `Ok` returned: the command then ends with status 0, as its result was computed and its
/// files written before printing. Any other write error (a full disk under `> file`) is an
/// error naming stdout.
pub fn print_stdout(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Error::io("<stdout>", e)),
        Ok(()) => Ok(()),
    }
}

/// Writes a line to stderr; a closed stderr drops it (a note must never end a command).
pub fn print_stderr(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}
