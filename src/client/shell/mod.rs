//! The `ferry>` shell: interactive on a terminal (line editing, history, Tab completion),
//! batch (one command per line, stop at the first failure) otherwise. Results go to stdout;
//! prompts, progress and errors to stderr.
//!
//! - `commands`: parsing and running one command line; the help texts.
//! - `complete`: Tab completion of command names, local and remote paths.

mod commands;
mod complete;

use std::io::BufRead;
use std::path::PathBuf;

use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;

pub use commands::{COMMANDS, Flow};

use super::ops::{OpError, Session};
use super::{EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE};
use crate::sanitize::for_terminal;

/// The prompt of the interactive shell.
pub const PROMPT: &str = "ferry> ";

/// A shell over one logged-in session.
#[derive(Debug)]
pub struct Shell {
    session: Session,
}

impl Shell {
    /// Wraps a session.
    pub fn new(session: Session) -> Self {
        Shell { session }
    }

    /// Reads commands from a terminal with line editing, history and completion until quit
    /// or Ctrl-D. Errors are printed and the session goes on, unless the connection is gone.
    pub fn run_interactive(mut self, history: Option<PathBuf>) -> u8 {
        self.session.catch_interrupts(false);
        let config = rustyline::Config::builder()
            .completion_type(rustyline::CompletionType::List)
            .auto_add_history(false)
            .max_history_size(5000)
            .map(|b| b.build())
            .unwrap_or_default();
        let helper = complete::Helper::new(self.session.handle().clone());
        let mut editor: rustyline::Editor<complete::Helper, DefaultHistory> =
            match rustyline::Editor::with_config(config) {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("ferry: cannot start line editor: {e}");
                    return EXIT_FAILED;
                }
            };
        editor.set_helper(Some(helper));
        if let Some(h) = &history {
            let _ = editor.load_history(h);
        }
        let mut status = EXIT_OK;
        loop {
            // The completer borrows the connection while the prompt waits.
            if let Some(h) = editor.helper_mut() {
                h.lend(
                    self.session.take_connection(),
                    &self.session.cwd,
                    self.session.generation,
                );
            }
            let line = editor.readline(PROMPT);
            if let Some(h) = editor.helper_mut() {
                self.session.put_back(h.take_back());
            }
            let line = match line {
                Ok(l) => l,
                Err(ReadlineError::Interrupted) => continue,
                Err(ReadlineError::Eof) => break,
                Err(e) => {
                    eprintln!("ferry: {e}");
                    status = EXIT_FAILED;
                    break;
                }
            };
            if !line.trim().is_empty() {
                let _ = editor.add_history_entry(line.as_str());
            }
            self.session.begin();
            let result = commands::execute(&mut self.session, &line);
            self.session.end();
            match result {
                Ok(Flow::Continue) => {}
                Ok(Flow::Quit) => break,
                Err(e) => {
                    print_error(&e);
                    if !self.session.connected() {
                        status = e.exit_code();
                        break;
                    }
                }
            }
        }
        if let Some(h) = &history {
            if let Some(dir) = h.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            if editor.save_history(h).is_ok() {
                // Paths and names you typed are nobody else's business.
                let _ = crate::platform::set_path_mode(h, 0o600);
            }
        }
        self.session.close();
        status
    }

    /// Runs one command per line from `input` (as `sftp -b` does): echoes nothing but
    /// results, stops at the first failed command unless its line starts with `-`, and
    /// returns the exit status. Ctrl-C cancels the running command and ends the batch.
    pub fn run_batch(mut self, input: impl BufRead) -> u8 {
        self.session.catch_interrupts(true);
        for line in input.lines() {
            let line = match line {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("ferry: reading commands: {e}");
                    self.session.close();
                    return EXIT_USAGE;
                }
            };
            let trimmed = line.trim_start();
            let (tolerant, command) = match trimmed.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, trimmed),
            };
            self.session.begin();
            let result = commands::execute(&mut self.session, command);
            let interrupted = self.session.interrupted();
            self.session.end();
            match result {
                Ok(Flow::Continue) if !interrupted => {}
                Ok(Flow::Continue) => {
                    eprintln!("ferry: {}: interrupted", for_terminal(command.trim()));
                    self.session.close();
                    return EXIT_INTERRUPTED;
                }
                Ok(Flow::Quit) => break,
                Err(e) => {
                    eprintln!(
                        "ferry: {}: {}",
                        for_terminal(command.trim()),
                        e.for_terminal()
                    );
                    let stop = !tolerant
                        || e.is_fatal()
                        || interrupted
                        || matches!(e, OpError::Interrupted)
                        || !self.session.connected();
                    if stop {
                        self.session.close();
                        return e.exit_code();
                    }
                }
            }
        }
        self.session.close();
        EXIT_OK
    }
}

/// Runs one command line on a session (the one-shot `ferry ls` uses this).
pub fn execute_line(session: &mut Session, line: &str) -> Result<(), OpError> {
    commands::execute(session, line).map(|_| ())
}

fn print_error(e: &OpError) {
    eprintln!("ferry: {}", e.for_terminal());
}
