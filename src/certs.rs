//! Development certificates: a small CA and a server certificate signed by it (`ferry certs`).
//!
//! The CA certificate (`ca.pem`) is what clients are given to trust; the server presents
//! `server.pem` (leaf, then CA) with `server.key`. The CA's key lives in a directory of its own,
//! `ca/ca.key`, which `ferry serve` never reads: only `ferry certs` needs it, to issue a new
//! server certificate ([`reissue_leaf`]) without changing the CA that clients trust, and an
//! admin can move that directory off the server.
//!
//! The CA is limited by name constraints to the names of the first server certificate (the
//! loopback names and every `--host`), and lives two years: if its key leaks, or a client's
//! system trusts it by mistake, it cannot vouch for any other site, and not for long. Every file is written to a temp name in the
//! target directory and renamed into place, so a crash never leaves a half-written file, and
//! the private keys are created with mode 0600 so they are never readable by others, not even
//! for a moment.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints, PublicKeyData, SanType,
};
use rustls_pki_types::DnsName;

use crate::tls;

/// Common name of the development CA, before its random suffix: each dev CA is called
/// `ferry development CA <16 hex digits>`, so that messages and certificate viewers can tell
/// one dev CA (and the leaves it issued) from another.
pub const CA_COMMON_NAME: &str = "ferry development CA";

/// Common name of the server certificate (clients check the SANs, not this).
pub const SERVER_COMMON_NAME: &str = "ferry server";

/// How long the development CA is valid: two years. Long enough to renew the server
/// certificate once with the same CA ([`reissue_leaf`]); short enough that a forgotten dev CA
/// in a client's trust store does not stay trusted for a decade.
pub const CA_VALIDITY: Duration = Duration::from_secs(730 * 24 * 60 * 60);

/// The directory of the CA's key inside a certificate directory.
pub const CA_KEY_DIR: &str = "ca";

/// How long a server certificate is valid: 397 days, the most that browsers and Apple platforms
/// accept for a TLS server certificate. Regenerate with `force` to renew.
pub const SERVER_VALIDITY: Duration = Duration::from_secs(397 * 24 * 60 * 60);

/// How far `not_before` is set in the past, so that a client whose clock is slightly behind
/// does not reject a certificate that was just made.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60 * 60);

/// Mode of the private key files, set when they are created.
const KEY_FILE_MODE: u32 = 0o600;

/// Mode of the certificate files: public material, readable by all.
const CERT_FILE_MODE: u32 = 0o644;

/// Mode of the certificate directory when `generate` has to create it.
const DIR_MODE: u32 = 0o700;

/// How many temp names `write_atomic` tries before giving up.
const TEMP_NAME_ATTEMPTS: u32 = 16;

/// Where the four files of a certificate directory live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    /// The CA certificate, given to clients to trust (`ca.pem`).
    pub ca_cert: PathBuf,
    /// The CA private key (`ca/ca.key`, mode 0600, in a 0700 directory the server never reads).
    pub ca_key: PathBuf,
    /// The server certificate chain: leaf, then CA (`server.pem`).
    pub server_cert: PathBuf,
    /// The server private key (`server.key`, mode 0600).
    pub server_key: PathBuf,
}

impl CertPaths {
    /// The standard file names inside `dir`: `ca.pem`, `ca/ca.key`, `server.pem`,
    /// `server.key`.
    pub fn in_dir(dir: &Path) -> CertPaths {
        CertPaths {
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join(CA_KEY_DIR).join("ca.key"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        }
    }

    /// Where versions before the `ca/` directory kept the CA key: beside the server's key.
    fn legacy_ca_key(&self) -> PathBuf {
        self.ca_cert.with_file_name("ca.key")
    }

    /// All four paths, in the order they are written.
    fn all(&self) -> [&Path; 4] {
        [
            &self.ca_key,
            &self.ca_cert,
            &self.server_key,
            &self.server_cert,
        ]
    }
}

/// What [`generate`] made.
#[derive(Debug, Clone)]
pub struct Generated {
    /// Where the files were written.
    pub paths: CertPaths,
    /// Fingerprint of the server (leaf) certificate, in the form of [`tls::fingerprint`].
    pub fingerprint: String,
    /// When the server certificate expires: the earlier of its own lifetime and the CA's.
    pub leaf_not_after: SystemTime,
    /// When the CA expires.
    pub ca_not_after: SystemTime,
    /// The subject alternative names of the server certificate, as text, in order.
    pub names: Vec<String>,
}

/// Why certificates could not be generated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// One of the files is already there and `force` was not given.
    #[error("refusing to overwrite existing file {}", path.display())]
    Exists {
        /// The first existing file found.
        path: PathBuf,
    },
    /// An extra host is neither an IP address nor a valid DNS name.
    #[error("invalid host name {host:?}")]
    InvalidHost {
        /// The host as given.
        host: String,
    },
    /// The CA's key or certificate, needed to issue a new server certificate, is missing or
    /// does not load.
    #[error("cannot use the CA in {}: {reason}", dir.display())]
    Ca {
        /// The certificate directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A host is outside the names the CA may vouch for (its name constraints).
    #[error(
        "the CA may vouch only for {allowed}; {host} is not among them (a CA for new names \
         is made with --new-ca)"
    )]
    OutsideCa {
        /// The host asked for.
        host: String,
        /// The names the CA permits.
        allowed: String,
    },
    /// rcgen could not make a key or a certificate.
    #[error("cannot generate certificate")]
    Generate(#[source] rcgen::Error),
    /// The certificate directory could not be created.
    #[error("cannot create directory {}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A file could not be checked, written or renamed into place.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file (its final name, not the temp name).
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Makes a development CA (ECDSA P-256, CN "ferry development CA", about ten years, may sign
/// only end-entity certificates) and a server certificate signed by it (ECDSA P-256, 397 days,
/// serverAuth), and writes them into `dir` (created with mode 0700 if missing) as
/// [`CertPaths::in_dir`] names them.
///
/// The server certificate is valid for `localhost`, `127.0.0.1`, `::1` and every entry of
/// `extra_hosts`: an IP address (also `[v6]` in brackets) or else a DNS name; an invalid name
/// is an error. Duplicates are removed (DNS names compare case-insensitively).
///
/// Refuses, naming the file, if any of the four files exists unless `force` is set; nothing is
/// written then. Each file is written atomically; the keys are created with mode 0600.
pub fn generate(dir: &Path, extra_hosts: &[String], force: bool) -> Result<Generated, CertError> {
    let paths = CertPaths::in_dir(dir);
    let sans = subject_alt_names(extra_hosts)?;

    if !force {
        let legacy = paths.legacy_ca_key();
        for path in paths.all().into_iter().chain([legacy.as_path()]) {
            if exists(path)? {
                return Err(CertError::Exists {
                    path: path.to_path_buf(),
                });
            }
        }
    }

    // SystemTime arithmetic panics only outside the representable range (hundreds of billions
    // of years on Unix), which a clock reading plus a few years cannot reach.
    let now = SystemTime::now();
    let not_before = now - CLOCK_SKEW_ALLOWANCE;

    let ca_key =
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CertError::Generate)?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = distinguished_name(&ca_common_name());
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.name_constraints = Some(NameConstraints {
        permitted_subtrees: sans.iter().map(Host::to_subtree).collect(),
        excluded_subtrees: Vec::new(),
    });
    ca_params.not_before = not_before.into();
    // Whole seconds, as the certificate holds it.
    let ca_not_after = whole_seconds(now + CA_VALIDITY);
    ca_params.not_after = ca_not_after.into();
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(CertError::Generate)?;
    let ca_pem = ca_cert.pem();
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf = issue_leaf(&issuer, &sans, now, ca_not_after)?;
    let chain_pem = format!("{}{}", leaf.cert_pem, ca_pem);

    create_dir(dir)?;
    create_dir(&dir.join(CA_KEY_DIR))?;
    // Each file is atomic, the set of four is not: a crash part way leaves some files new and
    // others old or missing. `tls::server_config` refuses a leaf whose key does not match, and
    // running again with `force` repairs the set. Keys go first so that a fresh directory never
    // holds a certificate without its key.
    write_atomic(&paths.ca_key, ca_key_pem.as_bytes(), KEY_FILE_MODE, force)?;
    write_atomic(&paths.ca_cert, ca_pem.as_bytes(), CERT_FILE_MODE, force)?;
    write_leaf(&paths, &leaf.key_pem, &chain_pem, force)?;
    // A CA key of the old layout belongs to the CA just replaced: it must not linger.
    remove_legacy_key(&paths)?;
    sync_dir(&dir.join(CA_KEY_DIR))?;
    sync_dir(dir)?;

    Ok(leaf.generated(ca_not_after, &sans, paths))
}

/// Issues a new server certificate (and key) for the default names and `extra_hosts`,
/// signed by the CA already in `dir`: clients that trust its `ca.pem` go on working. Replaces
/// `server.pem` and `server.key`; the CA files are left alone. A CA key of the old layout
/// (`dir/ca.key`) is used and moved into `dir/ca/`.
///
/// Refused if the CA is missing, its key does not match it, it has expired, or a name is
/// outside its name constraints. The certificate expires with the CA if that comes first.
pub fn reissue_leaf(dir: &Path, extra_hosts: &[String]) -> Result<Generated, CertError> {
    let paths = CertPaths::in_dir(dir);
    let sans = subject_alt_names(extra_hosts)?;
    let ca_err = |reason: String| CertError::Ca {
        dir: dir.to_path_buf(),
        reason,
    };
    let legacy = paths.legacy_ca_key();
    let key_path = if !exists(&paths.ca_key)? && exists(&legacy)? {
        legacy.clone()
    } else {
        paths.ca_key.clone()
    };
    let key_pem = fs::read_to_string(&key_path).map_err(|e| {
        ca_err(format!(
            "{}: {e} (without the CA's key only a new CA can be made: --new-ca)",
            key_path.display()
        ))
    })?;
    let ca_pem = fs::read_to_string(&paths.ca_cert)
        .map_err(|e| ca_err(format!("{}: {e}", paths.ca_cert.display())))?;
    let ca_key =
        KeyPair::from_pem(&key_pem).map_err(|e| ca_err(format!("{}: {e}", key_path.display())))?;
    let ca_der = tls::load_certs(&paths.ca_cert)
        .ok()
        .and_then(|c| c.into_iter().next())
        .ok_or_else(|| ca_err(format!("{}: no certificate", paths.ca_cert.display())))?;
    let (_, ca) = x509_parser::parse_x509_certificate(ca_der.as_ref())
        .map_err(|e| ca_err(format!("{}: {e}", paths.ca_cert.display())))?;
    if ca.public_key().raw != ca_key.subject_public_key_info().as_slice() {
        return Err(ca_err(format!(
            "{} is not the key of {}",
            key_path.display(),
            paths.ca_cert.display()
        )));
    }
    let now = SystemTime::now();
    let ca_not_after = SystemTime::UNIX_EPOCH
        + Duration::from_secs(u64::try_from(ca.validity().not_after.timestamp()).unwrap_or(0));
    if ca_not_after <= now {
        return Err(ca_err(format!(
            "{} has expired; make a new CA with --new-ca",
            paths.ca_cert.display()
        )));
    }
    check_name_constraints(&ca, &sans)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)
        .map_err(|e| ca_err(format!("{}: {e}", paths.ca_cert.display())))?;
    let leaf = issue_leaf(&issuer, &sans, now, ca_not_after)?;
    let chain_pem = format!("{}{}", leaf.cert_pem, ca_pem);

    write_leaf(&paths, &leaf.key_pem, &chain_pem, true)?;
    if key_path == legacy {
        // The old layout: the key moves out of the directory the server reads.
        create_dir(&dir.join(CA_KEY_DIR))?;
        fs::rename(&legacy, &paths.ca_key).map_err(|source| CertError::Write {
            path: paths.ca_key.clone(),
            source,
        })?;
        sync_dir(&dir.join(CA_KEY_DIR))?;
    }
    sync_dir(dir)?;
    Ok(leaf.generated(ca_not_after, &sans, paths))
}

/// A server certificate and its key, as PEM.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    fingerprint: String,
    not_after: SystemTime,
}

impl Leaf {
    /// What `ferry certs` reports once this leaf and its CA are written to `paths`.
    fn generated(self, ca_not_after: SystemTime, sans: &[Host], paths: CertPaths) -> Generated {
        Generated {
            fingerprint: self.fingerprint,
            leaf_not_after: self.not_after,
            ca_not_after,
            names: sans.iter().map(Host::to_string).collect(),
            paths,
        }
    }
}

/// A new key and a server certificate for `sans` signed by `issuer`: serverAuth,
/// [`SERVER_VALIDITY`] or until `ca_not_after` if that is sooner.
fn issue_leaf(
    issuer: &Issuer<'_, KeyPair>,
    sans: &[Host],
    now: SystemTime,
    ca_not_after: SystemTime,
) -> Result<Leaf, CertError> {
    let server_key =
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CertError::Generate)?;
    let mut server_params = CertificateParams::default();
    server_params.distinguished_name = distinguished_name(SERVER_COMMON_NAME);
    server_params.subject_alt_names = sans.iter().map(Host::to_san).collect::<Result<_, _>>()?;
    server_params.is_ca = IsCa::ExplicitNoCa;
    server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server_params.use_authority_key_identifier_extension = true;
    server_params.not_before = (now - CLOCK_SKEW_ALLOWANCE).into();
    let not_after = whole_seconds(now + SERVER_VALIDITY).min(ca_not_after);
    server_params.not_after = not_after.into();
    let server_cert = server_params
        .signed_by(&server_key, issuer)
        .map_err(CertError::Generate)?;
    Ok(Leaf {
        cert_pem: server_cert.pem(),
        key_pem: server_key.serialize_pem(),
        fingerprint: tls::fingerprint(server_cert.der()),
        not_after,
    })
}

/// `t` without its fraction of a second.
fn whole_seconds(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// Writes the server key, then the chain.
fn write_leaf(
    paths: &CertPaths,
    key_pem: &str,
    chain_pem: &str,
    force: bool,
) -> Result<(), CertError> {
    write_atomic(&paths.server_key, key_pem.as_bytes(), KEY_FILE_MODE, force)?;
    write_atomic(
        &paths.server_cert,
        chain_pem.as_bytes(),
        CERT_FILE_MODE,
        force,
    )
}

/// Removes a CA key of the old layout (`dir/ca.key`), if any.
fn remove_legacy_key(paths: &CertPaths) -> Result<(), CertError> {
    match fs::remove_file(paths.legacy_ca_key()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CertError::Write {
            path: paths.legacy_ca_key(),
            source,
        }),
    }
}

/// Refuses a name the CA's name constraints do not permit (a CA without them permits all).
fn check_name_constraints(
    ca: &x509_parser::certificate::X509Certificate<'_>,
    sans: &[Host],
) -> Result<(), CertError> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    let Some(constraints) = ca
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::NameConstraints(nc) => Some(nc),
            _ => None,
        })
    else {
        return Ok(());
    };
    let permitted: Vec<&GeneralName<'_>> = constraints
        .permitted_subtrees
        .iter()
        .flatten()
        .map(|s| &s.base)
        .collect();
    let describe = || {
        permitted
            .iter()
            .map(|g| match g {
                GeneralName::DNSName(d) => d.to_string(),
                GeneralName::IPAddress(b) => ip_range_text(b),
                other => format!("{other:?}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    for host in sans {
        let ok = permitted.iter().any(|g| match (host, g) {
            (Host::Dns(name), GeneralName::DNSName(base)) => {
                let base = base.trim_start_matches('.').to_ascii_lowercase();
                *name == base || name.ends_with(&format!(".{base}"))
            }
            (Host::Ip(ip), GeneralName::IPAddress(range)) => ip_in_range(*ip, range),
            _ => false,
        });
        if !ok {
            return Err(CertError::OutsideCa {
                host: host.to_string(),
                allowed: describe(),
            });
        }
    }
    Ok(())
}

/// Whether `ip` is in a name-constraint range: address bytes then mask bytes.
fn ip_in_range(ip: IpAddr, range: &[u8]) -> bool {
    let bytes: Vec<u8> = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    if range.len() != bytes.len() * 2 {
        return false;
    }
    let (base, mask) = range.split_at(bytes.len());
    bytes
        .iter()
        .zip(base)
        .zip(mask)
        .all(|((b, base), mask)| b & mask == base & mask)
}

fn ip_range_text(range: &[u8]) -> String {
    let (base, mask) = range.split_at(range.len() / 2);
    let prefix: u32 = mask.iter().map(|m| m.count_ones()).sum();
    let ip = match base.len() {
        4 => <[u8; 4]>::try_from(base).map(IpAddr::from).ok(),
        16 => <[u8; 16]>::try_from(base).map(IpAddr::from).ok(),
        _ => None,
    };
    ip.map_or_else(|| "?".to_string(), |ip| format!("{ip}/{prefix}"))
}

/// One subject alternative name of the server certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Host {
    Ip(IpAddr),
    /// Lowercased, validated DNS name.
    Dns(String),
}

impl Host {
    fn parse(host: &str) -> Result<Host, CertError> {
        let invalid = || CertError::InvalidHost {
            host: host.to_string(),
        };
        if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            return Ok(Host::Ip(IpAddr::V6(inner.parse().map_err(|_| invalid())?)));
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Host::Ip(ip));
        }
        let name = DnsName::try_from(host).map_err(|_| invalid())?;
        Ok(Host::Dns(name.as_ref().to_ascii_lowercase()))
    }

    /// The name-constraint subtree that permits exactly this host (and, for a DNS name, its
    /// subdomains, which RFC 5280 cannot exclude).
    fn to_subtree(&self) -> GeneralSubtree {
        match self {
            Host::Ip(ip) => GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
                *ip,
                if ip.is_ipv4() { 32 } else { 128 },
            )),
            Host::Dns(name) => GeneralSubtree::DnsName(name.clone()),
        }
    }

    fn to_san(&self) -> Result<SanType, CertError> {
        Ok(match self {
            Host::Ip(ip) => SanType::IpAddress(*ip),
            Host::Dns(name) => SanType::DnsName(
                name.as_str()
                    .try_into()
                    .map_err(|_| CertError::InvalidHost { host: name.clone() })?,
            ),
        })
    }
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Ip(ip) => ip.fmt(f),
            Host::Dns(name) => f.write_str(name),
        }
    }
}

/// The default names followed by the extra hosts, validated, without duplicates.
fn subject_alt_names(extra_hosts: &[String]) -> Result<Vec<Host>, CertError> {
    let mut hosts = vec![
        Host::Dns("localhost".to_string()),
        Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        Host::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ];
    let mut seen: HashSet<Host> = hosts.iter().cloned().collect();
    for extra in extra_hosts {
        let host = Host::parse(extra)?;
        if seen.insert(host.clone()) {
            hosts.push(host);
        }
    }
    Ok(hosts)
}

/// A fresh, unique common name for a dev CA: [`CA_COMMON_NAME`] and 64 random bits.
fn ca_common_name() -> String {
    format!("{CA_COMMON_NAME} {:016x}", rand::random::<u64>())
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

/// Whether something (a file, a directory, even a dangling symlink) is at `path`.
fn exists(path: &Path) -> Result<bool, CertError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(CertError::Write {
            path: path.to_path_buf(),
            source,
        }),
    }
}

pub(crate) fn create_dir(dir: &Path) -> Result<(), CertError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|source| CertError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })
}

/// Writes `contents` to `path` through a temp file in the same directory, created with `mode`,
/// flushed to disk, then moved into place. Without `force` the move fails if `path` appeared in
/// the meantime (a hard link never replaces), so nothing is ever silently overwritten.
pub(crate) fn write_atomic(
    path: &Path,
    contents: &[u8],
    mode: u32,
    force: bool,
) -> Result<(), CertError> {
    let write_err = |source| CertError::Write {
        path: path.to_path_buf(),
        source,
    };
    let (temp, file) = create_temp(path, mode).map_err(write_err)?;
    if let Err(source) = commit(file, &temp, path, contents, force) {
        // Best effort: the temp may already be gone, and the original error is what matters.
        let _ = fs::remove_file(&temp);
        if source.kind() == io::ErrorKind::AlreadyExists {
            return Err(CertError::Exists {
                path: path.to_path_buf(),
            });
        }
        return Err(write_err(source));
    }
    Ok(())
}

/// Fills the temp file, flushes it to disk and moves it to `path`.
fn commit(
    mut file: File,
    temp: &Path,
    path: &Path,
    contents: &[u8],
    force: bool,
) -> io::Result<()> {
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    if force {
        fs::rename(temp, path)
    } else {
        fs::hard_link(temp, path)?;
        fs::remove_file(temp)
    }
}

/// Creates a new, empty temp file beside `path` with `mode` (never opening an existing one).
fn create_temp(path: &Path, mode: u32) -> io::Result<(PathBuf, File)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut last_err = None;
    for _ in 0..TEMP_NAME_ATTEMPTS {
        let nonce = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let temp = dir.join(format!(
            ".{name}.tmp-{}-{}-{nonce}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)
        {
            Ok(file) => return Ok((temp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::other("no free temp name")))
}

/// Makes the renames in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), CertError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| CertError::Write {
            path: dir.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::{FromDer, X509Certificate};

    use super::*;

    fn hosts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Whether a rustls client trusting `ca_pem` accepts `chain_pem` for `host`.
    fn verifies(ca_pem: &Path, chain_pem: &Path, host: &str) -> Result<(), rustls::Error> {
        use rustls::client::danger::ServerCertVerifier;
        let mut roots = rustls::RootCertStore::empty();
        for c in tls::load_certs(ca_pem).unwrap() {
            roots.add(c).unwrap();
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let chain = tls::load_certs(chain_pem).unwrap();
        verifier
            .verify_server_cert(
                &chain[0],
                &chain[1..],
                &tls::server_name(host).unwrap(),
                &[],
                rustls_pki_types::UnixTime::now(),
            )
            .map(|_| ())
    }

    /// `ferry certs --force` once replaced the CA too, so every client's ca.pem stopped
    /// working; the leaf is now reissued under the same CA, which clients go on trusting.
    #[test]
    fn reissue_keeps_the_ca_and_clients_still_verify() {
        let tmp = tempfile::tempdir().unwrap();
        let first = generate(tmp.path(), &hosts(&["files.example.org"]), false).unwrap();
        let ca_before = fs::read(&first.paths.ca_cert).unwrap();
        let key_before = fs::read(&first.paths.ca_key).unwrap();
        let leaf_key_before = fs::read(&first.paths.server_key).unwrap();

        let second = reissue_leaf(tmp.path(), &hosts(&["files.example.org"])).unwrap();
        assert_eq!(fs::read(&second.paths.ca_cert).unwrap(), ca_before);
        assert_eq!(fs::read(&second.paths.ca_key).unwrap(), key_before);
        assert_ne!(fs::read(&second.paths.server_key).unwrap(), leaf_key_before);
        assert_ne!(first.fingerprint, second.fingerprint);
        assert_eq!(second.ca_not_after, first.ca_not_after);
        assert_eq!(mode(&second.paths.server_key), 0o600);
        for host in ["localhost", "127.0.0.1", "::1", "files.example.org"] {
            verifies(&second.paths.ca_cert, &second.paths.server_cert, host)
                .unwrap_or_else(|e| panic!("{host}: {e}"));
        }
        // The chain's CA is the same CA.
        assert_eq!(
            pem_certs(&second.paths.server_cert)[1],
            pem_certs(&first.paths.ca_cert)[0]
        );
        // And the server loads it.
        tls::server_config(
            &second.paths.server_cert,
            &second.paths.server_key,
            crate::server::ALPN_OFFERED,
        )
        .unwrap();
    }

    /// The dev CA may vouch only for the names it was made for: a leaf for another name,
    /// signed with its key, is refused by clients, and `reissue_leaf` refuses to make one.
    #[test]
    fn the_ca_is_name_constrained_to_its_first_names() {
        let tmp = tempfile::tempdir().unwrap();
        let g = generate(
            tmp.path(),
            &hosts(&["files.example.org", "192.0.2.10"]),
            false,
        )
        .unwrap();
        let chain = pem_certs(&g.paths.ca_cert);
        let (_, ca) = X509Certificate::from_der(&chain[0]).unwrap();
        assert!(
            ca.name_constraints().unwrap().is_some(),
            "the CA has name constraints"
        );
        verifies(&g.paths.ca_cert, &g.paths.server_cert, "192.0.2.10").unwrap();
        verifies(&g.paths.ca_cert, &g.paths.server_cert, "files.example.org").unwrap();

        let err = reissue_leaf(tmp.path(), &hosts(&["bank.example.com"])).unwrap_err();
        assert!(matches!(err, CertError::OutsideCa { .. }), "{err:?}");
        assert!(err.to_string().contains("--new-ca"), "{err}");
        let err = reissue_leaf(tmp.path(), &hosts(&["192.0.2.11"])).unwrap_err();
        assert!(matches!(err, CertError::OutsideCa { .. }), "{err:?}");
        // A subdomain of a permitted name is permitted (RFC 5280 cannot say otherwise).
        reissue_leaf(tmp.path(), &hosts(&["a.files.example.org"])).unwrap();

        // A leaf the CA's key signs for another name anyway is refused by a client.
        let key_pem = fs::read_to_string(&g.paths.ca_key).unwrap();
        let ca_pem = fs::read_to_string(&g.paths.ca_cert).unwrap();
        let issuer =
            Issuer::from_ca_cert_pem(&ca_pem, KeyPair::from_pem(&key_pem).unwrap()).unwrap();
        let forged = issue_leaf(
            &issuer,
            &[Host::Dns("bank.example.com".into())],
            SystemTime::now(),
            g.ca_not_after,
        )
        .unwrap();
        let forged_chain = tmp.path().join("forged.pem");
        fs::write(&forged_chain, format!("{}{ca_pem}", forged.cert_pem)).unwrap();
        let err = verifies(&g.paths.ca_cert, &forged_chain, "bank.example.com").unwrap_err();
        assert!(format!("{err:?}").contains("NameConstraint"), "{err:?}");
    }

    #[test]
    fn reissue_without_the_ca_key_is_refused_and_a_legacy_key_is_moved() {
        let tmp = tempfile::tempdir().unwrap();
        let g = generate(tmp.path(), &[], false).unwrap();
        let before = fs::read(&g.paths.server_cert).unwrap();
        // The layout of earlier versions: the key beside the server's.
        let legacy = tmp.path().join("ca.key");
        fs::rename(&g.paths.ca_key, &legacy).unwrap();
        // A plain generate sees the old key as an existing file.
        let only_legacy = tempfile::tempdir().unwrap();
        fs::write(only_legacy.path().join("ca.key"), b"old").unwrap();
        assert!(matches!(
            generate(only_legacy.path(), &[], false),
            Err(CertError::Exists { path }) if path == only_legacy.path().join("ca.key")
        ));
        reissue_leaf(tmp.path(), &[]).unwrap();
        assert!(!legacy.exists(), "moved out of the server's directory");
        assert!(g.paths.ca_key.is_file());
        assert_eq!(mode(&g.paths.ca_key), 0o600);

        fs::remove_file(&g.paths.ca_key).unwrap();
        let now = fs::read(&g.paths.server_cert).unwrap();
        assert_ne!(now, before);
        let err = reissue_leaf(tmp.path(), &[]).unwrap_err();
        assert!(matches!(err, CertError::Ca { .. }), "{err:?}");
        assert!(err.to_string().contains("--new-ca"), "{err}");
        assert_eq!(
            fs::read(&g.paths.server_cert).unwrap(),
            now,
            "nothing written"
        );

        // The key of another CA is refused.
        let other = tempfile::tempdir().unwrap();
        let o = generate(other.path(), &[], false).unwrap();
        fs::copy(&o.paths.ca_key, &g.paths.ca_key).unwrap();
        let err = reissue_leaf(tmp.path(), &[]).unwrap_err();
        assert!(err.to_string().contains("is not the key of"), "{err}");
    }

    fn read_all(paths: &CertPaths) -> Vec<Vec<u8>> {
        paths.all().iter().map(|p| fs::read(p).unwrap()).collect()
    }

    fn pem_certs(path: &Path) -> Vec<Vec<u8>> {
        tls::load_certs(path)
            .unwrap()
            .into_iter()
            .map(|c| c.to_vec())
            .collect()
    }

    #[test]
    fn generate_writes_four_files_with_private_key_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        let generated = generate(&dir, &[], false).unwrap();

        assert_eq!(generated.paths, CertPaths::in_dir(&dir));
        assert_eq!(mode(&generated.paths.ca_key), 0o600);
        assert_eq!(mode(&generated.paths.server_key), 0o600);
        assert_eq!(mode(&generated.paths.ca_cert), 0o644);
        assert_eq!(mode(&generated.paths.server_cert), 0o644);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(generated.names, ["localhost", "127.0.0.1", "::1"]);

        // No temp file lingers.
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["ca", "ca.pem", "server.key", "server.pem"]);
        // The CA key in a directory of its own, which the server never reads.
        assert_eq!(generated.paths.ca_key, dir.join("ca/ca.key"));
        assert_eq!(mode(&dir.join("ca")), 0o700);
        assert_eq!(names_in(&dir.join("ca")), ["ca.key"]);
    }

    #[test]
    fn server_pem_is_leaf_then_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let generated = generate(tmp.path(), &[], false).unwrap();
        let chain = pem_certs(&generated.paths.server_cert);
        let ca = pem_certs(&generated.paths.ca_cert);
        assert_eq!(chain.len(), 2);
        assert_eq!(ca.len(), 1);
        assert_eq!(chain[1], ca[0]);
        assert_eq!(
            generated.fingerprint,
            tls::fingerprint(&chain[0].clone().into())
        );
        tls::load_key(&generated.paths.ca_key).unwrap();
        tls::load_key(&generated.paths.server_key).unwrap();
    }

    #[test]
    fn second_run_without_force_is_refused_and_leaves_files_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let first = generate(tmp.path(), &[], false).unwrap();
        let before = read_all(&first.paths);

        let err = generate(tmp.path(), &[], false).unwrap_err();
        assert!(matches!(err, CertError::Exists { .. }), "{err:?}");
        assert_eq!(read_all(&first.paths), before);

        let second = generate(tmp.path(), &[], true).unwrap();
        let after = read_all(&second.paths);
        for (old, new) in before.iter().zip(&after) {
            assert_ne!(old, new);
        }
        assert_ne!(first.fingerprint, second.fingerprint);
        assert_eq!(mode(&second.paths.ca_key), 0o600);
        assert_eq!(mode(&second.paths.server_key), 0o600);
    }

    #[test]
    fn any_one_existing_file_is_refused_by_name() {
        for victim in ["ca.pem", "ca.key", "server.pem", "server.key"] {
            let tmp = tempfile::tempdir().unwrap();
            let path = tmp.path().join(victim);
            fs::write(&path, b"precious").unwrap();

            let err = generate(tmp.path(), &[], false).unwrap_err();
            match &err {
                CertError::Exists { path: named } => assert_eq!(named, &path),
                other => panic!("unexpected {other:?}"),
            }
            assert!(err.to_string().contains(victim), "{err}");
            assert_eq!(fs::read(&path).unwrap(), b"precious");
            // Nothing else was written.
            assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
        }
    }

    #[test]
    fn dangling_symlink_counts_as_existing() {
        let tmp = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(tmp.path().join("nowhere"), tmp.path().join("ca.key")).unwrap();
        let err = generate(tmp.path(), &[], false).unwrap_err();
        assert!(matches!(err, CertError::Exists { .. }), "{err:?}");
    }

    #[test]
    fn write_atomic_without_force_never_replaces() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        fs::write(&path, b"old").unwrap();
        let err = write_atomic(&path, b"new", 0o600, false).unwrap_err();
        assert!(matches!(err, CertError::Exists { .. }), "{err:?}");
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);

        write_atomic(&path, b"new", 0o600, true).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
    }

    /// Issue 12 item 8: two dev CAs shared one subject, so a leaf of one looked like a leaf
    /// of the other in every message and viewer (and a wrong `--ca` gave `BadSignature`).
    #[test]
    fn each_dev_ca_has_a_subject_of_its_own_that_its_leaf_names_as_issuer() {
        let subjects: Vec<(String, String)> = (0..2)
            .map(|_| {
                let dir = tempfile::tempdir().unwrap();
                let g = generate(dir.path(), &[], false).unwrap();
                let chain = pem_certs(&g.paths.server_cert);
                let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
                let (_, ca) = X509Certificate::from_der(&chain[1]).unwrap();
                (ca.subject().to_string(), leaf.issuer().to_string())
            })
            .collect();
        for (ca, issuer) in &subjects {
            assert_eq!(ca, issuer);
            assert!(ca.starts_with(&format!("CN={CA_COMMON_NAME} ")), "{ca}");
        }
        assert_ne!(subjects[0].0, subjects[1].0, "two dev CAs, one name");
    }

    #[test]
    fn extra_hosts_become_sans_and_certificates_parse_back() {
        let tmp = tempfile::tempdir().unwrap();
        let generated = generate(
            tmp.path(),
            &hosts(&["files.example.org", "10.1.2.3"]),
            false,
        )
        .unwrap();
        assert_eq!(
            generated.names,
            [
                "localhost",
                "127.0.0.1",
                "::1",
                "files.example.org",
                "10.1.2.3"
            ]
        );

        let chain = pem_certs(&generated.paths.server_cert);
        let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
        let (_, ca) = X509Certificate::from_der(&chain[1]).unwrap();

        let sans: Vec<String> = leaf
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|name| match name {
                GeneralName::DNSName(dns) => dns.to_string(),
                GeneralName::IPAddress(bytes) => match bytes.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(*bytes).unwrap()).to_string(),
                    16 => IpAddr::from(<[u8; 16]>::try_from(*bytes).unwrap()).to_string(),
                    n => panic!("ip of {n} bytes"),
                },
                other => panic!("unexpected SAN {other:?}"),
            })
            .collect();
        assert_eq!(sans, generated.names);

        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth);
        assert!(!leaf.is_ca());
        assert_eq!(leaf.issuer(), ca.subject());
        assert!(
            leaf.subject()
                .iter_common_name()
                .any(|cn| cn.as_str().ok() == Some(SERVER_COMMON_NAME))
        );

        assert!(ca.is_ca());
        let constraints = ca.basic_constraints().unwrap().unwrap().value;
        assert_eq!(constraints.path_len_constraint, Some(0));
        assert!(ca.subject().iter_common_name().any(|cn| {
            cn.as_str()
                .is_ok_and(|n| n.starts_with(&format!("{CA_COMMON_NAME} ")))
        }));
        assert!(ca.verify_signature(None).is_ok());
        assert!(leaf.verify_signature(Some(ca.public_key())).is_ok());

        let now = x509_parser::time::ASN1Time::now();
        assert!(leaf.validity().is_valid_at(now));
        assert!(ca.validity().is_valid_at(now));
        let leaf_days = leaf.validity().time_to_expiration().unwrap().whole_days();
        let ca_days = ca.validity().time_to_expiration().unwrap().whole_days();
        assert!((396..=397).contains(&leaf_days), "{leaf_days}");
        assert!((729..=730).contains(&ca_days), "{ca_days}");
    }

    #[test]
    fn duplicate_hosts_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let generated = generate(
            tmp.path(),
            &hosts(&[
                "localhost",
                "LocalHost",
                "127.0.0.1",
                "::1",
                "0:0:0:0:0:0:0:1",
                "[::1]",
                "Files.Example.org",
                "files.example.org",
                "[2001:db8::1]",
                "2001:db8::1",
            ]),
            false,
        )
        .unwrap();
        assert_eq!(
            generated.names,
            [
                "localhost",
                "127.0.0.1",
                "::1",
                "files.example.org",
                "2001:db8::1"
            ]
        );
    }

    #[test]
    fn invalid_hosts_are_refused_before_anything_is_written() {
        for bad in [
            "",
            "bad host",
            "-x.example",
            "a..b",
            "*.example.org",
            "[localhost]",
            "[1.2.3.4]",
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("certs");
            let err = generate(&dir, &hosts(&["ok.example", bad]), false).unwrap_err();
            match &err {
                CertError::InvalidHost { host } => assert_eq!(host, bad),
                other => panic!("{bad:?}: unexpected {other:?}"),
            }
            assert!(!dir.exists(), "{bad:?}");
        }
    }
}
