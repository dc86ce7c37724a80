//! SIGHUP: the real server reloads its users file and certificate without dropping sessions,
//! and keeps the old ones when the new ones do not load.

use std::time::{Duration, Instant};

use ferry::client::{ClientError, Connection};
use ferry::users::{self, Password};

use crate::cli::{ALICE_PW, World};
use crate::util::CHEAP;

pub(crate) fn hup(world: &World) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &world.server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

pub(crate) async fn login(
    world: &World,
    ca: &std::path::Path,
    user: &str,
    pw: &str,
) -> Result<Connection, ClientError> {
    let tls = ferry::tls::client_config(Some(ca), ferry::protocol::ALPN).unwrap();
    let mut c = Connection::connect("127.0.0.1", world.server.port(), tls).await?;
    c.login(user, &Password::new(pw.into())).await?;
    Ok(c)
}

/// Polls `check` for up to 10 s.
pub(crate) async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_users_and_certificate_and_keeps_sessions() {
    // The polls below fail on purpose (a refused password, an untrusted certificate) many
    // times over; penalties would lock 127.0.0.1 out, which is not what this test is about.
    let world = World::start_with(&["--no-penalties"]);
    let users_file = world._dir.path().join("users.toml");
    let ca = world.ca.clone();
    // A session that stays open through every reload.
    let mut alice = login(&world, &ca, "alice", ALICE_PW).await.unwrap();

    // A new user can log in after a reload.
    let hash =
        users::hash_password_with(&Password::new("bob-pw".into()), CHEAP.0, CHEAP.1, CHEAP.2)
            .unwrap();
    users::add_user(&users_file, "bob", &hash, None, false).unwrap();
    hup(&world);
    eventually("bob can log in", || async {
        login(&world, &ca, "bob", "bob-pw").await.is_ok()
    })
    .await;

    // A changed password (through `ferry user passwd`) takes effect for new logins.
    let mut passwd = std::process::Command::new(crate::cli::FERRY)
        .args([
            "user",
            "passwd",
            "bob",
            "--password-stdin",
            "--allow-weak",
            "--users",
        ])
        .arg(&users_file)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = passwd.stdin.take().unwrap();
        stdin.write_all(b"bob-new-pw\n").unwrap();
    }
    let out = passwd.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    hup(&world);
    eventually("bob's old password is refused", || async {
        matches!(
            login(&world, &ca, "bob", "bob-pw").await,
            Err(ClientError::Auth)
        )
    })
    .await;
    let bob = login(&world, &ca, "bob", "bob-new-pw")
        .await
        .expect("bob logs in with the new password");
    drop(bob);

    // A removed user cannot log in any more, but her open session goes on.
    users::remove_user(&users_file, "alice").unwrap();
    hup(&world);
    eventually("alice is refused", || async {
        matches!(
            login(&world, &ca, "alice", ALICE_PW).await,
            Err(ClientError::Auth)
        )
    })
    .await;
    alice
        .stat("/")
        .await
        .expect("the open session survived the reload");

    // A broken users file is refused with a logged error; the previous one stays in force.
    std::fs::write(&users_file, "[users.bob\npassword = ").unwrap();
    hup(&world);
    eventually("the refusal is logged", || async {
        world
            .server
            .stderr_so_far()
            .contains("users file not reloaded")
    })
    .await;
    login(&world, &ca, "bob", "bob-new-pw")
        .await
        .expect("bob still logs in");

    // New certificates (a new CA) take effect for new connections; old sessions go on.
    let certs = world._dir.path().join("certs");
    let old_ca = world._dir.path().join("old-ca.pem");
    std::fs::copy(&world.ca, &old_ca).unwrap();
    let fresh = ferry::certs::generate(&certs, &[], true).unwrap();
    hup(&world);
    eventually("the new certificate is served", || async {
        login(&world, &fresh.paths.ca_cert, "bob", "bob-new-pw")
            .await
            .is_ok()
    })
    .await;
    assert!(
        matches!(
            login(&world, &old_ca, "bob", "bob-new-pw").await,
            Err(ClientError::Tls(_))
        ),
        "the old certificate is no longer served"
    );
    alice
        .stat("/")
        .await
        .expect("the open session survived the certificate reload");

    // A certificate that does not load is refused; the current one stays.
    std::fs::write(&fresh.paths.server_key, "not a key").unwrap();
    hup(&world);
    eventually("the refusal is logged", || async {
        world
            .server
            .stderr_so_far()
            .contains("certificate not reloaded")
    })
    .await;
    login(&world, &fresh.paths.ca_cert, "bob", "bob-new-pw")
        .await
        .expect("the current certificate is still served");
}

/// Issue 12, item 7: a SIGHUP that arrived while `ferry serve` was still starting (making dev
/// certificates, loading users) ended the process, since the reload handler was installed
/// last. SIGHUPs are sent from the moment the process runs Rust code until it listens, one
/// every millisecond, and it must come up and serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_during_start_up_does_not_kill_the_server() {
    use std::io::BufRead;
    use std::os::unix::process::{CommandExt, ExitStatusExt};

    let dir = tempfile::tempdir().unwrap();
    let users_file = dir.path().join("users.toml");
    let hash =
        users::hash_password_with(&Password::new(ALICE_PW.into()), CHEAP.0, CHEAP.1, CHEAP.2)
            .unwrap();
    users::add_user(&users_file, "alice", &hash, None, false).unwrap();
    // No certificates: the server makes dev certificates first, the slowest part of start-up.
    let mut cmd = std::process::Command::new(crate::cli::FERRY);
    cmd.current_dir(dir.path())
        .env_remove("FERRY_LOG")
        .args(["serve", "--listen", "127.0.0.1:0", "--no-penalties"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // SAFETY: between fork and exec only async-signal-safe calls are made (signal(2)). The
    // test must not depend on how the runner was started (nohup would make SIGHUP ignored).
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGHUP, libc::SIG_DFL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let stderr = child.stderr.take().unwrap();
    let err_text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let err_copy = std::sync::Arc::clone(&err_text);
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            err_copy.lock().unwrap().push_str(&line);
            err_copy.lock().unwrap().push('\n');
        }
    });

    // Rust's runtime sets SIGPIPE to ignored just before `main`: from then on the process
    // runs ferry's code, and the dynamic loader (which no program can shield) is behind it.
    let started = Instant::now();
    loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let ignored = status
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:"))
            .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .unwrap_or(0);
        if ignored & (1 << (libc::SIGPIPE - 1)) != 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "ferry never started"
        );
        std::thread::yield_now();
    }
    let mut sent = 0;
    let addr = loop {
        // SAFETY: kill(2) on the child's own pid; the child is not reaped before this loop ends.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGHUP);
        }
        sent += 1;
        if let Ok(line) = rx.try_recv()
            && let Some(addr) = line.strip_prefix("ferry listening on ")
        {
            break addr.trim().parse::<std::net::SocketAddr>().unwrap();
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "ferry serve died during start-up after {sent} SIGHUP(s): {status:?} \
                 (signal {:?}); stderr:\n{}",
                status.signal(),
                err_text.lock().unwrap()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "ferry serve did not start"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    eprintln!("{sent} SIGHUP(s) during start-up");
    assert!(
        sent >= 2,
        "start-up was too quick to be hit ({sent} signal)"
    );
    // And afterwards too, a few more; then it serves with the certificates it made.
    for _ in 0..5 {
        // SAFETY: as above.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGHUP);
        }
    }
    let ca = ferry::certs::CertPaths::in_dir(&dir.path().join("certs")).ca_cert;
    let tls = ferry::tls::client_config(Some(&ca), ferry::protocol::ALPN).unwrap();
    let mut c = Connection::connect("127.0.0.1", addr.port(), tls)
        .await
        .expect("the server is reachable after the SIGHUPs");
    c.login("alice", &Password::new(ALICE_PW.into()))
        .await
        .expect("the server serves after the SIGHUPs");
    c.stat("/").await.unwrap();
    assert!(child.try_wait().unwrap().is_none(), "the server died");
    // SAFETY: as above.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
    let _ = crate::cli::wait_or_kill(&mut child, Duration::from_secs(10));
}
