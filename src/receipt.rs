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

impl Verification {
    /// Its word in the receipt (and in audit lines).
    pub fn as_str(self) -> &'static str {
        match self {
            Verification::Sender => "sender",
            Verification::ServerOnly => "server-only",
        }
    }
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
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        certs::create_dir(dir)?;
        certs::write_atomic(path, pem(&der).as_bytes(), KEY_FILE_MODE, replace)?;
        certs::sync_dir(dir)?;
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
        // Through a map: serde would also read a struct from a JSON array.
        let header: Header =
            serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&header_bytes)
                .and_then(|map| serde_json::from_value(serde_json::Value::Object(map)))
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
        if !value.is_object() {
            return Err(VerifyError::Payload("not a JSON object".to_string()));
        }
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// RFC 8037 appendix A.1: the private key's seed (`d`) and public key (`x`).
    const RFC8037_D: &str = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";
    const RFC8037_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
    /// RFC 8037 appendix A.4: `{"alg":"EdDSA"}` over "Example of Ed25519 signing".
    const RFC8037_JWS: &str = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_\
        MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";
    /// The fingerprint of RFC8037_X, computed once by hand with Python's hashlib and base64:
    /// `urlsafe_b64encode(sha256(urlsafe_b64decode(x)).digest())` without `=`.
    const RFC8037_FINGERPRINT: &str = "ed25519:If4x36FUomFia_hUBG_SJxt77UtqvkWqWId-9H-XIbk";

    /// The RFC's key, through a PKCS#8 v1 document (as `openssl genpkey` writes one).
    fn rfc_key() -> ReceiptKey {
        let mut der = hex::decode("302e020100300506032b657004220420").unwrap();
        der.extend(URL_SAFE_NO_PAD.decode(RFC8037_D).unwrap());
        ReceiptKey::from_pkcs8(&der).unwrap()
    }

    fn key() -> ReceiptKey {
        ReceiptKey::generate().unwrap().0
    }

    fn receipt() -> Receipt {
        Receipt {
            v: VERSION,
            server: "files.example.org:7443".to_string(),
            id: "u-7f3a".to_string(),
            to: Recipient::Link("3fa9c2d1".to_string()),
            sent_name: "report.pdf".to_string(),
            name: "report (1).pdf".to_string(),
            size: 123,
            sha256: "ab".repeat(32),
            verified: Verification::Sender,
            received_at: "2026-12-07T02:14:57Z".to_string(),
        }
    }

    /// A JWS with this header and payload JSON, signed by `key` (for hostile variants).
    fn forge(key: &ReceiptKey, header: &str, payload: &str) -> String {
        key.sign_compact(header.as_bytes(), payload.as_bytes())
    }

    fn header_for(key: &ReceiptKey) -> String {
        format!(
            r#"{{"alg":"EdDSA","kid":"{}","typ":"ferry-receipt"}}"#,
            key.fingerprint()
        )
    }

    #[test]
    fn fingerprint_matches_the_hand_computed_vector_and_is_stable() {
        let public = PublicKey::from_base64url(RFC8037_X).unwrap();
        assert_eq!(public.fingerprint(), RFC8037_FINGERPRINT);
        assert_eq!(rfc_key().fingerprint(), RFC8037_FINGERPRINT);
        assert_eq!(rfc_key().public_key(), &public);
        let k = key();
        assert_eq!(k.fingerprint(), k.fingerprint());
        assert_eq!(k.fingerprint(), k.public_key().fingerprint());
        assert_ne!(k.fingerprint(), RFC8037_FINGERPRINT);
    }

    #[test]
    fn signing_matches_rfc8037s_example() {
        let k = rfc_key();
        let jws = k.sign_compact(br#"{"alg":"EdDSA"}"#, b"Example of Ed25519 signing");
        assert_eq!(jws, RFC8037_JWS);
        let [h, p, s] = split_jws(RFC8037_JWS).unwrap();
        k.public_key().check_signature(h, p, s).unwrap();
        // A JWS, but not a ferry receipt: its header has no typ or kid.
        assert!(matches!(
            k.public_key().verify(RFC8037_JWS.as_bytes()),
            Err(VerifyError::Header(_))
        ));
    }

    /// `receipt()` signed with RFC 8037's key by another implementation (Python's
    /// `cryptography` 48, Ed25519 over `b64url(header) "." b64url(payload)` as written by
    /// hand): what any JOSE library makes of the format.
    const INTEROP_JWS: &str = "eyJhbGciOiJFZERTQSIsImtpZCI6ImVkMjU1MTk6SWY0eDM2RlVvbUZpYV9oVUJ\
        HX1NKeHQ3N1V0cXZrV3FXSWQtOUgtWEliayIsInR5cCI6ImZlcnJ5LXJlY2VpcHQifQ.eyJ2IjoxLCJzZXJ2ZXI\
        iOiJmaWxlcy5leGFtcGxlLm9yZzo3NDQzIiwiaWQiOiJ1LTdmM2EiLCJ0byI6eyJsaW5rIjoiM2ZhOWMyZDEif\
        Swic2VudF9uYW1lIjoicmVwb3J0LnBkZiIsIm5hbWUiOiJyZXBvcnQgKDEpLnBkZiIsInNpemUiOjEyMywic2h\
        hMjU2IjoiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhY\
        mFiYWJhYiIsInZlcmlmaWVkIjoic2VuZGVyIiwicmVjZWl2ZWRfYXQiOiIyMDI2LTEyLTA3VDAyOjE0OjU3WiJ\
        9.V9CQRFuojBoq7Qz4T4vo5gUKtEOLdNx6ZCl3hT08_PKnV-iXAJFb2nv6Gq19_bS4Y7YB56VIDV_SLCAFeFAUAQ";

    #[test]
    fn signing_matches_an_independent_implementation_byte_for_byte() {
        let k = rfc_key();
        assert_eq!(k.sign(&receipt()).jws, INTEROP_JWS);
        let v = k.public_key().verify(INTEROP_JWS.as_bytes()).unwrap();
        assert_eq!(v.receipt, receipt());
        assert_eq!(v.kid, RFC8037_FINGERPRINT);
    }

    #[test]
    fn jwk_round_trips_and_has_rfc8037s_shape() {
        let public = PublicKey::from_base64url(RFC8037_X).unwrap();
        let jwk = public.jwk();
        assert_eq!(
            jwk,
            format!(
                r#"{{"kty":"OKP","crv":"Ed25519","x":"{RFC8037_X}","kid":"{RFC8037_FINGERPRINT}"}}"#
            )
        );
        assert_eq!(PublicKey::parse(&jwk).unwrap(), public);
        assert_eq!(PublicKey::parse(RFC8037_X).unwrap(), public);
        assert_eq!(
            PublicKey::parse(&format!(" {RFC8037_X}\n")).unwrap(),
            public
        );
        // The RFC's own JWK (with the private d, without kid) gives the public key.
        let rfc = format!(r#"{{"kty":"OKP","crv":"Ed25519","d":"{RFC8037_D}","x":"{RFC8037_X}"}}"#);
        assert_eq!(PublicKey::parse(&rfc).unwrap(), public);
        for bad in [
            format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{RFC8037_X}","kid":"ed25519:AAAA"}}"#),
            format!(r#"{{"kty":"OKP","crv":"X25519","x":"{RFC8037_X}"}}"#),
            format!(r#"{{"kty":"EC","crv":"Ed25519","x":"{RFC8037_X}"}}"#),
            r#"{"kty":"OKP","crv":"Ed25519","x":"AAAA"}"#.to_string(),
            r#"{"kty":"OKP","crv":"Ed25519"}"#.to_string(),
            "{".to_string(),
            RFC8037_FINGERPRINT.to_string(),
            format!("{RFC8037_X}A"),
            "".to_string(),
            "not base64!".to_string(),
        ] {
            assert!(PublicKey::parse(&bad).is_err(), "{bad}");
        }
        let e = PublicKey::parse(RFC8037_FINGERPRINT)
            .unwrap_err()
            .to_string();
        assert!(e.contains("fingerprint"), "{e}");
    }

    #[test]
    fn sign_then_verify_round_trips_bare_and_wrapped() {
        let k = key();
        for (to, verified) in [
            (
                Recipient::User("alice".to_string()),
                Verification::ServerOnly,
            ),
            (
                Recipient::Link("3fa9c2d1".to_string()),
                Verification::Sender,
            ),
        ] {
            let r = Receipt {
                to,
                verified,
                ..receipt()
            };
            let signed = k.sign(&r);
            let public = k.public_key();
            for input in [
                signed.jws.clone(),
                signed.json.clone(),
                format!("\n  {}\r\n", signed.jws),
                format!("{}\n", signed.json),
            ] {
                let v = public.verify(input.as_bytes()).unwrap();
                assert_eq!(v.receipt, r);
                assert_eq!(v.kid, k.fingerprint());
            }
            // The wrapper is what the format promises, readable as plain JSON.
            let json: serde_json::Value = serde_json::from_str(&signed.json).unwrap();
            assert_eq!(json["jws"], signed.jws.as_str());
            assert_eq!(json["receipt"]["v"], 1);
            assert_eq!(json["receipt"]["name"], "report (1).pdf");
            // A wrapper pretty-printed by a user still verifies: values count, not spacing.
            let pretty = serde_json::to_string_pretty(&json).unwrap();
            public.verify(pretty.as_bytes()).unwrap();
        }
        let json: serde_json::Value = serde_json::from_str(&k.sign(&receipt()).json).unwrap();
        assert_eq!(
            json["receipt"]["to"],
            serde_json::json!({"link": "3fa9c2d1"})
        );
        assert_eq!(json["receipt"]["verified"], "sender");
        let header = URL_SAFE_NO_PAD
            .decode(k.sign(&receipt()).jws.split('.').next().unwrap())
            .unwrap();
        assert_eq!(header, header_for(&k).as_bytes());
    }

    #[test]
    fn every_single_byte_change_of_the_jws_fails() {
        let k = key();
        let jws = k.sign(&receipt()).jws;
        let public = k.public_key();
        for i in 0..jws.len() {
            for replacement in [b'A', b'_', b'.', b'0', b'~'] {
                let mut bytes = jws.clone().into_bytes();
                if bytes[i] == replacement {
                    continue;
                }
                bytes[i] = replacement;
                assert!(
                    public.verify(&bytes).is_err(),
                    "byte {i} changed to {:?} still verifies",
                    replacement as char
                );
            }
            let mut bytes = jws.clone().into_bytes();
            bytes[i] ^= 0x01;
            assert!(
                public.verify(&bytes).is_err(),
                "byte {i} flipped still verifies"
            );
        }
    }

    #[test]
    fn another_key_fails_naming_both_keys() {
        let (signer, other) = (key(), key());
        let jws = signer.sign(&receipt()).jws;
        match other.public_key().verify(jws.as_bytes()) {
            Err(VerifyError::OtherKey { kid, expected }) => {
                assert_eq!(kid, signer.fingerprint());
                assert_eq!(expected, other.fingerprint());
            }
            other => panic!("{other:?}"),
        }
        // The right kid with another key's signature: the signature check catches it.
        let payload = serde_json::to_string(&receipt()).unwrap();
        let forged = forge(&other, &header_for(&signer), &payload);
        assert_eq!(
            signer.public_key().verify(forged.as_bytes()),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn headers_other_than_exactly_alg_kid_typ_fail() {
        let k = key();
        let kid = k.fingerprint();
        let payload = serde_json::to_string(&receipt()).unwrap();
        for header in [
            format!(r#"{{"alg":"ES256","kid":"{kid}","typ":"ferry-receipt"}}"#),
            format!(r#"{{"alg":"none","kid":"{kid}","typ":"ferry-receipt"}}"#),
            format!(r#"{{"alg":"eddsa","kid":"{kid}","typ":"ferry-receipt"}}"#),
            format!(r#"{{"alg":"EdDSA","kid":"{kid}","typ":"JWT"}}"#),
            format!(r#"{{"alg":"EdDSA","kid":"{kid}"}}"#),
            r#"{"alg":"EdDSA","typ":"ferry-receipt"}"#.to_string(),
            format!(
                r#"{{"alg":"EdDSA","kid":"{kid}","typ":"ferry-receipt","crit":["b64"],"b64":false}}"#
            ),
            format!(r#"{{"alg":"EdDSA","kid":"{kid}","typ":"ferry-receipt","x":1}}"#),
            r#"{"alg":"EdDSA","kid":7,"typ":"ferry-receipt"}"#.to_string(),
            format!(r#"["EdDSA","{kid}","ferry-receipt"]"#),
            "".to_string(),
        ] {
            let jws = forge(&k, &header, &payload);
            let e = k.public_key().verify(jws.as_bytes()).unwrap_err();
            assert!(matches!(e, VerifyError::Header(_)), "{header}: {e:?}");
        }
        let other_kid = forge(
            &k,
            r#"{"alg":"EdDSA","kid":"ed25519:AAAA","typ":"ferry-receipt"}"#,
            &payload,
        );
        assert!(matches!(
            k.public_key().verify(other_kid.as_bytes()),
            Err(VerifyError::OtherKey { .. })
        ));
        // Member order does not matter (the header is parsed, not compared as text).
        let reordered = format!(r#"{{"typ":"ferry-receipt","alg":"EdDSA","kid":"{kid}"}}"#);
        k.public_key()
            .verify(forge(&k, &reordered, &payload).as_bytes())
            .unwrap();
    }

    #[test]
    fn signed_payloads_that_are_not_version_1_receipts_fail() {
        let k = key();
        let good = serde_json::to_value(receipt()).unwrap();
        let with = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v = good.clone();
            f(&mut v);
            forge(&k, &header_for(&k), &v.to_string())
        };
        for (what, jws) in [
            ("v 2", with(&|v| v["v"] = 2.into())),
            (
                "no v",
                with(&|v| drop(v.as_object_mut().unwrap().remove("v"))),
            ),
            (
                "no sha256",
                with(&|v| drop(v.as_object_mut().unwrap().remove("sha256"))),
            ),
            ("short sha256", with(&|v| v["sha256"] = "abc".into())),
            (
                "upper sha256",
                with(&|v| v["sha256"] = "AB".repeat(32).into()),
            ),
            ("bad time", with(&|v| v["received_at"] = "yesterday".into())),
            (
                "bad to",
                with(&|v| v["to"] = serde_json::json!({"group": "x"})),
            ),
            ("bad verified", with(&|v| v["verified"] = "maybe".into())),
            ("negative size", with(&|v| v["size"] = (-1).into())),
            ("not an object", forge(&k, &header_for(&k), "[1]")),
            ("not JSON", forge(&k, &header_for(&k), "receipt")),
        ] {
            let e = k.public_key().verify(jws.as_bytes()).unwrap_err();
            assert!(matches!(e, VerifyError::Payload(_)), "{what}: {e:?}");
        }
        // Unknown members are signed too, so a later minor addition still verifies.
        let extra = with(&|v| v["note"] = "hi".into());
        k.public_key().verify(extra.as_bytes()).unwrap();
    }

    #[test]
    fn a_wrapper_whose_visible_receipt_differs_from_the_signed_one_fails() {
        let k = key();
        let signed = k.sign(&receipt());
        let wrapper: serde_json::Value = serde_json::from_str(&signed.json).unwrap();
        let edits: [(&str, serde_json::Value); 6] = [
            ("name", "invoice.pdf".into()),
            ("size", 124.into()),
            ("sha256", "cd".repeat(32).into()),
            ("to", serde_json::json!({"user": "mallory"})),
            ("extra", true.into()),
            ("v", 1.5.into()),
        ];
        for (field, value) in edits {
            let mut w = wrapper.clone();
            w["receipt"][field] = value;
            let e = k.public_key().verify(w.to_string().as_bytes()).unwrap_err();
            assert_eq!(e, VerifyError::WrapperMismatch, "{field}");
            assert!(e.to_string().contains("altered"), "{e}");
        }
        let mut w = wrapper.clone();
        w["receipt"].as_object_mut().unwrap().remove("received_at");
        assert_eq!(
            k.public_key().verify(w.to_string().as_bytes()),
            Err(VerifyError::WrapperMismatch)
        );
        // A duplicate member: serde keeps the last one, which is not what was signed.
        let dup = signed.json.replacen(
            r#""name":"report (1).pdf""#,
            r#""name":"report (1).pdf","name":"evil.pdf""#,
            1,
        );
        assert_ne!(dup, signed.json);
        assert_eq!(
            k.public_key().verify(dup.as_bytes()),
            Err(VerifyError::WrapperMismatch)
        );
        // A wrapper with a receipt but another receipt's (valid) JWS fails the same way.
        let other = k.sign(&Receipt {
            size: 1,
            ..receipt()
        });
        let mut w = wrapper;
        w["jws"] = other.jws.into();
        assert_eq!(
            k.public_key().verify(w.to_string().as_bytes()),
            Err(VerifyError::WrapperMismatch)
        );
    }

    #[test]
    fn oversize_and_garbage_are_refused_without_panic() {
        let k = key();
        let public = k.public_key();
        let big = format!("{}{}", k.sign(&receipt()).jws, " ".repeat(MAX_INPUT_LEN));
        assert_eq!(public.verify(big.as_bytes()), Err(VerifyError::TooLarge));
        let inputs: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"   \n".to_vec(),
            b"..".to_vec(),
            b"...".to_vec(),
            b"a.b.c".to_vec(),
            b"a.b.c.d".to_vec(),
            b"{}".to_vec(),
            b"{\"jws\":5,\"receipt\":{}}".to_vec(),
            b"{\"jws\":\"a.b.c\"}".to_vec(),
            b"{\"receipt\":{}}".to_vec(),
            b"[]".to_vec(),
            b"{".to_vec(),
            vec![0xff, 0xfe, b'.', b'.'],
            vec![0; 1000],
            "é.é.é".as_bytes().to_vec(),
            "=".repeat(60).into_bytes(),
            b"eyJ9.eyJ9.AAAA".to_vec(),
        ];
        for input in inputs {
            assert!(public.verify(&input).is_err(), "{input:?}");
        }
        // A signature of the wrong length is an error, not a panic.
        let jws = k.sign(&receipt()).jws;
        let (signing_input, _) = jws.rsplit_once('.').unwrap();
        for sig in ["", "AA", &"A".repeat(200)] {
            let bad = format!("{signing_input}.{sig}");
            assert!(public.verify(bad.as_bytes()).is_err(), "{sig}");
        }
    }

    #[test]
    fn load_or_create_makes_a_0600_pkcs8_pem_once_and_then_loads_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        let (made, created) = ReceiptKey::load_or_create(&dir).unwrap();
        assert!(created);
        let path = key_path(&dir);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{text}");
        assert!(text.ends_with("-----END PRIVATE KEY-----\n"), "{text}");
        assert!(text.lines().all(|l| l.len() <= 64), "{text}");
        // PKCS#8 v2 as ring makes it: version 1 and the public key included.
        let der = PrivatePkcs8KeyDer::from_pem_slice(text.as_bytes()).unwrap();
        Ed25519KeyPair::from_pkcs8(der.secret_pkcs8_der()).unwrap();
        // No temp file is left beside it.
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [KEY_FILE]);

        let (loaded, created) = ReceiptKey::load_or_create(&dir).unwrap();
        assert!(!created);
        assert_eq!(loaded.fingerprint(), made.fingerprint());
        assert_eq!(fs::read_to_string(&path).unwrap(), text, "not rewritten");
        // What one signs, the other's public key verifies.
        let jws = loaded.sign(&receipt()).jws;
        made.public_key().verify(jws.as_bytes()).unwrap();

        // Never overwritten unless asked.
        assert!(matches!(
            ReceiptKey::create(&path, false),
            Err(KeyError::Write(certs::CertError::Exists { .. }))
        ));
        assert_eq!(fs::read_to_string(&path).unwrap(), text);
        let replaced = ReceiptKey::create(&path, true).unwrap();
        assert_ne!(replaced.fingerprint(), made.fingerprint());
        assert_eq!(
            ReceiptKey::load(&path).unwrap().fingerprint(),
            replaced.fingerprint()
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // The Debug form names the key, never its secret.
        let debug = format!("{replaced:?}");
        assert!(debug.contains(&replaced.fingerprint()), "{debug}");
        assert!(!debug.contains(text.lines().nth(1).unwrap()), "{debug}");
    }

    #[test]
    fn serve_key_makes_the_key_once_then_loads_the_same_one() {
        let tmp = tempfile::tempdir().unwrap();
        let first = serve_key(tmp.path()).unwrap();
        let second = serve_key(tmp.path()).unwrap();
        assert_eq!(first.fingerprint(), second.fingerprint());
        let jws = second.sign(&receipt()).jws;
        first.public_key().verify(jws.as_bytes()).unwrap();
        // A key file that is not one stops the start instead of being replaced.
        fs::write(key_path(tmp.path()), "not a key").unwrap();
        assert!(matches!(
            serve_key(tmp.path()),
            Err(KeyError::Invalid { .. })
        ));
        assert_eq!(fs::read(key_path(tmp.path())).unwrap(), b"not a key");
    }

    #[test]
    fn load_refuses_what_is_not_an_ed25519_pkcs8_key() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(KEY_FILE);
        // An ECDSA key as `ferry certs` makes server.key.
        let ecdsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        for (what, contents) in [
            ("ecdsa", ecdsa.serialize_pem().into_bytes()),
            ("empty", Vec::new()),
            (
                "garbage",
                b"-----BEGIN PRIVATE KEY-----\n!!!\n-----END PRIVATE KEY-----\n".to_vec(),
            ),
            ("huge", vec![b'A'; MAX_INPUT_LEN + 1]),
        ] {
            fs::write(&path, contents).unwrap();
            let e = ReceiptKey::load(&path).unwrap_err();
            assert!(
                matches!(e, KeyError::Invalid { .. } | KeyError::Read { .. }),
                "{what}: {e:?}"
            );
            assert!(format!("{e:#}").contains(KEY_FILE) || matches!(e, KeyError::Read { .. }));
        }
        assert!(matches!(
            ReceiptKey::load(&tmp.path().join("missing")),
            Err(KeyError::Read { .. })
        ));
        // A PKCS#8 v1 key (openssl's form) loads.
        let mut v1 = hex::decode("302e020100300506032b657004220420").unwrap();
        v1.extend(URL_SAFE_NO_PAD.decode(RFC8037_D).unwrap());
        fs::write(&path, pem(&v1)).unwrap();
        assert_eq!(
            ReceiptKey::load(&path).unwrap().fingerprint(),
            RFC8037_FINGERPRINT
        );
    }

    #[test]
    fn timestamps_are_rfc3339_utc_whole_seconds() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_796_609_697_250);
        assert_eq!(timestamp(t), "2026-12-07T02:14:57Z");
        assert!(chrono::DateTime::parse_from_rfc3339(&timestamp(SystemTime::now())).is_ok());
    }
}
