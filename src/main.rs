//! The `ferry` binary: parse the command line, run it, print any error chain once.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
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
