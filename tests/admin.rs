//! The admin's side, end to end with the real binary: the text log cannot be forged by a user
//! name or a path, the first-run password stays off the log stream, `ferry user` changes take
//! effect without a signal, and `ferry certs` keeps the CA unless told otherwise.

use ferry::logfmt::parse_fields;

use crate::cli::{ALICE_PW, World};

/// The parsed fields of every text log line of the server whose fields include `key=value`.
fn log_lines_with(stderr: &str, key: &str, value: &str) -> Vec<Vec<(String, String)>> {
    stderr
        .lines()
        .filter_map(|line| {
            let fields = parse_fields(line)
                .unwrap_or_else(|| panic!("a log line that does not parse: {line:?}"));
            fields
                .iter()
                .any(|(k, v)| k == key && v == value)
                .then_some(fields)
        })
        .collect()
}

fn values<'a>(fields: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    fields
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// A user name and a path carrying ` result="ok"` once forged a second `result` field in the
/// text audit line; every value is quoted now, so each line has exactly one, the true one.
#[test]
fn text_log_injection_cannot_forge_a_result_field() {
    let world = World::start_with(&["--no-penalties"]);
    let forged_user = "mallory result=\"ok\"";
    world
        .session(forged_user, "wrong-password", "ls\n")
        .expect_code(3);

    std::fs::write(world.local.join("f.txt"), b"hello").unwrap();
    let forged_path = "up result=\"refused\" x.txt";
    world
        .session("alice", ALICE_PW, &format!("put f.txt '{forged_path}'\n"))
        .expect_ok();
    assert!(world.alice_home().join(forged_path).is_file());

    let stderr = world.server.stderr_so_far();
    let logins = log_lines_with(&stderr, "event", "login");
    let failed: Vec<_> = logins
        .iter()
        .filter(|f| values(f, "user") == [forged_user])
        .collect();
    assert_eq!(failed.len(), 1, "{stderr}");
    assert_eq!(values(failed[0], "result"), ["auth_failed"], "{stderr}");

    let puts: Vec<_> = log_lines_with(&stderr, "op", "put");
    assert_eq!(puts.len(), 1, "{stderr}");
    assert_eq!(
        values(&puts[0], "path"),
        [format!("/{forged_path}")],
        "{stderr}"
    );
    assert_eq!(values(&puts[0], "result"), ["ok"], "{stderr}");
    assert_eq!(values(&puts[0], "user"), ["alice"], "{stderr}");
}
