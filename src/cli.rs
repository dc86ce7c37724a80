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

use crate::client::config::ClientConfig;
use crate::client::ops::{OpError, Output, Session, TransferOpts};
use crate::client::{self, ClientError, open, shell::Shell};
use crate::users::{self, UserDb};

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
        Writes ca.pem, ca.key, server.pem (leaf + CA) and server.key (mode 0600) into DIR. The \
        certificate is valid for localhost, 127.0.0.1 and ::1 plus every --host. Clients trust \
        it with --ca DIR/ca.pem.\n\nExample:\n  ferry certs --host files.example.org --host 192.0.2.10"
    )]
    Certs(CertsArgs),
    /// Manage the users file: add, passwd, del, list.
    #[command(
        subcommand,
        long_about = "Manage the users file: add, passwd, del, list. Every command takes \
        --users FILE (default users.toml). Passwords are stored as argon2id hashes.\n\n\
        Examples:\n  ferry user add alice\n  ferry user list --users /etc/ferry/users.toml"
    )]
    User(UserCommand),
    /// Run the server.
    #[command(
        long_about = "Run the server: TLS 1.3 on one port, users from the users file, each \
        confined to a home directory under the root.\n\n\
        On a fresh checkout it needs no other step: missing dev certificates are created in \
        certs/, and a missing users file is created with one user, 'admin', whose random password \
        is printed once.\n\nSignals: SIGINT/SIGTERM stop gracefully; SIGHUP reloads the users \
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
}

#[derive(Debug, Args)]
struct CertsArgs {
    /// Directory to write the files into.
    #[arg(long, value_name = "DIR", default_value = "certs")]
    dir: PathBuf,
    /// Extra DNS name or IP address for the server certificate (repeatable).
    #[arg(long = "host", value_name = "NAME")]
    hosts: Vec<String>,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Add a user (asks for the password twice, without echo).
    #[command(
        long_about = "Add a user. The password is asked twice without echo, or read \
        from one line of stdin with --password-stdin. It is stored as an argon2id hash.\n\n\
        Examples:\n  ferry user add alice\n  ferry user add bob --read-only --home /srv/share\n  \
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
        /// Read the password from one line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Change a user's password.
    #[command(
        long_about = "Change a user's password (takes effect for new logins).\n\n\
        Example:\n  ferry user passwd alice"
    )]
    Passwd {
        /// User name.
        name: String,
        #[command(flatten)]
        file: UsersFileArg,
        /// Read the password from one line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Delete a user (their files stay).
    #[command(
        long_about = "Delete a user from the users file. Their home directory and files \
        are left alone.\n\nExample:\n  ferry user del alice"
    )]
    Del {
        /// User name.
        name: String,
        #[command(flatten)]
        file: UsersFileArg,
    },
    /// List users.
    #[command(
        long_about = "List the users: name, access, home.\n\nExample:\n  ferry user list --users /etc/ferry/users.toml"
    )]
    List {
        #[command(flatten)]
        file: UsersFileArg,
    },
}

#[derive(Debug, Args)]
struct UsersFileArg {
    /// The users file.
    #[arg(long = "users", value_name = "FILE", default_value = "users.toml")]
    users: PathBuf,
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
}

/// Options of every command that connects.
#[derive(Debug, Args)]
struct ConnOpts {
    /// Port (instead of HOST:PORT).
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
    /// No progress bars.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Debug, Args)]
struct GetArgs {
    /// USER@HOST:REMOTE (REMOTE relative to your home; a glob is allowed).
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
    /// LOCAL... then USER@HOST:REMOTE (REMOTE relative to your home).
    #[arg(value_name = "LOCAL... USER@HOST:REMOTE", num_args = 2.., required = true)]
    paths: Vec<String>,
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
}

impl TransferFlags {
    fn opts(&self) -> TransferOpts {
        TransferOpts {
            recursive: self.recursive,
            force: self.force,
            resume: self.resume,
            fail_fast: self.fail_fast,
        }
    }
}

#[derive(Debug, Args)]
struct LsArgs {
    /// USER@HOST:[PATH] (a glob is allowed).
    #[arg(value_name = "USER@HOST:[PATH]")]
    remote: String,
    /// Human sizes.
    #[arg(short = 'l')]
    long: bool,
    /// Names only.
    #[arg(short = '1')]
    names: bool,
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
        Command::Serve(a) => serve(*a),
        Command::Connect(a) => connect(a),
        Command::Get(a) => oneshot_get(a),
        Command::Put(a) => oneshot_put(a),
        Command::Ls(a) => oneshot_ls(a),
    }
}

fn certs(a: CertsArgs) -> Result<ExitCode> {
    let g = crate::certs::generate(&a.dir, &a.hosts, a.force)?;
    println!("wrote {}", g.paths.ca_cert.display());
    println!(
        "wrote {} (private, keep it secret)",
        g.paths.ca_key.display()
    );
    println!("wrote {}", g.paths.server_cert.display());
    println!("wrote {} (private)", g.paths.server_key.display());
    println!("names: {}", g.names.join(", "));
    println!("server certificate fingerprint: {}", g.fingerprint);
    println!("clients trust it with: --ca {}", g.paths.ca_cert.display());
    Ok(ExitCode::SUCCESS)
}

fn user(cmd: UserCommand) -> Result<ExitCode> {
    match cmd {
        UserCommand::Add {
            name,
            file,
            home,
            read_only,
            password_stdin,
        } => {
            users::validate_name(&name)?;
            if let Ok(db) = UserDb::load(&file.users)
                && db.get(&name).is_some()
            {
                bail!("user {name} already exists in {}", file.users.display());
            }
            let password = users::read_new_password(password_stdin)?;
            let hash = users::hash_password(&password)?;
            users::add_user(&file.users, &name, &hash, home.as_deref(), read_only)?;
            eprintln!("added user {name} to {}", file.users.display());
        }
        UserCommand::Passwd {
            name,
            file,
            password_stdin,
        } => {
            let db = UserDb::load(&file.users)?;
            if db.get(&name).is_none() {
                bail!("no user {name} in {}", file.users.display());
            }
            let password = users::read_new_password(password_stdin)?;
            let hash = users::hash_password(&password)?;
            users::set_password(&file.users, &name, &hash)?;
            eprintln!("changed the password of {name}");
        }
        UserCommand::Del { name, file } => {
            users::remove_user(&file.users, &name)?;
            eprintln!("deleted user {name} (their files were left in place)");
        }
        UserCommand::List { file } => {
            let db = UserDb::load(&file.users)?;
            let mut out = std::io::stdout().lock();
            for u in db.users() {
                let access = if u.read_only {
                    "read-only"
                } else {
                    "read-write"
                };
                let home = u
                    .home
                    .as_ref()
                    .map_or_else(|| format!("<root>/{}", u.name), |h| h.display().to_string());
                writeln!(out, "{:<20} {:<10} {}", u.name, access, home)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn serve(a: ServeArgs) -> Result<ExitCode> {
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
    prepare_certs(&a.cert, &a.key)?;
    let db = prepare_users(&a.users)?;
    create_private_dir(&a.root)
        .with_context(|| format!("cannot create data root {}", a.root.display()))?;
    let tls = crate::tls::server_config(&a.cert, &a.key)?;
    let fingerprint = crate::tls::load_certs(&a.cert)?
        .first()
        .map(crate::tls::fingerprint)
        .unwrap_or_default();

    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("cannot listen on {}", a.listen))?;
        let addr = listener.local_addr()?;
        let server = crate::server::Server::new(tls, db, a.root.clone(), limits_of(&a));
        println!("ferry listening on {addr}");
        println!("server certificate fingerprint: {fingerprint}");
        std::io::stdout().flush()?;
        tracing::info!(%addr, users = %a.users.display(), root = %a.root.display(), "serving");
        let reload = tokio::spawn(reload_on_sighup(
            hup,
            Arc::clone(&server),
            a.users.clone(),
            a.cert.clone(),
            a.key.clone(),
        ));
        crate::server::run(server, listener, shutdown_signal()).await?;
        reload.abort();
        Ok::<_, anyhow::Error>(())
    })?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
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
        builder
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

/// First start: a missing users file is created with one user, `admin`, and a random
/// password that is printed once to the terminal (never logged).
fn prepare_users(path: &Path) -> Result<UserDb> {
    if !path.exists() {
        let password = users::random_password();
        let hash = users::hash_password(&password)?;
        users::add_user(path, "admin", &hash, None, false)?;
        let secret = String::from_utf8_lossy(password.as_bytes()).into_owned();
        eprintln!(
            "created {} with user 'admin', password: {secret}\n\
             (shown only this once; change it with `ferry user passwd admin`)",
            path.display()
        );
    }
    let db = UserDb::load(path)?;
    if db.is_empty() {
        tracing::warn!(users = %path.display(), "the users file has no users; nobody can log in");
    }
    Ok(db)
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
    users: PathBuf,
    cert: PathBuf,
    key: PathBuf,
) {
    while hup.recv().await.is_some() {
        let (u, c, k) = (users.clone(), cert.clone(), key.clone());
        let loaded = tokio::task::spawn_blocking(move || {
            (UserDb::load(&u), crate::tls::server_config(&c, &k))
        })
        .await;
        let Ok((db, tls)) = loaded else {
            tracing::error!("reload failed");
            continue;
        };
        match db {
            Ok(db) => {
                let n = db.len();
                server.replace_users(db);
                tracing::info!(users = n, "users file reloaded");
            }
            Err(e) => tracing::error!(
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
    set_sighup_mask(libc::SIG_BLOCK);
}

/// Undoes [`hold_sighup`] in the calling thread; a SIGHUP that came in meanwhile is
/// delivered now.
fn release_sighup() {
    set_sighup_mask(libc::SIG_UNBLOCK);
}

fn set_sighup_mask(how: libc::c_int) {
    // SAFETY: `set` is a local, initialised by sigemptyset before use; pthread_sigmask only
    // changes the calling thread's signal mask. Failure (EINVAL) is impossible for these
    // arguments, and would leave the mask as it was.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn connect(a: ConnectArgs) -> Result<ExitCode> {
    let target = match open::parse_target(&a.target) {
        Ok(t) => t,
        Err(e) => return usage_error(&e),
    };
    let interactive = a.batch.is_none() && std::io::stdin().is_terminal();
    let (rt, mut session) = match start(&target, &a.conn, a.batch.is_none())? {
        Ok(x) => x,
        Err(code) => return Ok(code),
    };
    session.bars = std::io::stderr().is_terminal() && !a.conn.quiet;
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

/// Resolves the target, reads the password, connects (TOFU included) and logs in. `Err`
/// of the inner result is the exit status of a failure already reported.
fn start(
    target: &open::Target,
    opts: &ConnOpts,
    may_prompt: bool,
) -> Result<Result<(tokio::runtime::Runtime, Session), ExitCode>> {
    let config = match ClientConfig::load_default() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ferry: {e}");
            return Ok(Err(ExitCode::from(client::EXIT_USAGE)));
        }
    };
    let ep = match open::resolve(target, opts.port, opts.ca.as_deref(), &config) {
        Ok(ep) => ep,
        Err(e) => {
            eprintln!("ferry: {e}");
            return Ok(Err(ExitCode::from(client::EXIT_USAGE)));
        }
    };
    let accept = match &opts.accept_fingerprint {
        Some(fp) => match client::trust::normalize_fingerprint(fp) {
            Some(f) => Some(f),
            None => {
                eprintln!("ferry: --accept-fingerprint wants SHA256: and 64 hex digits");
                return Ok(Err(ExitCode::from(client::EXIT_USAGE)));
            }
        },
        None => None,
    };
    let rt = runtime()?;
    let trust = open::TrustOpts {
        accept,
        can_prompt: may_prompt && open::can_prompt(),
        known_hosts: None,
    };
    let mut conn = match open::connect(&rt, &ep, &trust) {
        Ok(c) => c,
        Err(e) => return Ok(Err(client_failure(&e))),
    };
    let password = match open::read_password(&ep, opts.password_file.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ferry: {e}");
            return Ok(Err(ExitCode::from(client::EXIT_AUTH)));
        }
    };
    if let Err(e) = rt.block_on(conn.login(&ep.user, &password)) {
        return Ok(Err(client_failure(&e)));
    }
    let session = Session::new(rt.handle().clone(), conn);
    Ok(Ok((rt, session)))
}

/// The target and path of a one-shot's remote argument.
fn remote_arg(s: &str) -> Result<(open::Target, String), String> {
    open::parse_remote(s).ok_or_else(|| format!("expected USER@HOST:PATH, got '{s}'"))
}

fn oneshot_get(a: GetArgs) -> Result<ExitCode> {
    let (target, path) = match remote_arg(&a.remote) {
        Ok(x) => x,
        Err(e) => return usage_error(&e),
    };
    let (rt, mut session) = match start(&target, &a.conn, true)? {
        Ok(x) => x,
        Err(code) => return Ok(code),
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
    let Some((remote, locals)) = a.paths.split_last() else {
        return usage_error("put needs LOCAL... and USER@HOST:REMOTE");
    };
    let (target, path) = match remote_arg(remote) {
        Ok(x) => x,
        Err(e) => return usage_error(&e),
    };
    let (rt, mut session) = match start(&target, &a.conn, true)? {
        Ok(x) => x,
        Err(code) => return Ok(code),
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
    let (target, path) = match remote_arg(&a.remote) {
        Ok(x) => x,
        Err(e) => return usage_error(&e),
    };
    let (rt, mut session) = match start(&target, &a.conn, true)? {
        Ok(x) => x,
        Err(code) => return Ok(code),
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
        Err(e) => {
            eprintln!("ferry: {}", e.for_terminal());
            ExitCode::from(e.exit_code())
        }
    };
    session.close();
    drop(rt);
    Ok(code)
}

fn prepare_oneshot(session: &mut Session, json: bool, quiet: bool) {
    session.catch_interrupts(true);
    session.bars = std::io::stderr().is_terminal() && !quiet && !json;
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
        let mut v = match session.last_report.take() {
            Some(r) => serde_json::to_value(&r).unwrap_or_default(),
            None => serde_json::json!({}),
        };
        if let Some(o) = v.as_object_mut() {
            o.insert("ok".into(), serde_json::Value::Bool(result.is_ok()));
            o.insert("exit_code".into(), serde_json::Value::from(code));
            if let Err(e) = &result {
                o.insert("error".into(), serde_json::Value::String(e.for_terminal()));
            }
        }
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
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

fn client_failure(e: &ClientError) -> ExitCode {
    eprintln!("ferry: {}", client::ops::terminal_text(e));
    ExitCode::from(e.exit_code())
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
