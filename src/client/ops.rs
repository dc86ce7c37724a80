//! The layer between the shell (or a one-shot) and [`Connection`]: a session with a remote
//! working directory, globs on both sides, recursive transfers that reproduce a tree and keep
//! going past one failed file, and the check that keeps server-sent names from escaping the
//! local target (the scp CVE-2019-6111 class).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use super::connection::{Connection, Transferred};
use super::format::{summary_line, transfer_line};
pub use super::glob::{expand_local, glob_match, has_glob};
use super::interrupt::Interrupts;
use super::progress::{self, Bars};
use super::{ClientError, EXIT_FAILED, EXIT_INTEGRITY, EXIT_INTERRUPTED, EXIT_USAGE, paths};
use crate::protocol::{Entry, EntryKind, ErrorCode, WireError};
use crate::sanitize::for_terminal;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The command was used wrongly.
    #[error("{0}")]
    Usage(String),
    /// The client library failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Ctrl-C.
    #[error("interrupted; nothing half-written under a final name (reget/reput resumes)")]
    Interrupted,
    /// The one item of a command failed before it started (reported by this error alone).
    #[error("{message}")]
    Failed {
        /// What went wrong, with the item's name.
        message: String,
        /// Its exit status.
        code: u8,
    },
    /// A request about one path failed: shown as `PATH: what went wrong; what would help`,
    /// since the server's message never repeats the path.
    #[error("{path}: {error}{}", hint.map(|h| format!("; {h}")).unwrap_or_default())]
    About {
        /// The path the request was about, as the client sent it (not escaped).
        path: String,
        /// What went wrong.
        error: ClientError,
        /// The flag or command that would help, if one would.
        hint: Option<&'static str>,
    },
    /// Some files of a multi-file transfer failed (each was reported as it happened).
    #[error("{failed} of {total} items failed")]
    Partial {
        /// How many failed.
        failed: usize,
        /// How many there were.
        total: usize,
        /// Whether a digest mismatch was among the failures.
        integrity: bool,
    },
}

impl OpError {
    /// The documented exit status.
    pub fn exit_code(&self) -> u8 {
        match self {
            OpError::Usage(_) => EXIT_USAGE,
            OpError::Client(e) | OpError::About { error: e, .. } => e.exit_code(),
            OpError::Interrupted => EXIT_INTERRUPTED,
            OpError::Failed { code, .. } => *code,
            OpError::Partial { integrity, .. } => {
                if *integrity {
                    EXIT_INTEGRITY
                } else {
                    EXIT_FAILED
                }
            }
        }
    }

    /// Whether what failed was merely cut off and can be resumed (see
    /// [`ClientError::interrupted`]).
    pub fn interrupted(&self) -> bool {
        match self {
            OpError::Interrupted => true,
            OpError::Client(e) | OpError::About { error: e, .. } => e.interrupted(),
            _ => false,
        }
    }

    /// Whether the session is over (the connection is gone).
    pub fn is_fatal(&self) -> bool {
        matches!(self, OpError::Client(e) | OpError::About { error: e, .. } if e.is_fatal())
    }

    /// The message, safe for a terminal (see [`terminal_text`]). Every name in it is escaped
    /// exactly once: `Usage` and `Failed` messages are built from names escaped already.
    pub fn for_terminal(&self) -> String {
        match self {
            OpError::Client(e) => terminal_text(e),
            OpError::About { path, error, hint } => format!(
                "{}: {}{}",
                for_terminal(path),
                terminal_text(error),
                hint.map(|h| format!("; {h}")).unwrap_or_default()
            ),
            OpError::Usage(message) | OpError::Failed { message, .. } => message.clone(),
            e => terminal_text(e),
        }
    }

    /// Whether the message already names the item it is about.
    fn names_its_path(&self) -> bool {
        matches!(
            self,
            OpError::About { .. } | OpError::Client(ClientError::Local { .. })
        )
    }
}

/// Names the path a failed request was about, with the flag of `cmd` that would help (the
/// server's message never repeats the path, and it cannot know the client's flags). Only
/// refusals by the server are named; local errors name their path already, and a lost
/// connection is about no path.
pub fn about(cmd: &str, path: &str, e: OpError) -> OpError {
    match e {
        OpError::Client(ClientError::Remote(w)) => OpError::About {
            path: path.to_string(),
            hint: hint_for(cmd, w.code),
            error: ClientError::Remote(w),
        },
        e => e,
    }
}

/// [`about`] with a hint chosen by the caller.
pub fn about_with(path: &str, e: OpError, hint: &'static str) -> OpError {
    match about("", path, e) {
        OpError::About { path, error, .. } => OpError::About {
            path,
            error,
            hint: Some(hint),
        },
        e => e,
    }
}

/// What would help after `cmd` failed with `code`.
fn hint_for(cmd: &str, code: ErrorCode) -> Option<&'static str> {
    Some(match (cmd, code) {
        ("put", ErrorCode::AlreadyExists) => "use put -f to replace it",
        ("cp", ErrorCode::AlreadyExists) => "use cp -f to replace it",
        ("mv", ErrorCode::AlreadyExists) => "use mv -f to replace it",
        ("put", ErrorCode::NotFound) => "create its directory first (mkdir -p)",
        ("mkdir", ErrorCode::NotFound) => "use mkdir -p to create the parents too",
        ("rmdir", ErrorCode::DirectoryNotEmpty) => "use rm -r to remove it and everything in it",
        ("rmdir", ErrorCode::NotADirectory) => "use rm for files",
        ("rm", ErrorCode::IsADirectory) => "use rm -r, or rmdir if it is empty",
        ("get", ErrorCode::IsADirectory) => "use get -r for directories",
        ("sha256", ErrorCode::IsADirectory) => "sha256 takes files only",
        _ => return None,
    })
}

/// An error as text for a terminal. A server's own words are escaped whole (they may carry
/// escape sequences or line breaks meant to fake output); ferry's own messages keep their line
/// breaks and nothing else. A local path was escaped when the error was made, so only the
/// operating system's words are escaped here.
pub fn terminal_text(e: &(dyn std::error::Error + 'static)) -> String {
    match e.downcast_ref::<ClientError>() {
        Some(ClientError::Remote(_) | ClientError::Usage(_)) => {
            return for_terminal(&e.to_string()).into_owned();
        }
        Some(ClientError::Local { path, source }) => {
            return format!("{path}: {}", for_terminal(&source.to_string()));
        }
        _ => {}
    }
    e.to_string()
        .split('\n')
        .map(|l| for_terminal(l).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// An error about `path` made up on the client side, for checks it does itself. `message`
/// must not contain the path: it is named, and escaped, once.
pub fn refused(path: &str, code: ErrorCode, message: &str, hint: Option<&'static str>) -> OpError {
    OpError::About {
        path: path.to_string(),
        error: ClientError::Remote(WireError {
            code,
            message: message.to_string(),
        }),
        hint,
    }
}

/// Options of `get` and `put`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TransferOpts {
    /// `-r`: directories too, recursively.
    pub recursive: bool,
    /// `-f`: replace existing files.
    pub force: bool,
    /// `-a`: resume partial files.
    pub resume: bool,
    /// `-e`: stop at the first failed file: nothing more is started and the transfer in
    /// progress is cancelled (nothing of it appears under a final name); pipelined files
    /// already sent whole may still be committed, and are reported as such.
    pub fail_fast: bool,
    /// `-p` (`get` only): give each downloaded file the server's modification time and
    /// permission bits (setuid, setgid and sticky dropped), as `sftp -p` does. An upload
    /// cannot carry them: the protocol's `put` has no such fields.
    pub preserve: bool,
}

/// How results are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Lines on stdout, errors on stderr, bars if enabled.
    Text,
    /// Nothing printed while working; the caller prints the [`Report`] as JSON.
    Json,
}

/// One file that arrived and verified.
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    /// Where it came from (local path or remote path).
    pub source: String,
    /// Where it went.
    pub destination: String,
    /// Bytes.
    pub size: u64,
    /// The digest both ends agreed on.
    pub sha256: String,
    /// Always true: unverified files are failures.
    pub verified: bool,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Bytes that were already in place when a resumed transfer started.
    pub resumed_from: u64,
}

/// One item that failed.
#[derive(Debug, Clone, Serialize)]
pub struct FailReport {
    /// The item (a path or a name).
    pub source: String,
    /// What went wrong.
    pub error: String,
    /// The exit status this failure alone would have.
    pub exit_code: u8,
    /// Whether the transfer was merely cut off (Ctrl-C, a broken connection, the server
    /// shutting down): `reget`/`reput` (`-a`) resumes it from what arrived.
    pub interrupted: bool,
    /// Whether `error` names the item already (then it is printed without `source`).
    #[serde(skip)]
    named: bool,
}

/// The outcome of a `get` or `put`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Verified files.
    pub files: Vec<FileReport>,
    /// Directories created.
    pub directories: Vec<String>,
    /// Failures.
    pub failed: Vec<FailReport>,
    /// Bytes of all verified files.
    pub bytes: u64,
    /// Wall time of the whole command.
    pub seconds: f64,
    /// Whether Ctrl-C ended it early.
    pub interrupted: bool,
    /// Files not transferred because an earlier one failed (`-e`).
    pub skipped: usize,
}

/// A connection with a remote working directory, the Ctrl-C plumbing and the output mode.
#[derive(Debug)]
pub struct Session {
    handle: Handle,
    conn: Option<Connection>,
    /// Remote working directory, absolute (`/` is the home).
    pub cwd: String,
    /// Draw progress bars (stderr is a terminal and not `-q`).
    pub bars: bool,
    /// `-q`: no line per file when several move (failures and the summary still show).
    pub quiet: bool,
    /// Text or JSON.
    pub output: Output,
    interrupts: Option<Interrupts>,
    token: CancellationToken,
    /// Bumped by every command that may change the remote tree (completion caches use it).
    pub generation: u64,
    /// The report of the last `get` or `put`, also when it failed (for `--json`).
    pub last_report: Option<Report>,
    /// Most directory entries one command may list ([`MAX_LISTED_PER_COMMAND`]).
    pub max_listed: usize,
    /// Entries listed since the command began.
    listed: usize,
}

/// Entries `df` lists at most to count a home the server does not count.
pub const MAX_COUNTED_ENTRIES: usize = 1_000_000;

/// Directory depth `df` descends at most (the server's own path limit).
const MAX_COUNTED_DEPTH: usize = 256;

/// A home's files, counted by listing it (see [`Session::count_home`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct HomeCount {
    /// Bytes of regular files.
    pub bytes: u64,
    /// Regular files.
    pub files: u64,
    /// False if a cap stopped the count (then it is a lower bound).
    pub complete: bool,
}

/// Most directory entries one command may list, all listings together: with the depth cap
/// of every path, this bounds a recursive walk of a server that makes every directory hold
/// several more.
pub const MAX_LISTED_PER_COMMAND: usize = 2_000_000;

/// One file to move.
#[derive(Debug, Clone)]
struct Job {
    local: PathBuf,
    remote: String,
    size: u64,
    /// The remote file's modification time and mode (downloads; for `get -p`).
    mtime: i64,
    mode: u32,
}

impl Job {
    /// (source, destination) as shown to the user.
    fn names(&self, upload: bool) -> (String, String) {
        if upload {
            (self.local.display().to_string(), self.remote.clone())
        } else {
            (self.remote.clone(), self.local.display().to_string())
        }
    }
}

/// What a recursive walk found before anything moves.
#[derive(Debug, Default)]
struct Plan {
    dirs: Vec<(String, PathBuf)>,
    jobs: Vec<Job>,
    refused: Vec<FailReport>,
}

impl Session {
    /// A session over a logged-in connection.
    pub fn new(handle: Handle, conn: Connection) -> Session {
        Session {
            handle,
            conn: Some(conn),
            cwd: "/".to_string(),
            bars: false,
            quiet: false,
            output: Output::Text,
            interrupts: None,
            token: CancellationToken::new(),
            generation: 0,
            last_report: None,
            max_listed: MAX_LISTED_PER_COMMAND,
            listed: 0,
        }
    }

    /// Catch Ctrl-C from now on (see [`Interrupts`]).
    pub fn catch_interrupts(&mut self, exit_when_idle: bool) {
        self.interrupts = Some(Interrupts::install(&self.handle, exit_when_idle));
    }

    /// The runtime handle.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Whether the connection is still there.
    pub fn connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Takes the connection out (for the completer while the prompt waits); see [`Self::put_back`].
    pub fn take_connection(&mut self) -> Option<Connection> {
        self.conn.take()
    }

    /// Puts the connection back.
    pub fn put_back(&mut self, conn: Option<Connection>) {
        if conn.is_some() {
            self.conn = conn;
        }
    }

    /// Marks the start of a command: Ctrl-C from now on cancels it.
    pub fn begin(&mut self) {
        self.listed = 0;
        if let Some(i) = &self.interrupts {
            self.token = i.begin();
        }
        let token = self.token.clone();
        if let Some(c) = self.conn.as_mut() {
            c.set_cancel(token);
        }
    }

    /// Marks the end of a command.
    pub fn end(&mut self) {
        if let Some(i) = &self.interrupts {
            i.end();
        }
        self.token = CancellationToken::new();
    }

    /// Whether Ctrl-C was pressed during this command.
    pub fn interrupted(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Ends the session politely.
    pub fn close(&mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = self.handle.block_on(conn.close());
        }
    }

    fn conn(&mut self) -> Result<&mut Connection, OpError> {
        self.conn
            .as_mut()
            .ok_or(OpError::Client(ClientError::ConnectionLost))
    }

    /// Runs one short request. Ctrl-C is honoured before it starts (a request in flight
    /// cannot be taken back without losing the connection, and short ones end soon).
    pub fn call<T>(
        &mut self,
        f: impl AsyncFnOnce(&mut Connection) -> Result<T, ClientError>,
    ) -> Result<T, OpError> {
        if self.interrupted() {
            return Err(OpError::Interrupted);
        }
        let handle = self.handle.clone();
        let conn = self.conn()?;
        let result = handle.block_on(f(conn));
        self.settle(result)
    }

    /// Runs a transfer that Ctrl-C may cancel. It runs like [`Self::call`]; the difference is
    /// in the connection: its cancel switch is this command's token (see [`Self::begin`]), so
    /// a running put sends `abort` and a running get sends `cancel`; the connection stays
    /// usable and nothing appears under a final name on either side.
    fn transfer<T>(
        &mut self,
        f: impl AsyncFnOnce(&mut Connection) -> Result<T, ClientError>,
    ) -> Result<T, OpError> {
        self.call(f)
    }

    fn settle<T>(&mut self, result: Result<T, ClientError>) -> Result<T, OpError> {
        if let Err(e) = &result
            && e.is_fatal()
        {
            self.conn = None;
        }
        result.map_err(|e| match e {
            ClientError::Cancelled => OpError::Interrupted,
            e => OpError::Client(e),
        })
    }

    /// Resolves a remote argument against the working directory.
    pub fn resolve(&self, arg: &str) -> String {
        paths::resolve(&self.cwd, arg)
    }

    /// `stat` of a remote path; `None` if it does not exist.
    pub fn stat_opt(&mut self, path: &str) -> Result<Option<Entry>, OpError> {
        let path = path.to_string();
        match self.call(async |c| c.stat(&path).await) {
            Ok(e) => Ok(Some(e)),
            Err(OpError::Client(ClientError::Remote(w))) if w.code == ErrorCode::NotFound => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Lists a remote directory, sorted by name.
    pub fn list(&mut self, path: &str) -> Result<Vec<Entry>, OpError> {
        if self.listed > self.max_listed {
            return Err(OpError::Failed {
                message: format!(
                    "{}: not listed: this command already listed more than {} entries \
                     (split it, or the server builds an endless tree)",
                    for_terminal(path),
                    self.max_listed
                ),
                code: EXIT_FAILED,
            });
        }
        let path = path.to_string();
        let mut entries = self.call(async |c| c.list(&path).await)?;
        self.listed += entries.len();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// Expands a remote argument: a glob (`*`, `?`, `[...]` in any component) becomes the
    /// sorted matching paths; a plain path is returned as is (its entry unknown).
    pub fn expand_remote(&mut self, arg: &str) -> Result<Vec<(String, Option<Entry>)>, OpError> {
        if !has_glob(arg) {
            return Ok(vec![(self.resolve(arg), None)]);
        }
        let absolute = self.resolve_pattern(arg);
        let components: Vec<&str> = absolute.split('/').filter(|c| !c.is_empty()).collect();
        let mut found: Vec<(String, Option<Entry>)> = vec![("/".to_string(), None)];
        for (i, comp) in components.iter().enumerate() {
            let last = i + 1 == components.len();
            let mut next = Vec::new();
            for (dir, _) in &found {
                if !has_glob(comp) {
                    next.push((paths::join(dir, comp), None));
                    continue;
                }
                let entries = match self.list(dir) {
                    Ok(e) => e,
                    // A literal middle component that is missing or not a directory simply
                    // matches nothing.
                    Err(OpError::Client(ClientError::Remote(_))) => continue,
                    Err(e) => return Err(e),
                };
                for e in entries {
                    if glob_match(comp, &e.name) && (last || e.kind != EntryKind::File) {
                        next.push((paths::join(dir, &e.name), Some(e)));
                    }
                }
            }
            found = next;
        }
        if found.is_empty() {
            // `report [draft].pdf` is a name, not a pattern, if it exists as written.
            let literal = self.resolve(arg);
            if let Some(e) = self.stat_opt(&literal)? {
                return Ok(vec![(literal, Some(e))]);
            }
            return Err(refused(arg, ErrorCode::NotFound, "no match", None));
        }
        Ok(found)
    }

    /// Like [`paths::resolve`], but keeps glob characters (resolve does not touch them).
    fn resolve_pattern(&self, arg: &str) -> String {
        paths::resolve(&self.cwd, arg)
    }

    /// `mkdir -p`: creates every missing directory of `path`.
    pub fn mkdir_p(&mut self, path: &str) -> Result<(), OpError> {
        let mut cur = String::from("/");
        for comp in path.split('/').filter(|c| !c.is_empty()) {
            cur = paths::join(&cur, comp);
            self.mkdir_exist_ok(&cur)?;
        }
        Ok(())
    }

    /// Creates a directory; an existing directory is fine, an existing file is not.
    fn mkdir_exist_ok(&mut self, path: &str) -> Result<bool, OpError> {
        let p = path.to_string();
        match self.call(async |c| c.mkdir(&p).await) {
            Ok(()) => Ok(true),
            Err(OpError::Client(ClientError::Remote(w))) if w.code == ErrorCode::AlreadyExists => {
                match self.stat_opt(path)? {
                    Some(e) if e.kind == EntryKind::Dir => Ok(false),
                    _ => Err(refused(
                        path,
                        ErrorCode::NotADirectory,
                        "exists and is not a directory",
                        None,
                    )),
                }
            }
            Err(e) => Err(about("mkdir", path, e)),
        }
    }

    /// What `df` shows when the server counts no usage (a user without any limit): the
    /// files in the home, found by listing it. Symlinks are not followed and not counted, as
    /// the server counts only regular files. Ctrl-C stops it; so does a tree deeper than the
    /// server's path limit or with more than [`MAX_COUNTED_ENTRIES`] entries (then the counts
    /// are a lower bound and `complete` is false), so a hostile server cannot keep it going.
    pub fn count_home(&mut self) -> Result<HomeCount, OpError> {
        let mut count = HomeCount {
            complete: true,
            ..HomeCount::default()
        };
        let mut seen = 0usize;
        let mut queue = vec![("/".to_string(), 0usize)];
        while let Some((dir, depth)) = queue.pop() {
            if self.interrupted() {
                return Err(OpError::Interrupted);
            }
            let entries = self.list(&dir).map_err(|e| about("ls", &dir, e))?;
            for e in entries {
                seen += 1;
                if seen > MAX_COUNTED_ENTRIES {
                    count.complete = false;
                    return Ok(count);
                }
                match e.kind {
                    EntryKind::File => {
                        count.files += 1;
                        count.bytes = count.bytes.saturating_add(e.size);
                    }
                    EntryKind::Dir if check_name(&e.name).is_ok() => {
                        if depth + 1 >= MAX_COUNTED_DEPTH {
                            count.complete = false;
                        } else {
                            queue.push((paths::join(&dir, &e.name), depth + 1));
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(count)
    }

    /// `rm -r`: removes a file or a symlink, or a directory and everything below it. Returns
    /// the number of items removed.
    ///
    /// A symlink is removed as a link, never through: `remove` acts on the name itself (a
    /// file, or a link to anything), and only a real directory refuses it, so no `stat` (which
    /// follows a final link) decides what to descend into. Listings report links as links, so
    /// a link inside the tree is removed by `remove` as well.
    pub fn remove_tree(&mut self, path: &str) -> Result<usize, OpError> {
        let p = path.to_string();
        match self.call(async |c| c.remove(&p).await) {
            Ok(()) => return Ok(1),
            Err(OpError::Client(ClientError::Remote(w))) if w.code == ErrorCode::IsADirectory => {}
            Err(e) => return Err(about("rm", path, e)),
        }
        let mut removed = 0;
        for e in self.list(path).map_err(|e| about("ls", path, e))? {
            let child = paths::join(path, &e.name);
            check_name(&e.name).map_err(|why| {
                refused(
                    &child,
                    ErrorCode::InvalidPath,
                    &format!("refusing this name from the server: {why}"),
                    None,
                )
            })?;
            if e.kind == EntryKind::Dir {
                removed += self.remove_tree(&child)?;
            } else {
                self.call(async |c| c.remove(&child).await)
                    .map_err(|e| about("rm", &child, e))?;
                removed += 1;
            }
        }
        let p = path.to_string();
        self.call(async |c| c.rmdir(&p).await)
            .map_err(|e| about("rmdir", path, e))?;
        Ok(removed + 1)
    }

    // -----------------------------------------------------------------------------------------
    // put
    // -----------------------------------------------------------------------------------------

    /// `put [-r] [-f] [-a] [-e] LOCAL... [REMOTE]`. `dest` is the remote destination (the working
    /// directory if `None`).
    pub fn put(
        &mut self,
        sources: &[String],
        dest: Option<&str>,
        opts: TransferOpts,
    ) -> Result<Report, OpError> {
        if opts.preserve {
            return Err(OpError::Usage(
                "put: -p is not possible: the protocol carries no time or mode with an upload; \
                 the server gives each file the time it arrives and mode 0600, and the SHA-256 \
                 still proves the content. Run put without -p (get -p does keep the server's \
                 time and mode)."
                    .into(),
            ));
        }
        let started = Instant::now();
        let mut plan = Plan::default();
        let mut locals = Vec::new();
        for s in sources {
            match expand_local(s) {
                Ok(mut v) => locals.append(&mut v),
                Err(e) => plan.refused.push(fail(s, &OpError::Client(e))),
            }
        }
        let dest_path = match dest {
            Some(d) => self.resolve(d),
            None => self.cwd.clone(),
        };
        let dest_is_dir = match dest {
            None => true,
            Some(d) if d.ends_with('/') => true,
            Some(_) => matches!(self.stat_opt(&dest_path)?, Some(e) if e.kind == EntryKind::Dir),
        };
        if locals.len() > 1 && !dest_is_dir {
            return Err(OpError::Usage(format!(
                "put: {} is not a directory (needed for several files)",
                for_terminal(&dest_path)
            )));
        }
        for local in &locals {
            let name = match local_name(local) {
                Ok(n) => n,
                Err(why) => {
                    plan.refused
                        .push(fail_msg(&local.display().to_string(), why));
                    continue;
                }
            };
            let remote = if dest_is_dir {
                paths::join(&dest_path, &name)
            } else {
                dest_path.clone()
            };
            let meta = match std::fs::metadata(local) {
                Ok(m) => m,
                Err(e) => {
                    plan.refused.push(fail(
                        &local.display().to_string(),
                        &ClientError::local(local, e).into(),
                    ));
                    continue;
                }
            };
            if meta.is_dir() {
                if !opts.recursive {
                    plan.refused.push(fail_msg(
                        &local.display().to_string(),
                        "is a directory (use -r)".into(),
                    ));
                    continue;
                }
                plan.dirs.push((remote.clone(), local.clone()));
                walk_local(local, &remote, &mut plan);
            } else {
                plan.jobs.push(Job {
                    local: local.clone(),
                    remote,
                    size: meta.len(),
                    mtime: 0,
                    mode: 0,
                });
            }
        }
        let mut report = Report::default();
        let many = opts.recursive || plan.jobs.len() + plan.refused.len() > 1;
        if many {
            for f in &plan.refused {
                say_failure(self.output, None, f);
            }
        }
        report.failed.append(&mut plan.refused);
        for (remote, local) in std::mem::take(&mut plan.dirs) {
            if self.interrupted() {
                break;
            }
            match self.mkdir_exist_ok(&remote) {
                Ok(_) => report.directories.push(remote),
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => {
                    let f = fail(&local.display().to_string(), &e);
                    say_failure(self.output, None, &f);
                    report.failed.push(f);
                }
            }
        }
        let run = self.run_jobs(&plan.jobs, true, opts, many, &mut report);
        self.generation += 1;
        self.conclude(report, run, started, many)
    }

    // -----------------------------------------------------------------------------------------
    // get
    // -----------------------------------------------------------------------------------------

    /// `get [-r] [-f] [-a] [-e] REMOTE... [LOCAL]`. `dest` is the local destination (the current
    /// directory if `None`).
    pub fn get(
        &mut self,
        sources: &[String],
        dest: Option<&Path>,
        opts: TransferOpts,
    ) -> Result<Report, OpError> {
        let started = Instant::now();
        let mut plan = Plan::default();
        let mut remotes = Vec::new();
        for s in sources {
            match self.expand_remote(s) {
                Ok(mut v) => remotes.append(&mut v),
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => plan.refused.push(fail(s, &e)),
            }
        }
        let dest_path = dest.map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let dest_is_dir = match dest {
            None => true,
            Some(d) => d.is_dir() || d.as_os_str().to_string_lossy().ends_with('/'),
        };
        if remotes.len() > 1 && !dest_is_dir {
            return Err(OpError::Usage(format!(
                "get: {} is not a directory (needed for several files)",
                for_terminal(&dest_path.display().to_string())
            )));
        }
        // `get -r host:photos ./backup/`: a destination written as a directory that does not
        // exist yet is made (one level, as rsync does), rather than every file failing on it.
        if dest_is_dir
            && dest.is_some()
            && !remotes.is_empty()
            && !dest_path.exists()
            && let Err(e) = make_local_dir(&dest_path)
        {
            return Err(OpError::Client(ClientError::local(&dest_path, e)));
        }
        for (remote, entry) in remotes {
            let entry = match entry {
                Some(e) => e,
                None => match self.call({
                    let r = remote.clone();
                    async move |c| c.stat(&r).await
                }) {
                    Ok(e) => e,
                    Err(e) if e.is_fatal() => return Err(e),
                    Err(e) => {
                        plan.refused.push(fail(&remote, &about("get", &remote, e)));
                        continue;
                    }
                },
            };
            let name = paths::base_name(&remote).to_string();
            let local = if dest_is_dir {
                if let Err(why) = check_name(&name) {
                    plan.refused
                        .push(fail_msg(&remote, format!("refused name: {why}")));
                    continue;
                }
                // `get a.txt` lands as `a.txt`, not `./a.txt`.
                match dest {
                    None => PathBuf::from(&name),
                    Some(_) => dest_path.join(&name),
                }
            } else {
                dest_path.clone()
            };
            if entry.kind == EntryKind::Dir {
                if !opts.recursive {
                    plan.refused
                        .push(fail_msg(&remote, "is a directory (use -r)".into()));
                    continue;
                }
                plan.dirs.push((remote.clone(), local.clone()));
                self.walk_remote(&remote, &local, &mut plan)?;
            } else {
                plan.jobs.push(Job {
                    local,
                    remote,
                    size: entry.size,
                    mtime: entry.mtime,
                    mode: entry.mode,
                });
            }
        }
        let mut report = Report::default();
        let many = opts.recursive || plan.jobs.len() + plan.refused.len() > 1;
        if many {
            for f in &plan.refused {
                say_failure(self.output, None, f);
            }
        }
        report.failed.append(&mut plan.refused);
        let mut bad_dirs: Vec<PathBuf> = Vec::new();
        for (remote, local) in std::mem::take(&mut plan.dirs) {
            match make_local_dir(&local) {
                Ok(()) => report.directories.push(local.display().to_string()),
                Err(e) => {
                    let f = fail(&remote, &OpError::Client(ClientError::local(&local, e)));
                    say_failure(self.output, None, &f);
                    report.failed.push(f);
                    bad_dirs.push(local);
                }
            }
        }
        // Nothing goes into a directory that could not be made safely (e.g. a symlink).
        let jobs: Vec<Job> = plan
            .jobs
            .into_iter()
            .filter(|j| !bad_dirs.iter().any(|d| j.local.starts_with(d)))
            .collect();
        let run = self.run_jobs(&jobs, false, opts, many, &mut report);
        self.conclude(report, run, started, many)
    }

    /// Lists a remote tree below `remote` (mapped to `local`), refusing names that could
    /// land outside `local`.
    fn walk_remote(&mut self, remote: &str, local: &Path, plan: &mut Plan) -> Result<(), OpError> {
        let mut queue = vec![(remote.to_string(), local.to_path_buf())];
        while let Some((rdir, ldir)) = queue.pop() {
            if self.interrupted() {
                return Err(OpError::Interrupted);
            }
            let entries = match self.list(&rdir) {
                Ok(e) => e,
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => {
                    plan.refused.push(fail(&rdir, &about("get", &rdir, e)));
                    continue;
                }
            };
            let mut subdirs = Vec::new();
            for e in entries {
                let shown = paths::join(&rdir, &e.name);
                if let Err(why) = check_name(&e.name) {
                    plan.refused
                        .push(fail_msg(&shown, format!("refused name from server: {why}")));
                    continue;
                }
                let rpath = shown;
                let lpath = ldir.join(&e.name);
                match e.kind {
                    EntryKind::Dir => subdirs.push((rpath, lpath)),
                    EntryKind::File => plan.jobs.push(Job {
                        local: lpath,
                        remote: rpath,
                        size: e.size,
                        mtime: e.mtime,
                        mode: e.mode,
                    }),
                    EntryKind::Symlink => match self.stat_opt(&rpath) {
                        Ok(Some(t)) if t.kind == EntryKind::File => plan.jobs.push(Job {
                            local: lpath,
                            remote: rpath,
                            size: t.size,
                            mtime: t.mtime,
                            mode: t.mode,
                        }),
                        Ok(_) => plan.refused.push(fail_msg(
                            &rpath,
                            "symlink to a directory or nothing: skipped".into(),
                        )),
                        Err(e) if e.is_fatal() => return Err(e),
                        Err(e) => plan.refused.push(fail(&rpath, &about("get", &rpath, e))),
                    },
                    EntryKind::Other => plan
                        .refused
                        .push(fail_msg(&rpath, "not a regular file: skipped".into())),
                }
            }
            for (r, l) in subdirs.into_iter().rev() {
                plan.dirs.push((r.clone(), l.clone()));
                queue.push((r, l));
            }
        }
        // Parents before children, whatever order the walk found them in.
        plan.dirs.sort_by(|a, b| a.1.cmp(&b.1));
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Moving the files
    // -----------------------------------------------------------------------------------------

    /// Moves the files of a plan. `many`: the command is about several items (then `-q`
    /// leaves out the line per file, and a summary follows).
    fn run_jobs(
        &mut self,
        jobs: &[Job],
        upload: bool,
        opts: TransferOpts,
        many: bool,
        report: &mut Report,
    ) -> Result<(), OpError> {
        if self.interrupted() {
            report.interrupted = true;
            return Ok(());
        }
        if opts.fail_fast && !report.failed.is_empty() {
            report.skipped += jobs.len();
            return Ok(());
        }
        let lines = !(self.quiet && many);
        if jobs.len() > 1 && !opts.resume {
            return self.run_pipelined(jobs, upload, opts, lines, report);
        }
        let cmd = if upload { "put" } else { "get" };
        let total: u64 = jobs.iter().map(|j| j.size).sum();
        let mut bars = Bars::new(self.bars && self.output == Output::Text, jobs.len(), total);
        let single = jobs.len() == 1 && !opts.recursive;
        let mut outcome = Ok(());
        for (index, job) in jobs.iter().enumerate() {
            if self.interrupted() {
                report.interrupted = true;
                break;
            }
            let (source, dest) = job.names(upload);
            if let Some(b) = bars.as_mut() {
                b.start_file(paths::base_name(&job.remote), job.size);
            }
            let result = {
                let mut on_progress = |n: u64| {
                    if let Some(b) = bars.as_mut() {
                        b.position(n);
                    }
                };
                let (local, remote, force) = (&job.local, &job.remote, opts.force);
                match (upload, opts.resume) {
                    (true, false) => {
                        self.transfer(async |c| c.put(local, remote, force, &mut on_progress).await)
                    }
                    (true, true) => self.transfer(async |c| {
                        c.put_resume(local, remote, force, &mut on_progress).await
                    }),
                    (false, false) => {
                        self.transfer(async |c| c.get(remote, local, force, &mut on_progress).await)
                    }
                    (false, true) => self.transfer(async |c| {
                        c.get_resume(remote, local, force, &mut on_progress).await
                    }),
                }
            };
            if let Some(b) = bars.as_mut() {
                b.file_done(job.size);
            }
            let result = result.map_err(|e| about(cmd, &job.remote, e));
            match result {
                Ok(t) => {
                    let out = self.output;
                    match finish_download(job, opts) {
                        None => record_done(out, lines, bars.as_ref(), report, source, dest, &t),
                        Some(e) => record_failed(out, bars.as_ref(), report, &source, &e),
                    }
                }
                Err(OpError::Interrupted) => {
                    report.interrupted = true;
                    report.failed.push(fail(&source, &OpError::Interrupted));
                    break;
                }
                Err(e) if e.is_fatal() => {
                    // The connection is gone: the error ends the command (and is printed
                    // once, by the caller), and the file it cut off is listed as failed.
                    report.failed.push(fail(&source, &e));
                    outcome = Err(e);
                    break;
                }
                Err(e) => {
                    let f = fail(&source, &e);
                    if !single {
                        say_failure(self.output, bars.as_ref(), &f);
                    }
                    report.failed.push(f);
                    if single {
                        outcome = Err(e);
                    }
                    if opts.fail_fast {
                        report.skipped += jobs.len() - index - 1;
                        break;
                    }
                }
            }
        }
        if let Some(b) = bars {
            b.finish();
        }
        outcome
    }

    /// Many files with several requests in flight (`put_many` / `get_many`), so small files
    /// do not cost a round trip each.
    fn run_pipelined(
        &mut self,
        jobs: &[Job],
        upload: bool,
        opts: TransferOpts,
        lines: bool,
        report: &mut Report,
    ) -> Result<(), OpError> {
        if self.interrupted() {
            report.interrupted = true;
            return Ok(());
        }
        let total: u64 = jobs.iter().map(|j| j.size).sum();
        let output = self.output;
        let mut bars = Bars::new(self.bars && output == Output::Text, jobs.len(), total);
        if let Some(b) = bars.as_mut() {
            b.pipelined();
        }
        let bars = std::sync::Mutex::new(bars);
        let shared = std::sync::Mutex::new(std::mem::take(report));
        // With -e the first failure cancels the rest through a switch of its own, so that it
        // is told apart from Ctrl-C (which cancels the parent).
        let ctrl_c = self.token.clone();
        let stop = ctrl_c.child_token();
        if opts.fail_fast
            && let Some(c) = self.conn.as_mut()
        {
            c.set_cancel(stop.clone());
        }
        let mut reported = vec![false; jobs.len()];
        let start_next = |i: usize| {
            if let (Ok(mut b), Some(job)) = (bars.lock(), jobs.get(i))
                && let Some(b) = b.as_mut()
            {
                b.start_file(paths::base_name(&job.remote), job.size);
            }
        };
        start_next(0);
        let mut on_progress = |n: u64| {
            if let Ok(mut b) = bars.lock()
                && let Some(b) = b.as_mut()
            {
                b.overall_position(n);
            }
        };
        let mut on_done = |i: usize, r: Result<Transferred, ClientError>| {
            let Some(job) = jobs.get(i) else { return };
            reported[i] = true;
            let (source, dest) = job.names(upload);
            let Ok(mut rep) = shared.lock() else { return };
            let Ok(mut b) = bars.lock() else { return };
            if let Some(b) = b.as_mut() {
                b.file_done(job.size);
            }
            match r {
                Ok(t) => match finish_download(job, opts) {
                    None => record_done(output, lines, b.as_ref(), &mut rep, source, dest, &t),
                    Some(e) => record_failed(output, b.as_ref(), &mut rep, &source, &e),
                },
                Err(ClientError::Cancelled) => {
                    rep.interrupted = true;
                    rep.failed.push(fail(&source, &OpError::Interrupted));
                }
                Err(e) => {
                    let cmd = if upload { "put" } else { "get" };
                    let f = fail(&source, &about(cmd, &job.remote, OpError::Client(e)));
                    say_failure(output, b.as_ref(), &f);
                    rep.failed.push(f);
                    if opts.fail_fast {
                        stop.cancel();
                    }
                }
            }
            drop(b);
            start_next(i + 1);
        };
        let force = opts.force;
        let result = if upload {
            let items: Vec<(PathBuf, String)> = jobs
                .iter()
                .map(|j| (j.local.clone(), j.remote.clone()))
                .collect();
            self.transfer(async |c| {
                c.put_many(&items, force, &mut on_progress, &mut on_done)
                    .await
            })
        } else {
            let items: Vec<(String, PathBuf)> = jobs
                .iter()
                .map(|j| (j.remote.clone(), j.local.clone()))
                .collect();
            self.transfer(async |c| {
                c.get_many(&items, force, &mut on_progress, &mut on_done)
                    .await
            })
        };
        *report = shared.into_inner().unwrap_or_default();
        if opts.fail_fast && stop.is_cancelled() && !ctrl_c.is_cancelled() {
            // What -e kept from starting, or cancelled in flight.
            report.skipped += reported.iter().filter(|r| !**r).count();
        }
        if let Some(c) = self.conn.as_mut() {
            c.set_cancel(ctrl_c.clone());
        }
        if let Ok(Some(b)) = bars.into_inner() {
            b.finish();
        }
        match result {
            Ok(()) => Ok(()),
            Err(OpError::Interrupted) if !ctrl_c.is_cancelled() => Ok(()),
            Err(OpError::Interrupted) => {
                report.interrupted = true;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn conclude(
        &mut self,
        mut report: Report,
        run: Result<(), OpError>,
        started: Instant,
        many: bool,
    ) -> Result<Report, OpError> {
        if let Err(e) = run {
            report.seconds = started.elapsed().as_secs_f64();
            self.last_report = Some(report);
            return Err(e);
        }
        let result = finish(&mut report, started, many, self.output);
        self.last_report = Some(report.clone());
        result.map(|()| report)
    }
}

/// Applies `get -p` to a file that just arrived whole: the server's modification time and
/// permission bits. The file is verified and in place already, so a failure here is reported
/// as a failure of the command, but nothing is removed.
fn finish_download(job: &Job, opts: TransferOpts) -> Option<OpError> {
    if !opts.preserve {
        return None;
    }
    preserve(&job.local, job.mtime, job.mode)
        .err()
        .map(|e| ClientError::local(&job.local, e).into())
}

/// Sets a local file's modification time and permission bits (setuid, setgid and sticky are
/// never taken from a server). Opened without following a symlink: a download never writes
/// through one.
fn preserve(local: &Path, mtime: i64, mode: u32) -> std::io::Result<()> {
    let file = crate::platform::no_follow(std::fs::OpenOptions::new().write(true)).open(local)?;
    let when = if mtime >= 0 {
        std::time::UNIX_EPOCH + Duration::from_secs(mtime.unsigned_abs())
    } else {
        std::time::UNIX_EPOCH - Duration::from_secs(mtime.unsigned_abs())
    };
    file.set_times(
        std::fs::FileTimes::new()
            .set_modified(when)
            .set_accessed(when),
    )?;
    crate::platform::set_mode(&file, mode & 0o777)
}

fn record_done(
    output: Output,
    line: bool,
    bars: Option<&Bars>,
    report: &mut Report,
    source: String,
    dest: String,
    t: &Transferred,
) {
    if output == Output::Text && line {
        progress::out(
            bars,
            &transfer_line(&dest, t.size, t.resumed_from, t.elapsed, &t.sha256),
        );
    }
    report.bytes += t.size;
    report.files.push(FileReport {
        source,
        destination: dest,
        size: t.size,
        sha256: t.sha256.clone(),
        verified: true,
        seconds: t.elapsed.as_secs_f64(),
        resumed_from: t.resumed_from,
    });
}

/// A file that arrived whole but could not be finished locally (`get -p`): a failure of the
/// command, reported like any other; the file stays.
fn record_failed(
    output: Output,
    bars: Option<&Bars>,
    report: &mut Report,
    source: &str,
    e: &OpError,
) {
    let f = fail(source, e);
    say_failure(output, bars, &f);
    report.failed.push(f);
}

fn say_failure(output: Output, bars: Option<&Bars>, f: &FailReport) {
    if output == Output::Text {
        progress::err(bars, &format!("ferry: {}", failure_text(f)));
    }
}

/// A failure as one line for a terminal: the error alone if it names its item, else the item
/// first. Both parts are escaped already.
fn failure_text(f: &FailReport) -> String {
    let source = for_terminal(&f.source);
    if f.named || f.error.starts_with(&*source) {
        f.error.clone()
    } else {
        format!("{source}: {}", f.error)
    }
}

/// Turns the collected report into the command's result: summary printed (text mode, several
/// items), `Ok` only if every item verified.
fn finish(
    report: &mut Report,
    started: Instant,
    many: bool,
    output: Output,
) -> Result<(), OpError> {
    report.seconds = started.elapsed().as_secs_f64();
    if many && output == Output::Text {
        let line = summary_line(
            report.files.len(),
            report.bytes,
            Duration::from_secs_f64(report.seconds),
            report.failed.len(),
        );
        if report.interrupted {
            let line = line.replace(", all verified", "");
            println!("{line}, INTERRUPTED");
        } else if report.skipped > 0 {
            println!(
                "{line}, {} not transferred (stopped at the first failure)",
                report.skipped
            );
        } else {
            println!("{line}");
        }
    }
    if report.interrupted {
        return Err(OpError::Interrupted);
    }
    if report.failed.is_empty() {
        return Ok(());
    }
    if !many && report.failed.len() == 1 && report.files.is_empty() {
        // A single failed item: its own error says it best (and keeps its exit status).
        let f = &report.failed[0];
        return Err(OpError::Failed {
            message: failure_text(f),
            code: f.exit_code,
        });
    }
    Err(OpError::Partial {
        failed: report.failed.len(),
        total: report.failed.len() + report.files.len() + report.skipped,
        integrity: report.failed.iter().any(|f| f.exit_code == EXIT_INTEGRITY),
    })
}

fn fail(source: &str, e: &OpError) -> FailReport {
    FailReport {
        source: source.to_string(),
        error: e.for_terminal(),
        exit_code: e.exit_code(),
        interrupted: e.interrupted(),
        named: e.names_its_path(),
    }
}

fn fail_msg(source: &str, why: String) -> FailReport {
    FailReport {
        source: source.to_string(),
        error: why,
        exit_code: EXIT_FAILED,
        interrupted: false,
        named: false,
    }
}

/// Checks one name that came from the server before it becomes part of a local path: it must
/// be a single, ordinary component. Refuses `.`, `..`, empty names, `/`, `\`, NUL, a drive
/// prefix (`C:`) and control characters. This is what keeps a recursive `get` inside its
/// target (the scp CVE-2019-6111 class); it is also applied to local names before upload.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name == "." || name == ".." {
        return Err("'.' or '..'");
    }
    if name.contains('/') {
        return Err("contains '/'");
    }
    if name.contains('\\') {
        return Err("contains '\\'");
    }
    if name.contains('\0') {
        return Err("contains NUL");
    }
    let b = name.as_bytes();
    if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
        return Err("starts with a drive prefix");
    }
    if name.chars().any(char::is_control) {
        return Err("contains a control character");
    }
    Ok(())
}

fn local_name(p: &Path) -> Result<String, String> {
    let canonical;
    let name = match p.file_name() {
        Some(n) => n,
        None => {
            // `put .` or `put dir/..`: name the directory itself.
            canonical = std::fs::canonicalize(p).map_err(|e| e.to_string())?;
            canonical
                .file_name()
                .ok_or_else(|| "has no file name".to_string())?
        }
    };
    let name = name
        .to_str()
        .ok_or_else(|| "name is not valid UTF-8".to_string())?;
    check_name(name).map_err(|why| format!("name refused: {why}"))?;
    Ok(name.to_string())
}

/// Walks a local tree below `local` (mapped to `remote`). Symlinks to files are followed;
/// symlinks to directories are skipped (they could loop or leave the tree).
fn walk_local(local: &Path, remote: &str, plan: &mut Plan) {
    let mut queue = vec![(local.to_path_buf(), remote.to_string())];
    while let Some((ldir, rdir)) = queue.pop() {
        let mut items: Vec<_> = match std::fs::read_dir(&ldir) {
            Ok(rd) => rd.filter_map(Result::ok).collect(),
            Err(e) => {
                plan.refused.push(fail(
                    &ldir.display().to_string(),
                    &ClientError::local(&ldir, e).into(),
                ));
                continue;
            }
        };
        items.sort_by_key(|d| d.file_name());
        let mut subdirs = Vec::new();
        for item in items {
            let path = item.path();
            let shown = path.display().to_string();
            let Some(name) = item.file_name().to_str().map(str::to_string) else {
                plan.refused
                    .push(fail_msg(&shown, "name is not valid UTF-8: skipped".into()));
                continue;
            };
            if let Err(why) = check_name(&name) {
                plan.refused
                    .push(fail_msg(&shown, format!("name refused: {why}")));
                continue;
            }
            let rpath = paths::join(&rdir, &name);
            let Ok(lmeta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let meta = if lmeta.file_type().is_symlink() {
                match std::fs::metadata(&path) {
                    Ok(m) if m.is_file() => m,
                    _ => {
                        plan.refused.push(fail_msg(
                            &shown,
                            "symlink to a directory or nothing: skipped".into(),
                        ));
                        continue;
                    }
                }
            } else {
                lmeta
            };
            if meta.is_dir() {
                subdirs.push((path, rpath));
            } else if meta.is_file() {
                plan.jobs.push(Job {
                    local: path,
                    remote: rpath,
                    size: meta.len(),
                    mtime: 0,
                    mode: 0,
                });
            } else {
                plan.refused
                    .push(fail_msg(&shown, "not a regular file: skipped".into()));
            }
        }
        for (l, r) in subdirs.into_iter().rev() {
            plan.dirs.push((r.clone(), l.clone()));
            queue.push((l, r));
        }
    }
    plan.dirs.sort_by(|a, b| a.0.cmp(&b.0));
}

/// Creates a local directory for a download; an existing real directory is fine, anything
/// else there (a file, a symlink that could point anywhere) is refused.
fn make_local_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_dir() => Ok(()),
        Ok(m) if m.file_type().is_symlink() => Err(std::io::Error::other(
            "exists as a symlink; refusing to write through it",
        )),
        Ok(_) => Err(std::io::Error::from(std::io::ErrorKind::AlreadyExists)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir(dir),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_server_names_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "/etc",
            "a\\b",
            "..\\..\\x",
            "C:",
            "c:evil",
            "a\0b",
            "line\nbreak",
            "esc\x1b[2J",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in [
            "a",
            "...",
            "..a",
            "a..",
            " spaced name ",
            "-rf",
            "ünïcødé 文件",
            "1:2",
        ] {
            assert!(check_name(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn server_words_are_escaped_whole_and_ours_keep_their_lines() {
        let remote = OpError::Client(ClientError::Remote(WireError {
            code: ErrorCode::NotFound,
            message: "gone\n\x1b[2Jferry: fake line".into(),
        }));
        let text = remote.for_terminal();
        assert!(!text.contains('\n') && !text.contains('\x1b'), "{text}");
        let ours = OpError::Client(ClientError::Tls("line one\nline\x07two".into()));
        assert_eq!(ours.for_terminal(), "tls: line one\nline\\u{7}two");
    }

    #[test]
    fn local_dirs_refuse_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/tmp", &link).unwrap();
        assert!(make_local_dir(&link).is_err());
        let real = dir.path().join("real");
        make_local_dir(&real).unwrap();
        make_local_dir(&real).unwrap();
        std::fs::write(dir.path().join("file"), b"").unwrap();
        assert!(make_local_dir(&dir.path().join("file")).is_err());
    }
}
