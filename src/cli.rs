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

use crate::client::{self, ClientError, Connection, shell::Shell};
use crate::protocol::DEFAULT_PORT;
use crate::users::{self, Password, UserDb};

/// ferry: a secure file drop. One binary is both the server and the client.
#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    max_term_width = 100,
    after_help = "Examples:\n  ferry serve                          # dev certs and an admin user on first start\n  ferry connect admin@127.0.0.1 --ca certs/ca.pem\n\nExit status: 0 ok, 1 command failed, 2 usage, 3 authentication, 4 connection/TLS, 5 integrity."
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
        file.\n\nExample:\n  ferry serve --listen 0.0.0.0:7443 --users users.toml --root data"
    )]
    Serve(Box<ServeArgs>),
    /// Open an interactive session (or run commands from stdin or a batch file).
    #[command(long_about = "Open a session with a server.\n\n\
        On a terminal this is an interactive shell with a `ferry> ` prompt (type `help`). When \
        stdin is not a terminal, or with -b, commands are read one per line; the first failing \
        command ends the session with a non-zero status (a line starting with '-' may fail).\n\n\
        The password comes from FERRY_PASSWORD, or is asked for without echo.\n\n\
        Examples:\n  ferry connect alice@files.example.org --ca certs/ca.pem\n  \
        printf 'put report.pdf\\nls\\n' | FERRY_PASSWORD=... ferry connect alice@127.0.0.1 --ca certs/ca.pem")]
    Connect(ConnectArgs),
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
    /// Logged-in sessions at once per user.
    #[arg(long, value_name = "N", default_value_t = 16)]
    max_sessions_per_user: usize,
    /// Password checks (argon2, ~19 MiB each) at once [default: number of CPU cores].
    #[arg(long, value_name = "N")]
    auth_concurrency: Option<usize>,
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
    /// client address it names for limits, penalties and logs. Only behind a balancer.
    #[arg(long)]
    proxy_protocol: bool,
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
    /// USER@HOST[:PORT] (IPv6 as USER@[::1]:PORT).
    #[arg(value_name = "USER@HOST[:PORT]")]
    target: String,
    /// Port (instead of HOST:PORT).
    #[arg(short = 'P', long, value_name = "PORT")]
    port: Option<u16>,
    /// CA certificate(s) to trust instead of the system roots.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Read commands from FILE ('-' for stdin) instead of a terminal.
    #[arg(short = 'b', long = "batch", value_name = "FILE")]
    batch: Option<PathBuf>,
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Certs(a) => certs(a),
        Command::User(u) => user(u),
        Command::Serve(a) => serve(*a),
        Command::Connect(a) => connect(a),
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

    let rt = runtime()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("cannot listen on {}", a.listen))?;
        let addr = listener.local_addr()?;
        let server =
            crate::server::Server::new(tls, db, a.root.clone(), crate::server::Limits::default());
        println!("ferry listening on {addr}");
        println!("server certificate fingerprint: {fingerprint}");
        std::io::stdout().flush()?;
        tracing::info!(%addr, users = %a.users.display(), root = %a.root.display(), "serving");
        let reload = tokio::spawn(reload_on_sighup(
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
    server: Arc<crate::server::Server>,
    users: PathBuf,
    cert: PathBuf,
    key: PathBuf,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
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

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// `USER@HOST[:PORT]` split into its parts. IPv6 hosts are written in brackets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// User name.
    pub user: String,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port, if given.
    pub port: Option<u16>,
}

/// Parses `USER@HOST[:PORT]`.
pub fn parse_target(s: &str) -> Result<Target, String> {
    let (user, hostport) = s
        .split_once('@')
        .ok_or_else(|| format!("expected USER@HOST[:PORT], got '{s}'"))?;
    if user.is_empty() {
        return Err("the user name is empty".into());
    }
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| "unclosed '[' in host".to_string())?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("expected :PORT after ]")?),
        };
        (h.to_string(), port)
    } else if hostport.parse::<std::net::Ipv6Addr>().is_ok() {
        (hostport.to_string(), None)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (hostport.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    let port = match port {
        Some(p) => Some(p.parse::<u16>().map_err(|_| format!("bad port '{p}'"))?),
        None => None,
    };
    Ok(Target {
        user: user.to_string(),
        host,
        port,
    })
}

fn connect(a: ConnectArgs) -> Result<ExitCode> {
    let target = match parse_target(&a.target) {
        Ok(t) => t,
        Err(e) => return usage_error(&e),
    };
    let port = a.port.or(target.port).unwrap_or(DEFAULT_PORT);
    let tls = crate::tls::client_config(a.ca.as_deref())?;
    let password = read_password(&target)?;
    let rt = runtime()?;
    let conn = rt.block_on(async {
        let mut conn = Connection::connect(&target.host, port, tls).await?;
        conn.login(&target.user, &password).await?;
        Ok::<_, ClientError>(conn)
    });
    let conn = match conn {
        Ok(c) => c,
        Err(e) => return client_failure(&e),
    };
    let interactive = a.batch.is_none() && std::io::stdin().is_terminal();
    let progress = interactive && std::io::stderr().is_terminal();
    let shell = Shell::new(&rt, conn, progress);
    let status = if interactive {
        shell.run_interactive(history_path())
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
    Ok(ExitCode::from(status))
}

fn read_password(target: &Target) -> Result<Password> {
    if let Ok(p) = std::env::var("FERRY_PASSWORD") {
        return Ok(Password::new(p));
    }
    let prompt = format!("{}@{}'s password: ", target.user, target.host);
    let p = rpassword::prompt_password(prompt)
        .context("cannot read the password (no terminal? set FERRY_PASSWORD)")?;
    Ok(Password::new(p))
}

fn history_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    Some(base.join("ferry").join("history"))
}

fn usage_error(msg: &str) -> Result<ExitCode> {
    eprintln!("ferry: {msg}");
    Ok(ExitCode::from(client::EXIT_USAGE))
}

fn client_failure(e: &ClientError) -> Result<ExitCode> {
    eprintln!("ferry: {e}");
    Ok(ExitCode::from(e.exit_code()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = parse_target("alice@files.example.org").unwrap();
        assert_eq!(
            (t.user.as_str(), t.host.as_str(), t.port),
            ("alice", "files.example.org", None)
        );
        let t = parse_target("a@127.0.0.1:9000").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", Some(9000)));
        let t = parse_target("a@[::1]:7443").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", Some(7443)));
        let t = parse_target("a@::1").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", None));
        assert!(parse_target("nobody").is_err());
        assert!(parse_target("@host").is_err());
        assert!(parse_target("a@host:notaport").is_err());
        assert!(parse_target("a@[::1").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
