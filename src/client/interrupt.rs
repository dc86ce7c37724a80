//! Ctrl-C (SIGINT) while a command runs: it cancels that command, cleanly, instead of killing
//! the process. Between commands, batch mode and one-shots exit; the interactive shell never
//! sees SIGINT at its prompt (the line editor reads Ctrl-C as a key).
//!
//! Once a handler is installed the default "terminate" action is gone for good, so the
//! handler itself decides: a command running -> cancel its token; a second SIGINT before the
//! command noticed the first, or idle and not interactive -> exit with
//! [`EXIT_INTERRUPTED`](super::EXIT_INTERRUPTED).

use std::sync::{Arc, Mutex};

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
struct State {
    token: CancellationToken,
    busy: bool,
}

/// The SIGINT listener of a session.
#[derive(Debug, Clone)]
pub struct Interrupts {
    state: Arc<Mutex<State>>,
}

impl Interrupts {
    /// Installs the handler on `handle`'s runtime. With `exit_when_idle`, a SIGINT while no
    /// command runs ends the process (batch mode and one-shots).
    pub fn install(handle: &Handle, exit_when_idle: bool) -> Interrupts {
        let state = Arc::new(Mutex::new(State {
            token: CancellationToken::new(),
            busy: false,
        }));
        let shared = Arc::clone(&state);
        let _guard = handle.enter();
        match crate::platform::interrupts() {
            Ok(mut sig) => {
                handle.spawn(async move {
                    while sig.recv().await.is_some() {
                        let Ok(s) = shared.lock() else { return };
                        if s.busy && s.token.is_cancelled() {
                            // A second Ctrl-C while the first is still being honoured: the
                            // server may not be answering. Leave now; what was half done is
                            // a hidden partial on either side, never a final name.
                            eprintln!("ferry: interrupted again; quitting");
                            std::process::exit(i32::from(super::EXIT_INTERRUPTED));
                        }
                        if s.busy || !exit_when_idle {
                            s.token.cancel();
                        } else {
                            eprintln!("ferry: interrupted");
                            std::process::exit(i32::from(super::EXIT_INTERRUPTED));
                        }
                    }
                });
            }
            Err(e) => eprintln!("ferry: cannot catch Ctrl-C ({e}); it will end the program"),
        }
        Interrupts { state }
    }

    /// Marks a command as running and returns its token, which a SIGINT cancels. A SIGINT
    /// that arrived while idle in the interactive shell is forgotten here.
    pub fn begin(&self) -> CancellationToken {
        let Ok(mut s) = self.state.lock() else {
            return CancellationToken::new();
        };
        if s.token.is_cancelled() && !s.busy {
            s.token = CancellationToken::new();
        }
        s.busy = true;
        s.token.clone()
    }

    /// The command finished; a cancelled token is replaced for the next one.
    pub fn end(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.busy = false;
            if s.token.is_cancelled() {
                s.token = CancellationToken::new();
            }
        }
    }
}
