//! Tab completion: command names first, then local paths for `put`/`lcd`/`lls` and remote
//! paths for the rest. Remote directories are listed once per session and cached until a
//! command that may change the tree runs (the session's generation moves on).

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;

use rustyline::completion::{Completer, FilenameCompleter, Pair};
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{Context, Result};
use tokio::runtime::Handle;

use super::commands::command_names;
use crate::client::connection::Connection;
use crate::client::paths;
use crate::protocol::EntryKind;

/// Commands whose arguments are local paths.
const LOCAL_COMMANDS: &[&str] = &["put", "reput", "lcd", "lls"];

/// The line editor's helper.
pub struct Helper {
    handle: Handle,
    /// The session's connection, lent while the prompt waits (completion runs then).
    conn: RefCell<Option<Connection>>,
    cwd: String,
    generation: u64,
    /// Remote directory -> (name, is a directory), sorted.
    cache: RefCell<HashMap<String, Vec<(String, bool)>>>,
    files: FilenameCompleter,
}

impl Helper {
    /// A helper that completes remote paths through `handle`'s runtime.
    pub fn new(handle: Handle) -> Helper {
        Helper {
            handle,
            conn: RefCell::new(None),
            cwd: "/".into(),
            generation: 0,
            cache: RefCell::new(HashMap::new()),
            files: FilenameCompleter::new(),
        }
    }

    /// Lends the connection for the next prompt. A new generation empties the cache.
    pub fn lend(&mut self, conn: Option<Connection>, cwd: &str, generation: u64) {
        *self.conn.get_mut() = conn;
        self.cwd = cwd.to_string();
        if generation != self.generation {
            self.cache.get_mut().clear();
            self.generation = generation;
        }
    }

    /// Gives the connection back.
    pub fn take_back(&mut self) -> Option<Connection> {
        self.conn.get_mut().take()
    }

    /// Names in a remote directory, from the cache or the server.
    fn remote_names(&self, dir: &str) -> Vec<(String, bool)> {
        if let Some(v) = self.cache.borrow().get(dir) {
            return v.clone();
        }
        let Ok(mut slot) = self.conn.try_borrow_mut() else {
            return Vec::new();
        };
        let Some(conn) = slot.as_mut() else {
            return Vec::new();
        };
        let result = self.handle.block_on(conn.list(dir));
        let names: Vec<(String, bool)> = match result {
            Ok(entries) => {
                let mut v: Vec<(String, bool)> = entries
                    .into_iter()
                    .map(|e| (e.name, e.kind == EntryKind::Dir))
                    .collect();
                v.sort();
                v
            }
            Err(e) => {
                if e.is_fatal() {
                    // The shell will find the connection gone and say so.
                    *slot = None;
                }
                Vec::new()
            }
        };
        self.cache
            .borrow_mut()
            .insert(dir.to_string(), names.clone());
        names
    }

    fn complete_remote(&self, word: &str) -> Vec<Pair> {
        let (dir_part, prefix) = match word.rfind('/') {
            Some(i) => (&word[..=i], &word[i + 1..]),
            None => ("", word),
        };
        let dir = paths::resolve(&self.cwd, if dir_part.is_empty() { "." } else { dir_part });
        self.remote_names(&dir)
            .into_iter()
            .filter(|(n, _)| {
                n.starts_with(prefix) && (prefix.starts_with('.') || !n.starts_with('.'))
            })
            .map(|(n, is_dir)| {
                let full = format!("{dir_part}{n}{}", if is_dir { "/" } else { "" });
                Pair {
                    display: format!(
                        "{}{}",
                        crate::sanitize::for_terminal(&n),
                        if is_dir { "/" } else { "" }
                    ),
                    replacement: escape(&full),
                }
            })
            .collect()
    }
}

/// The current word at `pos`: its start in `line`, its unescaped text, and the words before it.
fn current_word(line: &str, pos: usize) -> (usize, String, Vec<String>) {
    let before = &line[..pos];
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut start = 0;
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in before.char_indices() {
        if escaped {
            cur.push(c);
            escaped = false;
            continue;
        }
        match (quote, c) {
            (None, '\\') => {
                if !in_word {
                    start = i;
                    in_word = true;
                }
                escaped = true;
            }
            (None, '\'' | '"') => {
                if !in_word {
                    start = i;
                    in_word = true;
                }
                quote = Some(c);
            }
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
                start = i + c.len_utf8();
            }
            (_, c) => {
                if !in_word {
                    start = i;
                    in_word = true;
                }
                cur.push(c);
            }
        }
    }
    if !in_word {
        start = pos;
    }
    (start, cur, words)
}

/// Escapes a completed word so that the shell's own splitting reads it back unchanged.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_whitespace() || matches!(c, '\\' | '\'' | '"' | '#') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl Completer for Helper {
    type Candidate = Pair;

    fn complete(&self, line: &str, pos: usize, ctx: &Context<'_>) -> Result<(usize, Vec<Pair>)> {
        let (start, word, before) = current_word(line, pos);
        let Some(cmd) = before.first() else {
            let cands = command_names()
                .filter(|n| n.starts_with(word.as_str()))
                .map(|n| Pair {
                    display: n.to_string(),
                    replacement: format!("{n} "),
                })
                .collect();
            return Ok((start, cands));
        };
        if cmd == "help" {
            let cands = command_names()
                .filter(|n| n.starts_with(word.as_str()))
                .map(|n| Pair {
                    display: n.to_string(),
                    replacement: n.to_string(),
                })
                .collect();
            return Ok((start, cands));
        }
        if word.starts_with('-') && !word.contains('/') {
            return Ok((start, Vec::new()));
        }
        if LOCAL_COMMANDS.contains(&cmd.as_str()) {
            return self.files.complete(line, pos, ctx);
        }
        Ok((start, self.complete_remote(&word)))
    }
}

impl Hinter for Helper {
    type Hint = String;
}

impl Highlighter for Helper {
    fn highlight_prompt<'b, 's: 'b, 'p: 'b>(
        &'s self,
        prompt: &'p str,
        _default: bool,
    ) -> Cow<'b, str> {
        Cow::Borrowed(prompt)
    }
}

impl Validator for Helper {}

impl rustyline::Helper for Helper {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_at_the_cursor() {
        let (s, w, b) = current_word("get fo", 6);
        assert_eq!((s, w.as_str(), b), (4, "fo", vec!["get".to_string()]));
        let (s, w, b) = current_word("put my\\ fi", 10);
        assert_eq!((s, w.as_str()), (4, "my fi"));
        assert_eq!(b, ["put"]);
        let (s, w, _) = current_word("ls 'a b", 7);
        assert_eq!((s, w.as_str()), (3, "a b"));
        let (s, w, b) = current_word("ls ", 3);
        assert_eq!((s, w.as_str(), b.len()), (3, "", 1));
        let (s, w, b) = current_word("", 0);
        assert_eq!((s, w.as_str(), b.len()), (0, "", 0));
    }

    #[test]
    fn escaping_round_trips_through_shlex() {
        for name in ["a b", "it's", "x\\y", "#tag", "plain"] {
            let e = escape(name);
            assert_eq!(shlex::split(&e).unwrap(), vec![name.to_string()], "{e}");
        }
    }
}
