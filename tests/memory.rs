//! The real server's memory around logins: argon2's working memory (~19 MiB with the default
//! parameters) is kept warm for the next login only while logins keep coming, and never while
//! a session moves data.

use std::time::Duration;

use ferry::users::{self, Password};

use crate::cli::World;
use crate::reload::{eventually, hup, login};
use crate::util::{no_progress, random_file};

const MIB: u64 = 1024;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_memory_is_kept_between_logins_and_given_back() {
    let world = World::start_with(&["--no-penalties"]);
    let pid = world.server.pid();
    // Before any login with the production parameters (the server's users have cheap ones).
    let base = rss_kib(pid);
    // A user with the production parameters: every check needs ~19 MiB.
    let users_file = world._dir.path().join("users.toml");
    let hash = users::hash_password(&Password::new("full-cost-pw".into())).unwrap();
    users::add_user(&users_file, "full", &hash, None, false).unwrap();
    hup(&world);
    eventually("the new user can log in", || async {
        login(&world, &world.ca, "full", "full-cost-pw")
            .await
            .is_ok()
    })
    .await;
    random_file(&world.root.join("full").join("small.bin"), 4096, 7);

    // Nothing is kept once no login has come for a while, even with a session open.
    let mut session = login(&world, &world.ca, "full", "full-cost-pw")
        .await
        .unwrap();
    eventually(
        "the warm memory is released while no login comes",
        || async { rss_kib(pid) < base + 10 * MIB },
    )
    .await;
    let idle = rss_kib(pid);

    // A login leaves its memory for the next one...
    let mut other = login(&world, &world.ca, "full", "full-cost-pw")
        .await
        .unwrap();
    let warm = rss_kib(pid);
    assert!(
        warm > idle + 15 * MIB,
        "RSS {idle} -> {warm} KiB: the login's memory should still be held"
    );
    // ...until a session starts moving data: released at once, not a second later.
    let dst = world.local.join("small.bin");
    session
        .get("/small.bin", &dst, true, &mut no_progress())
        .await
        .unwrap();
    let moving = rss_kib(pid);
    assert!(
        moving < idle + 8 * MIB,
        "RSS {idle} -> {warm} -> {moving} KiB: a transfer should release the login's memory"
    );

    // And a login followed by nothing is given back within a couple of seconds.
    drop(
        login(&world, &world.ca, "full", "full-cost-pw")
            .await
            .unwrap(),
    );
    assert!(rss_kib(pid) > idle + 15 * MIB);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = rss_kib(pid);
    assert!(
        after < idle + 8 * MIB,
        "RSS {idle} -> {after} KiB 2.5 s after the last login"
    );
    other.stat("/").await.unwrap();
}
