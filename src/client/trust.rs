//! Trust in a server's certificate: a CA (`--ca` or the system roots) or, failing that, a
//! fingerprint pinned on first use, as ssh does with `known_hosts`.
//!
//! [`PinningVerifier`] first runs rustls's normal webpki verification against the configured
//! roots. Only when that fails because no root vouches for the issuer does it look at the leaf's
//! fingerprint: a match with the pin for `host:port` is accepted, a different pin is refused
//! loudly, and an unknown host is accepted only when the user named its fingerprint
//! (`--accept-fingerprint`). The handshake signature is always checked with the provider's
//! algorithms, so a pinned certificate still proves possession of its key. Asking the user
//! happens outside the handshake: the verifier records what it saw, the handshake fails, and
//! the caller asks and connects again with the answer.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::platform;
use crate::protocol;
use crate::tls::{self, FINGERPRINT_PREFIX, TlsError};

/// What the verifier concluded about the server it saw last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A configured root vouched for the certificate.
    CaVerified,
    /// The certificate matched the pin in known_hosts.
    Pinned,
    /// Unknown host; its fingerprint matched `--accept-fingerprint` (the caller pins it).
    Accepted(String),
    /// Unknown host and no acceptance: the user has to decide.
    Unknown(String),
    /// `--accept-fingerprint` named a different certificate than the one offered.
    NotAccepted {
        /// What the user accepted.
        accepted: String,
        /// What the server offered.
        offered: String,
    },
    /// `--ca FILE` (or an alias's `ca`) is the only trust, and its CA did not vouch for the
    /// certificate: no pin or prompt is consulted.
    NotFromCa(CaRejection),
    /// The host is pinned to another certificate.
    Changed {
        /// The pin in known_hosts.
        pinned: String,
        /// What the server offered.
        offered: String,
        /// 1-based line of the pin in known_hosts.
        line: usize,
    },
}

/// Why the CA of `--ca` did not vouch for a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaRejection {
    /// Another CA issued it (unknown issuer, or a signature the CA's key did not make: a
    /// regenerated CA of the same name).
    NotIssued,
    /// The CA issued it, but it fails another check (name, dates, usage); the text says which.
    Invalid(String),
}

/// A pin found in known_hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// `SHA256:<hex>`.
    pub fingerprint: String,
    /// 1-based line number.
    pub line: usize,
}

/// The certificate verifier of every client connection.
pub struct PinningVerifier {
    webpki: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
    pin: Option<Pin>,
    accept: Option<String>,
    /// Only the roots count (`--ca`): no pin, no acceptance, no prompt.
    ca_only: bool,
    /// Written during the handshake, read by the caller afterwards.
    verdict: Mutex<Option<Verdict>>,
}

impl fmt::Debug for PinningVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinningVerifier")
            .field("roots", &self.webpki.is_some())
            .field("pin", &self.pin)
            .field("accept", &self.accept)
            .field("ca_only", &self.ca_only)
            .finish_non_exhaustive()
    }
}

impl PinningVerifier {
    /// A verifier trusting `roots` (may be empty: then only pins and acceptance count), the
    /// pin for this host if any, and a fingerprint the user accepted for an unknown host.
    pub fn new(roots: RootCertStore, pin: Option<Pin>, accept: Option<String>) -> Arc<Self> {
        Self::build(roots, pin, accept, false)
    }

    /// A verifier for `--ca FILE`: a certificate is accepted only if it chains to `roots`.
    /// known_hosts, `--accept-fingerprint` and prompts play no part.
    pub fn ca_only(roots: RootCertStore) -> Arc<Self> {
        Self::build(roots, None, None, true)
    }

    fn build(
        roots: RootCertStore,
        pin: Option<Pin>,
        accept: Option<String>,
        ca_only: bool,
    ) -> Arc<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let webpki = if roots.is_empty() {
            None
        } else {
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()
                .ok()
        };
        Arc::new(PinningVerifier {
            webpki,
            provider,
            pin,
            accept: accept.map(|a| normalize_fingerprint(&a).unwrap_or(a)),
            ca_only,
            verdict: Mutex::new(None),
        })
    }

    /// What the last handshake concluded.
    pub fn verdict(&self) -> Option<Verdict> {
        self.verdict.lock().ok().and_then(|v| v.clone())
    }

    fn record(&self, v: Verdict) {
        if let Ok(mut slot) = self.verdict.lock() {
            *slot = Some(v);
        }
    }

    fn by_fingerprint(&self, end_entity: &CertificateDer<'_>) -> Result<Verdict, Verdict> {
        let offered = tls::fingerprint(end_entity);
        if let Some(pin) = &self.pin {
            return if pin.fingerprint == offered {
                Ok(Verdict::Pinned)
            } else {
                Err(Verdict::Changed {
                    pinned: pin.fingerprint.clone(),
                    offered,
                    line: pin.line,
                })
            };
        }
        match &self.accept {
            Some(a) if *a == offered => Ok(Verdict::Accepted(offered)),
            Some(a) => Err(Verdict::NotAccepted {
                accepted: a.clone(),
                offered,
            }),
            None => Err(Verdict::Unknown(offered)),
        }
    }
}

impl ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(webpki) = &self.webpki {
            match webpki.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ) {
                Ok(ok) => {
                    self.record(Verdict::CaVerified);
                    return Ok(ok);
                }
                // With --ca the chain is the only way in: no pin, no prompt.
                Err(e) if self.ca_only => {
                    self.record(Verdict::NotFromCa(ca_rejection(&e)));
                    return Err(e);
                }
                // No configured root knows the issuer: this is where pins come in. Every
                // other failure (wrong name, expired, bad chain) stays a failure.
                Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {}
                Err(e) => return Err(e),
            }
        } else if self.ca_only {
            self.record(Verdict::NotFromCa(CaRejection::NotIssued));
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            ));
        }
        match self.by_fingerprint(end_entity) {
            Ok(v) => {
                self.record(v);
                Ok(ServerCertVerified::assertion())
            }
            Err(v) => {
                let err = match v {
                    Verdict::Unknown(_) => CertificateError::UnknownIssuer,
                    _ => CertificateError::ApplicationVerificationFailure,
                };
                self.record(v);
                Err(rustls::Error::InvalidCertificate(err))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Sorts a CA verification failure: not issued by this CA, or issued but unusable.
fn ca_rejection(e: &rustls::Error) -> CaRejection {
    match e {
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => CaRejection::NotIssued,
        rustls::Error::InvalidCertificate(c) => CaRejection::Invalid(c.to_string()),
        other => CaRejection::Invalid(other.to_string()),
    }
}

/// The message for a certificate the CA of `--ca FILE` did not vouch for.
pub fn not_from_ca_message(key: &str, ca: &Path, why: &CaRejection) -> String {
    match why {
        CaRejection::NotIssued => format!(
            "the certificate of {key} was not issued by the CA in {}\n\
             If the server's certificates were made again (a new development CA), ask its \
             admin for the new ca.pem; otherwise check that {key} is the server you meant.",
            ca.display()
        ),
        CaRejection::Invalid(reason) => format!(
            "the certificate of {key} does not pass the check against the CA in {}: {reason}",
            ca.display()
        ),
    }
}

/// The client configuration around a verifier: TLS 1.3 only, ALPN `ferry/1`.
pub fn client_config(verifier: Arc<PinningVerifier>) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![protocol::ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// The roots to try first: the certificates of `ca`, or the system's roots. No system roots
/// is not an error here (pins still work), but a broken `--ca` file is.
pub fn roots(ca: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in tls::load_certs(path)? {
                roots.add(cert).map_err(|source| TlsError::CaCertificate {
                    path: path.to_path_buf(),
                    source,
                })?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
    }
    Ok(roots)
}

/// Checks and normalizes a fingerprint as the user typed it: `SHA256:` and 64 hex digits
/// (case-insensitive, colons between byte pairs allowed). Returns the canonical form.
pub fn normalize_fingerprint(s: &str) -> Option<String> {
    let s = s.trim();
    let hex = s
        .get(..FINGERPRINT_PREFIX.len())
        .filter(|p| p.eq_ignore_ascii_case(FINGERPRINT_PREFIX))
        .map(|_| &s[FINGERPRINT_PREFIX.len()..])?;
    let hex: String = hex
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("{FINGERPRINT_PREFIX}{hex}"))
}

/// The known_hosts key of a server: `host:port`, an IPv6 host in brackets, lowercase.
pub fn host_key(host: &str, port: u16) -> String {
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `~/.config/ferry/known_hosts` (honouring `XDG_CONFIG_HOME`).
pub fn known_hosts_path() -> Option<PathBuf> {
    super::config::config_dir().map(|d| d.join("known_hosts"))
}

/// The pins file: one `host:port SHA256:<hex>` per line; `#` starts a comment.
#[derive(Debug)]
pub struct KnownHosts {
    path: PathBuf,
    lines: Vec<String>,
}

impl KnownHosts {
    /// Reads the file; a missing file is empty.
    pub fn load(path: &Path) -> std::io::Result<KnownHosts> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        Ok(KnownHosts {
            path: path.to_path_buf(),
            lines: text.lines().map(str::to_string).collect(),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pin for `key` (`host:port`), with its line number.
    pub fn get(&self, key: &str) -> Option<Pin> {
        self.lines.iter().enumerate().find_map(|(i, line)| {
            let line = line.trim();
            if line.starts_with('#') {
                return None;
            }
            let mut words = line.split_whitespace();
            let (k, fp) = (words.next()?, words.next()?);
            (k == key).then(|| Pin {
                fingerprint: normalize_fingerprint(fp).unwrap_or_else(|| fp.to_string()),
                line: i + 1,
            })
        })
    }

    /// Appends a pin (creating the directory 0700 and the file 0600).
    pub fn add(&mut self, key: &str, fingerprint: &str) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            platform::dir_mode(std::fs::DirBuilder::new().recursive(true), 0o700).create(dir)?;
        }
        let mut file =
            platform::create_mode(std::fs::OpenOptions::new().create(true).append(true), 0o600)
                .open(&self.path)?;
        let line = format!("{key} {fingerprint}");
        // A file whose last line lacks its newline must not swallow the new pin.
        let needs_newline = std::fs::read(&self.path)
            .map(|b| !b.is_empty() && !b.ends_with(b"\n"))
            .unwrap_or(false);
        if needs_newline {
            writeln!(file)?;
        }
        writeln!(file, "{line}")?;
        file.sync_all()?;
        self.lines.push(line);
        Ok(())
    }
}

/// The message for a host whose pinned certificate changed. It names both fingerprints and
/// the line to delete.
pub fn changed_message(key: &str, pinned: &str, offered: &str, line: usize, file: &Path) -> String {
    format!(
        "WARNING: THE CERTIFICATE OF {key} HAS CHANGED!\n\
         \x20 pinned:  {pinned}\n\
         \x20 offered: {offered}\n\
         Someone may be intercepting the connection, or the server got a new certificate.\n\
         Check the new fingerprint with the server's admin (ferry serve prints it). If the change \
         is expected, delete line {line} of {} and connect again.",
        file.display()
    )
}

/// The message for an unknown host when nobody can be asked.
pub fn unknown_message(key: &str, offered: &str) -> String {
    format!(
        "the certificate of {key} is not signed by a trusted CA and {key} is not in known_hosts\n\
         \x20 fingerprint: {offered}\n\
         Compare it with the one `ferry serve` printed, then connect again with \
         --accept-fingerprint {offered} (or --ca FILE)."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_normalize() {
        let hex = "ab".repeat(32);
        let canon = format!("SHA256:{hex}");
        assert_eq!(normalize_fingerprint(&canon).as_deref(), Some(&*canon));
        assert_eq!(
            normalize_fingerprint(&format!("sha256:{}", hex.to_uppercase())).as_deref(),
            Some(&*canon)
        );
        let colons: Vec<String> = (0..32).map(|_| "AB".to_string()).collect();
        assert_eq!(
            normalize_fingerprint(&format!("SHA256:{}", colons.join(":"))).as_deref(),
            Some(&*canon)
        );
        assert_eq!(normalize_fingerprint(&hex), None);
        assert_eq!(normalize_fingerprint("SHA256:abc"), None);
        assert_eq!(
            normalize_fingerprint(&format!("SHA256:{}", "g".repeat(64))),
            None
        );
    }

    #[test]
    fn host_keys() {
        assert_eq!(
            host_key("Files.Example.org", 7443),
            "files.example.org:7443"
        );
        assert_eq!(host_key("::1", 9), "[::1]:9");
        assert_eq!(host_key("[::1]", 9), "[::1]:9");
    }

    #[test]
    fn known_hosts_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/known_hosts");
        let mut kh = KnownHosts::load(&path).unwrap();
        assert_eq!(kh.get("a:1"), None);
        let fp = format!("SHA256:{}", "cd".repeat(32));
        kh.add("a:1", &fp).unwrap();
        std::fs::write(
            &path,
            format!(
                "# comment\n{}\nb:2 {fp}",
                std::fs::read_to_string(&path).unwrap()
            ),
        )
        .unwrap();
        let mut kh = KnownHosts::load(&path).unwrap();
        assert_eq!(
            kh.get("a:1"),
            Some(Pin {
                fingerprint: fp.clone(),
                line: 2
            })
        );
        kh.add("c:3", &fp).unwrap();
        let kh = KnownHosts::load(&path).unwrap();
        assert_eq!(kh.get("b:2").map(|p| p.line), Some(4));
        assert_eq!(kh.get("c:3").map(|p| p.line), Some(5));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
