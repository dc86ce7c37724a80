//! Signed upload receipts from the command line: the real `ferry` binary for `certs` (which
//! makes the receipt key), `receipt key` and `receipt verify`, with receipts signed through
//! the library as the server will sign them.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use ferry::receipt::{PublicKey, Receipt, ReceiptKey, Recipient, Verification};

use crate::cli::{Ferry, Out};
use crate::util::{random_file, sha256_hex};

/// A temp world: `ferry certs` run in `dir/certs`.
fn certs(dir: &Path) -> Out {
    let out = Ferry::new(dir).run(&["certs"]);
    out.expect_ok();
    out
}

/// A receipt for `data` stored as `name`, for alice.
fn receipt_for(data: &[u8], name: &str) -> Receipt {
    Receipt {
        v: 1,
        server: "127.0.0.1:7443".to_string(),
        id: "u-1".to_string(),
        to: Recipient::User("alice".to_string()),
        sent_name: name.to_string(),
        name: name.to_string(),
        size: data.len() as u64,
        sha256: sha256_hex(data),
        verified: Verification::Sender,
        received_at: ferry::receipt::timestamp(std::time::SystemTime::now()),
    }
}

fn verify(cwd: &Path, args: &[&str]) -> Out {
    let mut all = vec!["receipt", "verify"];
    all.extend_from_slice(args);
    Ferry::new(cwd).run(&all)
}

#[test]
fn certs_makes_a_0600_receipt_key_once_and_keeps_it_through_force_and_new_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let out = certs(tmp.path());
    let path = tmp.path().join("certs/receipt.key");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{text}");
    let fp = ReceiptKey::load(&path).unwrap().fingerprint();
    assert!(
        fp.starts_with("ed25519:") && fp.len() == "ed25519:".len() + 43,
        "{fp}"
    );
    assert!(
        out.stdout.contains("wrote certs/receipt.key") && out.stdout.contains(&fp),
        "{out:#?}"
    );

    for flag in ["--force", "--new-ca"] {
        let again = Ferry::new(tmp.path()).run(&["certs", flag]);
        again.expect_ok();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text, "{flag}");
        assert!(
            again.stdout.contains("kept certs/receipt.key") && again.stdout.contains(&fp),
            "{again:#?}"
        );
    }
}

#[test]
fn receipt_key_prints_the_fingerprint_and_the_jwk() {
    let tmp = tempfile::tempdir().unwrap();
    certs(tmp.path());
    let key = ReceiptKey::load(&tmp.path().join("certs/receipt.key")).unwrap();

    let out = Ferry::new(tmp.path()).run(&["receipt", "key"]);
    out.expect_ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{out:#?}");
    assert_eq!(lines[0], format!("receipt key: {}", key.fingerprint()));
    assert_eq!(PublicKey::from_jwk(lines[1]).unwrap(), *key.public_key());
    let jwk: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(jwk["kty"], "OKP");
    assert_eq!(jwk["crv"], "Ed25519");
    assert_eq!(jwk["kid"], key.fingerprint().as_str());

    let only = Ferry::new(tmp.path()).run(&["receipt", "key", "--certs", "certs", "--jwk"]);
    only.expect_ok();
    assert_eq!(only.stdout, format!("{}\n", key.public_key().jwk()));

    // It never makes a key.
    let none = Ferry::new(tmp.path()).run(&["receipt", "key", "--certs", "elsewhere"]);
    none.expect_code(1);
    assert!(none.stderr.contains("no receipt key"), "{none:#?}");
    assert!(!tmp.path().join("elsewhere").exists());
}

#[test]
fn receipt_verify_accepts_a_signed_receipt_with_every_form_of_key_and_the_right_file() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    certs(cwd);
    let key = ReceiptKey::load(&cwd.join("certs/receipt.key")).unwrap();
    let data = random_file(&cwd.join("report.pdf"), 300_000, 1);
    let signed = key.sign(&receipt_for(&data, "report.pdf"));
    std::fs::write(cwd.join("r.json"), &signed.json).unwrap();
    std::fs::write(cwd.join("r.jws"), format!("{}\n", signed.jws)).unwrap();
    std::fs::write(cwd.join("key.jwk"), key.public_key().jwk()).unwrap();
    let raw = serde_json::from_str::<serde_json::Value>(&key.public_key().jwk()).unwrap()["x"]
        .as_str()
        .unwrap()
        .to_string();
    let jwk = key.public_key().jwk();
    let fp = key.fingerprint();

    let out = verify(cwd, &["r.json", "--key", "key.jwk"]);
    out.expect_ok();
    for needle in [
        format!("valid receipt, signed by {fp}"),
        "to:          user alice".to_string(),
        "stored as:   report.pdf".to_string(),
        format!("size:        {} bytes", data.len()),
        format!("sha256:      {}", sha256_hex(&data)),
        "verified:    sender".to_string(),
    ] {
        assert!(out.stdout.contains(&needle), "{needle}: {out:#?}");
    }
    for key_arg in ["key.jwk", raw.as_str(), jwk.as_str(), "certs/receipt.key"] {
        for receipt in ["r.json", "r.jws"] {
            verify(cwd, &[receipt, "--key", key_arg]).expect_ok();
        }
    }
    let with_file = verify(
        cwd,
        &[
            "r.json",
            "--key",
            "key.jwk",
            "--fingerprint",
            &fp,
            "--file",
            "report.pdf",
        ],
    );
    with_file.expect_ok();
    assert!(
        with_file
            .stdout
            .contains("report.pdf matches (size and SHA-256)"),
        "{with_file:#?}"
    );
    // From stdin, as `curl ... | ferry receipt verify -` gives it.
    Ferry::new(cwd)
        .stdin(&signed.json)
        .run(&[
            "receipt",
            "verify",
            "-",
            "--key",
            "key.jwk",
            "--file",
            "report.pdf",
        ])
        .expect_ok();
}

#[test]
fn receipt_verify_fails_on_a_tampered_receipt_another_file_or_another_key() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    certs(cwd);
    let key = ReceiptKey::load(&cwd.join("certs/receipt.key")).unwrap();
    std::fs::write(cwd.join("key.jwk"), key.public_key().jwk()).unwrap();
    let data = random_file(&cwd.join("report.pdf"), 100_000, 2);
    let signed = key.sign(&receipt_for(&data, "report.pdf"));
    std::fs::write(cwd.join("r.json"), &signed.json).unwrap();

    // The visible JSON edited: the signed one inside the JWS says otherwise.
    let edited = signed.json.replacen("\"report.pdf\"", "\"invoice.pdf\"", 2);
    assert_ne!(edited, signed.json);
    std::fs::write(cwd.join("edited.json"), edited).unwrap();
    let out = verify(cwd, &["edited.json", "--key", "key.jwk"]);
    out.expect_code(1);
    assert!(out.stderr.contains("altered"), "{out:#?}");
    assert!(out.stdout.is_empty(), "nothing printed as valid: {out:#?}");

    // One character of the JWS changed.
    let mut jws = signed.jws.clone().into_bytes();
    let i = jws.len() / 2;
    jws[i] = if jws[i] == b'A' { b'B' } else { b'A' };
    std::fs::write(cwd.join("bad.jws"), &jws).unwrap();
    verify(cwd, &["bad.jws", "--key", "key.jwk"]).expect_code(1);

    // Another file: same size, one byte different; then another size.
    let mut other = data.clone();
    other[500] ^= 0xff;
    std::fs::write(cwd.join("other.pdf"), &other).unwrap();
    let out = verify(cwd, &["r.json", "--key", "key.jwk", "--file", "other.pdf"]);
    out.expect_code(1);
    assert!(
        out.stderr.contains("does not match the receipt") && out.stderr.contains("SHA-256"),
        "{out:#?}"
    );
    std::fs::write(cwd.join("short.pdf"), &data[..1000]).unwrap();
    let out = verify(cwd, &["r.json", "--key", "key.jwk", "--file", "short.pdf"]);
    out.expect_code(1);
    assert!(out.stderr.contains("1000 bytes"), "{out:#?}");

    // Another key, and a fingerprint that is not the key's.
    let (stranger, _) = ReceiptKey::generate().unwrap();
    std::fs::write(cwd.join("stranger.jwk"), stranger.public_key().jwk()).unwrap();
    let out = verify(cwd, &["r.json", "--key", "stranger.jwk"]);
    out.expect_code(1);
    assert!(out.stderr.contains(&key.fingerprint()), "{out:#?}");
    let out = verify(
        cwd,
        &[
            "r.json",
            "--key",
            "key.jwk",
            "--fingerprint",
            &stranger.fingerprint(),
        ],
    );
    out.expect_code(1);
    assert!(out.stderr.contains("not the key you expected"), "{out:#?}");

    // Usage: a fingerprint alone, no key at all, a key that is not one, no receipt file.
    let out = verify(cwd, &["r.json", "--fingerprint", &key.fingerprint()]);
    out.expect_code(2);
    assert!(out.stderr.contains("needs the key"), "{out:#?}");
    verify(cwd, &["r.json"]).expect_code(2);
    let out = verify(cwd, &["r.json", "--key", &key.fingerprint()]);
    out.expect_code(2);
    assert!(out.stderr.contains("fingerprint"), "{out:#?}");
    verify(cwd, &["missing.json", "--key", "key.jwk"]).expect_code(2);

    // Garbage and an oversize input are refused, not crashed on.
    std::fs::write(cwd.join("huge"), vec![b'a'; 100_000]).unwrap();
    let out = verify(cwd, &["huge", "--key", "key.jwk"]);
    out.expect_code(1);
    assert!(out.stderr.contains("larger than"), "{out:#?}");
    std::fs::write(cwd.join("junk"), [0xff, 0x00, b'.', b'.']).unwrap();
    verify(cwd, &["junk", "--key", "key.jwk"]).expect_code(1);
}

#[test]
fn receipt_verify_escapes_hostile_names_before_printing_them() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    certs(cwd);
    let key = ReceiptKey::load(&cwd.join("certs/receipt.key")).unwrap();
    let data = b"hello".to_vec();
    let mut r = receipt_for(&data, "evil\x1b[2J\u{202e}fdp.exe");
    r.to = Recipient::Link("3fa9\x07c2d1".to_string());
    std::fs::write(cwd.join("r.jws"), key.sign(&r).jws).unwrap();
    std::fs::write(cwd.join("key.jwk"), key.public_key().jwk()).unwrap();
    let out = verify(cwd, &["r.jws", "--key", "key.jwk"]);
    out.expect_ok();
    assert!(
        !out.stdout.contains('\x1b') && !out.stdout.contains('\x07'),
        "{out:#?}"
    );
    assert!(!out.stdout.contains('\u{202e}'), "{out:#?}");
    assert!(out.stdout.contains("evil\\u{1b}[2J"), "{out:#?}");
    assert!(out.stdout.contains("drop link 3fa9\\u{7}c2d1"), "{out:#?}");
}
