//! One command line of the shell: words (shell quoting), flags, and the command it runs.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::client::format::{format_entry, human_bytes, mode_string, time_string, transfer_line};
use crate::client::ops::{
    HomeCount, OpError, Session, TransferOpts, about, about_with, has_glob, refused,
};
use crate::client::{ClientError, paths};
use crate::protocol::{Entry, EntryKind, ErrorCode, Usage};
use crate::sanitize::for_terminal;

/// Every command: name, usage, one line of help, more help (for `help CMD`).
pub const COMMANDS: &[(&str, &str, &str, &str)] = &[
    (
        "ls",
        "ls [-l|-1] [-a] [--json] [PATH|GLOB]...",
        "list: type, size, time, name",
        "Plain ls shows type and permissions, the exact size in bytes, the modification \
         time and the name. -l shows sizes for humans (1.2 MiB) and marks directories with \
         a slash; -1 shows names only; --json prints a JSON array. Names starting with a dot \
         are always shown; -a is accepted for habit and changes nothing. A GLOB (*.log, \
         2026-*) lists the matching entries themselves (a leading dot must be matched \
         explicitly).",
    ),
    (
        "cd",
        "cd [PATH]",
        "change the remote directory (/ is your home)",
        "Without PATH, back to your home.",
    ),
    ("pwd", "pwd", "print the remote directory", ""),
    (
        "lcd",
        "lcd [PATH]",
        "change the local directory",
        "Without PATH, to $HOME.",
    ),
    ("lpwd", "lpwd", "print the local directory", ""),
    (
        "lls",
        "lls [-l] [PATH]",
        "list a local directory",
        "Same columns as ls; -l for human sizes.",
    ),
    (
        "get",
        "get [-r] [-f] [-a] [-e] [-p] [-q] REMOTE... [LOCAL]",
        "download, verified; -r trees, -f overwrite, -a resume, -e stop at a failure",
        "REMOTE may be a glob (get 2026-*). With several files LOCAL must be a directory. \
         -r copies directories (empty ones too); one failed file does not stop the rest \
         unless -e is given, and a summary follows. Names sent by the server that could leave LOCAL ('..', '/', '\\', \
         drive prefixes, control characters) are refused. Nothing is written under a final \
         name before its SHA-256 matched. A new file gets mode 0666 less your umask; -p \
         gives it the server's modification time and permissions instead. -q leaves out the \
         line per file when several move (the summary stays). Ctrl-C cancels.",
    ),
    (
        "put",
        "put [-r] [-f] [-a] [-e] [-q] LOCAL... [REMOTE]",
        "upload, verified; -r trees, -f overwrite, -a resume, -e stop at a failure",
        "LOCAL may be a glob (put *.log logs/). With several files REMOTE must be a \
         directory. -r copies directories (empty ones too) and ends with a summary; one \
         failed file does not stop the rest unless -e is given (then nothing more starts, \
         the file being sent is cancelled, and files already sent whole may still be \
         committed). The \
         server commits each file only after the digests matched. -q leaves out the line \
         per file when several move (the summary stays). There is no -p: the protocol sends \
         no time or mode with an upload, so a file gets the time it arrived and mode 0600. \
         Ctrl-C cancels.",
    ),
    (
        "reget",
        "reget REMOTE [LOCAL]",
        "resume a download (get -a)",
        "The digests of the part already here and the server's first bytes are compared \
         before anything is appended; the whole file is verified at the end.",
    ),
    (
        "reput",
        "reput LOCAL [REMOTE]",
        "resume an upload (put -a)",
        "The server keeps an interrupted upload hidden, for you only; reput compares digests \
         of that prefix before sending the rest.",
    ),
    (
        "mkdir",
        "mkdir [-p] PATH...",
        "create remote directories; -p parents too",
        "",
    ),
    (
        "rm",
        "rm [-r] PATH|GLOB...",
        "remove remote files; -r directories too",
        "",
    ),
    (
        "rmdir",
        "rmdir PATH...",
        "remove empty remote directories",
        "",
    ),
    (
        "mv",
        "mv [-f] FROM... TO",
        "rename or move; into TO if it is a directory",
        "-f replaces an existing file.",
    ),
    (
        "cp",
        "cp [-f] FROM TO",
        "copy a remote file on the server (no download)",
        "",
    ),
    (
        "stat",
        "stat [--json] PATH...",
        "details of remote paths",
        "",
    ),
    (
        "sha256",
        "sha256 PATH...",
        "the server's SHA-256 of a file, without downloading it",
        "",
    ),
    (
        "df",
        "df",
        "space used, quota and free space on the server",
        "",
    ),
    ("help", "help [COMMAND]", "show this help", ""),
    (
        "quit",
        "quit | exit | bye",
        "end the session (Ctrl-D too)",
        "",
    ),
];

/// Other names of commands.
const ALIASES: &[(&str, &str)] = &[
    ("dir", "ls"),
    ("rename", "mv"),
    ("exit", "quit"),
    ("bye", "quit"),
    ("?", "help"),
];

/// Every name the completer offers.
pub fn command_names() -> impl Iterator<Item = &'static str> {
    COMMANDS.iter().map(|c| c.0).chain(["exit", "bye"])
}

/// What the loop does after a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    /// Read the next command.
    Continue,
    /// End the session.
    Quit,
}

/// Parsed flags: short letters and long words.
#[derive(Debug, Default)]
struct Flags {
    short: Vec<char>,
    long: Vec<String>,
}

impl Flags {
    fn has(&self, c: char) -> bool {
        self.short.contains(&c)
    }

    fn has_long(&self, s: &str) -> bool {
        self.long.iter().any(|l| l == s)
    }

    fn check(&self, cmd: &str, short: &str, long: &[&str]) -> Result<(), OpError> {
        if let Some(c) = self.short.iter().find(|c| !short.contains(**c)) {
            return Err(OpError::Usage(format!(
                "{cmd}: unknown option -{}",
                for_terminal(&c.to_string())
            )));
        }
        if let Some(l) = self.long.iter().find(|l| !long.contains(&l.as_str())) {
            return Err(OpError::Usage(format!(
                "{cmd}: unknown option --{}",
                for_terminal(l)
            )));
        }
        Ok(())
    }
}

/// Splits leading flags (`-x`, bundled `-rf`, `--word`) from arguments; `--` ends flags, so
/// `rm -- -rf` removes a file named `-rf`.
fn split_flags(args: &[String]) -> (Flags, &[String]) {
    let mut flags = Flags::default();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--" {
            i += 1;
            break;
        }
        if let Some(long) = a.strip_prefix("--") {
            flags.long.push(long.to_string());
        } else if a.len() > 1 && a.starts_with('-') {
            flags.short.extend(a[1..].chars());
        } else {
            break;
        }
        i += 1;
    }
    (flags, &args[i..])
}

fn usage(cmd: &str) -> OpError {
    let line = COMMANDS.iter().find(|c| c.0 == cmd).map_or(cmd, |c| c.1);
    OpError::Usage(format!("usage: {line}"))
}

fn not_a_directory(path: &str) -> OpError {
    refused(path, ErrorCode::NotADirectory, "not a directory", None)
}

/// Runs a transfer with `-q` (no line per file when several move) if `quiet`; the session's
/// own setting (`connect -q`) comes back afterwards.
fn quietly<T>(s: &mut Session, quiet: bool, f: impl FnOnce(&mut Session) -> T) -> T {
    let before = s.quiet;
    s.quiet |= quiet;
    let r = f(s);
    s.quiet = before;
    r
}

/// Names the path a failed `mv` or `cp` was about: the target if it exists, the source if
/// that is missing, both otherwise (the server's reply does not say which).
fn rename_error(s: &mut Session, cmd: &str, from: &str, to: &str, e: OpError) -> OpError {
    let code = match &e {
        OpError::Client(ClientError::Remote(w)) => w.code,
        _ => return e,
    };
    let path = match code {
        ErrorCode::AlreadyExists => to.to_string(),
        ErrorCode::NotFound if matches!(s.stat_opt(from), Ok(None)) => from.to_string(),
        ErrorCode::NotFound => {
            return about_with(to, e, "its directory does not exist (mkdir -p creates it)");
        }
        _ => format!("{from} -> {to}"),
    };
    about(cmd, &path, e)
}

/// The hint for a path the server did not find, when the user typed it from the root: `/`
/// is the home, not the server's root.
fn home_hint(arg: &str, path: &str, e: OpError) -> OpError {
    let not_found =
        matches!(&e, OpError::Client(ClientError::Remote(w)) if w.code == ErrorCode::NotFound);
    if not_found && arg.starts_with('/') {
        about_with(
            path,
            e,
            "paths start at your home: / is your home on the server",
        )
    } else {
        about("", path, e)
    }
}

/// Runs one command line.
pub fn execute(s: &mut Session, line: &str) -> Result<Flow, OpError> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(Flow::Continue);
    }
    let Some(words) = shlex::split(line) else {
        return Err(OpError::Usage("unbalanced quotes".into()));
    };
    let Some((cmd, args)) = words.split_first() else {
        return Ok(Flow::Continue);
    };
    let cmd = ALIASES
        .iter()
        .find(|(a, _)| a == cmd)
        .map_or(cmd.as_str(), |(_, c)| c);
    let (flags, args) = split_flags(args);
    match cmd {
        "ls" => {
            // -a and -h change nothing (dot files always show; sizes are exact or, with -l,
            // human); both are accepted because hands type them from habit.
            flags.check(cmd, "l1ha", &["json"])?;
            ls(s, &flags, args)?;
        }
        "cd" => {
            flags.check(cmd, "", &[])?;
            let path = match args {
                [] => "/".to_string(),
                [p] => s.resolve(p),
                _ => return Err(usage("cd")),
            };
            let entry = s
                .call(async |c| c.stat(&path).await)
                .map_err(|e| home_hint(args.first().map_or("", String::as_str), &path, e))?;
            if entry.kind != EntryKind::Dir {
                return Err(not_a_directory(&path));
            }
            s.cwd = path;
        }
        "pwd" => {
            flags.check(cmd, "", &[])?;
            println!("{}", for_terminal(&s.cwd));
        }
        "lcd" => {
            flags.check(cmd, "", &[])?;
            let dir = match args {
                [] => std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .ok_or_else(|| OpError::Usage("lcd: HOME is not set".into()))?,
                [p] => PathBuf::from(p),
                _ => return Err(usage("lcd")),
            };
            std::env::set_current_dir(&dir).map_err(|e| ClientError::local(&dir, e))?;
        }
        "lpwd" => {
            flags.check(cmd, "", &[])?;
            let cwd = std::env::current_dir().map_err(|e| ClientError::local(Path::new("."), e))?;
            println!("{}", for_terminal(&cwd.display().to_string()));
        }
        "lls" => {
            flags.check(cmd, "lh", &[])?;
            let dir = match args {
                [] => PathBuf::from("."),
                [p] => PathBuf::from(p),
                _ => return Err(usage("lls")),
            };
            let human = flags.has('l') || flags.has('h');
            let mut out = std::io::stdout().lock();
            for e in local_entries(&dir)? {
                let _ = writeln!(out, "{}", format_entry(&e, human));
            }
        }
        "get" | "reget" => {
            flags.check(cmd, "rfaepq", &[])?;
            let opts = TransferOpts {
                recursive: flags.has('r'),
                force: flags.has('f'),
                resume: flags.has('a') || cmd == "reget",
                fail_fast: flags.has('e'),
                preserve: flags.has('p'),
            };
            let (sources, dest) = match args {
                [] => return Err(usage(cmd)),
                [one] => (std::slice::from_ref(one), None),
                [rest @ .., last] => (rest, Some(Path::new(last))),
            };
            quietly(s, flags.has('q'), |s| s.get(sources, dest, opts))?;
        }
        "put" | "reput" => {
            // -p is let through to say why it cannot be done (sftp users type it by habit).
            flags.check(cmd, "rfaepq", &[])?;
            let opts = TransferOpts {
                recursive: flags.has('r'),
                force: flags.has('f'),
                resume: flags.has('a') || cmd == "reput",
                fail_fast: flags.has('e'),
                preserve: flags.has('p'),
            };
            let (sources, dest) = match args {
                [] => return Err(usage(cmd)),
                [one] => (std::slice::from_ref(one), None),
                [rest @ .., last] => (rest, Some(last.as_str())),
            };
            let r = quietly(s, flags.has('q'), |s| s.put(sources, dest, opts));
            s.generation += 1;
            r?;
        }
        "mkdir" => {
            flags.check(cmd, "p", &[])?;
            if args.is_empty() {
                return Err(usage(cmd));
            }
            s.generation += 1;
            for p in args {
                let path = s.resolve(p);
                if flags.has('p') {
                    s.mkdir_p(&path)?;
                } else {
                    s.call(async |c| c.mkdir(&path).await)
                        .map_err(|e| about("mkdir", &path, e))?;
                }
            }
        }
        "rm" => {
            flags.check(cmd, "rf", &[])?;
            if args.is_empty() {
                return Err(usage(cmd));
            }
            s.generation += 1;
            for p in args {
                for (path, entry) in s.expand_remote(p)? {
                    if flags.has('r') {
                        s.remove_tree(&path)?;
                    } else if entry.is_some_and(|e| e.kind == EntryKind::Dir) {
                        return Err(refused(
                            &path,
                            ErrorCode::IsADirectory,
                            "is a directory",
                            Some("use rm -r, or rmdir if it is empty"),
                        ));
                    } else {
                        s.call(async |c| c.remove(&path).await)
                            .map_err(|e| about("rm", &path, e))?;
                    }
                }
            }
        }
        "rmdir" => {
            flags.check(cmd, "", &[])?;
            if args.is_empty() {
                return Err(usage(cmd));
            }
            s.generation += 1;
            for p in args {
                let path = s.resolve(p);
                s.call(async |c| c.rmdir(&path).await)
                    .map_err(|e| about("rmdir", &path, e))?;
            }
        }
        "mv" => {
            flags.check(cmd, "f", &[])?;
            let [froms @ .., to] = args else {
                return Err(usage("mv"));
            };
            if froms.is_empty() {
                return Err(usage("mv"));
            }
            s.generation += 1;
            let mut sources = Vec::new();
            for f in froms {
                sources.extend(s.expand_remote(f)?.into_iter().map(|(p, _)| p));
            }
            let to_path = s.resolve(to);
            // `mv a dir/` and `mv a existing-dir` move into the directory, as mv(1) does.
            let into_dir = to.ends_with('/')
                || matches!(s.stat_opt(&to_path)?, Some(e) if e.kind == EntryKind::Dir);
            if sources.len() > 1 && !into_dir {
                return Err(not_a_directory(&to_path));
            }
            for from in sources {
                let dest = if into_dir {
                    paths::join(&to_path, paths::base_name(&from))
                } else {
                    to_path.clone()
                };
                let force = flags.has('f');
                s.call(async |c| c.rename(&from, &dest, force).await)
                    .map_err(|e| rename_error(s, "mv", &from, &dest, e))?;
            }
        }
        "cp" => {
            flags.check(cmd, "f", &[])?;
            let [from, to] = args else {
                return Err(usage("cp"));
            };
            s.generation += 1;
            let from = s.resolve(from);
            let mut dest = s.resolve(to);
            if to.ends_with('/')
                || matches!(s.stat_opt(&dest)?, Some(e) if e.kind == EntryKind::Dir)
            {
                dest = paths::join(&dest, paths::base_name(&from));
            }
            let force = flags.has('f');
            let t = s
                .call(async |c| c.copy(&from, &dest, force).await)
                .map_err(|e| rename_error(s, "cp", &from, &dest, e))?;
            println!("{}", transfer_line(&dest, t.size, 0, t.elapsed, &t.sha256));
        }
        "stat" => {
            flags.check(cmd, "", &["json"])?;
            if args.is_empty() {
                return Err(usage(cmd));
            }
            stat(s, args, flags.has_long("json"))?;
        }
        "sha256" => {
            flags.check(cmd, "", &[])?;
            if args.is_empty() {
                return Err(usage(cmd));
            }
            for a in args {
                for (path, _) in s.expand_remote(a)? {
                    let (_, digest) = s
                        .call(async |c| c.sha256(&path).await)
                        .map_err(|e| about("sha256", &path, e))?;
                    // The sha256sum layout, so the output can be checked with `sha256sum -c`.
                    println!("{digest}  {}", for_terminal(paths::base_name(&path)));
                }
            }
        }
        "df" => {
            flags.check(cmd, "h", &[])?;
            let u = s.call(async |c| c.usage().await)?;
            // The server counts usage only for users with a limit; otherwise list the home.
            let counted = match u.used_bytes {
                Some(_) => None,
                None => Some(s.count_home()?),
            };
            df(&u, counted);
        }
        "help" => {
            flags.check(cmd, "", &[])?;
            help(args.first().map(String::as_str))?;
        }
        "quit" => return Ok(Flow::Quit),
        other => {
            return Err(OpError::Usage(format!(
                "unknown command: {} (try help)",
                for_terminal(other)
            )));
        }
    }
    Ok(Flow::Continue)
}

fn df(u: &Usage, counted: Option<HomeCount>) {
    let show = |n: Option<u64>| n.map_or_else(|| "-".to_string(), human_bytes);
    let count = |n: Option<u64>| n.map_or_else(|| "-".to_string(), |n| n.to_string());
    match counted {
        Some(c) => println!(
            "used:  {}{} in {} files (counted by listing your home)",
            if c.complete { "" } else { "at least " },
            human_bytes(c.bytes),
            c.files
        ),
        None => println!(
            "used:  {} in {} files",
            show(u.used_bytes),
            count(u.used_files)
        ),
    }
    if u.quota_bytes.is_none() && u.quota_files.is_none() && u.max_file_size.is_none() {
        println!("quota: none (no limit on space, files or file size)");
    } else {
        println!(
            "quota: {}, {} files{}",
            u.quota_bytes
                .map_or_else(|| "none".to_string(), human_bytes),
            u.quota_files
                .map_or_else(|| "no limit on".to_string(), |n| n.to_string()),
            u.max_file_size
                .map(|m| format!(", largest file {}", human_bytes(m)))
                .unwrap_or_default()
        );
    }
    if let (Some(q), Some(used)) = (u.quota_bytes, u.used_bytes) {
        println!("left:  {}", human_bytes(q.saturating_sub(used)));
    }
    println!(
        "disk:  {} free of {}",
        show(u.disk_free_bytes),
        show(u.disk_total_bytes)
    );
}

fn ls(s: &mut Session, flags: &Flags, args: &[String]) -> Result<(), OpError> {
    let json = flags.has_long("json");
    let mut shown: Vec<(String, Entry)> = Vec::new();
    let targets: Vec<String> = if args.is_empty() {
        vec![s.cwd.clone()]
    } else {
        args.to_vec()
    };
    for arg in &targets {
        if has_glob(arg) {
            for (path, entry) in s.expand_remote(arg)? {
                let entry = match entry {
                    Some(e) => e,
                    None => s
                        .call(async |c| c.stat(&path).await)
                        .map_err(|e| about("ls", &path, e))?,
                };
                shown.push((path, entry));
            }
            continue;
        }
        let path = s.resolve(arg);
        let entry = s
            .call(async |c| c.stat(&path).await)
            .map_err(|e| home_hint(arg, &path, e))?;
        if entry.kind != EntryKind::Dir {
            shown.push((path, entry));
            continue;
        }
        for e in s.list(&path).map_err(|e| about("ls", &path, e))? {
            shown.push((paths::join(&path, &e.name), e));
        }
    }
    let mut out = std::io::stdout().lock();
    if json {
        let list: Vec<serde_json::Value> = shown.iter().map(|(p, e)| entry_json(p, e)).collect();
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&list).unwrap_or_default()
        );
        return Ok(());
    }
    let names_only = flags.has('1');
    let human = flags.has('l') || flags.has('h');
    for (_, e) in &shown {
        let _ = if names_only {
            writeln!(out, "{}", for_terminal(&e.name))
        } else {
            writeln!(out, "{}", format_entry(e, human))
        };
    }
    Ok(())
}

/// An entry as JSON, with its full remote path.
pub fn entry_json(path: &str, e: &Entry) -> serde_json::Value {
    let mut v = serde_json::to_value(e).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("path".into(), serde_json::Value::String(path.to_string()));
    }
    v
}

fn stat(s: &mut Session, args: &[String], json: bool) -> Result<(), OpError> {
    let mut all = Vec::new();
    for a in args {
        for (path, entry) in s.expand_remote(a)? {
            let entry = match entry {
                Some(e) => e,
                None => s
                    .call(async |c| c.stat(&path).await)
                    .map_err(|e| home_hint(a, &path, e))?,
            };
            all.push((path, entry));
        }
    }
    let mut out = std::io::stdout().lock();
    if json {
        let v: Vec<serde_json::Value> = all.iter().map(|(p, e)| entry_json(p, e)).collect();
        let v = if v.len() == 1 {
            v.into_iter().next().unwrap_or_default()
        } else {
            serde_json::Value::Array(v)
        };
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_default()
        );
        return Ok(());
    }
    for (path, e) in &all {
        let kind = match e.kind {
            EntryKind::File => "file",
            EntryKind::Dir => "directory",
            EntryKind::Symlink => "symlink",
            EntryKind::Other => "other",
        };
        let _ = writeln!(
            out,
            "  path: {}\n  type: {kind}\n  size: {} ({})\n  mode: {} ({:04o})\n mtime: {} ({})",
            for_terminal(path),
            e.size,
            human_bytes(e.size),
            mode_string(e.kind, e.mode),
            e.mode,
            time_string(e.mtime),
            e.mtime
        );
    }
    Ok(())
}

fn help(cmd: Option<&str>) -> Result<(), OpError> {
    let mut out = std::io::stdout().lock();
    match cmd {
        Some(c) => {
            let c = ALIASES.iter().find(|(a, _)| *a == c).map_or(c, |(_, t)| t);
            let (_, u, h, more) = COMMANDS
                .iter()
                .find(|x| x.0 == c)
                .ok_or_else(|| OpError::Usage(format!("no such command: {}", for_terminal(c))))?;
            let _ = writeln!(out, "{u}\n    {h}");
            if !more.is_empty() {
                let _ = writeln!(out, "\n{}", wrap(more, 78, "    "));
            }
        }
        None => {
            let width = COMMANDS.iter().map(|c| c.1.len()).max().unwrap_or(0);
            for (_, u, h, _) in COMMANDS {
                let _ = writeln!(out, "{u:<width$}  {h}");
            }
            let _ = writeln!(
                out,
                "\nPaths are relative to the remote (or local) directory; / is your home. \
                 Quote names with spaces.\nTab completes commands and paths; Ctrl-C cancels a \
                 transfer; Ctrl-D quits. help COMMAND says more."
            );
        }
    }
    Ok(())
}

fn wrap(text: &str, width: usize, indent: &str) -> String {
    let mut out = String::new();
    let mut line = String::from(indent);
    for word in text.split_whitespace() {
        if line.len() > indent.len() && line.len() + 1 + word.len() > width {
            out.push_str(&line);
            out.push('\n');
            line = String::from(indent);
        }
        if line.len() > indent.len() {
            line.push(' ');
        }
        line.push_str(word);
    }
    out.push_str(&line);
    out
}

/// A local directory's entries, sorted, in the same shape as remote ones.
fn local_entries(dir: &Path) -> Result<Vec<Entry>, ClientError> {
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
            mtime: crate::platform::mtime_secs(&meta),
            mode: crate::platform::mode_bits(&meta),
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
        let args: Vec<String> = ["-rf", "--json", "a", "-b"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (flags, rest) = split_flags(&args);
        assert_eq!(flags.short, vec!['r', 'f']);
        assert_eq!(flags.long, vec!["json".to_string()]);
        assert_eq!(rest, &args[2..]);
        let args: Vec<String> = ["--", "-name"].iter().map(|s| s.to_string()).collect();
        let (flags, rest) = split_flags(&args);
        assert!(flags.short.is_empty());
        assert_eq!(rest, &args[1..]);
    }

    #[test]
    fn help_covers_every_command() {
        for (name, usage, help, _) in COMMANDS {
            assert!(usage.starts_with(name), "{usage}");
            assert!(!help.is_empty());
        }
        assert!(wrap("a b c", 3, "").contains('\n'));
    }
}
