//! The command line: clap definitions and the runners behind each subcommand. `main.rs` only
//! parses, calls [`run`], and prints the error chain once.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::accounts::toml::TomlAccounts;
use crate::accounts::{AccountStore, User};
use crate::client::config::ClientConfig;
use crate::client::ops::{OpError, Output, Session, TransferOpts};
use crate::client::{self, ClientError, open, shell::Shell};
use crate::users;

mod link;
mod receipt;
mod token;

/// The exit statuses of the client commands, for their --help.
macro_rules! exit_status_help {
    () => {
        "Exit status: 0 ok, 1 a command failed, 2 usage, 3 authentication failed, 4 connection \
         or TLS (also an untrusted or changed certificate), 5 integrity (a digest did not \
         match), 130 interrupted (Ctrl-C; the transfer was cancelled cleanly)."
    };
}

/// ferry: a secure file drop. One binary is both the server and the client.
#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    max_term_width = 100,
    after_help = concat!(
        "Examples:\n  ferry serve                          # dev certs and an admin user on first start\n",
        "  ferry connect admin@127.0.0.1 --ca certs/ca.pem\n",
        "  ferry put report.pdf admin@127.0.0.1:drops/\n\n",
        "Exit status: 0 ok, 1 a command failed, 2 usage, 3 authentication, 4 connection/TLS ",
        "(also an untrusted or changed certificate), 5 integrity (digest mismatch), 130 interrupted."
    )
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a development CA and a server certificate signed by it.
    #[command(
        long_about = "Create a development CA and a server certificate signed by it.\n\n\
        Writes ca.pem, server.pem (leaf + CA) and server.key (mode 0600) into DIR, and the CA's \
        key into DIR/ca/ca.key (mode 0600), which the server never reads. The certificate is \
        valid for localhost, 127.0.0.1 and ::1 plus every --host, for 397 days; the CA for two \
        years, and only for those names (name constraints). Clients trust it with --ca \
        DIR/ca.pem. Existing files are kept: --force issues a new server certificate with the \
        same CA, --new-ca replaces the CA too. DIR/receipt.key (mode 0600), the Ed25519 key that \
        signs upload receipts, is made when missing and never replaced, not even by --force or \
        --new-ca (see `ferry receipt`).\n\nExamples:\n  ferry certs --host \
        files.example.org --host 192.0.2.10\n  ferry certs --force     # renew the server \
        certificate, same CA"
    )]
    Certs(CertsArgs),
    /// Manage the users file: add, passwd, set, del, list, recount.
    #[command(
        subcommand,
        long_about = "Manage the users file: add, passwd, set, del, list, recount. Every command takes \
        --users FILE (default users.toml), or --accounts postgres://USER@HOST:PORT/DB for users \
        kept in PostgreSQL (password from PGPASSWORD). Passwords are stored as argon2id hashes. \
        A running server notices the change at the next login: no signal is needed.\n\n\
        Examples:\n  ferry user add alice\n  ferry user list --users /etc/ferry/users.toml\n  \
        PGPASSWORD=... ferry user list --accounts 'postgres://ferry@db.internal/ferry?sslmode=verify-full'"
    )]
    User(UserCommand),
    /// Manage API tokens for curl and scripts: add, list, del.
    #[command(
        subcommand,
        long_about = "Manage API tokens, which let curl and scripts act for a user without a \
        password: `Authorization: Bearer <token>`. Tokens live in tokens.toml beside the users \
        file (--tokens FILE to choose another); only their SHA-256 is kept. A running server \
        sees a change at the next request.\n\n\
        Examples:\n  ferry token add ci --user alice --expires 30d\n  ferry token list\n  \
        ferry token del 3fa9c2d1"
    )]
    Token(token::TokenCommand),
    /// Manage drop links, URLs that let anyone upload into one folder: add, list, del.
    #[command(
        subcommand,
        long_about = "Manage drop links: a URL with which anyone holding it can upload into one \
        folder of a user's home and do nothing else (--upload-only), or download one file or \
        folder (--download). Links live in links.toml beside the users file (--links FILE to \
        choose another); only the SHA-256 of each token is kept. A running server sees a \
        change at the next request.\n\n\
        Examples:\n  ferry link add alice:/inbox --upload-only --max-files 20\n  \
        ferry link list\n  ferry link del 3fa9c2d1"
    )]
    Link(link::LinkCommand),
    /// Run the server.
    #[command(
        long_about = "Run the server: TLS 1.3 on one port, users from the users file, each \
        confined to a home directory under the root.\n\n\
        On a fresh checkout it needs no other step: missing dev certificates are created in \
        certs/, and a missing users file is created with one user, 'admin', whose random password \
        is written to USERS.admin-password (mode 0600) beside it, and shown on stderr only \
        if that is a terminal.\n\nA changed users file (`ferry user ...`) is reloaded at the \
        next login.\n\nSignals: SIGINT/SIGTERM stop gracefully; SIGHUP reloads the users \
        file and the certificate (each kept as it was if the new one does not load); sessions \
        go on.\n\nExample:\n  ferry serve --listen 0.0.0.0:7443 --users users.toml --root data"
    )]
    Serve(Box<ServeArgs>),
    /// Open an interactive session (or run commands from stdin or a batch file).
    #[command(long_about = concat!("Open a session with a server.\n\n\
        On a terminal this is an interactive shell with a `ferry> ` prompt: line editing, \
        history, Tab completion of commands and local and remote paths, progress bars, Ctrl-C \
        to cancel a transfer, Ctrl-D to quit (type `help`). When stdin is not a terminal, or \
        with -b, commands are read one per line; the first failing command ends the session \
        with a non-zero status (a line starting with '-' may fail).\n\n\
        TARGET is USER@HOST[:PORT] or an alias from ~/.config/ferry/config.toml (see the \
        README). The password comes from --password-file, FERRY_PASSWORD, or a prompt \
        without echo. A certificate no trusted CA signed is checked against \
        ~/.config/ferry/known_hosts; on first contact you are asked (or give \
        --accept-fingerprint).\n\n\
        Examples:\n  ferry connect alice@files.example.org --ca certs/ca.pem\n  \
        ferry connect work                     # an alias from config.toml\n  \
        printf 'put report.pdf\\nls\\n' | FERRY_PASSWORD=... ferry connect alice@127.0.0.1\n\n",
        exit_status_help!()))]
    Connect(ConnectArgs),
    /// Download files, scp-style: ferry get USER@HOST:REMOTE [LOCAL].
    #[command(long_about = concat!("Download files, scp-style, verified by SHA-256.\n\n\
        REMOTE is relative to your home and may be a glob (quote it: 'logs/2026-*'). LOCAL \
        defaults to the current directory; with several files it must be a directory. \
        Existing local files are kept unless -f. -r copies directory trees; names from the \
        server that could leave LOCAL are refused. The exit status is 0 only if every file \
        arrived and verified.\n\n\
        Examples:\n  ferry get alice@files.example.org:report.pdf\n  \
        ferry get -r -P 8443 alice@files.example.org:photos ./backup/\n  \
        ferry get --json work:'logs/*.log' logs/\n\n",
        exit_status_help!()))]
    Get(GetArgs),
    /// Upload files, scp-style: ferry put LOCAL... USER@HOST:REMOTE.
    #[command(long_about = concat!("Upload files, scp-style, verified by SHA-256.\n\n\
        LOCAL may be a glob; REMOTE is relative to your home (USER@HOST: is the home itself) \
        and must be a directory when several files go. The server commits each file only \
        after the digests matched, and never replaces one unless -f. -r copies directory \
        trees. The exit status is 0 only if every file was committed and verified.\n\n\
        Examples:\n  ferry put build.tar.gz alice@files.example.org:drops/\n  \
        ferry put -r site/ work:www\n  \
        FERRY_PASSWORD=... ferry put --json -q *.log ci@127.0.0.1:logs/\n\n",
        exit_status_help!()))]
    Put(PutArgs),
    /// List a remote directory: ferry ls USER@HOST:[PATH].
    #[command(long_about = concat!("List a remote directory (or the files a glob matches).\n\n\
        Shows type and permissions, exact size, modification time and name; -l shows human \
        sizes, -1 names only, --json a JSON array (name, kind, size, mtime, mode, path).\n\n\
        Examples:\n  ferry ls alice@files.example.org:\n  \
        ferry ls -l work:photos\n  ferry ls --json -P 8443 alice@127.0.0.1:'logs/*.log'\n\n",
        exit_status_help!()))]
    Ls(LsArgs),
    /// Verify a signed upload receipt offline; print the receipt key for senders.
    #[command(
        subcommand,
        long_about = "Signed upload receipts: every upload through the web or a drop link \
        returns one, signed with the server's receipt key (certs/receipt.key).\n\n\
        Examples:\n  ferry receipt verify report.ferry-receipt.json --key receipt-key.jwk \
        --file report.pdf\n  ferry receipt key --jwk > receipt-key.jwk"
    )]
    Receipt(receipt::ReceiptCommand),
}

#[derive(Debug, Args)]
struct CertsArgs {
    /// Directory to write the files into.
    #[arg(long, value_name = "DIR", default_value = "certs")]
    dir: PathBuf,
    /// Extra DNS name or IP address for the server certificate (repeatable).
    #[arg(long = "host", value_name = "NAME")]
    hosts: Vec<String>,
    /// Issue a new server certificate (for the --host names given now) with the existing CA,
    /// replacing server.pem and server.key; clients that trust ca.pem keep working.
    #[arg(long)]
    force: bool,
    /// Make a new CA too, replacing every file: each client's copy of ca.pem must then be
    /// replaced.
    #[arg(long)]
    new_ca: bool,
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Add a user (asks for the password twice, without echo).
    #[command(
        long_about = "Add a user. The password is asked twice without echo (again if the two \
        differ), or read from one line of stdin with --password-stdin. It must have at least 12 \
        characters unless --allow-weak, and is stored as an argon2id hash. A running server \
        sees the change at the next login; no signal is needed.\n\n\
        Examples:\n  ferry user add alice\n  ferry user add bob --read-only --home /srv/share\n  \
        ferry user add carol --quota-bytes '10 GiB' --quota-files 10000 --max-file-size 1G\n  \
        echo \"$PW\" | ferry user add ci --password-stdin"
    )]
    Add {
        /// User name.
        name: String,
        #[command(flatten)]
        file: UsersFileArg,
        /// Home directory (default: <root>/<name>; relative paths are relative to the root).
        #[arg(long, value_name = "PATH")]
        home: Option<PathBuf>,
        /// The user may list and download, never change anything.
        #[arg(long)]
        read_only: bool,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        password: NewPasswordArgs,
    },
    /// Change a user's password.
    #[command(
        long_about = "Change a user's password. A running server sees it at the next login \
        (no signal needed); sessions already logged in go on.\n\n\
        Example:\n  ferry user passwd alice"
    )]
    Passwd {
        /// User name.
        name: String,
        #[command(flatten)]
        file: UsersFileArg,
        #[command(flatten)]
        password: NewPasswordArgs,
    },
    /// Change a user's home, access or limits.
    #[command(
        long_about = "Change a user's home, access, quotas or largest upload. A limit given as \
        'none' is removed (unlimited). A running server applies the change at the user's next \
        login; sessions already logged in keep what they logged in with.\n\n\
        Examples:\n  ferry user set carol --quota-bytes '20 GiB'\n  \
        ferry user set carol --quota-files none --read-write\n  \
        ferry user set bob --default-home"
    )]
    #[command(override_usage = "ferry user set NAME [--users FILE] CHANGE...")]
    #[command(group(clap::ArgGroup::new("change").multiple(true).required(true)
        .args(["home", "default_home", "read_only", "read_write", "quota_bytes", "quota_files",
               "max_file_size"])))]
    Set {
        /// User name.
        name: String,
        #[command(flatten)]
        file: UsersFileArg,
        /// Home directory (relative paths are relative to the root).
        #[arg(long, value_name = "PATH", conflicts_with = "default_home")]
        home: Option<PathBuf>,
        /// Back to the default home, <root>/<name>.
        #[arg(long)]
        default_home: bool,
        /// The user may list and download, never change anything.
        #[arg(long, conflicts_with = "read_write")]
        read_only: bool,
        /// The user may upload and change files again.
        #[arg(long)]
        read_write: bool,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Delete a user (their files stay).
    #[command(
        long_about = "Delete a user from the users file. Their home directory and files \
        are left alone. A running server refuses the user from the next login on.\n\n\
        Example:\n  ferry user del alice"
    )]
    Del {
        /// User name.
        name: String,
        #[command(flatten)]
        file: UsersFileArg,
        /// The tokens file whose tokens of the user are revoked too (default: tokens.toml
        /// beside the users file).
        #[arg(long, value_name = "FILE")]
        tokens: Option<PathBuf>,
        /// The links file whose links of the user are revoked too (default: links.toml
        /// beside the users file).
        #[arg(long, value_name = "FILE")]
        links: Option<PathBuf>,
    },
    /// Count a user's usage again (a shared accounts database).
    #[command(
        long_about = "Count a user's usage for quotas again, from what their home holds. \
        Needs --accounts: nodes sharing a database count a home once and then follow every \
        change made through ferry, so files put into the store by other means (or taken out) \
        are seen only by a new count. The count is made at the user's next login, by the node \
        that logs them in, once no other node has had a session of the home for 90 s (a walk \
        must not run under another node's changes). With a users file there is nothing to do: \
        a server counts a home again at the first login after its last session ended.\n\n\
        Example:\n  PGPASSWORD=... ferry user recount alice --accounts postgres://ferry@db/ferry"
    )]
    Recount {
        /// User name.
        name: String,
        #[command(flatten)]
        file: UsersFileArg,
    },
    /// List users.
    #[command(
        long_about = "List the users: name, access, home, and for a user with limits the byte \
        and file quotas and the largest upload ('-' is unlimited).\n\nExample:\n  ferry user list --users /etc/ferry/users.toml"
    )]
    List {
        #[command(flatten)]
        file: UsersFileArg,
    },
}

/// A limit on the command line: a value, or `none` to remove it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    Set(u64),
    None,
}

impl Limit {
    fn into_change(self) -> Option<u64> {
        match self {
            Limit::Set(n) => Some(n),
            Limit::None => None,
        }
    }
}

fn parse_size_limit(s: &str) -> Result<Limit, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(Limit::None);
    }
    users::parse_size(s)
        .map(Limit::Set)
        .ok_or_else(|| format!("'{s}' is not a size (e.g. 500M, '10 GiB', 1000000) or 'none'"))
}

fn parse_count_limit(s: &str) -> Result<Limit, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(Limit::None);
    }
    s.parse()
        .map(Limit::Set)
        .map_err(|_| format!("'{s}' is not a number of files or 'none'"))
}

/// Quotas of `user add` and `user set`.
#[derive(Debug, Args)]
struct LimitArgs {
    /// Most bytes the user's files may take, e.g. '10 GiB'; 'none' for no limit.
    #[arg(long, value_name = "SIZE", value_parser = parse_size_limit)]
    quota_bytes: Option<Limit>,
    /// Most files and directories the user may have; 'none' for no limit.
    #[arg(long, value_name = "N", value_parser = parse_count_limit)]
    quota_files: Option<Limit>,
    /// Largest single upload, e.g. 1G; 'none' for no limit.
    #[arg(long, value_name = "SIZE", value_parser = parse_size_limit)]
    max_file_size: Option<Limit>,
}

impl LimitArgs {
    fn apply(&self, change: &mut users::UserChange) {
        change.quota_bytes = self.quota_bytes.map(Limit::into_change);
        change.quota_files = self.quota_files.map(Limit::into_change);
        change.max_file_size = self.max_file_size.map(Limit::into_change);
    }
}

/// How `user add` and `user passwd` get the new password.
#[derive(Debug, Args)]
struct NewPasswordArgs {
    /// Read the password from one line of stdin.
    #[arg(long)]
    password_stdin: bool,
    /// Accept a password shorter than 12 characters (for throwaway test accounts).
    #[arg(long)]
    allow_weak: bool,
}

impl NewPasswordArgs {
    fn read(&self) -> Result<users::Password, users::UsersError> {
        users::read_new_password(self.password_stdin, self.allow_weak)
    }
}

#[derive(Debug, Args)]
struct UsersFileArg {
    /// The users file.
    #[arg(long = "users", value_name = "FILE", default_value = "users.toml")]
    users: PathBuf,
    /// Keep the users in PostgreSQL instead: postgres://USER@HOST:PORT/DB. The password comes
    /// from PGPASSWORD or ?password_file=PATH, never from the command line; a database off
    /// this machine needs ?sslmode=verify-full (or an explicit ?sslmode=disable).
    #[arg(long, value_name = "URL", conflicts_with = "users")]
    accounts: Option<String>,
}

impl UsersFileArg {
    /// The store these options name: the users file (read now if `load`, else at the first
    /// read), or the database.
    fn store(&self, rt: &tokio::runtime::Runtime, load: bool) -> Result<Arc<dyn AccountStore>> {
        let Some(url) = &self.accounts else {
            return Ok(if load {
                Arc::new(TomlAccounts::load(&self.users)?)
            } else {
                Arc::new(TomlAccounts::new(self.users.clone()))
            });
        };
        let cfg = crate::pg::PgConfig::from_url(url)?;
        if cfg.url_has_password() {
            bail!(
                "--accounts: put the password in PGPASSWORD or ?password_file=PATH, not in the \
                 URL (a command line shows in process lists)"
            );
        }
        Ok(Arc::new(rt.block_on(crate::pg::accounts::open(&cfg))?))
    }

    /// Where the users are, for messages.
    fn place(&self) -> String {
        match &self.accounts {
            Some(_) => "the accounts database".into(),
            None => self.users.display().to_string(),
        }
    }
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address and port to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7443")]
    listen: SocketAddr,
    /// The users file (created with one admin user if missing).
    #[arg(long, value_name = "FILE", default_value = "users.toml")]
    users: PathBuf,
    /// Directory that holds the users' homes.
    #[arg(long, value_name = "DIR", default_value = "data")]
    root: PathBuf,
    /// Server certificate chain (PEM).
    #[arg(long, value_name = "FILE", default_value = "certs/server.pem")]
    cert: PathBuf,
    /// Server private key (PEM).
    #[arg(long, value_name = "FILE", default_value = "certs/server.key")]
    key: PathBuf,
    /// Log format on stderr: text, or json (one object per line).
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Connections served at once.
    #[arg(long, value_name = "N", default_value_t = 512)]
    max_connections: usize,
    /// Connections at once from one IPv4 address or IPv6 /64.
    #[arg(long, value_name = "N", default_value_t = 20)]
    max_connections_per_source: usize,
    /// Connections not logged in yet, as sshd's MaxStartups: from START on, new ones from a
    /// source that already has one are dropped with RATE % probability rising to 100 % at
    /// FULL; at FULL a newcomer evicts the oldest of the source holding the most.
    #[arg(long, value_name = "START:RATE:FULL", default_value = "32:30:128")]
    max_startups: crate::server::prelogin::Startups,
    /// The login window while START or more connections are not logged in.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    login_timeout_under_pressure: Duration,
    /// Logged-in sessions at once per user.
    #[arg(long, value_name = "N", default_value_t = 16)]
    max_sessions_per_user: usize,
    /// Password checks (argon2, ~19 MiB each) at once [default: number of CPU cores].
    #[arg(long, value_name = "N")]
    auth_concurrency: Option<usize>,
    /// Longest a login waits for a password check slot before it is answered `busy`.
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = parse_duration)]
    auth_queue_timeout: Duration,
    /// Failed logins allowed on one connection before it is closed.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    max_auth_attempts: u32,
    /// From TCP accept to a finished TLS handshake.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    handshake_timeout: Duration,
    /// From the handshake to a successful login.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    login_timeout: Duration,
    /// Longest wait for the next request of a logged-in session.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Longest a transfer may go without progress.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    stall_timeout: Duration,
    /// Longest wait for the TLS close of a session that ends.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    close_timeout: Duration,
    /// How long transfers in flight may finish after SIGINT/SIGTERM.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    shutdown_grace: Duration,
    /// Interrupted uploads kept for resume are removed after this long untouched.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    partial_ttl: Duration,
    /// Do not penalise sources for failed logins, protocol errors and timeouts.
    #[arg(long)]
    no_penalties: bool,
    /// Never penalise this network or address, e.g. 10.0.0.0/8 (repeatable).
    #[arg(long, value_name = "NET")]
    penalty_exempt: Vec<crate::server::penalty::IpNet>,
    /// Expect a PROXY protocol v1/v2 header (as HAProxy sends it) before TLS, and use the
    /// client address it names for limits, penalties and logs. Only behind a balancer; needs
    /// --proxy-from.
    #[arg(long, requires = "proxy_from")]
    proxy_protocol: bool,
    /// A balancer's address or network trusted to send PROXY headers (repeatable). With
    /// --proxy-protocol, connections from anywhere else are refused.
    #[arg(long, value_name = "NET", requires = "proxy_protocol")]
    proxy_from: Vec<crate::server::penalty::IpNet>,
    /// Longest wait for a balancer's PROXY header.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    proxy_header_timeout: Duration,
    /// Speak only the ferry protocol on the port: no HTTPS for browsers and curl.
    #[arg(long)]
    no_web: bool,
    /// The API tokens file (`ferry token add`) [default: tokens.toml beside the users file].
    #[arg(long, value_name = "FILE")]
    tokens: Option<PathBuf>,
    /// The drop links file (`ferry link add`) [default: links.toml beside the users file].
    #[arg(long, value_name = "FILE")]
    links: Option<PathBuf>,
    /// The address senders use, e.g. https://files.example.org:7443: named in upload
    /// receipts [default: https://localhost:PORT for a loopback listener, else ADDR:PORT].
    #[arg(long, value_name = "URL", env = "FERRY_PUBLIC_URL")]
    public_url: Option<String>,
    /// Keep users and the state nodes share (quota counters, penalties, kept partials, name
    /// reservations) in PostgreSQL: postgres://USER@HOST:PORT/DB, for several nodes behind
    /// a balancer (docs/DEPLOY.md). The password comes from PGPASSWORD or
    /// ?password_file=PATH, never from the command line. A database off this machine needs
    /// ?sslmode=verify-full (TLS, its certificate checked; &sslrootcert=CA.pem) or an explicit
    /// ?sslmode=disable. The schema is made at start.
    #[arg(long, value_name = "URL", conflicts_with_all = ["users", "tokens", "links"])]
    accounts: Option<String>,
    /// Database connections this node keeps at most [default: 16, or ?pool_size= in the URL].
    #[arg(long, value_name = "N", requires = "accounts", value_parser = clap::value_parser!(u32).range(1..=1024))]
    db_pool_size: Option<u32>,
    /// Longest a login or transfer waits for the database, each of: a free connection, a
    /// new one, a statement; then it fails cleanly [default: 2s, 3s, 5s, or the URL's
    /// wait_timeout, connect_timeout and statement_timeout].
    #[arg(long, value_name = "DURATION", requires = "accounts", value_parser = parse_duration)]
    db_timeout: Option<Duration>,
    /// Where the users' homes live: `local` (under --root) or `s3` (an S3-compatible object
    /// store, configured by --s3-config; needs --accounts, which holds what S3 cannot).
    #[arg(long, value_name = "KIND", default_value = "local", value_parser = ["local", "s3"])]
    storage: String,
    /// The object store for --storage s3: a TOML file with endpoint, region, bucket, an
    /// optional prefix and credentials_file (or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY).
    #[arg(long, value_name = "FILE")]
    s3_config: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics for operators, e.g. 127.0.0.1:9464
    /// [default: off]. Plain HTTP with no TLS and no authentication: loopback only, unless
    /// --metrics-allow-remote.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Let --metrics-listen bind an address other than loopback (a private network behind a
    /// firewall): anyone who reaches the port reads the metrics.
    #[arg(long, requires = "metrics_listen")]
    metrics_allow_remote: bool,
}

/// How a browser on this machine reaches a server listening on `addr`: an unspecified
/// address is reached through loopback, and the dev certificate names `localhost`.
fn web_authority(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() || addr.ip().is_loopback() {
        format!("localhost:{}", addr.port())
    } else {
        addr.to_string()
    }
}

/// The `host:port` of a public URL (`https://files.example.org:7443/` or without the
/// scheme); the port defaults to 443 for `https://`.
fn public_authority(url: &str) -> Result<String> {
    let rest = url.strip_prefix("https://").unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or_default();
    let valid = !authority.is_empty()
        && authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    if !valid || url.starts_with("http://") {
        bail!("--public-url {url:?}: expected https://HOST[:PORT]");
    }
    let has_port = authority.rsplit_once(':').is_some_and(|(h, p)| {
        !h.ends_with(':')
            && p.bytes().all(|b| b.is_ascii_digit())
            && !p.is_empty()
            && !authority.ends_with(']')
    });
    Ok(if has_port {
        authority.to_string()
    } else {
        format!("{authority}:443")
    })
}

/// A lifetime from the command line (`ferry token add --expires`, `ferry link add
/// --expires`): `None` is `never`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Expiry(pub(crate) Option<Duration>);

/// The longest lifetime that is not `never`.
pub(crate) const MAX_EXPIRY: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Parses `never` or a duration with a unit (`90d`, `12h`, `30m`, `45s`), through
/// [`parse_duration`]; a bare number or zero is refused (a credential that expires at once, or a
/// number whose unit the reader must guess, is a mistake).
fn parse_expiry(s: &str) -> Result<Expiry, String> {
    let s = s.trim();
    if s == "never" {
        return Ok(Expiry(None));
    }
    if s.ends_with(|c: char| c.is_ascii_digit()) || s.ends_with("ms") {
        return Err(format!("'{s}' needs a unit: e.g. 7d, 12h, 30m, or never"));
    }
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("it must live longer than 0s (or say never)".into());
    }
    if d > MAX_EXPIRY {
        return Err(format!("'{s}' is more than 100 years: say never"));
    }
    Ok(Expiry(Some(d)))
}

/// Parses `90`, `90s`, `5m`, `2h`, `1d` (a bare number is seconds).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (e.g. 30s, 5m, 2h)"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => return Ok(Duration::from_millis(n)),
        "m" | "min" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{s}' (use s, m, h or d)"
            ));
        }
    };
    Ok(Duration::from_secs(secs))
}

#[derive(Debug, Args)]
struct ConnectArgs {
    /// USER@HOST[:PORT] (IPv6 as USER@[::1]:PORT), or an alias from config.toml.
    #[arg(value_name = "TARGET")]
    target: String,
    #[command(flatten)]
    conn: ConnOpts,
    /// Read commands from FILE ('-' for stdin) instead of a terminal.
    #[arg(short = 'b', long = "batch", value_name = "FILE")]
    batch: Option<PathBuf>,
    /// The port as ssh spells it: the same as -P.
    #[arg(short = 'p', value_name = "PORT", hide = true, conflicts_with = "port")]
    ssh_port: Option<u16>,
}

/// Options of every command that connects.
#[derive(Debug, Args)]
struct ConnOpts {
    /// Port (instead of HOST:PORT; `connect` also takes ssh's -p).
    #[arg(short = 'P', long, value_name = "PORT")]
    port: Option<u16>,
    /// CA certificate(s) to trust instead of the system roots.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Trust and pin this certificate if the host is not known yet (SHA256:<64 hex>).
    #[arg(long, value_name = "SHA256:HEX")]
    accept_fingerprint: Option<String>,
    /// Read the password from the first line of FILE.
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// No progress bars, and no line per file when several move (the summary stays).
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Debug, Args)]
struct GetArgs {
    /// [USER@]HOST[:PORT]:REMOTE (REMOTE relative to your home; a glob is allowed).
    #[arg(value_name = "USER@HOST:REMOTE")]
    remote: String,
    /// Local file or directory (default: the current directory).
    #[arg(value_name = "LOCAL")]
    local: Option<PathBuf>,
    #[command(flatten)]
    transfer: TransferFlags,
    #[command(flatten)]
    conn: ConnOpts,
}

#[derive(Debug, Args)]
struct PutArgs {
    /// Local files or directories (a glob is allowed).
    #[arg(value_name = "LOCAL", num_args = 1.., required = true)]
    locals: Vec<String>,
    /// [USER@]HOST[:PORT]:REMOTE (REMOTE relative to your home; USER@HOST: is the home itself).
    #[arg(value_name = "USER@HOST:REMOTE", required = true)]
    remote: String,
    #[command(flatten)]
    transfer: TransferFlags,
    #[command(flatten)]
    conn: ConnOpts,
}

/// The options `get` and `put` share.
#[derive(Debug, Args)]
struct TransferFlags {
    /// Copy directories recursively.
    #[arg(short, long)]
    recursive: bool,
    /// Replace existing files at the destination.
    #[arg(short, long)]
    force: bool,
    /// Resume a partial transfer (the part already there is verified first).
    #[arg(short = 'a', long = "resume")]
    resume: bool,
    /// Stop at the first failed file (by default the others are still tried).
    #[arg(short = 'e', long)]
    fail_fast: bool,
    /// Print the result as JSON (files, sizes, digests, failures).
    #[arg(long)]
    json: bool,
    /// get: give each file the server's modification time and permissions (put cannot: the
    /// protocol sends neither with an upload, and says so).
    #[arg(short = 'p', long)]
    preserve: bool,
}

impl TransferFlags {
    fn opts(&self) -> TransferOpts {
        TransferOpts {
            recursive: self.recursive,
            force: self.force,
            resume: self.resume,
            fail_fast: self.fail_fast,
            preserve: self.preserve,
        }
    }
}

#[derive(Debug, Args)]
struct LsArgs {
    /// [USER@]HOST[:PORT]:[PATH] (a glob is allowed).
    #[arg(value_name = "USER@HOST:[PATH]")]
    remote: String,
    /// Human sizes.
    #[arg(short = 'l')]
    long: bool,
    /// Names only.
    #[arg(short = '1')]
    names: bool,
    /// Accepted for habit: names starting with a dot are always listed.
    #[arg(short = 'a')]
    all: bool,
    /// Print a JSON array.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    conn: ConnOpts,
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    if !matches!(cli.command, Command::Serve(_)) {
        // Only the server catches SIGHUP; anything else ends on it as usual (see
        // [`hold_sighup`]), also for one that came in while the command line was parsed.
        release_sighup();
    }
    match cli.command {
        Command::Certs(a) => certs(a),
        Command::User(u) => user(u),
        Command::Token(t) => token::run(t),
        Command::Link(l) => link::run(l),
        Command::Serve(a) => serve(*a),
        Command::Connect(a) => connect(a),
        Command::Get(a) => oneshot_get(a),
        Command::Put(a) => oneshot_put(a),
        Command::Ls(a) => oneshot_ls(a),
        Command::Receipt(r) => receipt::run(r),
    }
}

fn certs(a: CertsArgs) -> Result<ExitCode> {
    use crate::certs::{self, CertError, CertPaths};
    let paths = CertPaths::in_dir(&a.dir);
    let keep_ca = a.force && !a.new_ca && paths.ca_cert.exists();
    let result = if keep_ca {
        certs::reissue_leaf(&a.dir, &a.hosts)
    } else {
        certs::generate(&a.dir, &a.hosts, a.force || a.new_ca)
    };
    let g = match result {
        Ok(g) => g,
        Err(e @ CertError::Exists { .. }) => bail!(
            "{e}\n(--force issues a new server certificate with the same CA, so clients keep \
             working; --new-ca replaces the CA too, and every client's copy of {} must then \
             be replaced)",
            paths.ca_cert.display()
        ),
        Err(e) => return Err(e.into()),
    };
    let date =
        |t: std::time::SystemTime| chrono::DateTime::<chrono::Utc>::from(t).format("%Y-%m-%d");
    if keep_ca {
        println!(
            "kept the CA {} (clients need no change)",
            g.paths.ca_cert.display()
        );
    } else {
        println!("wrote {}", g.paths.ca_cert.display());
        println!(
            "wrote {} (private: the server never reads it; keep it secret, or off the server)",
            g.paths.ca_key.display()
        );
    }
    println!("wrote {}", g.paths.server_cert.display());
    println!("wrote {} (private)", g.paths.server_key.display());
    // The receipt key is made once and kept through --force and --new-ca: receipts signed
    // with it must go on verifying.
    let (receipt_key, made) = crate::receipt::ReceiptKey::load_or_create(&a.dir)?;
    println!(
        "{} {} (private: signs upload receipts; receipt key {})",
        if made { "wrote" } else { "kept" },
        crate::receipt::key_path(&a.dir).display(),
        receipt_key.fingerprint()
    );
    println!("names: {}", g.names.join(", "));
    println!(
        "server certificate valid until {}, CA until {}",
        date(g.leaf_not_after),
        date(g.ca_not_after)
    );
    println!("server certificate fingerprint: {}", g.fingerprint);
    println!("clients trust it with: --ca {}", g.paths.ca_cert.display());
    if a.new_ca {
        eprintln!(
            "warning: this is a new CA: every client that trusted the old {} must be given \
             the new one, or it will refuse the server",
            g.paths.ca_cert.display()
        );
    }
    if keep_ca && g.leaf_not_after < std::time::SystemTime::now() + certs::SERVER_VALIDITY / 2 {
        eprintln!(
            "note: the CA expires on {}, and the server certificate with it; make a new CA \
             with --new-ca before then",
            date(g.ca_not_after)
        );
    }
    if a.force || a.new_ca {
        eprintln!("a running server uses the new certificate after SIGHUP or a restart");
    }
    Ok(ExitCode::SUCCESS)
}

fn user(cmd: UserCommand) -> Result<ExitCode> {
    // The account store is async (a database store answers over the network); a small
    // runtime on this thread serves the one command.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cmd {
        UserCommand::Add {
            name,
            file,
            home,
            read_only,
            limits,
            password,
        } => {
            users::validate_name(&name)?;
            // The database is opened once, before the password is asked (a database that is
            // down is said at once); the users file is read now only for this check.
            let pg_store = match file.accounts {
                Some(_) => Some(file.store(&rt, true)?),
                None => None,
            };
            if let Ok(store) = pg_store.clone().map_or_else(|| file.store(&rt, true), Ok)
                && matches!(rt.block_on(store.get(&name)), Ok(Some(_)))
            {
                bail!("user {name} already exists in {}", file.place());
            }
            let limit = |l: Option<Limit>| l.and_then(Limit::into_change);
            let mut user = User {
                home,
                read_only,
                quota_bytes: limit(limits.quota_bytes),
                quota_files: limit(limits.quota_files),
                max_file_size: limit(limits.max_file_size),
                ..User::new(name.clone(), String::new())
            };
            let password = password.read()?;
            user.password_hash = users::hash_password(&password)?;
            let store = match pg_store {
                Some(store) => store,
                None => file.store(&rt, false)?,
            };
            rt.block_on(store.add(&user))?;
            // A user deleted by hand and made again must not get their old tokens back.
            let (tokens, links) = match &file.accounts {
                Some(url) => (
                    token::revoke_user_tokens_pg(url, &name),
                    link::revoke_user_links_pg(url, &name),
                ),
                None => (
                    token::revoke_user_tokens(&file.users, None, &name),
                    link::revoke_user_links(&file.users, None, &name),
                ),
            };
            for e in [tokens.err(), links.err()].into_iter().flatten() {
                eprintln!("warning: {e:#}");
            }
            eprintln!(
                "added user {name} to {} (a running server sees it at the next login)",
                file.place()
            );
        }
        UserCommand::Passwd {
            name,
            file,
            password,
        } => {
            let store = file.store(&rt, true)?;
            if rt.block_on(store.get(&name))?.is_none() {
                bail!("no user {name} in {}", file.place());
            }
            let password = password.read()?;
            let hash = users::hash_password(&password)?;
            rt.block_on(store.passwd(&name, &hash))?;
            eprintln!(
                "changed the password of {name} (in force from the next login; sessions \
                 already open go on)"
            );
        }
        UserCommand::Set {
            name,
            file,
            home,
            default_home,
            read_only,
            read_write,
            limits,
        } => {
            let mut change = users::UserChange::default();
            if let Some(home) = home {
                change.home = Some(Some(home));
            } else if default_home {
                change.home = Some(None);
            }
            if read_only || read_write {
                change.read_only = Some(read_only);
            }
            limits.apply(&mut change);
            rt.block_on(file.store(&rt, false)?.set(&name, &change))?;
            eprintln!("changed user {name} (in force from their next login)");
        }
        UserCommand::Del {
            name,
            file,
            tokens,
            links,
        } => {
            rt.block_on(file.store(&rt, false)?.del(&name))?;
            // After the user is gone, so that no `ferry token add` can slip in between.
            let revoked = match &file.accounts {
                Some(url) => token::revoke_user_tokens_pg(url, &name),
                None => token::revoke_user_tokens(&file.users, tokens.as_deref(), &name),
            }
            .context("the user was deleted")?;
            eprintln!("deleted user {name} (their files were left in place)");
            if revoked > 0 {
                eprintln!("revoked their {revoked} API token(s)");
            }
            let links = match &file.accounts {
                Some(url) => link::revoke_user_links_pg(url, &name),
                None => link::revoke_user_links(&file.users, links.as_deref(), &name),
            }
            .context("the user was deleted")?;
            if links > 0 {
                eprintln!("revoked their {links} drop link(s)");
            }
        }
        UserCommand::Recount { name, file } => {
            let Some(url) = &file.accounts else {
                bail!(
                    "a server with a users file counts a home again at the first login after \
                     the home's last session ended: nothing to ask for (recount is for \
                     --accounts postgres://...)"
                );
            };
            let cfg = token::pg_config(url)?;
            if !rt.block_on(crate::pg::request_recount(&cfg, &name))? {
                bail!("no user {name} in the accounts database");
            }
            eprintln!(
                "{name}'s usage will be counted again at their next login, once no other node \
                 has had a session of their home for 90 s"
            );
        }
        UserCommand::List { file } => {
            let store = file.store(&rt, true)?;
            let users = rt.block_on(store.list())?;
            let mut out = std::io::stdout().lock();
            for u in &users {
                let access = if u.read_only {
                    "read-only"
                } else {
                    "read-write"
                };
                let home = u
                    .home
                    .as_ref()
                    .map_or_else(|| format!("<root>/{}", u.name), |h| h.display().to_string());
                write!(out, "{:<20} {:<10} {}", u.name, access, home)?;
                if u.has_limits() {
                    // A limit that is not set is said in words, not as a bare `-`.
                    let bytes = u
                        .quota_bytes
                        .map_or_else(|| "no space limit".into(), human_size);
                    let files = u
                        .quota_files
                        .map_or_else(|| "no file limit".into(), |n| format!("{n} files"));
                    let max = u.max_file_size.map_or_else(
                        || "no max file size".into(),
                        |n| format!("max file: {}", human_size(n)),
                    );
                    write!(out, "  quota: {bytes}, {files}; {max}")?;
                }
                writeln!(out)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Bytes in binary units, exact where the number is whole (`10 GiB`, `1536 B`, `1.5 KiB`).
fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    let mut value = n as f64;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value.fract() == 0.0 {
        format!("{value} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn serve(a: ServeArgs) -> Result<ExitCode> {
    // Refused before anything is made or printed.
    if let Some(at) = a.metrics_listen {
        crate::server::admin::check_address(at, a.metrics_allow_remote)?;
    }
    // SIGHUP's default action ends the process, and an admin (or a config tool) may send it
    // the moment the server was started, while dev certificates are made or the users file
    // is loaded. `main` blocked it first thing (see [`hold_sighup`]); the reloader's handler
    // goes in before anything is loaded, and only then is SIGHUP let through: one that came
    // in meanwhile is delivered to the handler and reloads what was just loaded, harmlessly.
    crate::server::tune_allocator();
    let rt = runtime()?;
    let hup = {
        let _entered = rt.enter();
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot install the SIGHUP handler")?
    };
    release_sighup();
    init_server_logging(a.log_format == "json");
    match raise_open_files_limit() {
        Ok((soft, hard)) => tracing::info!(soft, hard, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
    prepare_certs(&a.cert, &a.key)?;
    // Receipts are signed with a key of their own beside the certificates (made on first
    // start; `ferry certs` makes it too).
    let receipt_key = if a.no_web {
        None
    } else {
        let dir = a
            .cert
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let (key, created) = crate::receipt::ReceiptKey::load_or_create(dir)
            .context("cannot load or create the receipt key")?;
        if created {
            tracing::info!(
                path = %crate::receipt::key_path(dir).display(),
                "created the receipt signing key (private; keep it for as long as receipts \
                 must verify)"
            );
        }
        Some(Arc::new(key))
    };
    let public_name = match &a.public_url {
        Some(url) => Some(public_authority(url)?),
        None => None,
    };
    let backends = rt.block_on(prepare_backends(&a))?;
    let accounts = match &backends.pg {
        Some(_) => None,
        None => Some(prepare_users(&rt, &a.users)?),
    };
    create_private_dir(&a.root)
        .with_context(|| format!("cannot create data root {}", a.root.display()))?;
    let alpn = crate::server::alpn_offered(!a.no_web);
    let tls = crate::tls::server_config(&a.cert, &a.key, alpn)?;
    let fingerprint = crate::tls::load_certs(&a.cert)?
        .first()
        .map(crate::tls::fingerprint)
        .unwrap_or_default();

    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("cannot listen on {}", a.listen))?;
        let addr = listener.local_addr()?;
        // The store checks the users file before each login: `ferry user` edits take effect
        // at the next one, without SIGHUP. The database tells every node of a change.
        let limits = limits_of(&a);
        let server = match (&backends.pg, &accounts) {
            (Some(pg), _) => {
                let state = crate::server::SharedState {
                    ledger: pg.ledger(),
                    shared_ledger: true,
                    penalties: limits
                        .penalties
                        .as_ref()
                        .map(|c| pg.penalties(penalty_settings(c))),
                    homes: backends.homes.clone(),
                    metrics: Some(Arc::clone(&backends.metrics)),
                };
                // Expired leases, claims and penalties are ignored by every read already;
                // this keeps the tables small.
                let _sweeper = pg.spawn_sweeper(Duration::from_secs(60));
                crate::server::Server::with_state(tls, pg.accounts(), state, a.root.clone(), limits)
            }
            (None, Some(users)) => {
                let store: Arc<dyn AccountStore> = Arc::new(users.clone());
                crate::server::Server::with_accounts(tls, store, a.root.clone(), limits)
            }
            (None, None) => bail!("no users file and no accounts database"),
        };
        if let Some(pg) = &backends.pg {
            // Shared by every node: a link or token made or revoked anywhere is in force
            // everywhere at its next use.
            server.set_tokens(pg.tokens());
            server.set_links(pg.links());
            // A browser's session and a tus upload work through whichever node its next
            // connection lands on. Set before the first request, so always accepted.
            server.set_web_sessions(pg.web_sessions());
            if !server.set_upload_sessions(pg.upload_sessions()) {
                bail!("the resumable-upload records were in use before the database was set");
            }
        } else {
            let tokens = match &a.tokens {
                Some(path) => crate::accounts::tokens::TomlTokens::new(path.clone()),
                None => crate::accounts::tokens::TomlTokens::beside_users(&a.users),
            };
            server.set_tokens(Arc::new(tokens));
            let links = match &a.links {
                Some(path) => crate::accounts::links::TomlLinks::new(path.clone()),
                None => crate::accounts::links::TomlLinks::beside_users(&a.users),
            };
            server.set_links(Arc::new(links));
        }
        let receipt_fingerprint = receipt_key.as_ref().map(|k| k.fingerprint());
        if let Some(key) = receipt_key {
            let name = public_name.unwrap_or_else(|| web_authority(addr));
            server.set_receipt_key(key, name);
        }
        if let Some(at) = a.metrics_listen {
            let admin = crate::server::admin::bind(at, a.metrics_allow_remote).await?;
            println!(
                "metrics: http://{}/metrics (no TLS, no authentication)",
                admin.local_addr()?
            );
            let serving =
                crate::server::admin::serve(Arc::clone(&server), admin, std::future::pending());
            tokio::spawn(serving);
        }
        println!("ferry listening on {addr}");
        if !a.no_web {
            println!(
                "web: https://{} (browsers and curl, same port)",
                web_authority(addr)
            );
        }
        println!("server certificate fingerprint: {fingerprint}");
        if let Some(fp) = receipt_fingerprint {
            println!("receipt key: {fp}");
        }
        std::io::stdout().flush()?;
        match &backends.pg {
            Some(_) => tracing::info!(%addr, accounts = "postgres", storage = %a.storage, "serving"),
            None => tracing::info!(%addr, users = %a.users.display(), root = %a.root.display(), "serving"),
        }
        let reload = tokio::spawn(reload_on_sighup(
            hup,
            Arc::clone(&server),
            accounts,
            a.cert.clone(),
            a.key.clone(),
            alpn,
        ));
        crate::server::run(server, listener, shutdown_signal()).await?;
        reload.abort();
        Ok::<_, anyhow::Error>(())
    })?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Raises the soft limit on open files (`RLIMIT_NOFILE`) to the hard one: every connection,
/// file in transfer and directory being walked holds a descriptor, and the usual soft default
/// (1024) is far below what a busy server needs, while the hard limit is the admin's choice.
/// Returns the limits (soft, hard) now in force.
fn raise_open_files_limit() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct, which `lim` is.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit struct, which `raised` is.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim = raised;
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// The server's limits from the command line.
fn limits_of(a: &ServeArgs) -> crate::server::Limits {
    let defaults = crate::server::Limits::default();
    crate::server::Limits {
        handshake_timeout: a.handshake_timeout,
        login_timeout: a.login_timeout,
        idle_timeout: a.idle_timeout,
        stall_timeout: a.stall_timeout,
        max_connections: a.max_connections,
        max_connections_per_source: a.max_connections_per_source,
        startups: crate::server::prelogin::Startups {
            pressure_login_timeout: a.login_timeout_under_pressure,
            ..a.max_startups
        },
        max_sessions_per_user: a.max_sessions_per_user,
        auth_concurrency: a.auth_concurrency.unwrap_or(defaults.auth_concurrency),
        auth_queue_timeout: a.auth_queue_timeout,
        max_auth_attempts: a.max_auth_attempts,
        close_timeout: a.close_timeout,
        shutdown_grace: a.shutdown_grace,
        partial_ttl: a.partial_ttl,
        penalties: (!a.no_penalties).then(|| crate::server::penalty::PenaltyConfig {
            exempt: a.penalty_exempt.clone(),
            ..crate::server::penalty::PenaltyConfig::default()
        }),
        proxy_protocol: a.proxy_protocol,
        proxy_from: a.proxy_from.clone(),
        proxy_header_timeout: a.proxy_header_timeout,
    }
}

fn init_server_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        // One JSON object per line; audit events carry target "ferry::audit".
        builder.json().with_current_span(false).try_init()
    } else {
        // Every value quoted and escaped: a user name or path cannot forge a field.
        builder
            .fmt_fields(crate::logfmt::QuotedFields)
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
}

/// First start: when neither the certificate nor the key exists, create dev certificates in
/// the certificate's directory. Half a pair is an error: something is wrong and guessing
/// could overwrite a real key.
fn prepare_certs(cert: &Path, key: &Path) -> Result<()> {
    let (has_cert, has_key) = (cert.exists(), key.exists());
    match (has_cert, has_key) {
        (true, true) => Ok(()),
        (false, false) => {
            let dir = cert
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let paths = crate::certs::CertPaths::in_dir(dir);
            if paths.server_cert != cert || paths.server_key != key {
                bail!(
                    "{} and {} do not exist (create them, or run `ferry certs --dir DIR`)",
                    cert.display(),
                    key.display()
                );
            }
            let g = crate::certs::generate(dir, &[], false)?;
            eprintln!(
                "created development certificates in {}; clients trust them with --ca {}",
                dir.display(),
                g.paths.ca_cert.display()
            );
            Ok(())
        }
        (true, false) => bail!(
            "certificate {} exists but key {} does not",
            cert.display(),
            key.display()
        ),
        (false, true) => bail!(
            "key {} exists but certificate {} does not",
            key.display(),
            cert.display()
        ),
    }
}

/// What `ferry serve` keeps outside this node: the accounts database, and where homes live
/// when not under the data root.
struct Backends {
    pg: Option<crate::pg::PgBackend>,
    homes: Option<Arc<dyn crate::storage::HomeStore>>,
    /// The node's metrics, which the database's calls are timed into as they are made.
    metrics: Arc<crate::metrics::Metrics>,
}

/// Connects to the accounts database (`--accounts`, applying its migrations) and opens the
/// object store (`--storage s3`). Errors name the flag to fix.
async fn prepare_backends(a: &ServeArgs) -> Result<Backends> {
    let metrics: Arc<crate::metrics::Metrics> = Default::default();
    let pg = match &a.accounts {
        None => None,
        Some(url) => {
            let mut cfg = crate::pg::PgConfig::from_url(url).context("--accounts")?;
            if cfg.url_has_password() {
                bail!(
                    "--accounts: put the password in PGPASSWORD or ?password_file=PATH, not in \
                     the URL (a command line shows in process lists)"
                );
            }
            if let Some(n) = a.db_pool_size {
                cfg.pool_size = n as usize;
            }
            if let Some(t) = a.db_timeout {
                cfg.connect_timeout = t;
                cfg.wait_timeout = t;
                cfg.statement_timeout = t;
            }
            let pg = crate::pg::connect(&cfg)
                .await
                .context("cannot use the accounts database (--accounts)")?;
            if pg
                .accounts()
                .list()
                .await
                .map(|u| u.is_empty())
                .unwrap_or(false)
            {
                tracing::warn!(
                    "the accounts database has no users yet: add one with \
                     `ferry user add NAME --accounts URL`"
                );
            }
            Some(pg)
        }
    };
    let homes = match (a.storage.as_str(), &a.s3_config) {
        ("local", None) => None,
        ("local", Some(_)) => bail!("--s3-config is for --storage s3"),
        (_, None) => bail!("--storage s3 needs --s3-config FILE"),
        (_, Some(path)) => {
            let Some(pg) = &pg else {
                bail!(
                    "--storage s3 needs --accounts: the database holds what an object store \
                     cannot (name reservations, digests, parts of uploads kept for resume)"
                );
            };
            Some(open_s3_homes(path, pg, &metrics).await?)
        }
    };
    Ok(Backends { pg, homes, metrics })
}

/// The object store of `--storage s3`: homes as key prefixes, with name reservations,
/// digests and kept partials in the accounts database. Asks the store once, so a wrong
/// endpoint or key fails at start rather than at the first login.
async fn open_s3_homes(
    path: &Path,
    pg: &crate::pg::PgBackend,
    metrics: &Arc<crate::metrics::Metrics>,
) -> Result<Arc<dyn crate::storage::HomeStore>> {
    use crate::storage::s3_homes::{S3Homes, load_config};
    let config = load_config(path).map_err(|e| anyhow::anyhow!("--s3-config {e}"))?;
    // Timed into ferry_database_seconds, with the ledger's calls and the logins.
    let state = crate::storage::s3::S3State {
        locks: metrics.timed_name_locks(pg.name_locks()),
        digests: metrics.timed_digests(pg.digests()),
        partials: metrics.timed_partials(pg.partials()),
    };
    let homes = S3Homes::open(&config, state).map_err(|e| anyhow::anyhow!("--s3-config: {e}"))?;
    homes.set_metrics(Arc::clone(metrics));
    let checked = tokio::time::timeout(Duration::from_secs(30), homes.check()).await;
    match checked {
        Ok(Ok(())) => {}
        Ok(Err(e)) => bail!("the object store of --s3-config cannot be used: {e}"),
        Err(_) => bail!("the object store of --s3-config did not answer within 30 s"),
    }
    Ok(Arc::new(homes))
}

/// The penalty settings of the shared store, from the node's own.
fn penalty_settings(c: &crate::server::penalty::PenaltyConfig) -> crate::pg::PenaltySettings {
    crate::pg::PenaltySettings {
        min_before_ban: c.min_before_ban,
        max: c.max,
        max_sources: c.max_sources,
        ipv4_prefix: c.ipv4_prefix,
        ipv6_prefix: c.ipv6_prefix,
        exempt: c
            .exempt
            .iter()
            .filter_map(|n| ipnet::IpNet::new(n.addr(), n.prefix()).ok())
            .collect(),
    }
}

/// First start: a missing users file is created with one user, `admin`, and a random
/// password. The password is written to a 0600 file beside the users file (see
/// [`first_password_path`]), whose path is printed; the password itself is printed only when
/// stderr is a terminal, never into a log stream (journald, container logs) that others read.
///
/// Returns the users file as a store, loaded.
fn prepare_users(rt: &tokio::runtime::Runtime, path: &Path) -> Result<TomlAccounts> {
    if !path.exists() {
        let password = users::random_password();
        let hash = users::hash_password(&password)?;
        let secret_file = first_password_path(path);
        // The file first: if it cannot be written, no account exists whose password is lost.
        users::write_secret_file(&secret_file, format!("{}\n", password.as_str()).as_bytes())
            .with_context(|| format!("cannot write {}", secret_file.display()))?;
        let admin = User::new("admin", hash);
        if let Err(e) = rt.block_on(TomlAccounts::new(path.to_path_buf()).add(&admin)) {
            // Best effort: the password of an account that was never made is of no use.
            let _ = std::fs::remove_file(&secret_file);
            return Err(e.into());
        }
        eprintln!(
            "created {} with user 'admin'; its password is in {} (mode 0600): read it, \
             delete the file, and change the password with `ferry user passwd admin`",
            path.display(),
            secret_file.display()
        );
        if std::io::stderr().is_terminal() {
            eprintln!("password of 'admin': {}", password.as_str());
        }
    }
    let store = TomlAccounts::load(path)?;
    if rt.block_on(store.list())?.is_empty() {
        tracing::warn!(users = %path.display(), "the users file has no users; nobody can log in");
    }
    Ok(store)
}

/// Where the first start writes the generated admin password: beside the users file, its
/// name with `.admin-password` appended (`users.toml.admin-password`).
fn first_password_path(users: &Path) -> PathBuf {
    let mut name = users
        .file_name()
        .map(std::ffi::OsStr::to_os_string)
        .unwrap_or_else(|| "users.toml".into());
    name.push(".admin-password");
    users.with_file_name(name)
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the server with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

/// SIGHUP reloads the users file and the certificate. Each is replaced only if the new one
/// loads completely; otherwise the error is logged and the old one stays in force. Sessions
/// already logged in are not touched.
async fn reload_on_sighup(
    mut hup: tokio::signal::unix::Signal,
    server: Arc<crate::server::Server>,
    users: Option<TomlAccounts>,
    cert: PathBuf,
    key: PathBuf,
    alpn: &'static [&'static [u8]],
) {
    while hup.recv().await.is_some() {
        let (u, c, k) = (users.clone(), cert.clone(), key.clone());
        let loaded = tokio::task::spawn_blocking(move || {
            (
                u.as_ref().map(TomlAccounts::reload),
                crate::tls::server_config(&c, &k, alpn),
            )
        })
        .await;
        let Ok((reloaded, tls)) = loaded else {
            tracing::error!("reload failed");
            continue;
        };
        // Users in a database need no reload: every change is announced to every node.
        match reloaded {
            None => {}
            Some(Ok(n)) => tracing::info!(users = n, "users file reloaded"),
            Some(Err(e)) => tracing::error!(
                error = %e,
                "users file not reloaded; the previous one stays in force"
            ),
        }
        match tls {
            Ok(tls) => {
                server.replace_tls(tls);
                tracing::info!(cert = %cert.display(), "certificate reloaded");
            }
            Err(e) => tracing::error!(
                error = %e,
                "certificate not reloaded; the previous one stays in force"
            ),
        }
    }
}

/// Blocks SIGHUP in the calling thread (and so in every thread it starts later). `main` calls
/// this before anything else, so that a SIGHUP sent while `ferry serve` starts up waits until
/// the server's handler is in place instead of ending the process. [`run`] lets it through
/// again: at once for every other command (which then ends on a pending SIGHUP, as it would
/// have), and for `serve` once the handler is installed.
pub fn hold_sighup() {
    crate::platform::hold_hangup(true);
}

/// Undoes [`hold_sighup`] in the calling thread; a SIGHUP that came in meanwhile is
/// delivered now.
fn release_sighup() {
    crate::platform::hold_hangup(false);
}

/// A one-thread runtime for a command that only edits local files (`ferry token`, `ferry
/// link`): the stores' async methods run their file work on its blocking pool.
fn command_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn connect(mut a: ConnectArgs) -> Result<ExitCode> {
    a.conn.port = a.conn.port.or(a.ssh_port);
    let target = match open::parse_target(&a.target) {
        Ok(t) => t,
        Err(e) => return usage_error(&e),
    };
    let interactive = a.batch.is_none() && std::io::stdin().is_terminal();
    let (rt, mut session) = match start(&target, &a.conn, a.batch.is_none(), None)? {
        Ok(x) => x,
        Err(f) => return Ok(f.report(None)),
    };
    session.bars = std::io::stderr().is_terminal() && !a.conn.quiet;
    session.quiet = a.conn.quiet;
    let shell = Shell::new(session);
    let status = if interactive {
        shell.run_interactive(client::config::state_dir().map(|d| d.join("history")))
    } else {
        match a.batch.as_deref() {
            Some(p) if p != Path::new("-") => {
                let file = std::fs::File::open(p)
                    .with_context(|| format!("cannot open batch file {}", p.display()))?;
                shell.run_batch(std::io::BufReader::new(file))
            }
            _ => shell.run_batch(std::io::stdin().lock()),
        }
    };
    drop(rt);
    Ok(ExitCode::from(status))
}

/// A failure before a command could run (or of a one-shot as a whole): its exit status and
/// its message, printed once by [`Failure::report`].
#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }

    fn client(e: &ClientError) -> Failure {
        Failure::new(e.exit_code(), client::ops::terminal_text(e))
    }

    /// Prints the message on stderr and, for `--json`, the failure as one JSON object on
    /// stdout (a get or put's with `files` and the rest empty).
    fn report(&self, json: Option<JsonShape>) -> ExitCode {
        eprintln!("ferry: {}", self.message);
        if let Some(shape) = json {
            let mut v = match shape {
                JsonShape::Transfer => serde_json::to_value(client::ops::Report::default())
                    .unwrap_or_else(|_| serde_json::json!({})),
                JsonShape::Plain => serde_json::json!({}),
            };
            add_outcome(&mut v, self.code, Some(&self.message));
            print_json(&v);
        }
        ExitCode::from(self.code)
    }
}

/// What a `--json` failure object looks like: a transfer report (`get`, `put`) or a bare
/// outcome (`ls`).
#[derive(Debug, Clone, Copy)]
enum JsonShape {
    Transfer,
    Plain,
}

/// Adds `ok`, `exit_code`, `exit_meaning` and (on failure) `error` to a JSON object.
fn add_outcome(v: &mut serde_json::Value, code: u8, error: Option<&str>) {
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "ok".into(),
            serde_json::Value::Bool(code == client::EXIT_OK),
        );
        o.insert("exit_code".into(), serde_json::Value::from(code));
        o.insert(
            "exit_meaning".into(),
            serde_json::Value::from(client::exit_meaning(code)),
        );
        if let Some(e) = error {
            o.insert("error".into(), serde_json::Value::String(e.to_string()));
        }
    }
}

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// The JSON object of a command line clap refused, for `get`, `put` and `ls` with `--json`
/// (`None` for anything else): scripts that asked for JSON get JSON, even for a usage error.
pub fn usage_failure_json(args: &[std::ffi::OsString], message: &str) -> Option<String> {
    let words: Vec<&str> = args.iter().skip(1).filter_map(|a| a.to_str()).collect();
    let shape = match words.iter().find(|w| !w.starts_with('-')) {
        Some(&"get" | &"put") => JsonShape::Transfer,
        Some(&"ls") => JsonShape::Plain,
        _ => return None,
    };
    if !words.contains(&"--json") {
        return None;
    }
    let mut v = match shape {
        JsonShape::Transfer => serde_json::to_value(client::ops::Report::default()).ok()?,
        JsonShape::Plain => serde_json::json!({}),
    };
    add_outcome(
        &mut v,
        client::EXIT_USAGE,
        Some(&one_line_usage_error(message)),
    );
    serde_json::to_string_pretty(&v).ok()
}

/// clap's message on one line: what is wrong, with what it names (the missing arguments are on
/// the lines after the first), and the usage line; tips and `--help` pointers are left out.
fn one_line_usage_error(message: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut usage = None;
    let mut in_problem = true;
    for line in message.lines().map(str::trim) {
        if let Some(u) = line.strip_prefix("Usage: ") {
            usage = Some(u.to_string());
            in_problem = false;
        } else if line.is_empty() {
            in_problem = false;
        } else if in_problem {
            parts.push(line.strip_prefix("error: ").unwrap_or(line).to_string());
        }
    }
    let mut out = parts.join(" ");
    if let Some(u) = usage {
        out.push_str(&format!(" (usage: {u})"));
    }
    out
}

/// Resolves the target, reads the password, connects (TOFU included) and logs in.
fn start(
    target: &open::Target,
    opts: &ConnOpts,
    may_prompt: bool,
    json: Option<JsonShape>,
) -> Result<Result<(tokio::runtime::Runtime, Session), Failure>> {
    let config = match ClientConfig::load_default() {
        Ok(c) => c,
        Err(e) => return Ok(Err(Failure::new(client::EXIT_USAGE, e.to_string()))),
    };
    let ep = match open::resolve(target, opts.port, opts.ca.as_deref(), &config) {
        Ok(ep) => ep,
        Err(e) => return Ok(Err(Failure::new(client::EXIT_USAGE, e))),
    };
    let accept = match &opts.accept_fingerprint {
        Some(fp) => match client::trust::normalize_fingerprint(fp) {
            Some(f) => Some(f),
            None => {
                return Ok(Err(Failure::new(
                    client::EXIT_USAGE,
                    "--accept-fingerprint wants SHA256: and 64 hex digits",
                )));
            }
        },
        None => None,
    };
    let rt = runtime()?;
    // With --json, a Ctrl-C before the command starts still ends with one JSON object; once
    // logged in, the session's own Ctrl-C handling takes over.
    let interrupt_guard = json.map(|shape| rt.spawn(answer_interrupt_in_json(shape)));
    let trust = open::TrustOpts {
        accept,
        can_prompt: may_prompt && open::can_prompt(),
        known_hosts: None,
    };
    let mut conn = match open::connect(&rt, &ep, &trust) {
        Ok(c) => c,
        Err(e) => return Ok(Err(Failure::client(&e))),
    };
    match open::login(&rt, &mut conn, &ep, opts.password_file.as_deref()) {
        Ok(()) => {}
        Err(Ok(e)) => {
            let mut f = Failure::client(&e);
            if matches!(e, ClientError::Auth | ClientError::AuthClosed(_)) {
                f.message = auth_failure_text(&f.message, &ep, opts.password_file.as_deref());
            }
            return Ok(Err(f));
        }
        Err(Err(unreadable)) => return Ok(Err(Failure::new(client::EXIT_AUTH, unreadable))),
    }
    if let Some(guard) = interrupt_guard {
        guard.abort();
    }
    let session = Session::new(rt.handle().clone(), conn);
    Ok(Ok((rt, session)))
}

/// A failed login said with whom, where, and where the password came from: a stale
/// `FERRY_PASSWORD` left in the environment is the usual surprise.
fn auth_failure_text(base: &str, ep: &open::Endpoint, file: Option<&Path>) -> String {
    let source = match file {
        Some(f) => format!("the first line of {}", f.display()),
        None if std::env::var_os("FERRY_PASSWORD").is_some() => "FERRY_PASSWORD".to_string(),
        None => "the prompt".to_string(),
    };
    let host = if ep.host.contains(':') {
        format!("[{}]", ep.host)
    } else {
        ep.host.clone()
    };
    format!(
        "{base} as '{}' on {host}:{} (wrong user name or password; the password came from {source})",
        ep.user, ep.port
    )
}

/// Waits for a Ctrl-C during connect and login, then answers it as a `--json` failure and
/// exits 130. A password prompt may have turned the terminal's echo off: it is put back first.
async fn answer_interrupt_in_json(shape: JsonShape) {
    let tty = std::fs::File::open("/dev/tty").ok();
    let saved = tty.as_ref().and_then(crate::platform::terminal_modes);
    if tokio::signal::ctrl_c().await.is_err() {
        return;
    }
    if let (Some(t), Some(saved)) = (&tty, &saved) {
        saved.restore(t);
    }
    // The exit status is the process's own below.
    let _ = Failure::new(
        client::EXIT_INTERRUPTED,
        "interrupted before the command started",
    )
    .report(Some(shape));
    std::process::exit(i32::from(client::EXIT_INTERRUPTED));
}

/// The target and path of a one-shot's remote argument (`-P` is checked against a port in
/// it).
fn remote_arg(s: &str, port: Option<u16>) -> Result<(open::Target, String), String> {
    open::parse_remote(s, port)?.ok_or_else(|| {
        let hint = if s.contains('@') && !s.contains(':') {
            format!(" (for your home: '{s}:')")
        } else {
            String::new()
        };
        format!("expected [USER@]HOST[:PORT]:PATH, got '{s}'{hint}")
    })
}

/// [`remote_arg`] for the remote of `cmd` (`get` or `put`), with a hint when the arguments
/// look swapped: the word where the remote belongs is no remote, and `other` (where the local
/// side belongs) is one.
fn remote_arg_of(
    cmd: &str,
    s: &str,
    other: Option<&str>,
    port: Option<u16>,
) -> Result<(open::Target, String), String> {
    remote_arg(s, port).map_err(|e| {
        let swapped = other.is_some_and(|o| matches!(open::parse_remote(o, port), Ok(Some(_))));
        match (swapped, cmd) {
            (true, "put") => format!(
                "{e}; put uploads: LOCAL... first, the remote last (to download, use ferry get)"
            ),
            (true, _) => format!(
                "{e}; get downloads: the remote first, then LOCAL (to upload, use ferry put)"
            ),
            _ => e,
        }
    })
}

fn oneshot_get(a: GetArgs) -> Result<ExitCode> {
    let json = a.transfer.json.then_some(JsonShape::Transfer);
    let (target, path) = match remote_arg_of(
        "get",
        &a.remote,
        a.local.as_deref().and_then(Path::to_str),
        a.conn.port,
    ) {
        Ok(x) => x,
        Err(e) => return Ok(Failure::new(client::EXIT_USAGE, e).report(json)),
    };
    let (rt, mut session) = match start(&target, &a.conn, true, json)? {
        Ok(x) => x,
        Err(f) => return Ok(f.report(json)),
    };
    prepare_oneshot(&mut session, a.transfer.json, a.conn.quiet);
    let opts = a.transfer.opts();
    let path = if path.is_empty() {
        "/".to_string()
    } else {
        path
    };
    let result = session.get(&[path], a.local.as_deref(), opts);
    Ok(finish_oneshot(
        rt,
        session,
        result.map(|_| ()),
        a.transfer.json,
    ))
}

fn oneshot_put(a: PutArgs) -> Result<ExitCode> {
    let json = a.transfer.json.then_some(JsonShape::Transfer);
    let (remote, locals) = (&a.remote, &a.locals);
    let first = locals.first().map(String::as_str);
    let (target, path) = match remote_arg_of("put", remote, first, a.conn.port) {
        Ok(x) => x,
        Err(e) => return Ok(Failure::new(client::EXIT_USAGE, e).report(json)),
    };
    let (rt, mut session) = match start(&target, &a.conn, true, json)? {
        Ok(x) => x,
        Err(f) => return Ok(f.report(json)),
    };
    prepare_oneshot(&mut session, a.transfer.json, a.conn.quiet);
    let opts = a.transfer.opts();
    let dest = if path.is_empty() {
        None
    } else {
        Some(path.as_str())
    };
    let result = session.put(locals, dest, opts);
    Ok(finish_oneshot(
        rt,
        session,
        result.map(|_| ()),
        a.transfer.json,
    ))
}

fn oneshot_ls(a: LsArgs) -> Result<ExitCode> {
    let json = a.json.then_some(JsonShape::Plain);
    let (target, path) = match remote_arg(&a.remote, a.conn.port) {
        Ok(x) => x,
        Err(e) => return Ok(Failure::new(client::EXIT_USAGE, e).report(json)),
    };
    let (rt, mut session) = match start(&target, &a.conn, true, json)? {
        Ok(x) => x,
        Err(f) => return Ok(f.report(json)),
    };
    session.catch_interrupts(true);
    let mut line = String::from("ls");
    if a.long {
        line.push_str(" -l");
    }
    if a.names {
        line.push_str(" -1");
    }
    if a.json {
        line.push_str(" --json");
    }
    line.push_str(" -- ");
    let quoted = shlex::try_quote(if path.is_empty() { "." } else { &path })
        .map(|q| q.into_owned())
        .unwrap_or_else(|_| ".".into());
    line.push_str(&quoted);
    session.begin();
    let result = client::shell::execute_line(&mut session, &line);
    session.end();
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => Failure::new(e.exit_code(), e.for_terminal()).report(json),
    };
    session.close();
    drop(rt);
    Ok(code)
}

fn prepare_oneshot(session: &mut Session, json: bool, quiet: bool) {
    session.catch_interrupts(true);
    session.bars = std::io::stderr().is_terminal() && !quiet && !json;
    session.quiet = quiet;
    if json {
        session.output = Output::Json;
    }
    session.begin();
}

/// Prints the result (the JSON report, or the error) and closes the session.
fn finish_oneshot(
    rt: tokio::runtime::Runtime,
    mut session: Session,
    result: Result<(), OpError>,
    json: bool,
) -> ExitCode {
    session.end();
    let code = match &result {
        Ok(()) => client::EXIT_OK,
        Err(e) => e.exit_code(),
    };
    if json {
        // A get or put refused before it moved anything (several files onto one that is no
        // directory) still answers with a transfer report, its lists empty.
        let report = session.last_report.take().unwrap_or_default();
        let mut v = serde_json::to_value(&report).unwrap_or_else(|_| serde_json::json!({}));
        let error = result.as_ref().err().map(OpError::for_terminal);
        if let Some(e) = &error {
            eprintln!("ferry: {e}");
        }
        add_outcome(&mut v, code, error.as_deref());
        print_json(&v);
    } else if let Err(e) = &result {
        eprintln!("ferry: {}", e.for_terminal());
    }
    session.close();
    drop(rt);
    ExitCode::from(code)
}

fn usage_error(msg: &str) -> Result<ExitCode> {
    eprintln!("ferry: {msg}");
    Ok(ExitCode::from(client::EXIT_USAGE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    fn serve_limits(args: &[&str]) -> crate::server::Limits {
        let cli = Cli::try_parse_from(["ferry", "serve"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Serve(a) => limits_of(&a),
            _ => unreachable!(),
        }
    }

    #[test]
    fn every_limit_flag_reaches_the_server() {
        let d = serve_limits(&[]);
        let defaults = crate::server::Limits::default();
        assert_eq!(d.handshake_timeout, defaults.handshake_timeout);
        assert_eq!(d.close_timeout, defaults.close_timeout);
        assert_eq!(d.auth_queue_timeout, defaults.auth_queue_timeout);
        assert_eq!(d.max_auth_attempts, defaults.max_auth_attempts);
        assert!(d.penalties.is_some() && !d.proxy_protocol);

        let l = serve_limits(&[
            "--max-connections=7",
            "--max-connections-per-source=6",
            "--max-sessions-per-user=5",
            "--auth-concurrency=4",
            "--auth-queue-timeout=3s",
            "--max-auth-attempts=2",
            "--handshake-timeout=11s",
            "--login-timeout=12s",
            "--idle-timeout=13m",
            "--stall-timeout=14s",
            "--close-timeout=1500ms",
            "--shutdown-grace=16s",
            "--partial-ttl=2d",
            "--no-penalties",
            "--proxy-protocol",
            "--proxy-from=10.0.0.0/8",
            "--proxy-from=192.0.2.7",
            "--proxy-header-timeout=2s",
            "--max-startups=10:20:50",
            "--login-timeout-under-pressure=3s",
        ]);
        assert_eq!(l.max_connections, 7);
        assert_eq!(l.max_connections_per_source, 6);
        assert_eq!(l.max_sessions_per_user, 5);
        assert_eq!(l.auth_concurrency, 4);
        assert_eq!(l.auth_queue_timeout, Duration::from_secs(3));
        assert_eq!(l.max_auth_attempts, 2);
        assert_eq!(l.handshake_timeout, Duration::from_secs(11));
        assert_eq!(l.login_timeout, Duration::from_secs(12));
        assert_eq!(l.idle_timeout, Duration::from_secs(13 * 60));
        assert_eq!(l.stall_timeout, Duration::from_secs(14));
        assert_eq!(l.close_timeout, Duration::from_millis(1500));
        assert_eq!(l.shutdown_grace, Duration::from_secs(16));
        assert_eq!(l.partial_ttl, Duration::from_secs(2 * 86_400));
        assert!(l.penalties.is_none());
        assert!(l.proxy_protocol);
        let nets: Vec<String> = l.proxy_from.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["10.0.0.0/8", "192.0.2.7/32"]);
        assert_eq!(l.proxy_header_timeout, Duration::from_secs(2));
        assert_eq!(
            l.startups,
            crate::server::prelogin::Startups {
                start: 10,
                rate: 20,
                full: 50,
                pressure_login_timeout: Duration::from_secs(3),
            }
        );
        assert_eq!(d.startups, defaults.startups);
        // Issue 12, item 4: trusting any peer is not an option.
        for alone in [&["--proxy-protocol"][..], &["--proxy-from=10.0.0.0/8"]] {
            let e = Cli::try_parse_from(["ferry", "serve"].iter().chain(alone)).unwrap_err();
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::MissingRequiredArgument,
                "{alone:?}"
            );
        }

        let exempt = serve_limits(&["--penalty-exempt=10.0.0.0/8"]);
        assert_eq!(exempt.penalties.map(|p| p.exempt.len()), Some(1));
        assert!(
            Cli::try_parse_from(["ferry", "serve", "--max-auth-attempts=0"]).is_err(),
            "zero attempts would lock everyone out"
        );
    }
}
