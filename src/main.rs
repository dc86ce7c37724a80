//! The `ferry` binary: parse the command line, run it, print any error chain once.

use std::process::ExitCode;

use clap::Parser;

/// First of all, even before Rust's runtime sets itself up: `ferry serve` must survive a
/// SIGHUP sent while it starts up, so SIGHUP is held (blocked) from the first instruction of
/// this program's own code until [`ferry::cli::run`] lets it through. An ELF initialiser runs
/// after the C library is ready and before `main`.
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static HOLD_SIGHUP_AT_LOAD: extern "C" fn() = {
    extern "C" fn hold() {
        ferry::cli::hold_sighup();
    }
    hold
};

fn main() -> ExitCode {
    // Elsewhere (no ELF initialisers) as early as `main` allows; a second block is harmless.
    ferry::cli::hold_sighup();
    let cli = match ferry::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // `get`, `put` and `ls` with --json answer a usage error in JSON too.
            if e.use_stderr() {
                let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
                if let Some(json) = ferry::cli::usage_failure_json(&args, &e.to_string()) {
                    println!("{json}");
                }
            }
            e.exit()
        }
    };
    match ferry::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            // A closed stdout (e.g. `ferry user list | head -1`) is not a failure.
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            eprintln!("ferry: {e:#}");
            ExitCode::FAILURE
        }
    }
}
