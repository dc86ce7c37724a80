//! TLS for both ends: PEM loading, server and client configurations, fingerprints.
//!
//! Every configuration is TLS 1.3 only, on the ring provider given explicitly (no reliance on a
//! process-wide default), and offers or accepts only the ALPN ids its caller names (this module
//! knows no wire: the listener passes the ids it has front-ends for, the client the one it
//! speaks). rustls lets a client that offers no ALPN at all complete the handshake, so servers
//! must also check [`negotiated_alpn`] afterwards and drop such connections. There is deliberately no way to build a
//! client that skips certificate verification.

use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, CommonState, InconsistentKeys, RootCertStore, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::{Digest, Sha256};

/// Prefix of a certificate fingerprint, as printed and as accepted back.
pub const FINGERPRINT_PREFIX: &str = "SHA256:";

/// Why a TLS configuration could not be built. Messages name the file involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A file is not well-formed PEM.
    #[error("invalid PEM in {}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What the PEM parser found.
        #[source]
        source: pem::Error,
    },
    /// A certificate file holds no certificate.
    #[error("no certificates in {}", path.display())]
    NoCertificates {
        /// The file.
        path: PathBuf,
    },
    /// A key file holds no private key (PKCS#8, PKCS#1 or SEC1).
    #[error("no private key in {}", path.display())]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// The private key is not the one of the certificate.
    #[error("private key {} does not match certificate {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate chain file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The certificate chain and key from these files cannot be used (unsupported key type,
    /// malformed certificate).
    #[error("cannot use certificate {} with key {}", cert.display(), key.display())]
    CertKey {
        /// The certificate chain file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls found.
        #[source]
        source: rustls::Error,
    },
    /// In-memory certificate chain and key cannot be used (empty chain, mismatched key, ...).
    #[error("invalid certificate chain or private key")]
    Material(#[source] rustls::Error),
    /// A CA certificate cannot be used as a trust anchor.
    #[error("unusable CA certificate in {}", path.display())]
    CaCertificate {
        /// The CA file.
        path: PathBuf,
        /// What rustls found.
        #[source]
        source: rustls::Error,
    },
    /// No system root certificate could be loaded.
    #[error("no system root certificates could be loaded{detail}")]
    NoSystemRoots {
        /// The loader's first error, as ": message", or empty.
        detail: String,
    },
    /// A client was given an empty set of trusted roots.
    #[error("no trusted root certificates")]
    NoRoots,
    /// A host is neither an IP address nor a valid DNS name.
    #[error("invalid server name {host:?}")]
    InvalidServerName {
        /// The host as given.
        host: String,
    },
    /// rustls refused the protocol settings (not expected with the ring provider).
    #[error("cannot build tls configuration")]
    Config(#[source] rustls::Error),
}

/// Reads every certificate of a PEM file, in order. Other PEM sections are skipped; a file
/// without any certificate is an error naming it.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| pem_error(path, source))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificates {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|source| match source {
        pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: path.to_path_buf(),
        },
        source => pem_error(path, source),
    })
}

/// The server configuration from a PEM chain file (leaf first) and a PEM key file: TLS 1.3
/// only, offering the ALPN ids `alpn` in the server's order of preference, no client
/// certificates. The key must match the leaf certificate.
pub fn server_config(
    cert: &Path,
    key: &Path,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = load_certs(cert)?;
    let key_der = load_key(key)?;
    server_config_from(chain, key_der, alpn).map_err(|e| match e {
        TlsError::Material(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            TlsError::KeyMismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            }
        }
        TlsError::Material(source) => TlsError::CertKey {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            source,
        },
        other => other,
    })
}

/// Like [`server_config`], from an already loaded chain (leaf first) and key.
pub fn server_config_from(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        // Checks that the key matches the leaf (rustls compares the SubjectPublicKeyInfo).
        .with_single_cert(chain, key)
        .map_err(TlsError::Material)?;
    config.alpn_protocols = alpn.iter().map(|id| id.to_vec()).collect();
    // The server's order decides (AES-128-GCM first, see `provider`), as PROTOCOL.md says:
    // a client that puts ChaCha20 first still gets AES-128-GCM when it offers it.
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// The client configuration: TLS 1.3 only, offering the ALPN id `alpn`, trusting the
/// certificates of the `ca` PEM file if given, else the system's root certificates (an error
/// if none load).
pub fn client_config(ca: Option<&Path>, alpn: &[u8]) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in load_certs(path)? {
                roots.add(cert).map_err(|source| TlsError::CaCertificate {
                    path: path.to_path_buf(),
                    source,
                })?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                return Err(TlsError::NoSystemRoots {
                    detail: native
                        .errors
                        .first()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default(),
                });
            }
        }
    }
    client_config_from_roots(roots, alpn)
}

/// Like [`client_config`], trusting exactly `roots` (which must not be empty).
pub fn client_config_from_roots(
    roots: RootCertStore,
    alpn: &[u8],
) -> Result<Arc<ClientConfig>, TlsError> {
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// `SHA256:` followed by the 64 lowercase hex digits of the SHA-256 of the certificate's DER.
/// This is the form `ferry certs` and `ferry serve` print and `--accept-fingerprint` takes.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = Sha256::digest(cert.as_ref());
    format!("{FINGERPRINT_PREFIX}{}", crate::domain::hex_digest(&digest))
}

/// The ALPN id the connection agreed on, if any. A server dispatches on it after the
/// handshake and drops a connection with none or one it has no front-end for (a client that
/// offered no ALPN gets through rustls); a client checks it is the one it speaks.
pub fn negotiated_alpn(conn: &CommonState) -> Option<&[u8]> {
    conn.alpn_protocol()
}

/// Whether the connection agreed on exactly the ALPN id `id`.
pub fn alpn_is(conn: &CommonState, id: &[u8]) -> bool {
    negotiated_alpn(conn) == Some(id)
}

/// The name to verify a server's certificate against: an IP literal (IPv6 also in brackets,
/// as in `[::1]`) or a DNS name.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    let invalid = || TlsError::InvalidServerName {
        host: host.to_string(),
    };
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        let ip: std::net::Ipv6Addr = inner.parse().map_err(|_| invalid())?;
        return Ok(ServerName::IpAddress(IpAddr::V6(ip).into()));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(host.to_string()).map_err(|_| invalid())
}

/// The crypto provider of every ferry configuration, never the process default.
fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    // Only TLS 1.3 suites, whatever features a build happens to unify into rustls (the test
    // build enables `tls12` for a client that must be refused): ferry speaks nothing older.
    provider
        .cipher_suites
        .retain(|s| s.version().version == rustls::ProtocolVersion::TLSv1_3);
    // AES-128-GCM first: as strong as ferry needs, and faster than AES-256-GCM, which
    // matters because encryption shares the CPU with SHA-256 on both ends of every transfer.
    provider.cipher_suites.sort_by_key(|s| match s.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
        _ => 2,
    });
    Arc::new(provider)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn pem_error(path: &Path, source: pem::Error) -> TlsError {
    TlsError::Pem {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rustls::{CertificateError, ProtocolVersion};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::time::timeout;
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;
    use crate::certs::{self, Generated};

    /// The id ferry/1 negotiates (the wire's `protocol::ALPN`; spelled out so this module's
    /// tests need no wire either).
    const FERRY: &[u8] = b"ferry/1";

    /// Bounds every socket operation of a test, so a bug fails instead of hanging.
    const TEST_TIMEOUT: Duration = Duration::from_secs(10);

    /// What one end saw of a handshake that completed.
    #[derive(Debug)]
    struct Seen {
        alpn_ok: bool,
        alpn: Option<Vec<u8>>,
        version: Option<ProtocolVersion>,
        suite: Option<rustls::CipherSuite>,
    }

    impl Seen {
        fn of(conn: &CommonState) -> Seen {
            Seen {
                alpn_ok: alpn_is(conn, FERRY),
                alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                version: conn.protocol_version(),
                suite: conn.negotiated_cipher_suite().map(|s| s.suite()),
            }
        }
    }

    /// Runs one connection over 127.0.0.1: handshake, then the client sends "ping" and the
    /// server echoes it. Returns what the server and the client saw, or their errors.
    async fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> (io::Result<Seen>, io::Result<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server_task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            let mut tls = TlsAcceptor::from(server).accept(tcp).await?;
            let seen = Seen::of(tls.get_ref().1);
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await?;
            tls.write_all(&buf).await?;
            tls.shutdown().await?;
            Ok::<_, io::Error>(seen)
        });
        let client_result = async {
            let tcp = TcpStream::connect(addr).await?;
            let mut tls = TlsConnector::from(client).connect(name, tcp).await?;
            let seen = Seen::of(tls.get_ref().1);
            tls.write_all(b"ping").await?;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await?;
            assert_eq!(&buf, b"ping");
            Ok::<_, io::Error>(seen)
        };
        let client_result = timeout(TEST_TIMEOUT, client_result)
            .await
            .expect("client timed out");
        let server_result = timeout(TEST_TIMEOUT, server_task)
            .await
            .expect("server timed out")
            .expect("server task panicked");
        (server_result, client_result)
    }

    fn rustls_error(err: &io::Error) -> Option<&rustls::Error> {
        err.get_ref()?.downcast_ref::<rustls::Error>()
    }

    fn generated() -> (tempfile::TempDir, Generated) {
        let tmp = tempfile::tempdir().unwrap();
        let generated = certs::generate(
            tmp.path(),
            &["files.example.org".to_string(), "10.1.2.3".to_string()],
            false,
        )
        .unwrap();
        (tmp, generated)
    }

    fn configs(generated: &Generated) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        let paths = &generated.paths;
        (
            server_config(&paths.server_cert, &paths.server_key, &[FERRY]).unwrap(),
            client_config(Some(&paths.ca_cert), FERRY).unwrap(),
        )
    }

    fn assert_ferry_tls13(seen: &Seen) {
        assert!(seen.alpn_ok, "{seen:?}");
        assert_eq!(seen.alpn.as_deref(), Some(FERRY));
        assert_eq!(seen.version, Some(ProtocolVersion::TLSv1_3));
    }

    #[tokio::test]
    async fn handshake_succeeds_for_every_default_and_extra_name() {
        let (_tmp, generated) = generated();
        let (server, client) = configs(&generated);
        for host in [
            "localhost",
            "127.0.0.1",
            "::1",
            "[::1]",
            "files.example.org",
            "10.1.2.3",
        ] {
            let (server_seen, client_seen) =
                handshake(server.clone(), client.clone(), server_name(host).unwrap()).await;
            let server_seen = server_seen.unwrap_or_else(|e| panic!("{host}: server: {e}"));
            let client_seen = client_seen.unwrap_or_else(|e| panic!("{host}: client: {e}"));
            assert_ferry_tls13(&server_seen);
            assert_ferry_tls13(&client_seen);
        }
    }

    /// The server once followed the client's cipher order although PROTOCOL.md says it
    /// prefers AES-128-GCM: a client that lists ChaCha20 first now still gets AES-128-GCM,
    /// and one that offers only ChaCha20 gets ChaCha20.
    #[tokio::test]
    async fn the_server_prefers_aes_128_gcm_over_a_client_that_prefers_chacha20() {
        use rustls::CipherSuite::{
            TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
        };
        let (_tmp, generated) = generated();
        let (server, _) = configs(&generated);
        let client_with = |order: &[rustls::CipherSuite]| {
            let mut provider = rustls::crypto::ring::default_provider();
            provider.cipher_suites = order
                .iter()
                .filter_map(|want| {
                    provider
                        .cipher_suites
                        .iter()
                        .find(|s| s.suite() == *want)
                        .copied()
                })
                .collect();
            let mut roots = RootCertStore::empty();
            for c in load_certs(&generated.paths.ca_cert).unwrap() {
                roots.add(c).unwrap();
            }
            let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![FERRY.to_vec()];
            Arc::new(config)
        };
        for (order, want) in [
            (
                &[
                    TLS13_CHACHA20_POLY1305_SHA256,
                    TLS13_AES_256_GCM_SHA384,
                    TLS13_AES_128_GCM_SHA256,
                ][..],
                TLS13_AES_128_GCM_SHA256,
            ),
            (
                &[TLS13_CHACHA20_POLY1305_SHA256, TLS13_AES_256_GCM_SHA384][..],
                TLS13_AES_256_GCM_SHA384,
            ),
            (
                &[TLS13_CHACHA20_POLY1305_SHA256][..],
                TLS13_CHACHA20_POLY1305_SHA256,
            ),
        ] {
            let (server_seen, client_seen) = handshake(
                server.clone(),
                client_with(order),
                server_name("localhost").unwrap(),
            )
            .await;
            assert_eq!(server_seen.unwrap().suite, Some(want), "{order:?}");
            assert_eq!(client_seen.unwrap().suite, Some(want), "{order:?}");
        }
    }

    #[tokio::test]
    async fn name_not_in_certificate_is_rejected() {
        let (_tmp, generated) = generated();
        let (server, client) = configs(&generated);
        for host in ["other.example.org", "10.1.2.4"] {
            let (server_seen, client_seen) =
                handshake(server.clone(), client.clone(), server_name(host).unwrap()).await;
            let err = client_seen.unwrap_err();
            assert!(
                matches!(
                    rustls_error(&err),
                    Some(rustls::Error::InvalidCertificate(
                        CertificateError::NotValidForName
                            | CertificateError::NotValidForNameContext { .. }
                    ))
                ),
                "{host}: {err:?}"
            );
            assert!(server_seen.is_err());
        }
    }

    #[tokio::test]
    async fn client_trusting_another_ca_fails() {
        let (_tmp, generated) = generated();
        let (_other_tmp, other) = self::generated();
        let (server, _) = configs(&generated);
        let client = client_config(Some(&other.paths.ca_cert), FERRY).unwrap();

        let (server_seen, client_seen) =
            handshake(server, client, server_name("localhost").unwrap()).await;
        let err = client_seen.unwrap_err();
        assert!(
            matches!(
                rustls_error(&err),
                Some(rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer | CertificateError::BadSignature
                ))
            ),
            "{err:?}"
        );
        assert!(server_seen.is_err());
    }

    #[tokio::test]
    async fn client_without_alpn_gets_through_but_alpn_ok_is_false() {
        let (_tmp, generated) = generated();
        let (server, client) = configs(&generated);
        let mut no_alpn = (*client).clone();
        no_alpn.alpn_protocols.clear();

        let (server_seen, client_seen) =
            handshake(server, Arc::new(no_alpn), server_name("localhost").unwrap()).await;
        let server_seen = server_seen.unwrap();
        let client_seen = client_seen.unwrap();
        assert!(!server_seen.alpn_ok);
        assert!(!client_seen.alpn_ok);
        assert_eq!(server_seen.alpn, None);
        assert_eq!(server_seen.version, Some(ProtocolVersion::TLSv1_3));
    }

    #[tokio::test]
    async fn client_offering_only_another_alpn_is_refused() {
        let (_tmp, generated) = generated();
        let (server, client) = configs(&generated);
        let mut other_alpn = (*client).clone();
        other_alpn.alpn_protocols = vec![b"http/1.1".to_vec()];

        let (server_seen, client_seen) = handshake(
            server,
            Arc::new(other_alpn),
            server_name("localhost").unwrap(),
        )
        .await;
        let err = server_seen.unwrap_err();
        assert!(
            matches!(
                rustls_error(&err),
                Some(rustls::Error::NoApplicationProtocol)
            ),
            "{err:?}"
        );
        assert!(client_seen.is_err());
    }

    #[tokio::test]
    async fn in_memory_rcgen_certificates_work() {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let key = PrivateKeyDer::Pkcs8(signing_key.serialize_der().into());
        let server = server_config_from(vec![cert.der().clone()], key, &[FERRY]).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let client = client_config_from_roots(roots, FERRY).unwrap();

        let (server_seen, client_seen) =
            handshake(server, client, server_name("localhost").unwrap()).await;
        assert_ferry_tls13(&server_seen.unwrap());
        assert_ferry_tls13(&client_seen.unwrap());
    }

    #[test]
    fn configs_offer_only_ferry_alpn_and_tls13_suites() {
        let (_tmp, generated) = generated();
        let (server, client) = configs(&generated);
        assert_eq!(server.alpn_protocols, [FERRY]);
        assert_eq!(client.alpn_protocols, [FERRY]);
        // The configs ask for TLS 1.3 only; on top of that, TLS 1.2 is not compiled in (no
        // `tls12` feature), so the provider has no TLS 1.2 suite to fall back on.
        for provider in [server.crypto_provider(), client.crypto_provider()] {
            assert!(!provider.cipher_suites.is_empty());
            for suite in &provider.cipher_suites {
                assert_eq!(suite.version().version, ProtocolVersion::TLSv1_3);
            }
        }
    }

    #[test]
    fn fingerprint_format() {
        // SHA-256 of nothing, a known answer.
        assert_eq!(
            fingerprint(&CertificateDer::from(Vec::new())),
            "SHA256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );

        let (_tmp, generated) = generated();
        let chain = load_certs(&generated.paths.server_cert).unwrap();
        let fp = fingerprint(&chain[0]);
        assert_eq!(fp, generated.fingerprint);
        let hex = fp.strip_prefix("SHA256:").unwrap();
        assert_eq!(hex.len(), 64);
        assert!(
            hex.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert_ne!(fp, fingerprint(&chain[1]));
    }

    #[test]
    fn mismatched_certificate_and_key_are_refused() {
        let (_tmp, a) = generated();
        let (_tmp_b, b) = generated();
        let err = server_config(&a.paths.server_cert, &b.paths.server_key, &[FERRY]).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains(&*a.paths.server_cert.to_string_lossy()),
            "{msg}"
        );
        assert!(
            msg.contains(&*b.paths.server_key.to_string_lossy()),
            "{msg}"
        );

        // The CA key does not match the leaf either.
        let err = server_config(&a.paths.server_cert, &a.paths.ca_key, &[FERRY]).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");

        let chain = load_certs(&a.paths.server_cert).unwrap();
        let key = load_key(&b.paths.server_key).unwrap();
        let err = server_config_from(chain, key, &[FERRY]).unwrap_err();
        assert!(
            matches!(
                err,
                TlsError::Material(rustls::Error::InconsistentKeys(
                    InconsistentKeys::KeyMismatch
                ))
            ),
            "{err:?}"
        );

        let key = load_key(&a.paths.server_key).unwrap();
        let err = server_config_from(Vec::new(), key, &[FERRY]).unwrap_err();
        assert!(matches!(err, TlsError::Material(_)), "{err:?}");
    }

    #[test]
    fn garbage_pem_is_an_error_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let no_pem = tmp.path().join("no-pem.pem");
        fs::write(&no_pem, b"this is not a certificate\n\x00\xff").unwrap();
        let bad_base64 = tmp.path().join("bad-base64.pem");
        fs::write(
            &bad_base64,
            b"-----BEGIN CERTIFICATE-----\n!!! not base64 !!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let unterminated = tmp.path().join("unterminated.pem");
        fs::write(&unterminated, b"-----BEGIN PRIVATE KEY-----\nAAAA\n").unwrap();
        let missing = tmp.path().join("missing.pem");

        for path in [&no_pem, &bad_base64, &unterminated, &missing] {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let err = load_certs(path).unwrap_err();
            assert!(err.to_string().contains(&name), "{err}");
            let err = load_key(path).unwrap_err();
            assert!(err.to_string().contains(&name), "{err}");
            let err = server_config(path, path, &[FERRY]).unwrap_err();
            assert!(err.to_string().contains(&name), "{err}");
            let err = client_config(Some(path), FERRY).unwrap_err();
            assert!(err.to_string().contains(&name), "{err}");
        }
        assert!(matches!(
            load_certs(&no_pem),
            Err(TlsError::NoCertificates { .. })
        ));
        assert!(matches!(
            load_key(&no_pem),
            Err(TlsError::NoPrivateKey { .. })
        ));
        assert!(matches!(load_certs(&bad_base64), Err(TlsError::Pem { .. })));
        assert!(matches!(load_key(&unterminated), Err(TlsError::Pem { .. })));
        assert!(matches!(load_certs(&missing), Err(TlsError::Read { .. })));
    }

    #[test]
    fn certificate_file_is_not_a_key_and_key_file_holds_no_certificate() {
        let (_tmp, generated) = generated();
        let paths = &generated.paths;
        assert!(matches!(
            load_key(&paths.server_cert),
            Err(TlsError::NoPrivateKey { .. })
        ));
        assert!(matches!(
            load_certs(&paths.server_key),
            Err(TlsError::NoCertificates { .. })
        ));
    }

    #[test]
    fn empty_roots_are_refused() {
        assert!(matches!(
            client_config_from_roots(RootCertStore::empty(), FERRY),
            Err(TlsError::NoRoots)
        ));
    }

    #[test]
    fn system_roots_load_or_the_error_says_so() {
        // Whether this machine has a CA bundle is not ours to decide; either way, no panic.
        match client_config(None, FERRY) {
            Ok(config) => assert_eq!(config.alpn_protocols, [FERRY]),
            Err(err) => assert!(matches!(err, TlsError::NoSystemRoots { .. }), "{err:?}"),
        }
    }

    #[test]
    fn server_names() {
        let ip = |s: &str| ServerName::IpAddress(s.parse::<IpAddr>().unwrap().into());
        assert_eq!(server_name("127.0.0.1").unwrap(), ip("127.0.0.1"));
        assert_eq!(server_name("::1").unwrap(), ip("::1"));
        assert_eq!(server_name("[::1]").unwrap(), ip("::1"));
        assert_eq!(
            server_name("files.example.org").unwrap(),
            ServerName::try_from("files.example.org").unwrap()
        );
        for bad in [
            "",
            "bad name",
            "[localhost]",
            "[127.0.0.1]",
            "[::1",
            "a..b",
            "x/y",
        ] {
            let err = server_name(bad).unwrap_err();
            assert!(
                matches!(&err, TlsError::InvalidServerName { host } if host == bad),
                "{bad:?}: {err:?}"
            );
        }
    }
}
