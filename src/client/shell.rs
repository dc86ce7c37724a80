//! The `ferry>` shell: interactive on a terminal, batch (one command per line, stop at the
//! first failure) otherwise. Results go to stdout; prompts, progress and errors to stderr.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::runtime::Runtime;

use super::connection::{Connection, Transferred, download_target};
use super::{ClientError, EXIT_FAILED, EXIT_OK, EXIT_USAGE, paths};
use crate::protocol::{Entry, EntryKind};
use crate::sanitize::for_terminal;

/// The commands and a line of help for each.
const COMMANDS: &[(&str, &str, &str)] = &[
    (
        "get",
        "get [-f] REMOTE [LOCAL]",
        "download a file (verified); -f overwrites",
    ),
    (
        "put",
        "put [-f] LOCAL [REMOTE]",
        "upload a file (verified); -f overwrites",
    ),
    (
        "ls",
        "ls [PATH]",
        "list a directory: type, size, modification time, name",
    ),
    (
        "cd",
        "cd [PATH]",
        "change the remote directory (/ is your home)",
    ),
    ("pwd", "pwd", "print the remote directory"),
    ("lcd", "lcd PATH", "change the local directory"),
    ("lpwd", "lpwd", "print the local directory"),
    ("lls", "lls [PATH]", "list a local directory"),
    ("mkdir", "mkdir PATH", "create a remote directory"),
    ("rm", "rm PATH", "remove a remote file"),
    ("rmdir", "rmdir PATH", "remove an empty remote directory"),
    (
        "mv",
        "mv [-f] FROM TO",
        "rename a remote file or directory; -f overwrites",
    ),
    ("help", "help [COMMAND]", "show this help"),
    ("quit", "quit | exit | bye", "end the session (Ctrl-D too)"),
];

/// What a command asks the loop to do next.
enum Flow {
    Continue,
    Quit,
}

/// A command failure: a usage mistake, or an error from the client library.
enum Failure {
    Usage(String),
    Client(ClientError),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::Client(e)
    }
}

impl Failure {
    fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => EXIT_USAGE,
            Failure::Client(e) => e.exit_code(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Usage(m) => f.write_str(m),
            Failure::Client(e) => write!(f, "{e}"),
        }
    }
}

/// A shell over one logged-in connection.
pub struct Shell<'rt> {
    rt: &'rt Runtime,
    conn: Option<Connection>,
    cwd: String,
    /// Show progress bars (stderr is a terminal and the session is interactive).
    progress: bool,
}

impl std::fmt::Debug for Shell<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shell")
            .field("cwd", &self.cwd)
            .finish_non_exhaustive()
    }
}

impl<'rt> Shell<'rt> {
    /// Wraps a logged-in connection.
    pub fn new(rt: &'rt Runtime, conn: Connection, progress: bool) -> Self {
        Shell {
            rt,
            conn: Some(conn),
            cwd: "/".to_string(),
            progress,
        }
    }

    /// Reads commands from a terminal with line editing and history until quit or Ctrl-D.
    /// Errors are printed and the session goes on, unless the connection is gone.
    pub fn run_interactive(mut self, history: Option<PathBuf>) -> u8 {
        let mut editor = match rustyline::DefaultEditor::new() {
            Ok(e) => e,
            Err(e) => {
                eprintln!("ferry: cannot start line editor: {e}");
                return EXIT_FAILED;
            }
        };
        if let Some(h) = &history {
            let _ = editor.load_history(h);
        }
        let mut status = EXIT_OK;
        loop {
            let line = match editor.readline("ferry> ") {
                Ok(l) => l,
                Err(rustyline::error::ReadlineError::Interrupted) => continue,
                Err(rustyline::error::ReadlineError::Eof) => break,
                Err(e) => {
                    eprintln!("ferry: {e}");
                    status = EXIT_FAILED;
                    break;
                }
            };
            if !line.trim().is_empty() {
                let _ = editor.add_history_entry(line.as_str());
            }
            match self.execute(&line) {
                Ok(Flow::Continue) => {}
                Ok(Flow::Quit) => break,
                Err(f) => {
                    eprintln!("ferry: {f}");
                    if let Failure::Client(e) = &f
                        && e.is_fatal()
                    {
                        status = f.exit_code();
                        break;
                    }
                }
            }
        }
        if let Some(h) = &history {
            if let Some(dir) = h.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let _ = editor.save_history(h);
        }
        self.finish();
        status
    }

    /// Runs one command per line from `input` (as `sftp -b` does): echoes nothing but
    /// results, stops at the first failed command unless its line starts with `-`, and
    /// returns the exit status.
    pub fn run_batch(mut self, input: impl BufRead) -> u8 {
        for line in input.lines() {
            let line = match line {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("ferry: reading commands: {e}");
                    self.finish();
                    return EXIT_USAGE;
                }
            };
            let trimmed = line.trim_start();
            let (tolerant, command) = match trimmed.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, trimmed),
            };
            match self.execute(command) {
                Ok(Flow::Continue) => {}
                Ok(Flow::Quit) => break,
                Err(f) => {
                    eprintln!("ferry: {}: {f}", for_terminal(command.trim()));
                    let fatal = matches!(&f, Failure::Client(e) if e.is_fatal());
                    if !tolerant || fatal {
                        self.finish();
                        return f.exit_code();
                    }
                }
            }
        }
        self.finish();
        EXIT_OK
    }

    fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = self.rt.block_on(conn.close());
        }
    }

    fn conn(&mut self) -> Result<&mut Connection, Failure> {
        self.conn
            .as_mut()
            .ok_or(Failure::Client(ClientError::ConnectionLost))
    }

    /// Runs an async operation on the connection; a fatal error drops the connection.
    fn call<T>(
        &mut self,
        f: impl AsyncFnOnce(&mut Connection) -> Result<T, ClientError>,
    ) -> Result<T, Failure> {
        let rt = self.rt;
        let conn = self.conn()?;
        let result = rt.block_on(f(conn));
        if let Err(e) = &result
            && e.is_fatal()
        {
            self.conn = None;
        }
        result.map_err(Failure::Client)
    }

    fn execute(&mut self, line: &str) -> Result<Flow, Failure> {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return Ok(Flow::Continue);
        }
        let Some(words) = shlex::split(line) else {
            return Err(Failure::Usage("unbalanced quotes".into()));
        };
        let Some((cmd, args)) = words.split_first() else {
            return Ok(Flow::Continue);
        };
        let (flags, args) = split_flags(args);
        let check_flags = |allowed: &str| -> Result<(), Failure> {
            for f in &flags {
                if !allowed.contains(*f) {
                    return Err(Failure::Usage(format!("{cmd}: unknown option -{f}")));
                }
            }
            Ok(())
        };
        let force = flags.contains(&'f');
        match cmd.as_str() {
            "get" => {
                check_flags("f")?;
                let (remote, local) = match args {
                    [r] => (r, None),
                    [r, l] => (r, Some(Path::new(l))),
                    _ => return Err(usage("get")),
                };
                self.get(remote, local, force)?;
            }
            "put" => {
                check_flags("f")?;
                let (local, remote) = match args {
                    [l] => (l, None),
                    [l, r] => (l, Some(r.as_str())),
                    _ => return Err(usage("put")),
                };
                self.put(Path::new(local), remote, force)?;
            }
            "ls" | "dir" => {
                check_flags("l")?;
                let path = match args {
                    [] => self.cwd.clone(),
                    [p] => paths::resolve(&self.cwd, p),
                    _ => return Err(usage("ls")),
                };
                let mut entries = self.call(async |c| c.list(&path).await)?;
                entries.sort_by(|a, b| a.name.cmp(&b.name));
                let mut out = std::io::stdout().lock();
                for e in &entries {
                    let _ = writeln!(out, "{}", format_entry(e));
                }
            }
            "cd" => {
                check_flags("")?;
                let path = match args {
                    [] => "/".to_string(),
                    [p] => paths::resolve(&self.cwd, p),
                    _ => return Err(usage("cd")),
                };
                let entry = self.call(async |c| c.stat(&path).await)?;
                if entry.kind != EntryKind::Dir {
                    return Err(Failure::Client(ClientError::Remote(
                        crate::protocol::WireError {
                            code: crate::protocol::ErrorCode::NotADirectory,
                            message: format!("{}: not a directory", for_terminal(&path)),
                        },
                    )));
                }
                self.cwd = path;
            }
            "pwd" => {
                check_flags("")?;
                println!("{}", for_terminal(&self.cwd));
            }
            "lcd" => {
                check_flags("")?;
                let [p] = args else { return Err(usage("lcd")) };
                std::env::set_current_dir(p)
                    .map_err(|e| Failure::Client(ClientError::local(Path::new(p), e)))?;
            }
            "lpwd" => {
                check_flags("")?;
                let cwd = std::env::current_dir()
                    .map_err(|e| Failure::Client(ClientError::local(Path::new("."), e)))?;
                println!("{}", for_terminal(&cwd.display().to_string()));
            }
            "lls" => {
                check_flags("")?;
                let dir = match args {
                    [] => PathBuf::from("."),
                    [p] => PathBuf::from(p),
                    _ => return Err(usage("lls")),
                };
                for e in local_entries(&dir).map_err(Failure::Client)? {
                    println!("{}", format_entry(&e));
                }
            }
            "mkdir" | "rm" | "rmdir" => {
                check_flags("")?;
                let [p] = args else { return Err(usage(cmd)) };
                let path = paths::resolve(&self.cwd, p);
                match cmd.as_str() {
                    "mkdir" => self.call(async |c| c.mkdir(&path).await)?,
                    "rm" => self.call(async |c| c.remove(&path).await)?,
                    _ => self.call(async |c| c.rmdir(&path).await)?,
                }
            }
            "mv" | "rename" => {
                check_flags("f")?;
                let [from, to] = args else {
                    return Err(usage("mv"));
                };
                let from = paths::resolve(&self.cwd, from);
                let mut to_path = paths::resolve(&self.cwd, to);
                // `mv a dir/` and `mv a existing-dir` move into the directory, as mv(1) does.
                let into_dir = to.ends_with('/')
                    || matches!(
                        self.call(async |c| c.stat(&to_path).await),
                        Ok(Entry {
                            kind: EntryKind::Dir,
                            ..
                        })
                    );
                if into_dir {
                    to_path = paths::join(&to_path, paths::base_name(&from));
                }
                self.call(async |c| c.rename(&from, &to_path, force).await)?;
            }
            "help" | "?" => {
                check_flags("")?;
                print_help(args.first().map(String::as_str))?;
            }
            "quit" | "exit" | "bye" => return Ok(Flow::Quit),
            other => {
                return Err(Failure::Usage(format!(
                    "unknown command: {} (try help)",
                    for_terminal(other)
                )));
            }
        }
        Ok(Flow::Continue)
    }

    fn get(&mut self, remote: &str, local: Option<&Path>, force: bool) -> Result<(), Failure> {
        let remote_path = paths::resolve(&self.cwd, remote);
        let name = paths::base_name(&remote_path).to_string();
        if name.is_empty() {
            return Err(Failure::Usage("get: name a file".into()));
        }
        let target = download_target(local, &name);
        let bar = self.progress_bar(&name);
        let result = {
            let bar = bar.clone();
            let mut on_progress = move |n: u64| {
                if let Some(b) = &bar {
                    b.set_position(n);
                }
            };
            self.call(async |c| c.get(&remote_path, &target, force, &mut on_progress).await)
        };
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let done = result?;
        report(&target.display().to_string(), &done);
        Ok(())
    }

    fn put(&mut self, local: &Path, remote: Option<&str>, force: bool) -> Result<(), Failure> {
        let name = local
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| Failure::Usage("put: name a file".into()))?;
        let remote_path = match remote {
            None => paths::join(&self.cwd, &name),
            Some(r) => {
                let resolved = paths::resolve(&self.cwd, r);
                let is_dir = r.ends_with('/')
                    || matches!(
                        self.call(async |c| c.stat(&resolved).await),
                        Ok(Entry {
                            kind: EntryKind::Dir,
                            ..
                        })
                    );
                if is_dir {
                    paths::join(&resolved, &name)
                } else {
                    resolved
                }
            }
        };
        let bar = self.progress_bar(&name);
        let result = {
            let bar = bar.clone();
            let mut on_progress = move |n: u64| {
                if let Some(b) = &bar {
                    b.set_position(n);
                }
            };
            self.call(async |c| c.put(local, &remote_path, force, &mut on_progress).await)
        };
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let done = result?;
        report(&remote_path, &done);
        Ok(())
    }

    fn progress_bar(&self, name: &str) -> Option<ProgressBar> {
        if !self.progress {
            return None;
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{msg:20!} {bytes:>10} {bytes_per_sec:>12} {elapsed_precise}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_message(for_terminal(name).into_owned());
        // Only transfers that take longer than a moment get a visible bar.
        bar.enable_steady_tick(Duration::from_millis(200));
        Some(bar)
    }
}

fn usage(cmd: &str) -> Failure {
    let line = COMMANDS
        .iter()
        .find(|(name, _, _)| *name == cmd)
        .map_or(cmd, |(_, u, _)| u);
    Failure::Usage(format!("usage: {line}"))
}

/// Splits leading `-x` flags (bundled like `-rf`) from arguments; `--` ends flags.
fn split_flags(args: &[String]) -> (Vec<char>, &[String]) {
    let mut flags = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--" {
            i += 1;
            break;
        }
        if a.len() > 1 && a.starts_with('-') {
            flags.extend(a[1..].chars());
            i += 1;
        } else {
            break;
        }
    }
    (flags, &args[i..])
}

fn print_help(cmd: Option<&str>) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match cmd {
        Some(c) => {
            let (_, u, h) = COMMANDS
                .iter()
                .find(|(name, _, _)| *name == c)
                .ok_or_else(|| Failure::Usage(format!("no such command: {}", for_terminal(c))))?;
            let _ = writeln!(out, "{u}\n    {h}");
        }
        None => {
            for (_, u, h) in COMMANDS {
                let _ = writeln!(out, "{u:<26} {h}");
            }
        }
    }
    Ok(())
}

/// Prints the one line that ends every transfer.
fn report(name: &str, t: &Transferred) {
    let secs = t.elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        t.size as f64 / secs
    } else {
        0.0
    };
    println!(
        "{}: {} in {:.2} s ({}/s), sha256 {} verified",
        for_terminal(name),
        human_bytes(t.size),
        secs,
        human_bytes(rate as u64),
        t.sha256
    );
}

/// `1234567` -> `1.2 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// One `ls` line: type and permissions, size, modification time, name (escaped).
pub fn format_entry(e: &Entry) -> String {
    let kind = match e.kind {
        EntryKind::Dir => 'd',
        EntryKind::File => '-',
        EntryKind::Symlink => 'l',
        EntryKind::Other => '?',
    };
    let mut perms = String::with_capacity(9);
    for shift in [6, 3, 0] {
        let bits = (e.mode >> shift) & 7;
        perms.push(if bits & 4 != 0 { 'r' } else { '-' });
        perms.push(if bits & 2 != 0 { 'w' } else { '-' });
        perms.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    let time = chrono::DateTime::from_timestamp(e.mtime, 0)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M")
                .to_string()
        })
        .unwrap_or_else(|| "????-??-?? ??:??".to_string());
    format!(
        "{kind}{perms} {:>12} {time} {}",
        e.size,
        for_terminal(&e.name)
    )
}

fn local_entries(dir: &Path) -> Result<Vec<Entry>, ClientError> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let rd = std::fs::read_dir(dir).map_err(|e| ClientError::local(dir, e))?;
    for item in rd {
        let item = item.map_err(|e| ClientError::local(dir, e))?;
        let Ok(meta) = item.path().symlink_metadata() else {
            continue;
        };
        let ft = meta.file_type();
        out.push(Entry {
            name: item.file_name().to_string_lossy().into_owned(),
            kind: if ft.is_dir() {
                EntryKind::Dir
            } else if ft.is_file() {
                EntryKind::File
            } else if ft.is_symlink() {
                EntryKind::Symlink
            } else {
                EntryKind::Other
            },
            size: meta.len(),
            mtime: meta.mtime(),
            mode: meta.mode() & 0o7777,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_split() {
        let args: Vec<String> = ["-f", "a", "-b"].iter().map(|s| s.to_string()).collect();
        let (flags, rest) = split_flags(&args);
        assert_eq!(flags, vec!['f']);
        assert_eq!(rest, &args[1..]);
        let args: Vec<String> = ["--", "-name"].iter().map(|s| s.to_string()).collect();
        let (flags, rest) = split_flags(&args);
        assert!(flags.is_empty());
        assert_eq!(rest, &args[1..]);
    }

    #[test]
    fn human() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(10 * 1024 * 1024), "10.0 MiB");
    }

    #[test]
    fn entry_line_escapes_names() {
        let e = Entry {
            name: "evil\x1b[2J".into(),
            kind: EntryKind::File,
            size: 42,
            mtime: 0,
            mode: 0o644,
        };
        let line = format_entry(&e);
        assert!(line.starts_with("-rw-r--r-- "));
        assert!(line.contains("evil\\u{1b}[2J"));
        assert!(!line.contains('\x1b'));
    }
}
