//! Opening a session from what the user typed: `USER@HOST[:PORT]`, an alias from
//! `config.toml`, or scp-style `USER@HOST:PATH`; the password from `--password-file`,
//! `FERRY_PASSWORD` or a prompt; and the certificate trusted by a CA or a pin, asking the
//! user on first contact when someone is there to ask.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use tokio::runtime::Runtime;

use super::ClientError;
use super::config::ClientConfig;
use super::connection::Connection;
use super::trust::{self, KnownHosts, PinningVerifier, Verdict};
use crate::protocol::DEFAULT_PORT;
use crate::users::Password;

/// Where to connect and as whom, after aliases were applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// User name.
    pub user: String,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// CA file to trust instead of the system roots.
    pub ca: Option<PathBuf>,
}

/// `[USER@]HOST[:PORT]` split into its parts (no alias lookup yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// User name, if given.
    pub user: Option<String>,
    /// Host or alias.
    pub host: String,
    /// Port, if given.
    pub port: Option<u16>,
}

/// Parses `[USER@]HOST[:PORT]` (IPv6 in brackets: `[::1]:7443`; a bare IPv6 address has no
/// port).
pub fn parse_target(s: &str) -> Result<Target, String> {
    let (user, hostport) = match s.split_once('@') {
        Some((u, h)) => {
            if u.is_empty() {
                return Err("the user name is empty".into());
            }
            (Some(u.to_string()), h)
        }
        None => (None, s),
    };
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
        Some(p) => Some(p.parse::<u16>().map_err(|_| {
            if p.is_empty() || p.bytes().all(|b| b.is_ascii_digit()) {
                format!("bad port '{p}' (1-65535)")
            } else {
                // scp habit: `connect alice@host:dir` names a path, which connect has none of.
                format!(
                    "bad port '{p}': connect takes [USER@]HOST[:PORT] (no path; `cd` once \
                     connected, or `ferry ls {s}`)"
                )
            }
        })?),
        None => None,
    };
    Ok(Target { user, host, port })
}

/// Splits scp-style `[USER@]HOST[:PORT]:PATH` into the target and the remote path (`HOST:`
/// is the home). `Ok(None)` if `s` has no host part (a local path).
///
/// The path starts after the first colon, as in scp, with one exception that has only one
/// sensible reading: `HOST:DIGITS:PATH` names a port. Without `-P` (`port_flag`) the digits
/// are the port; with `-P` they must agree with it. Digits that are no port are an error that
/// shows the right form, never a file called `17443:dir`. A remote name that really starts
/// with digits and a colon is written `HOST:./17443:name`.
pub fn parse_remote(s: &str, port_flag: Option<u16>) -> Result<Option<(Target, String)>, String> {
    let (user, rest) = match s.split_once('@') {
        Some((u, r)) if !u.is_empty() && !u.contains('/') && !u.contains(':') => {
            (Some(u.to_string()), r)
        }
        _ => (None, s),
    };
    let (host, path) = if let Some(inner) = rest.strip_prefix('[') {
        let Some((h, after)) = inner.split_once(']') else {
            return Ok(None);
        };
        let Some(path) = after.strip_prefix(':') else {
            return Ok(None);
        };
        (h, path)
    } else {
        let Some((h, p)) = rest.split_once(':') else {
            return Ok(None);
        };
        if h.contains('/') {
            return Ok(None);
        }
        (h, p)
    };
    if host.is_empty() {
        return Ok(None);
    }
    let mut port = None;
    let mut path = path;
    if let Some((digits, after)) = path.split_once(':')
        && !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
    {
        let user_at = user.as_deref().map(|u| format!("{u}@")).unwrap_or_default();
        let shown_host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let Some(p) = digits.parse::<u16>().ok().filter(|p| *p != 0) else {
            return Err(format!(
                "'{digits}' in '{s}' is not a port (1-65535). Write a port as -P PORT \
                 {user_at}{shown_host}:PATH or {user_at}{shown_host}:PORT:PATH; a remote name \
                 that starts with '{digits}:' as {user_at}{shown_host}:./{digits}:{after}"
            ));
        };
        if let Some(flag) = port_flag
            && flag != p
        {
            return Err(format!(
                "'{s}' names port {p} but -P says {flag}. Give the port once: -P {flag} \
                 {user_at}{shown_host}:{after}; a remote name that starts with '{digits}:' is \
                 written {user_at}{shown_host}:./{digits}:{after}"
            ));
        }
        port = Some(p);
        path = after;
    }
    Ok(Some((
        Target {
            user,
            host: host.to_string(),
            port,
        },
        path.to_string(),
    )))
}

/// Applies the command line's `-P` and `--ca` and the config's aliases to a target. An
/// alias supplies address, port, user and CA; what the command line says wins.
pub fn resolve(
    target: &Target,
    port: Option<u16>,
    ca: Option<&Path>,
    config: &ClientConfig,
) -> Result<Endpoint, String> {
    let alias = config.hosts.get(&target.host);
    let user = target
        .user
        .clone()
        .or_else(|| alias.and_then(|a| a.user.clone()))
        .ok_or_else(|| {
            if alias.is_some() {
                format!(
                    "alias '{}' has no user; write USER@{}",
                    target.host, target.host
                )
            } else {
                format!(
                    "expected USER@HOST[:PORT] or an alias from config.toml, got '{}'",
                    target.host
                )
            }
        })?;
    let host = alias.map_or_else(|| target.host.clone(), |a| a.address.clone());
    let port = port
        .or(target.port)
        .or(alias.and_then(|a| a.port))
        .unwrap_or(DEFAULT_PORT);
    let ca = ca
        .map(Path::to_path_buf)
        .or_else(|| alias.and_then(|a| a.ca.clone()));
    Ok(Endpoint {
        user,
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port,
        ca,
    })
}

/// The password: `--password-file` (its first line), else `FERRY_PASSWORD`, else a prompt
/// without echo. Never from an argument.
pub fn read_password(ep: &Endpoint, file: Option<&Path>) -> Result<Password, String> {
    if let Some(f) = file {
        let text = std::fs::read_to_string(f)
            .map_err(|e| format!("cannot read password file {}: {e}", f.display()))?;
        let line = text.lines().next().unwrap_or("");
        return Ok(Password::new(line.to_string()));
    }
    if let Ok(p) = std::env::var("FERRY_PASSWORD") {
        return Ok(Password::new(p));
    }
    let prompt = format!("{}@{}'s password: ", ep.user, ep.host);
    rpassword::prompt_password(prompt)
        .map(Password::new)
        .map_err(|e| {
            format!("cannot read the password ({e}); set FERRY_PASSWORD or use --password-file")
        })
}

/// Whether the password will be typed at a prompt: no `--password-file` and no
/// `FERRY_PASSWORD`. Only a typed password is asked again after a failed login.
pub fn password_is_typed(file: Option<&Path>) -> bool {
    file.is_none() && std::env::var_os("FERRY_PASSWORD").is_none()
}

/// How long to wait, after a failed login, for the server to close the connection (as it
/// does after its last allowed attempt) before asking for the password again.
const CLOSE_AFTER_FAILURE_WAIT: std::time::Duration = std::time::Duration::from_millis(300);

/// Reads the password and logs in. A typed password that fails is asked for again on the
/// same connection until the server closes it (`ferry serve --max-auth-attempts`, 3 by
/// default), as ssh does; one from `--password-file` or `FERRY_PASSWORD` is tried once.
/// `Err(Ok(e))` is a client error, `Err(Err(text))` a password that could not be read.
pub fn login(
    rt: &Runtime,
    conn: &mut Connection,
    ep: &Endpoint,
    file: Option<&Path>,
) -> Result<(), Result<ClientError, String>> {
    let typed = password_is_typed(file);
    let mut failed = 0u32;
    loop {
        let password = read_password(ep, file).map_err(Err)?;
        match rt.block_on(conn.login(&ep.user, &password)) {
            Ok(()) => return Ok(()),
            Err(ClientError::Auth) if typed => {
                failed += 1;
                if rt.block_on(conn.closes_within(CLOSE_AFTER_FAILURE_WAIT)) {
                    return Err(Ok(ClientError::AuthClosed(failed)));
                }
                eprintln!("Permission denied, please try again.");
            }
            // The server closed while we asked again: that was its last attempt.
            Err(ClientError::ConnectionLost) if failed > 0 => {
                return Err(Ok(ClientError::AuthClosed(failed)));
            }
            Err(e) => return Err(Ok(e)),
        }
    }
}

/// How certificates without a trusted CA are handled.
#[derive(Debug, Clone, Default)]
pub struct TrustOpts {
    /// `--accept-fingerprint`: pin this one if the host is new and it matches.
    pub accept: Option<String>,
    /// Whether a person can be asked (stdin and stderr are terminals, no batch file).
    pub can_prompt: bool,
    /// known_hosts to use (default: the XDG config dir's).
    pub known_hosts: Option<PathBuf>,
}

/// TCP + TLS + hello to `ep`, trusting a CA, a pin, or (first contact) the user's word.
pub fn connect(rt: &Runtime, ep: &Endpoint, opts: &TrustOpts) -> Result<Connection, ClientError> {
    let roots = trust::roots(ep.ca.as_deref()).map_err(|e| ClientError::Tls(e.to_string()))?;
    let key = trust::host_key(&ep.host, ep.port);
    let kh_path = opts
        .known_hosts
        .clone()
        .or_else(trust::known_hosts_path)
        .unwrap_or_else(|| PathBuf::from("known_hosts"));
    let mut known = KnownHosts::load(&kh_path)
        .map_err(|e| ClientError::Tls(format!("cannot read {}: {e}", kh_path.display())))?;
    let dial = if ep.host.contains(':') {
        format!("[{}]", ep.host)
    } else {
        ep.host.clone()
    };
    let mut asked = false;
    loop {
        // `--ca FILE` is the whole of the trust: a certificate it did not issue is refused,
        // whatever known_hosts or --accept-fingerprint say, and nobody is asked.
        let verifier = match &ep.ca {
            Some(_) => PinningVerifier::ca_only(roots.clone()),
            None => PinningVerifier::new(roots.clone(), known.get(&key), opts.accept.clone()),
        };
        let config =
            trust::client_config(verifier.clone()).map_err(|e| ClientError::Tls(e.to_string()))?;
        let result = rt.block_on(Connection::connect(&dial, ep.port, config));
        let verdict = verifier.verdict();
        match result {
            Ok(conn) => {
                if let Some(Verdict::Accepted(fp)) = verdict {
                    pin(&mut known, &key, &fp);
                }
                return Ok(conn);
            }
            Err(e @ ClientError::Tls(_)) => match verdict {
                Some(Verdict::Unknown(fp)) if opts.can_prompt && !asked => {
                    asked = true;
                    if !ask(&key, &fp, known.path()) {
                        return Err(ClientError::Tls(format!(
                            "{key}: certificate not trusted (you said no)"
                        )));
                    }
                    pin(&mut known, &key, &fp);
                }
                Some(Verdict::Unknown(fp)) => {
                    return Err(ClientError::Tls(trust::unknown_message(&key, &fp)));
                }
                Some(Verdict::Changed {
                    pinned,
                    offered,
                    line,
                }) => {
                    return Err(ClientError::Tls(trust::changed_message(
                        &key,
                        &pinned,
                        &offered,
                        line,
                        known.path(),
                    )));
                }
                Some(Verdict::NotFromCa(why)) => {
                    let ca = ep.ca.as_deref().unwrap_or(Path::new("--ca"));
                    return Err(ClientError::Tls(trust::not_from_ca_message(&key, ca, &why)));
                }
                Some(Verdict::NotAccepted { accepted, offered }) => {
                    return Err(ClientError::Tls(format!(
                        "{key} offered certificate {offered}, not the {accepted} you accepted; \
                         nothing was pinned"
                    )));
                }
                _ => return Err(e),
            },
            Err(e) => return Err(e),
        }
    }
}

fn pin(known: &mut KnownHosts, key: &str, fp: &str) {
    match known.add(key, fp) {
        Ok(()) => eprintln!("ferry: pinned {key} {fp} in {}", known.path().display()),
        Err(e) => eprintln!(
            "ferry: warning: could not save the pin in {}: {e}",
            known.path().display()
        ),
    }
}

/// Asks on the terminal whether to trust `fp` for `key`.
fn ask(key: &str, fp: &str, file: &Path) -> bool {
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "The authenticity of {key} can't be established: no trusted CA signed its certificate.\n\
         Certificate fingerprint: {fp}\n\
         Compare it with the one the server's admin has (ferry serve prints it).\n\
         Trust it and remember it in {}? (yes/no) ",
        file.display()
    );
    let _ = err.flush();
    drop(err);
    let mut answer = String::new();
    if std::io::stdin().lock().read_line(&mut answer).is_err() {
        return false;
    }
    matches!(answer.trim().to_ascii_lowercase().as_str(), "yes" | "y")
}

/// Whether prompts can reach a person.
pub fn can_prompt() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::config::HostAlias;

    #[test]
    fn targets() {
        let t = parse_target("alice@files.example.org").unwrap();
        assert_eq!(
            (t.user.as_deref(), t.host.as_str(), t.port),
            (Some("alice"), "files.example.org", None)
        );
        let t = parse_target("a@127.0.0.1:9000").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", Some(9000)));
        let t = parse_target("a@[::1]:7443").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", Some(7443)));
        let t = parse_target("a@::1").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", None));
        let t = parse_target("work").unwrap();
        assert_eq!((t.user, t.host.as_str()), (None, "work"));
        assert!(parse_target("@host").is_err());
        let err = parse_target("a@host:docs").unwrap_err();
        assert!(
            err.contains("no path") && err.contains("ferry ls a@host:docs"),
            "{err}"
        );
        assert!(parse_target("a@[::1").is_err());
        assert!(parse_target("a@").is_err());
    }

    #[test]
    fn remote_specs() {
        let r = |s: &str| parse_remote(s, None).unwrap();
        let (t, p) = r("alice@host:dir/file.txt").unwrap();
        assert_eq!(
            (t.user.as_deref(), t.host.as_str(), t.port, p.as_str()),
            (Some("alice"), "host", None, "dir/file.txt")
        );
        let (t, p) = r("alice@[::1]:").unwrap();
        assert_eq!((t.host.as_str(), p.as_str()), ("::1", ""));
        let (t, p) = r("work:/x").unwrap();
        assert_eq!((t.user, t.host.as_str(), p.as_str()), (None, "work", "/x"));
        assert!(r("local.txt").is_none());
        assert!(r("./a:b").is_none());
        assert!(r(":x").is_none());
        // A bare number after the host is a path, as in scp; digits and a colon are a port.
        assert_eq!(r("a@host:2026").unwrap().1, "2026");
        assert_eq!(r("a@host:./17443:x").unwrap().1, "./17443:x");
    }

    /// Issue 12 item 14: `alice@host:17443:dir/` wrote a file named `17443:dir/...` on the
    /// default port.
    #[test]
    fn user_host_port_path_names_the_port_never_a_file_called_digits_colon() {
        for (s, host) in [
            ("alice@host:17443:dir/", "host"),
            ("alice@[::1]:17443:dir/", "::1"),
        ] {
            let (t, p) = parse_remote(s, None).unwrap().unwrap();
            assert_eq!(
                (t.host.as_str(), t.port, p.as_str()),
                (host, Some(17443), "dir/")
            );
            // -P saying the same is fine; -P saying otherwise is refused with the right form.
            let (t, _) = parse_remote(s, Some(17443)).unwrap().unwrap();
            assert_eq!(t.port, Some(17443));
            let err = parse_remote(s, Some(9)).unwrap_err();
            assert!(err.contains("-P 9") && err.contains(":dir/"), "{err}");
        }
        let (t, p) = parse_remote("work:8443:", None).unwrap().unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, p.as_str()),
            ("work", Some(8443), "")
        );
        for bad in ["alice@host:99999:dir/", "alice@host:0:x"] {
            let err = parse_remote(bad, None).unwrap_err();
            assert!(
                err.contains("not a port") && err.contains("-P PORT"),
                "{err}"
            );
            assert!(err.contains("alice@host:./"), "{err}");
        }
    }

    #[test]
    fn aliases_resolve_and_the_command_line_wins() {
        let mut config = ClientConfig::default();
        config.hosts.insert(
            "work".into(),
            HostAlias {
                address: "files.example.org".into(),
                port: Some(8443),
                user: Some("alice".into()),
                ca: Some(PathBuf::from("/ca.pem")),
            },
        );
        let ep = resolve(&parse_target("work").unwrap(), None, None, &config).unwrap();
        assert_eq!(
            ep,
            Endpoint {
                user: "alice".into(),
                host: "files.example.org".into(),
                port: 8443,
                ca: Some(PathBuf::from("/ca.pem"))
            }
        );
        let ep = resolve(
            &parse_target("bob@work").unwrap(),
            Some(9),
            Some(Path::new("/other.pem")),
            &config,
        )
        .unwrap();
        assert_eq!((ep.user.as_str(), ep.port), ("bob", 9));
        assert_eq!(ep.ca.as_deref(), Some(Path::new("/other.pem")));
        assert!(resolve(&parse_target("nowhere").unwrap(), None, None, &config).is_err());
        let ep = resolve(&parse_target("x@plain:1").unwrap(), None, None, &config).unwrap();
        assert_eq!((ep.host.as_str(), ep.port), ("plain", 1));
    }
}
