//! Trust without ceremony, and without holes: known_hosts pinning on first use,
//! `--accept-fingerprint`, a changed certificate refused loudly, XDG paths, config aliases,
//! and a pinned certificate that still has to prove its key in the handshake.

use std::path::PathBuf;
use std::sync::Arc;

use ferry::client::Connection;
use ferry::client::trust::{self, Pin, PinningVerifier, Verdict};

use crate::cli::{ALICE_PW, Ferry, Out, World};
use crate::util::TestServer;

/// The fingerprint of the World's server certificate.
fn server_fingerprint(w: &World) -> String {
    let chain = ferry::tls::load_certs(&w.ca.parent().unwrap().join("server.pem")).unwrap();
    ferry::tls::fingerprint(&chain[0])
}

/// `ferry ls [EXTRA...] alice@127.0.0.1:PORT:` with no --ca (the dev CA is unknown).
fn ls_without_ca(w: &World, extra: &[&str], env: &[(&str, &str)]) -> Out {
    let target = "alice@127.0.0.1:".to_string();
    let port = w.server.port().to_string();
    let mut args = vec!["ls", "-P", &port];
    args.extend_from_slice(extra);
    args.push(&target);
    let mut f = Ferry::new(&w.local).env("FERRY_PASSWORD", ALICE_PW);
    for (k, v) in env {
        f = f.env(k, v);
    }
    f.run(&args)
}

fn known_hosts(w: &World) -> PathBuf {
    w.local.join(".config/ferry/known_hosts")
}

#[test]
fn unknown_host_is_refused_without_a_person_then_accepted_by_fingerprint_and_pinned() {
    let w = World::start();
    let fp = server_fingerprint(&w);
    std::fs::create_dir_all(w.alice_home()).unwrap();
    std::fs::write(w.alice_home().join("x.txt"), b"x").unwrap();

    // Not interactive, not accepted: refused with the fingerprint and the way forward.
    let out = ls_without_ca(&w, &[], &[]);
    out.expect_code(4);
    assert!(out.stderr.contains(&fp), "{out:#?}");
    assert!(out.stderr.contains("--accept-fingerprint"), "{out:#?}");
    assert_eq!(out.stdout, "");
    assert!(!known_hosts(&w).exists(), "nothing pinned");

    // The wrong fingerprint: refused, nothing pinned.
    let wrong = format!("SHA256:{}", "0".repeat(64));
    let out = ls_without_ca(&w, &["--accept-fingerprint", &wrong], &[]);
    out.expect_code(4);
    assert!(
        out.stderr.contains(&fp) && out.stderr.contains(&wrong),
        "{out:#?}"
    );
    assert!(!known_hosts(&w).exists());

    // The right one (upper case and colons are fine too): accepted and pinned.
    let loud = fp.to_uppercase();
    let out = ls_without_ca(&w, &["--accept-fingerprint", &loud], &[]);
    out.expect_ok();
    assert!(out.stdout.contains("x.txt"), "{out:#?}");
    let pinned = std::fs::read_to_string(known_hosts(&w)).unwrap();
    assert_eq!(pinned, format!("127.0.0.1:{} {fp}\n", w.server.port()));

    // From now on the pin is enough.
    ls_without_ca(&w, &[], &[]).expect_ok();
    // A CA still works as before, and pins do not get in its way.
    let out = Ferry::new(&w.local).env("FERRY_PASSWORD", ALICE_PW).run(&[
        "ls",
        "-P",
        &w.server.port().to_string(),
        "--ca",
        w.ca.to_str().unwrap(),
        "alice@127.0.0.1:",
    ]);
    out.expect_ok();
}

#[test]
fn a_changed_certificate_is_refused_loudly_with_both_fingerprints_and_the_line_to_delete() {
    let w = World::start();
    let fp = server_fingerprint(&w);
    let old = format!("SHA256:{}", "ab".repeat(32));
    let kh = known_hosts(&w);
    std::fs::create_dir_all(kh.parent().unwrap()).unwrap();
    std::fs::write(
        &kh,
        format!(
            "# my servers\nfiles.example.org:7443 {fp}\n127.0.0.1:{} {old}\n",
            w.server.port()
        ),
    )
    .unwrap();
    // Even --accept-fingerprint does not replace a pin silently.
    for extra in [&[][..], &["--accept-fingerprint", fp.as_str()][..]] {
        let out = ls_without_ca(&w, extra, &[]);
        out.expect_code(4);
        assert!(out.stderr.contains("CHANGED"), "{out:#?}");
        assert!(
            out.stderr.contains(&fp) && out.stderr.contains(&old),
            "{out:#?}"
        );
        assert!(
            out.stderr
                .contains(&format!("delete line 3 of {}", kh.display())),
            "{out:#?}"
        );
        assert_eq!(out.stdout, "");
    }
    // A batch does not run a single command against such a server.
    let out = Ferry::new(&w.local)
        .env("FERRY_PASSWORD", ALICE_PW)
        .stdin("mkdir never\n")
        .run(&["connect", &w.server.target("alice")]);
    out.expect_code(4);
    assert!(!w.alice_home().join("never").exists());
}

#[test]
fn xdg_config_home_holds_pins_and_aliases() {
    let w = World::start();
    let fp = server_fingerprint(&w);
    let xdg = w.local.join("xdg");
    let xdg_s = xdg.to_str().unwrap();
    let out = ls_without_ca(
        &w,
        &["--accept-fingerprint", &fp],
        &[("XDG_CONFIG_HOME", xdg_s)],
    );
    out.expect_ok();
    assert!(xdg.join("ferry/known_hosts").is_file());
    assert!(!known_hosts(&w).exists());

    // An alias: address, port, user and CA from config.toml; `ferry connect work` is enough.
    std::fs::write(
        xdg.join("ferry/config.toml"),
        format!(
            "[hosts.work]\naddress = \"127.0.0.1\"\nport = {}\nuser = \"alice\"\nca = \"{}\"\n",
            w.server.port(),
            w.ca.display()
        ),
    )
    .unwrap();
    let out = Ferry::new(&w.local)
        .env("FERRY_PASSWORD", ALICE_PW)
        .env("XDG_CONFIG_HOME", xdg_s)
        .stdin("mkdir via-alias\npwd\n")
        .run(&["connect", "work"]);
    out.expect_ok();
    assert!(w.alice_home().join("via-alias").is_dir());
    let out = Ferry::new(&w.local)
        .env("FERRY_PASSWORD", ALICE_PW)
        .env("XDG_CONFIG_HOME", xdg_s)
        .run(&["ls", "-1", "work:"]);
    out.expect_ok();
    assert_eq!(out.stdout, "via-alias\n");
    // An unknown alias is a usage error; a broken config file says which file.
    let out = Ferry::new(&w.local)
        .env("XDG_CONFIG_HOME", xdg_s)
        .run(&["connect", "nowhere"]);
    out.expect_code(2);
    std::fs::write(xdg.join("ferry/config.toml"), "[hosts.x]\nadress = 1\n").unwrap();
    let out = Ferry::new(&w.local)
        .env("XDG_CONFIG_HOME", xdg_s)
        .run(&["connect", "x"]);
    out.expect_code(2);
    assert!(out.stderr.contains("config.toml"), "{out:#?}");
}

// ---------------------------------------------------------------------------------------------
// The verifier itself (library level)
// ---------------------------------------------------------------------------------------------

/// Serves TLS once with `chain` and `key` (which need not match), doing nothing after the
/// handshake.
async fn tls_once(
    chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
) -> u16 {
    #[derive(Debug)]
    struct Fixed(Arc<rustls::sign::CertifiedKey>);
    impl rustls::server::ResolvesServerCert for Fixed {
        fn resolve(
            &self,
            _: rustls::server::ClientHello<'_>,
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            Some(Arc::clone(&self.0))
        }
    }
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).unwrap();
    let certified = rustls::sign::CertifiedKey::new(chain, signer);
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(Fixed(Arc::new(certified))));
    config.alpn_protocols = vec![ferry::protocol::ALPN.to_vec()];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        if let Ok((tcp, _)) = listener.accept().await {
            let _ = tokio_rustls::TlsAcceptor::from(Arc::new(config))
                .accept(tcp)
                .await;
        }
    });
    port
}

fn pinned_to(fp: &str) -> Arc<PinningVerifier> {
    PinningVerifier::new(
        rustls::RootCertStore::empty(),
        Some(Pin {
            fingerprint: fp.to_string(),
            line: 1,
        }),
        None,
    )
}

#[tokio::test]
async fn a_pinned_certificate_must_still_sign_the_handshake_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let certs = ferry::certs::generate(dir.path(), &[], false).unwrap();
    let chain = ferry::tls::load_certs(&certs.paths.server_cert).unwrap();
    let fp = ferry::tls::fingerprint(&chain[0]);

    // The right certificate, but someone else's key: the pin matches, the signature cannot.
    let stranger = rcgen::KeyPair::generate().unwrap();
    let wrong_key = rustls_pki_types::PrivateKeyDer::Pkcs8(stranger.serialize_der().into());
    let port = tls_once(chain.clone(), wrong_key).await;
    let verifier = pinned_to(&fp);
    let config = trust::client_config(verifier.clone()).unwrap();
    let err = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        Connection::connect("127.0.0.1", port, config),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(matches!(err, ferry::client::ClientError::Tls(_)), "{err:?}");
    assert_eq!(verifier.verdict(), Some(Verdict::Pinned), "the pin matched");

    // Control: the real server with the same pin and no roots at all connects.
    let server = TestServer::start().await;
    let chain = ferry::tls::load_certs(&server.dir().join("certs/server.pem")).unwrap();
    let verifier = pinned_to(&ferry::tls::fingerprint(&chain[0]));
    let config = trust::client_config(verifier.clone()).unwrap();
    let conn = Connection::connect("127.0.0.1", server.addr.port(), config)
        .await
        .unwrap();
    assert_eq!(verifier.verdict(), Some(Verdict::Pinned));
    drop(conn);

    // With its CA as a root, the CA decides (and a wrong pin is never consulted).
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(ferry::tls::load_certs(&server.ca).unwrap()[0].clone())
        .unwrap();
    let verifier = PinningVerifier::new(
        roots,
        Some(Pin {
            fingerprint: format!("SHA256:{}", "0".repeat(64)),
            line: 1,
        }),
        None,
    );
    let config = trust::client_config(verifier.clone()).unwrap();
    Connection::connect("127.0.0.1", server.addr.port(), config)
        .await
        .unwrap();
    assert_eq!(verifier.verdict(), Some(Verdict::CaVerified));
}

// ---------------------------------------------------------------------------------------------
// --ca is the whole trust (issue 12, items 8 and 15)
// ---------------------------------------------------------------------------------------------

/// `ferry ls -P PORT --ca CA [EXTRA...] alice@127.0.0.1:`.
fn ls_with_ca(w: &World, ca: &std::path::Path, extra: &[&str]) -> Out {
    let port = w.server.port().to_string();
    let mut args = vec!["ls", "-P", &port, "--ca", ca.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.push("alice@127.0.0.1:");
    Ferry::new(&w.local)
        .env("FERRY_PASSWORD", ALICE_PW)
        .run(&args)
}

#[test]
fn ca_flag_falls_through_to_trust_on_first_use_no_more() {
    let w = World::start();
    let fp = server_fingerprint(&w);
    // Another dev CA: what a client holds after the server's CA was regenerated.
    let other = tempfile::tempdir().unwrap();
    let other_ca = ferry::certs::generate(other.path(), &[], false)
        .unwrap()
        .paths
        .ca_cert;

    // --accept-fingerprint of the very certificate does not get past --ca, and pins nothing.
    let out = ls_with_ca(&w, &other_ca, &["--accept-fingerprint", &fp]);
    out.expect_code(4);
    assert!(
        out.stderr.contains(&format!(
            "was not issued by the CA in {}",
            other_ca.display()
        )),
        "{out:#?}"
    );
    assert!(out.stderr.contains("new ca.pem"), "{out:#?}");
    assert!(!out.stderr.contains("BadSignature"), "{out:#?}");
    assert_eq!(out.stdout, "");
    assert!(
        !known_hosts(&w).exists(),
        "nothing may be pinned under --ca"
    );

    // A pin for the host does not either: --ca decides alone.
    let kh = known_hosts(&w);
    std::fs::create_dir_all(kh.parent().unwrap()).unwrap();
    std::fs::write(&kh, format!("127.0.0.1:{} {fp}\n", w.server.port())).unwrap();
    let out = ls_with_ca(&w, &other_ca, &[]);
    out.expect_code(4);
    assert!(out.stderr.contains("was not issued by the CA"), "{out:#?}");

    // The right CA works, pin or no pin.
    ls_with_ca(&w, &w.ca, &[]).expect_ok();
    std::fs::remove_file(&kh).unwrap();
    ls_with_ca(&w, &w.ca, &[]).expect_ok();
    assert!(!kh.exists());
}

#[test]
fn a_lockout_after_failed_logins_is_explained_not_tls_handshake_eof() {
    // Penalties on (the default): each failed login costs the source 5 s, and past 15 s the
    // server refuses it at accept, before TLS.
    let w = World::start();
    let port = w.server.port().to_string();
    let mut last = None;
    for _ in 0..10 {
        let out = Ferry::new(&w.local).env("FERRY_PASSWORD", "wrong").run(&[
            "ls",
            "-P",
            &port,
            "--ca",
            w.ca.to_str().unwrap(),
            "alice@127.0.0.1:",
        ]);
        if out.status.code() == Some(4) {
            last = Some(out);
            break;
        }
        out.expect_code(3);
    }
    let out = last.expect("the server never refused the address");
    assert!(!out.stderr.contains("handshake eof"), "{out:#?}");
    assert!(
        out.stderr.contains("may be refusing this address")
            && out.stderr.contains("failed logins")
            && out.stderr.contains("try again later"),
        "{out:#?}"
    );
}
