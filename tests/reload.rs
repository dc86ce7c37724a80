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
    let tls = ferry::tls::client_config(Some(ca)).unwrap();
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
