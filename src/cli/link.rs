//! `ferry link add|list|del`: drop links, kept in `links.toml` beside the users file
//! ([`crate::accounts::links`]), and the revocation `ferry user add|del` does.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use super::{Expiry, parse_expiry};
use anyhow::{Context, Result, bail};
use clap::{ArgGroup, Args, Subcommand};

use crate::accounts::links::{TomlLinks, links_path_beside};
use crate::accounts::tokens::format_time;
use crate::jail::{Jail, RemotePath, StorageError};
use crate::state::links::{
    Link, LinkError, LinkKind, LinkSpec, LinkStore, NewLink, issue, validate_note,
};
use crate::users::{self, UserDb};

/// The port in a link's URL when it comes from the certificate.
const DEFAULT_PORT: u16 = 7443;

/// The environment variable that gives the public URL when `--public-url` is absent.
const PUBLIC_URL_ENV: &str = "FERRY_PUBLIC_URL";

/// Longest `--public-url`.
const MAX_PUBLIC_URL_LEN: usize = 512;

#[derive(Debug, Subcommand)]
pub(super) enum LinkCommand {
    /// Add a drop link and print its URL once.
    #[command(
        group(ArgGroup::new("kind").required(true).args(["upload_only", "download"])),
        long_about = "Add a drop link and print its full URL once on stdout. With \
        --upload-only, anyone holding the URL can upload files into USER:/FOLDER and do \
        nothing else: no listing, no download, no overwrite (a taken name gets a new one). \
        With --download, anyone holding it can download USER:/PATH, a file; or, when PATH is \
        a folder, browse it and download any file beneath it (never above it), every file \
        counting toward one --max-downloads. Only the SHA-256 of its \
        token is kept (in links.toml beside the users file), so the URL cannot be shown again; \
        a running server accepts it at once.\n\n\
        The URL's host comes from --public-url (or FERRY_PUBLIC_URL), else from the server \
        certificate's first DNS name other than localhost, with port 7443. --expires takes \
        7d, 12h, 30m or never (default 7d). --password asks twice without echo; the holder \
        must give it too.\n\n\
        Examples:\n  URL=$(ferry link add alice:/inbox --upload-only --max-files 20 \
        --note 'Scans for the audit')\n  curl -T scan.pdf --cacert certs/ca.pem \"$URL/\"\n  \
        ferry link add alice:/reports/q3.pdf --download --max-downloads 3 --expires 2d\n  \
        ferry link add alice:/reports --download --max-downloads 20 --password"
    )]
    Add {
        /// USER:/FOLDER for an upload link, USER:/PATH for a download link.
        target: String,
        /// An upload-only link into the folder.
        #[arg(long)]
        upload_only: bool,
        /// A download link for the file or folder.
        #[arg(long)]
        download: bool,
        /// How long it lives: 7d, 12h, 30m, or never.
        #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = parse_expiry)]
        expires: Expiry,
        /// Most files uploaded through it.
        #[arg(long, value_name = "N", conflicts_with = "download", value_parser = parse_count)]
        max_files: Option<u64>,
        /// Most bytes uploaded through it, e.g. '2 GiB'.
        #[arg(long, value_name = "SIZE", conflicts_with = "download", value_parser = parse_bytes)]
        max_bytes: Option<u64>,
        /// Most downloads through it.
        #[arg(long, value_name = "N", conflicts_with = "upload_only", value_parser = parse_count)]
        max_downloads: Option<u64>,
        /// Ask for a password the holder must give too (twice, without echo).
        #[arg(long, conflicts_with = "password_stdin")]
        password: bool,
        /// Read that password from one line of stdin.
        #[arg(long)]
        password_stdin: bool,
        /// A note shown to the people you give it to (at most 200 characters, plain text).
        #[arg(long, value_name = "TEXT")]
        note: Option<String>,
        /// Create the folder (and its parents) in the user's home if it does not exist.
        #[arg(long, conflicts_with = "download")]
        create: bool,
        /// The URL the server is reached at, e.g. https://files.example.org:7443.
        #[arg(long, value_name = "URL")]
        public_url: Option<String>,
        /// The data root the server serves homes from (as `ferry serve --root`).
        #[arg(long, value_name = "DIR", default_value = "data")]
        root: PathBuf,
        /// The server certificate, read for its name when no public URL is given.
        #[arg(long, value_name = "FILE", default_value = "certs/server.pem")]
        cert: PathBuf,
        /// The homes are in an object store (as `ferry serve --storage s3 --s3-config FILE`):
        /// the folder is checked (and made, with --create) there. Needs --accounts.
        #[arg(long, value_name = "FILE")]
        s3_config: Option<PathBuf>,
        #[command(flatten)]
        files: LinkFiles,
    },
    /// List links (never their tokens).
    #[command(
        long_about = "List drop links: id, owner, kind, folder, expiry, limits with what is \
        used, whether a password is set, and the note. Neither the token nor its hash is \
        shown.\n\nExample:\n  ferry link list --user alice"
    )]
    List {
        /// Only this user's links.
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        #[command(flatten)]
        files: LinkFiles,
    },
    /// Delete (revoke) a link by its id.
    #[command(
        long_about = "Delete a link by its id (the 8 hex digits after `dl_` in its URL, as \
        `ferry link list` shows). A running server refuses it from the next request on; an \
        upload through it that is still running is not committed.\n\n\
        Example:\n  ferry link del 3fa9c2d1"
    )]
    Del {
        /// The link's id.
        id: String,
        #[command(flatten)]
        files: LinkFiles,
    },
}

#[derive(Debug, Args)]
pub(super) struct LinkFiles {
    /// The users file.
    #[arg(long = "users", value_name = "FILE", default_value = "users.toml")]
    users: PathBuf,
    /// The links file (default: links.toml beside the users file).
    #[arg(long = "links", value_name = "FILE")]
    links: Option<PathBuf>,
    /// Keep the links (and find the users) in PostgreSQL instead, as `ferry user --accounts`
    /// does: postgres://USER@HOST:PORT/DB. The password comes from PGPASSWORD or
    /// ?password_file=PATH, never from the command line.
    #[arg(long, value_name = "URL", conflicts_with_all = ["users", "links"])]
    accounts: Option<String>,
}

impl LinkFiles {
    /// The database's links, when `--accounts` names one.
    fn pg(&self, rt: &tokio::runtime::Runtime) -> Result<Option<crate::pg::links::PgLinks>> {
        let Some(url) = &self.accounts else {
            return Ok(None);
        };
        let cfg = super::token::pg_config(url)?;
        Ok(Some(rt.block_on(crate::pg::links::open(&cfg))?))
    }

    /// Where the links are, for messages.
    fn place(&self) -> String {
        match &self.accounts {
            Some(_) => "the accounts database".into(),
            None => self.links().display().to_string(),
        }
    }

    /// The account `user`, from the database or the users file.
    fn account(&self, rt: &tokio::runtime::Runtime, user: &str) -> Result<users::User> {
        let found = match &self.accounts {
            Some(url) => {
                let cfg = super::token::pg_config(url)?;
                let accounts = rt.block_on(crate::pg::accounts::open(&cfg))?;
                rt.block_on(crate::accounts::AccountStore::get(&accounts, user))?
            }
            None => UserDb::load(&self.users)?.get(user).cloned(),
        };
        match found {
            Some(u) => Ok(u),
            None => bail!(
                "no user `{}` in {}",
                user.escape_debug(),
                match &self.accounts {
                    Some(_) => "the accounts database".into(),
                    None => self.users.display().to_string(),
                }
            ),
        }
    }

    fn links(&self) -> PathBuf {
        self.links
            .clone()
            .unwrap_or_else(|| links_path_beside(&self.users))
    }
}

/// A count of at least 1 that every store can keep.
fn parse_count(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(n) if n >= 1 && n <= i64::MAX as u64 => Ok(n),
        _ => Err(format!("'{s}' is not a count from 1 up")),
    }
}

/// A size of at least one byte that every store can keep, as `ferry user` parses sizes.
fn parse_bytes(s: &str) -> Result<u64, String> {
    match users::parse_size(s) {
        Some(n) if n >= 1 && n <= i64::MAX as u64 => Ok(n),
        _ => Err(format!(
            "'{s}' is not a size of at least one byte (e.g. 500M, '10 GiB', 1000000)"
        )),
    }
}

pub(super) fn run(cmd: LinkCommand) -> Result<ExitCode> {
    match cmd {
        LinkCommand::Add {
            target,
            upload_only,
            download: _,
            expires,
            max_files,
            max_bytes,
            max_downloads,
            password,
            password_stdin,
            note,
            create,
            public_url,
            root,
            cert,
            s3_config,
            files,
        } => {
            let kind = if upload_only {
                LinkKind::Upload
            } else {
                LinkKind::Download
            };
            let add = AddArgs {
                target,
                kind,
                expires,
                max_files,
                max_bytes,
                max_downloads,
                ask_password: password || password_stdin,
                password_stdin,
                note,
                create,
                public_url,
                root,
                cert,
                s3_config,
            };
            add_link(add, &files)
        }
        LinkCommand::List { user, files } => {
            let rt = super::command_runtime()?;
            let links = match files.pg(&rt)? {
                Some(pg) => rt.block_on(pg.list(user.as_deref()))?,
                None => rt.block_on(TomlLinks::new(files.links()).list(user.as_deref()))?,
            };
            let now = SystemTime::now();
            let mut out = String::new();
            for l in &links {
                out.push_str(&list_line(l, now));
                out.push('\n');
            }
            print!("{out}");
            if links.is_empty() {
                eprintln!("no links in {}", files.place());
            }
            Ok(ExitCode::SUCCESS)
        }
        LinkCommand::Del { id, files } => {
            let id = id.parse()?;
            let rt = super::command_runtime()?;
            match files.pg(&rt)? {
                Some(pg) => rt.block_on(pg.revoke(id))?,
                None => rt.block_on(TomlLinks::new(files.links()).revoke(id))?,
            }
            eprintln!("deleted link {id} (a running server refuses it from the next request on)");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// One line of `ferry link list`: id, owner, kind, folder, expiry, limits and uses, password,
/// note (quoted, so where it ends is plain).
fn list_line(l: &Link, now: SystemTime) -> String {
    let expires = match l.expires {
        None => "never".to_owned(),
        Some(e) if e <= now => format!("{}(expired)", format_time(e)),
        Some(e) => format_time(e),
    };
    let of = |used: u64, max: Option<u64>| match max {
        Some(m) => format!("{used}/{m}"),
        None => format!("{used}/-"),
    };
    let uses = match l.kind {
        LinkKind::Upload => format!(
            "files={} bytes={}",
            of(l.used_files, l.max_files),
            of(l.used_bytes, l.max_bytes)
        ),
        LinkKind::Download | LinkKind::DownloadFolder => {
            format!("downloads={}", of(l.used_downloads, l.max_downloads))
        }
    };
    let mut line = format!(
        "{}  {:<16} {:<15} {}  {}  {}",
        l.id,
        l.owner,
        kind_words(l.kind),
        crate::sanitize::for_terminal(&l.folder),
        expires,
        uses
    );
    if l.password.is_some() {
        line.push_str("  password");
    }
    if let Some(note) = &l.note {
        line.push_str(&format!("  {:?}", note));
    }
    line
}

/// A kind as `ferry link list` and `add` show it.
fn kind_words(kind: LinkKind) -> &'static str {
    match kind {
        LinkKind::Upload => "upload",
        LinkKind::Download => "file download",
        LinkKind::DownloadFolder => "folder download",
    }
}

struct AddArgs {
    target: String,
    kind: LinkKind,
    expires: Expiry,
    max_files: Option<u64>,
    max_bytes: Option<u64>,
    max_downloads: Option<u64>,
    ask_password: bool,
    password_stdin: bool,
    note: Option<String>,
    create: bool,
    public_url: Option<String>,
    root: PathBuf,
    cert: PathBuf,
    s3_config: Option<PathBuf>,
}

fn add_link(a: AddArgs, files: &LinkFiles) -> Result<ExitCode> {
    let (user, path) = parse_target(&a.target)?;
    let note = a.note.filter(|n| !n.is_empty());
    if let Some(n) = &note {
        validate_note(n)?;
    }
    // The URL is worked out first: a link whose URL cannot be printed would be lost.
    let base = public_base(a.public_url.as_deref(), &a.cert)?;
    let rt = super::command_runtime()?;
    let account = files.account(&rt, &user)?;
    let home = account.home_dir(&a.root);
    let target = match &a.s3_config {
        Some(config) => {
            let Some(url) = &files.accounts else {
                bail!("--s3-config needs --accounts: the object store's state is in the database");
            };
            let cfg = super::token::pg_config(url)?;
            let pg = rt.block_on(crate::pg::connect(&cfg))?;
            rt.block_on(check_stored_target(
                config, &pg, &a.root, &home, &path, a.kind, a.create,
            ))?
        }
        None => check_target(&home, &path, a.kind, a.create)?,
    };
    // `--download` of a folder is a folder link: kept as its own kind, so the link never
    // serves more than what it was made for (a file replaced by a folder stays unserved).
    let kind = match (a.kind, target) {
        (LinkKind::Download, crate::domain::EntryKind::Dir) => LinkKind::DownloadFolder,
        (kind, _) => kind,
    };
    let password = if a.ask_password {
        let pw = users::read_new_password(a.password_stdin, false)?;
        Some(users::hash_password(&pw)?)
    } else {
        None
    };
    let spec = LinkSpec {
        owner: user.clone(),
        folder: path.to_string(),
        kind,
        ttl: a.expires.0,
        max_files: a.max_files,
        max_bytes: a.max_bytes,
        max_downloads: a.max_downloads,
        password,
        note,
    };
    let now = SystemTime::now();
    let (token, link) = match files.pg(&rt)? {
        Some(pg) => add_pg(&rt, &pg, spec, now)?,
        None => add_toml(files, &user, spec, now)?,
    };
    print_added(&a.cert, &base, kind, &user, &token, &link);
    Ok(ExitCode::SUCCESS)
}

/// Adds the link to the links file, the user checked again under its lock.
fn add_toml(
    files: &LinkFiles,
    user: &str,
    spec: LinkSpec,
    now: SystemTime,
) -> Result<(NewLink, Link)> {
    let store = TomlLinks::new(files.links());
    Ok(store.update(|table| {
        // The user is checked again under the links file's lock: `ferry user del` deletes the
        // user first and then revokes their links under this lock, so a link never outlives
        // its user's deletion.
        let db = UserDb::load(&files.users).map_err(|e| LinkError::invalid(e.to_string()))?;
        if db.get(user).is_none() {
            return Err(LinkError::invalid(format!(
                "no user `{}` in {}",
                user.escape_debug(),
                files.users.display()
            )));
        }
        let (token, link) = issue(spec, now, |id| table.get(id).is_some())?;
        table.insert(link.clone())?;
        Ok((token, link))
    })?)
}

/// Adds the link to the database, in the transaction that checks its owner is an account
/// there (see [`crate::pg::links::PgLinks::add_for_existing_user`]).
fn add_pg(
    rt: &tokio::runtime::Runtime,
    store: &crate::pg::links::PgLinks,
    spec: LinkSpec,
    now: SystemTime,
) -> Result<(NewLink, Link)> {
    // A drawn id that is taken is refused by the add; draw again a few times.
    let mut attempt = 0;
    loop {
        let (token, link) = issue(spec.clone(), now, |_| false)?;
        match rt.block_on(store.add_for_existing_user(&link)) {
            Ok(()) => return Ok((token, link)),
            Err(LinkError::AlreadyExists(_)) if attempt < 8 => attempt += 1,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Prints the new link's URL on stdout (the only time it is shown) and how to use it on
/// stderr.
fn print_added(cert: &Path, base: &str, kind: LinkKind, user: &str, token: &NewLink, link: &Link) {
    // A file link ends in the file's name, a folder link in `/`: see `link_path`.
    println!(
        "{base}{}",
        crate::frontend::http::drop::link_path(link, token.expose())
    );
    let until = link.expires.map_or_else(
        || "never expires".to_owned(),
        |e| format!("expires {}", format_time(e)),
    );
    let ca = cert.with_file_name("ca.pem");
    let cacert = if ca.is_file() {
        format!(" --cacert {}", ca.display())
    } else {
        String::new()
    };
    let how = match kind {
        LinkKind::Upload => format!("curl -T FILE{cacert} \"$URL/\""),
        LinkKind::Download => format!("curl -OJ{cacert} \"$URL\""),
        LinkKind::DownloadFolder => format!(
            "open it in a browser, or curl{cacert} \"$URL?format=json\" to list it and \
             curl -OJ{cacert} \"$URL\"NAME for one file"
        ),
    };
    eprintln!(
        "added {} link {} for {user}:{} ({until}); its URL is shown only this once. \
         With URL set to it: {how}",
        kind_words(kind),
        link.id,
        crate::sanitize::for_terminal(&link.folder),
    );
}

/// `USER:/PATH` (or `USER:PATH`) split into a valid user name and a validated path.
fn parse_target(target: &str) -> Result<(String, RemotePath)> {
    let Some((user, path)) = target.split_once(':') else {
        bail!(
            "`{}` is not USER:/FOLDER (e.g. alice:/inbox)",
            target.escape_debug()
        );
    };
    users::validate_name(user)?;
    let path = RemotePath::parse(path)
        .with_context(|| format!("`{}` is not a path in a home", path.escape_debug()))?;
    Ok((user.to_owned(), path))
}

/// [`check_target`] for homes in an object store (`--s3-config`), through the same
/// [`HomeStore`](crate::storage::HomeStore) the server opens homes from.
async fn check_stored_target(
    config: &Path,
    pg: &crate::pg::PgBackend,
    root: &Path,
    home: &Path,
    path: &RemotePath,
    kind: LinkKind,
    create: bool,
) -> Result<crate::domain::EntryKind> {
    use crate::domain::EntryKind;
    use crate::storage::HomeStore;
    let config = crate::storage::s3_homes::load_config(config)
        .map_err(|e| anyhow::anyhow!("--s3-config {e}"))?;
    let state = crate::storage::s3::S3State {
        locks: pg.name_locks(),
        digests: pg.digests(),
        partials: pg.partials(),
    };
    let homes = crate::storage::s3_homes::S3Homes::open(&config, state)
        .map_err(|e| anyhow::anyhow!("--s3-config: {e}"))?;
    let key = crate::server::login::home_key(root, home)
        .with_context(|| format!("the home {} is not beneath --root", home.display()))?;
    let storage = homes.open(&key).await?;
    let shown = crate::sanitize::for_terminal(&path.to_string()).into_owned();
    match storage.stat(path).await {
        Ok(e) if e.entry.kind == EntryKind::Dir => Ok(EntryKind::Dir),
        Ok(e) if kind == LinkKind::Download => Ok(e.entry.kind),
        Ok(_) => bail!("{shown} is a file; an upload link needs a folder"),
        Err(crate::storage::StorageError::NotFound) if create && kind == LinkKind::Upload => {
            let mut made = RemotePath::root();
            for part in path.to_string().split('/').filter(|p| !p.is_empty()) {
                made = made.join(part)?;
                match storage.mkdir(&made).await {
                    Ok(()) | Err(crate::storage::StorageError::AlreadyExists) => {}
                    Err(e) => return Err(e).with_context(|| format!("cannot make {shown}")),
                }
            }
            Ok(EntryKind::Dir)
        }
        Err(crate::storage::StorageError::NotFound) => {
            bail!("{shown} does not exist in the user's home (add --create to make it)")
        }
        Err(e) => Err(e).with_context(|| format!("cannot look at {shown}")),
    }
}

/// Checks that the link's target exists in the home (beneath it, as the server will open it):
/// a directory for an upload link (created with `create`), a file or a directory for a
/// download link. Says which it is.
fn check_target(
    home: &Path,
    path: &RemotePath,
    kind: LinkKind,
    create: bool,
) -> Result<crate::domain::EntryKind> {
    use crate::domain::EntryKind;
    // `--create` makes the user's home too, as their first login would (a fresh server's
    // users have none until then).
    let jail = Jail::open(home, create && kind == LinkKind::Upload)
        .with_context(|| format!("cannot open the user's home {}", home.display()))?;
    let shown = crate::sanitize::for_terminal(&path.to_string()).into_owned();
    match jail.stat(path) {
        Ok(e) if e.kind == EntryKind::Dir => Ok(EntryKind::Dir),
        Ok(e) if kind == LinkKind::Download && e.kind == EntryKind::File => Ok(EntryKind::File),
        Ok(_) if kind == LinkKind::Download => {
            bail!("{shown} in the user's home is not a file or folder")
        }
        Ok(_) => bail!("{shown} in the user's home is not a folder"),
        Err(StorageError::NotFound) if create && kind == LinkKind::Upload => {
            let mut at = RemotePath::root();
            for c in path.components() {
                at = at.join(c)?;
                match jail.mkdir(&at) {
                    Ok(()) | Err(StorageError::AlreadyExists) => {}
                    Err(e) => bail!("cannot create {shown} in the user's home: {e}"),
                }
            }
            match jail.stat(path) {
                Ok(e) if e.kind == EntryKind::Dir => {
                    eprintln!("created {shown} in {}", home.display());
                    Ok(EntryKind::Dir)
                }
                _ => bail!("cannot create {shown} in the user's home"),
            }
        }
        Err(StorageError::NotFound) => {
            if kind == LinkKind::Upload {
                bail!("{shown} does not exist in the user's home (--create makes it)")
            }
            bail!("{shown} does not exist in the user's home")
        }
        Err(e) => bail!("cannot look at {shown} in the user's home: {e}"),
    }
}

/// `https://HOST[:PORT][/PREFIX]` without a trailing `/`: from `--public-url`, else
/// `FERRY_PUBLIC_URL`, else the certificate's name and port 7443.
fn public_base(given: Option<&str>, cert: &Path) -> Result<String> {
    let from_env = std::env::var(PUBLIC_URL_ENV).ok().filter(|s| !s.is_empty());
    if let Some(url) = given.map(str::to_owned).or(from_env) {
        return check_public_url(&url);
    }
    let host = cert_host(cert).with_context(|| {
        format!(
            "cannot tell the server's name from {}: give --public-url https://HOST:PORT",
            cert.display()
        )
    })?;
    Ok(format!("https://{host}:{DEFAULT_PORT}"))
}

/// A public URL as links are printed under: `https://` and a host, no query, fragment, user
/// info or white space; a trailing `/` is dropped.
fn check_public_url(url: &str) -> Result<String> {
    let bad = |why: &str| anyhow::anyhow!("--public-url `{}` {why}", url.escape_debug());
    if url.len() > MAX_PUBLIC_URL_LEN {
        return Err(bad("is too long"));
    }
    let Some(rest) = url.strip_prefix("https://") else {
        return Err(bad("must start with https://"));
    };
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') {
        return Err(bad("names no host"));
    }
    if url
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#' | '@' | '\\' | '"'))
    {
        return Err(bad("must be a plain https://HOST[:PORT][/PATH]"));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// The name a link's URL uses from the server certificate: its first DNS name that is not
/// `localhost` or a wildcard, else `localhost` if it has that one.
fn cert_host(cert: &Path) -> Result<String> {
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::{FromDer, X509Certificate};

    let certs = crate::tls::load_certs(cert)?;
    let Some(leaf) = certs.first() else {
        bail!("no certificate in it");
    };
    let (_, leaf) = X509Certificate::from_der(leaf.as_ref())
        .map_err(|e| anyhow::anyhow!("the certificate does not parse: {e}"))?;
    let names: Vec<String> = match leaf.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let usable = |n: &&String| {
        !n.is_empty()
            && !n.contains('*')
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    };
    names
        .iter()
        .filter(usable)
        .find(|n| *n != "localhost")
        .or_else(|| names.iter().find(usable))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("the certificate names no DNS host"))
}

/// Revokes every link of `user` in the database `url`: what [`revoke_user_links`] does for
/// `ferry user add|del --accounts`. Returns how many went.
pub(super) fn revoke_user_links_pg(url: &str, user: &str) -> Result<usize> {
    let rt = super::command_runtime()?;
    let store = rt.block_on(crate::pg::links::open(&super::token::pg_config(url)?))?;
    rt.block_on(store.revoke_user(user))
        .with_context(|| format!("the links of {user} in the accounts database were not revoked"))
}

/// Revokes every link of `user` in `links` (default: beside `users`): run after `ferry user
/// del` has deleted the user, and after `ferry user add` made one, so that a user deleted and
/// made again under the same name never gets the old links back. Returns how many went.
pub(super) fn revoke_user_links(users: &Path, links: Option<&Path>, user: &str) -> Result<usize> {
    let path = links.map_or_else(|| links_path_beside(users), Path::to_path_buf);
    let store = TomlLinks::new(path);
    store
        .update(|table| Ok(table.remove_user(user)))
        .with_context(|| {
            format!(
                "the links of {user} in {} were not revoked",
                store.path().display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn expiries_take_units_or_never() {
        let d = |s: &str| parse_expiry(s).map(|e| e.0);
        assert_eq!(d("7d"), Ok(Some(Duration::from_secs(7 * 86_400))));
        assert_eq!(d("never"), Ok(None));
        for bad in ["", "7", "0d", "500ms", "36501d"] {
            assert!(d(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn public_urls_are_plain_https() {
        assert_eq!(
            check_public_url("https://files.example.org:8443/").unwrap(),
            "https://files.example.org:8443"
        );
        assert_eq!(
            check_public_url("https://example.org/ferry").unwrap(),
            "https://example.org/ferry"
        );
        for bad in [
            "http://example.org",
            "https://",
            "https://:7443",
            "https://a b",
            "https://x?y",
            "https://x#y",
            "https://u@x",
            "example.org",
        ] {
            assert!(check_public_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn targets_are_a_user_and_a_home_path() {
        let (u, p) = parse_target("alice:/in box/").unwrap();
        assert_eq!((u.as_str(), p.to_string().as_str()), ("alice", "/in box"));
        assert_eq!(parse_target("alice:inbox").unwrap().1.to_string(), "/inbox");
        assert_eq!(parse_target("alice:").unwrap().1.to_string(), "/");
        for bad in ["alice", "al/ice:/x", ":/x", "alice:/../x", "alice:/a\\b"] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn counts_and_sizes_fit_every_store() {
        assert_eq!(parse_count("3"), Ok(3));
        assert_eq!(parse_bytes("2 GiB"), Ok(2 << 30));
        for bad in ["0", "-1", "x", "9223372036854775808"] {
            assert!(parse_count(bad).is_err(), "{bad}");
        }
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("16 EiB").is_err());
    }
}
