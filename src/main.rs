//! The `onnxsmith` binary: the command line of [`onnxsmith::cli`].

use std::process::ExitCode;

fn main() -> ExitCode {
    // Past the file size limit, a write should fail with an error we report and clean up
    // after, not kill the process (the default for SIGXFSZ).
    // SAFETY: setting a signal's disposition to "ignore" before any thread starts.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    ExitCode::from(onnxsmith::cli::main(std::env::args_os()))
}
