//! Signed upload receipts: the server's Ed25519 receipt key, the receipt's format, signing,
//! and verification offline (`ferry receipt verify`).
//!
//! A receipt is a compact JWS (RFC 7515) with the header
//! `{"alg":"EdDSA","kid":"ed25519:…","typ":"ferry-receipt"}` (RFC 8037) over a JSON
//! [`Receipt`]. The signed bytes are the ASCII text `b64url(header) "." b64url(payload)`, so
//! any JOSE library can check a receipt and there is no JSON canonicalisation to agree on. An
//! HTTP reply carries it as `{"receipt": {…}, "jws": "…"}` ([`Signed::json`]); a verifier
//! accepts that wrapper or the bare JWS, and refuses a wrapper whose visible `receipt` is not
//! exactly the signed one.
//!
//! The key is dedicated to receipts, `receipt.key` beside the certificates (PKCS#8 v2 in PEM,
//! mode 0600): TLS certificates rotate every few months while a receipt must verify for
//! years, and a TLS key that also signed JSON would invite cross-protocol misuse. Its
//! fingerprint, `ed25519:` + unpadded base64url of SHA-256 of the 32-byte public key, is the
//! JWS `kid`; its public half is published as an OKP JWK (RFC 8037, [`PublicKey::jwk`]).
//!
//! Everything here reads hostile input (a receipt or a key handed over by anyone) without
//! panicking and within [`MAX_INPUT_LEN`]. This module knows no wire and no server.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::certs;

/// The receipt key's file name inside the certificate directory.
pub const KEY_FILE: &str = "receipt.key";

/// Where the HTTPS front-end serves the public key as a JWK.
pub const WELL_KNOWN_PATH: &str = "/.well-known/ferry-receipt-key";

/// The JWS `typ` of a receipt.
pub const TYP: &str = "ferry-receipt";

/// The JWS `alg` of a receipt (RFC 8037: Ed25519 is `EdDSA`).
pub const ALG: &str = "EdDSA";

/// The receipt format's version, the payload's `v`.
pub const VERSION: u32 = 1;

/// The prefix of a receipt key's fingerprint.
pub const FINGERPRINT_PREFIX: &str = "ed25519:";

/// The most a receipt (wrapper or bare JWS) or a key file may hold: a receipt is well under
/// 2 KiB, and a verifier reads untrusted files and stdin.
pub const MAX_INPUT_LEN: usize = 64 * 1024;

/// An Ed25519 public key's length in bytes.
const PUBLIC_KEY_LEN: usize = 32;

/// Mode of the key file, set when it is created.
const KEY_FILE_MODE: u32 = 0o600;

/// The PEM label of a PKCS#8 private key.
const PEM_LABEL: &str = "PRIVATE KEY";

/// What a receipt says: who received which bytes, when, and how they were checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The format's version, [`VERSION`].
    pub v: u32,
    /// The server as `host:port`, as senders reach it.
    pub server: String,
    /// The upload's id.
    pub id: String,
    /// Whom the file was for.
    pub to: Recipient,
    /// The name the sender gave.
    pub sent_name: String,
    /// The name the file was stored under (another when the sent one was taken).
    pub name: String,
    /// The file's size in bytes.
    pub size: u64,
    /// The SHA-256 of the stored file, lowercase hex.
    pub sha256: String,
    /// Who computed the digest the server checked before the commit.
    pub verified: Verification,
    /// When the file was committed, RFC 3339 in UTC (see [`timestamp`]).
    pub received_at: String,
}

/// The recipient of an upload: an account, or a drop link by its id (a link receipt names
/// no folder).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Recipient {
    /// `{"user":"alice"}`
    User(String),
    /// `{"link":"3fa9c2d1"}`
    Link(String),
}

/// How the file's digest was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verification {
    /// `"sender"`: the sender sent a SHA-256 and the server committed only on a match.
    Sender,
    /// `"server-only"`: the sender sent none; the digest is the server's own.
    ServerOnly,
}

/// The JWS protected header: exactly these three members, no others (no `crit`, no `b64`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    alg: String,
    kid: String,
    typ: String,
}

/// A signed receipt: the JWS and the JSON an upload's reply carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// The compact JWS.
    pub jws: String,
    /// `{"receipt": <the signed payload>, "jws": "<jws>"}`, the body of a `PUT`'s reply.
    pub json: String,
}

/// A receipt whose signature checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// What it says.
    pub receipt: Receipt,
    /// The fingerprint of the key that signed it (the header's `kid`).
    pub kid: String,
}

/// Why a key could not be made, loaded or parsed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The key file holds no usable Ed25519 private key.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key file could not be written.
    #[error(transparent)]
    Write(#[from] certs::CertError),
    /// The system's random generator failed.
    #[error("cannot generate an Ed25519 key")]
    Generate,
    /// A public key (JWK or base64url) does not parse.
    #[error("{0}")]
    Public(String),
}

/// Why a receipt did not verify. The messages say what is wrong, for `ferry receipt verify`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyError {
    /// Over [`MAX_INPUT_LEN`].
    #[error("the receipt is larger than {MAX_INPUT_LEN} bytes")]
    TooLarge,
    /// Neither the JSON wrapper nor a compact JWS.
    #[error("not a receipt: {0}")]
    Malformed(String),
    /// The JWS header is not exactly a ferry receipt's.
    #[error("not a ferry receipt header: {0}")]
    Header(String),
    /// The receipt names another key than the one given.
    #[error("the receipt was signed by key {kid}, not by the key given ({expected})")]
    OtherKey {
        /// The receipt's `kid`.
        kid: String,
        /// The given key's fingerprint.
        expected: String,
    },
    /// The signature does not match the header and payload.
    #[error("the signature does not match: the receipt was altered or not signed by this key")]
    BadSignature,
    /// The wrapper's visible `receipt` differs from the signed payload.
    #[error(
        "the JSON's \"receipt\" differs from the signed one inside \"jws\": it was altered \
         after signing"
    )]
    WrapperMismatch,
    /// The signed payload is not a receipt this version understands.
    #[error("the signed payload is not a valid receipt: {0}")]
    Payload(String),
}

/// The server's receipt signing key.
pub struct ReceiptKey {
    pair: Ed25519KeyPair,
    public: PublicKey,
}

impl fmt::Debug for ReceiptKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the private half.
        f.debug_struct("ReceiptKey")
            .field("fingerprint", &self.public.fingerprint())
            .finish_non_exhaustive()
    }
}

impl ReceiptKey {
    /// A new random key, in memory, with its PKCS#8 v2 DER (what [`ReceiptKey::create`]
    /// writes as PEM).
    pub fn generate() -> Result<(ReceiptKey, Vec<u8>), KeyError> {
        let pkcs8 =
            Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Generate)?;
        let key = ReceiptKey::from_pkcs8(pkcs8.as_ref()).map_err(|_| KeyError::Generate)?;
        Ok((key, pkcs8.as_ref().to_vec()))
    }

    /// A key from PKCS#8 DER: v2 (as ring makes it; its public key must match) or v1 (as
    /// `openssl genpkey -algorithm ed25519` makes it).
    pub fn from_pkcs8(der: &[u8]) -> Result<ReceiptKey, String> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|e| format!("not an Ed25519 PKCS#8 private key ({e})"))?;
        let public = PublicKey::from_bytes(pair.public_key().as_ref())
            .map_err(|e| format!("bad public key: {e}"))?;
        Ok(ReceiptKey { pair, public })
    }

    /// Loads the key from a PEM file (`-----BEGIN PRIVATE KEY-----`, PKCS#8).
    pub fn load(path: &Path) -> Result<ReceiptKey, KeyError> {
        let invalid = |reason: String| KeyError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = read_bounded(path).map_err(|source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let der = PrivatePkcs8KeyDer::from_pem_slice(&bytes)
            .map_err(|e| invalid(format!("no PKCS#8 private key in PEM ({e})")))?;
        ReceiptKey::from_pkcs8(der.secret_pkcs8_der()).map_err(invalid)
    }

    /// Makes a new key and writes it to `path` (mode 0600, through a temp file renamed into
    /// place, so a crash never leaves half a key). An existing file is replaced only if
    /// `replace`; otherwise it is an error ([`certs::CertError::Exists`]).
    pub fn create(path: &Path, replace: bool) -> Result<ReceiptKey, KeyError> {
        let (key, der) = ReceiptKey::generate()?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            certs::create_dir(dir)?;
        }
        certs::write_atomic(path, pem(&der).as_bytes(), KEY_FILE_MODE, replace)?;
        certs::sync_dir(
            path.parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
        )?;
        Ok(key)
    }

    /// The key in `dir` ([`KEY_FILE`]), made first if missing; `true` if it was made now.
    /// Two processes racing both end up with the same key: the loser of the race loads the
    /// winner's.
    pub fn load_or_create(dir: &Path) -> Result<(ReceiptKey, bool), KeyError> {
        let path = key_path(dir);
        match fs::symlink_metadata(&path) {
            Ok(_) => return Ok((ReceiptKey::load(&path)?, false)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(KeyError::Read { path, source }),
        }
        match ReceiptKey::create(&path, false) {
            Ok(key) => Ok((key, true)),
            Err(KeyError::Write(certs::CertError::Exists { .. })) => {
                Ok((ReceiptKey::load(&path)?, false))
            }
            Err(e) => Err(e),
        }
    }

    /// The public half.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The key's fingerprint, the receipts' `kid`: `ed25519:` + base64url(SHA-256(key)).
    pub fn fingerprint(&self) -> String {
        self.public.fingerprint()
    }

    /// Signs `receipt`: the compact JWS and the JSON wrapper of a reply.
    pub fn sign(&self, receipt: &Receipt) -> Signed {
        // A struct of strings, numbers and unit-like enums always serialises.
        let payload = serde_json::to_string(receipt).expect("a receipt serialises");
        let header = Header {
            alg: ALG.to_string(),
            kid: self.fingerprint(),
            typ: TYP.to_string(),
        };
        let header = serde_json::to_string(&header).expect("a header serialises");
        let jws = self.sign_compact(header.as_bytes(), payload.as_bytes());
        // The wrapper holds the payload's own bytes, so it is the signed JSON exactly.
        let json = format!(
            "{{\"receipt\":{payload},\"jws\":{}}}",
            serde_json::Value::String(jws.clone())
        );
        Signed { jws, json }
    }

    /// `b64url(header) "." b64url(payload) "." b64url(signature)`.
    fn sign_compact(&self, header: &[u8], payload: &[u8]) -> String {
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let signature = self.pair.sign(signing_input.as_bytes());
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        )
    }
}

/// The receipt key's path in a certificate directory.
pub fn key_path(dir: &Path) -> PathBuf {
    dir.join(KEY_FILE)
}

/// For `ferry serve` at startup: loads the receipt key from the certificate directory `dir`,
/// or makes it when missing, and prints `receipt key: ed25519:…` on stderr (with a line
/// saying it was made, when it was). The server keeps the key to sign receipts and serves
/// [`PublicKey::jwk`] at [`WELL_KNOWN_PATH`]. Call it after the certificates are in place, so
/// a refused start (half a certificate pair) writes nothing.
pub fn serve_key(dir: &Path) -> Result<ReceiptKey, KeyError> {
    let (key, created) = ReceiptKey::load_or_create(dir)?;
    if created {
        eprintln!(
            "created the receipt signing key {} (private; keep it for as long as receipts \
             must verify)",
            key_path(dir).display()
        );
    }
    eprintln!("receipt key: {}", key.fingerprint());
    Ok(key)
}

/// `t` as a receipt's `received_at`: RFC 3339 in UTC, whole seconds (`2026-12-07T02:14:57Z`).
pub fn timestamp(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t)
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// An Ed25519 public key that verifies receipts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey([u8; PUBLIC_KEY_LEN]);

/// An OKP JWK (RFC 8037) as the server publishes it.
#[derive(Debug, Serialize, Deserialize)]
struct Jwk {
    kty: String,
    crv: String,
    x: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
}

impl PublicKey {
    /// The key from its 32 raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<PublicKey, KeyError> {
        <[u8; PUBLIC_KEY_LEN]>::try_from(bytes)
            .map(PublicKey)
            .map_err(|_| {
                KeyError::Public(format!(
                    "an Ed25519 public key has {PUBLIC_KEY_LEN} bytes, not {}",
                    bytes.len()
                ))
            })
    }

    /// The key from its unpadded base64url text (a JWK's `x`).
    pub fn from_base64url(text: &str) -> Result<PublicKey, KeyError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|e| KeyError::Public(format!("not base64url: {e}")))?;
        PublicKey::from_bytes(&bytes)
    }

    /// The key from an OKP JWK (`kty` `OKP`, `crv` `Ed25519`, `x`). A `kid`, if present,
    /// must be this key's fingerprint. Other members (`use`, `alg`) are ignored.
    pub fn from_jwk(json: &str) -> Result<PublicKey, KeyError> {
        if json.len() > MAX_INPUT_LEN {
            return Err(KeyError::Public(format!(
                "a JWK is not larger than {MAX_INPUT_LEN} bytes"
            )));
        }
        let jwk: Jwk =
            serde_json::from_str(json).map_err(|e| KeyError::Public(format!("not a JWK: {e}")))?;
        if jwk.kty != "OKP" || jwk.crv != "Ed25519" {
            return Err(KeyError::Public(format!(
                "not an Ed25519 JWK (kty {:?}, crv {:?}; want \"OKP\", \"Ed25519\")",
                jwk.kty, jwk.crv
            )));
        }
        let key = PublicKey::from_base64url(&jwk.x)?;
        if let Some(kid) = jwk.kid
            && kid != key.fingerprint()
        {
            return Err(KeyError::Public(format!(
                "the JWK's kid {kid:?} is not its key's fingerprint {}",
                key.fingerprint()
            )));
        }
        Ok(key)
    }

    /// A key as a user hands it over: an OKP JWK (text starting with `{`) or the unpadded
    /// base64url of the 32 raw bytes. A fingerprint is refused with a message saying so.
    pub fn parse(text: &str) -> Result<PublicKey, KeyError> {
        let text = text.trim();
        if text.starts_with('{') {
            return PublicKey::from_jwk(text);
        }
        if text.starts_with(FINGERPRINT_PREFIX) {
            return Err(KeyError::Public(
                "that is a key's fingerprint, not the key: a fingerprint cannot check a \
                 signature (give the JWK or the base64url public key)"
                    .to_string(),
            ));
        }
        PublicKey::from_base64url(text)
    }

    /// The 32 raw bytes.
    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.0
    }

    /// `ed25519:` + unpadded base64url of SHA-256 of the 32 raw bytes.
    pub fn fingerprint(&self) -> String {
        format!(
            "{FINGERPRINT_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(Sha256::digest(self.0))
        )
    }

    /// The key as an OKP JWK (RFC 8037) with the fingerprint as `kid`, one line of JSON:
    /// `{"kty":"OKP","crv":"Ed25519","x":"…","kid":"ed25519:…"}`.
    pub fn jwk(&self) -> String {
        let jwk = Jwk {
            kty: "OKP".to_string(),
            crv: "Ed25519".to_string(),
            x: URL_SAFE_NO_PAD.encode(self.0),
            kid: Some(self.fingerprint()),
        };
        // Four strings always serialise.
        serde_json::to_string(&jwk).expect("a JWK serialises")
    }

    /// Verifies a receipt: the JSON wrapper `{"receipt": …, "jws": "…"}` or a bare compact
    /// JWS, surrounding whitespace ignored, at most [`MAX_INPUT_LEN`] bytes.
    ///
    /// Checks, in order: the shape; the header is exactly `alg` `EdDSA`, `typ`
    /// `ferry-receipt` and a `kid`, nothing else; the `kid` is this key's fingerprint; the
    /// Ed25519 signature over the first two parts; the payload is a version-1 receipt; and for
    /// the wrapper, that its `receipt` is the signed payload (as JSON values: member order and
    /// spacing do not matter, every member and value does).
    pub fn verify(&self, input: &[u8]) -> Result<Verified, VerifyError> {
        if input.len() > MAX_INPUT_LEN {
            return Err(VerifyError::TooLarge);
        }
        let text = std::str::from_utf8(input)
            .map_err(|_| VerifyError::Malformed("not UTF-8 text".to_string()))?
            .trim();
        if text.is_empty() {
            return Err(VerifyError::Malformed("empty".to_string()));
        }
        let (jws, visible) = if text.starts_with('{') {
            let wrapper: Wrapper = serde_json::from_str(text).map_err(|e| {
                VerifyError::Malformed(format!(
                    "JSON without a \"receipt\" and a \"jws\" string ({e})"
                ))
            })?;
            (wrapper.jws, Some(wrapper.receipt))
        } else {
            (text.to_string(), None)
        };
        let (verified, signed) = self.verify_jws(&jws)?;
        // The payload as signed, unknown members included, against what the reader sees.
        if visible.is_some_and(|visible| visible != signed) {
            return Err(VerifyError::WrapperMismatch);
        }
        Ok(verified)
    }

    /// Checks a bare compact JWS; also returns its payload as a JSON value.
    fn verify_jws(&self, jws: &str) -> Result<(Verified, serde_json::Value), VerifyError> {
        let parts = split_jws(jws)?;
        let header_bytes = decode_part(parts[0], "header")?;
        let header: Header = serde_json::from_slice(&header_bytes)
            .map_err(|e| VerifyError::Header(format!("want exactly alg, kid and typ ({e})")))?;
        if header.alg != ALG {
            return Err(VerifyError::Header(format!(
                "alg {:?}, want {ALG:?}",
                header.alg
            )));
        }
        if header.typ != TYP {
            return Err(VerifyError::Header(format!(
                "typ {:?}, want {TYP:?}",
                header.typ
            )));
        }
        let expected = self.fingerprint();
        if header.kid != expected {
            return Err(VerifyError::OtherKey {
                kid: header.kid,
                expected,
            });
        }
        self.check_signature(parts[0], parts[1], parts[2])?;
        let payload = decode_part(parts[1], "payload")?;
        let value: serde_json::Value =
            serde_json::from_slice(&payload).map_err(|e| VerifyError::Payload(e.to_string()))?;
        if value.get("v") != Some(&serde_json::Value::from(VERSION)) {
            return Err(VerifyError::Payload(format!(
                "version {}, this ferry reads version {VERSION}",
                value
                    .get("v")
                    .map_or("missing".to_string(), |v| v.to_string())
            )));
        }
        let receipt: Receipt =
            serde_json::from_slice(&payload).map_err(|e| VerifyError::Payload(e.to_string()))?;
        check_receipt(&receipt)?;
        let verified = Verified {
            receipt,
            kid: header.kid,
        };
        Ok((verified, value))
    }

    /// The Ed25519 signature check over `header "." payload` (both still base64url).
    fn check_signature(&self, header: &str, payload: &str, sig: &str) -> Result<(), VerifyError> {
        let signature = decode_part(sig, "signature")?;
        let signing_input = format!("{header}.{payload}");
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(signing_input.as_bytes(), &signature)
            .map_err(|_| VerifyError::BadSignature)
    }
}

/// What an upload's reply and a saved `.ferry-receipt.json` hold.
#[derive(Deserialize)]
struct Wrapper {
    receipt: serde_json::Value,
    jws: String,
}

/// The three parts of a compact JWS.
fn split_jws(jws: &str) -> Result<[&str; 3], VerifyError> {
    let mut parts = jws.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(s), None) => Ok([h, p, s]),
        _ => Err(VerifyError::Malformed(
            "a compact JWS has three parts separated by '.'".to_string(),
        )),
    }
}

/// One part of a compact JWS: unpadded base64url, canonical (no stray trailing bits).
fn decode_part(part: &str, what: &str) -> Result<Vec<u8>, VerifyError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| VerifyError::Malformed(format!("the {what} is not base64url ({e})")))
}

/// The checks a signed payload must still pass: a digest that is one, and names and ids a
/// reader can be shown.
fn check_receipt(r: &Receipt) -> Result<(), VerifyError> {
    if r.sha256.len() != 64
        || !r
            .sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(VerifyError::Payload(
            "sha256 is not 64 lowercase hex digits".to_string(),
        ));
    }
    if chrono::DateTime::parse_from_rfc3339(&r.received_at).is_err() {
        return Err(VerifyError::Payload(
            "received_at is not an RFC 3339 time".to_string(),
        ));
    }
    Ok(())
}

/// `der` as PEM with the PKCS#8 label, 64 characters a line.
fn pem(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {PEM_LABEL}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // Base64 is ASCII, so every chunk is UTF-8.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {PEM_LABEL}-----\n"));
    out
}

/// Reads at most [`MAX_INPUT_LEN`] bytes of `path`; a larger file is an error.
pub fn read_bounded(path: &Path) -> io::Result<Vec<u8>> {
    read_bounded_from(File::open(path)?)
}

/// Reads at most [`MAX_INPUT_LEN`] bytes from `reader`; more is an error.
pub fn read_bounded_from(reader: impl Read) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    reader
        .take(MAX_INPUT_LEN as u64 + 1)
        .read_to_end(&mut buf)?;
    if buf.len() > MAX_INPUT_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {MAX_INPUT_LEN} bytes"),
        ));
    }
    Ok(buf)
}
