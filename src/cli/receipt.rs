//! `ferry receipt`: check a signed upload receipt offline, and print the receipt key that
//! senders need to check theirs.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use sha2::{Digest, Sha256};

use crate::receipt::{self, PublicKey, ReceiptKey, Recipient, Verification, Verified};
use crate::sanitize::for_terminal;

/// Exit status of a receipt that does not verify, or a file that does not match it.
const INVALID: u8 = 1;

/// Exit status of a usage error, or a check that could not run (unreadable input, no key).
const USAGE: u8 = 2;

#[derive(Debug, Subcommand)]
pub(super) enum ReceiptCommand {
    /// Check a receipt's signature offline; with --file, also that a file is the one it names.
    #[command(long_about = "Check a signed upload receipt offline.\n\n\
        RECEIPT is a file (or - for stdin) holding what an upload returned: the JSON \
        {\"receipt\": ..., \"jws\": \"...\"} (a saved .ferry-receipt.json) or the bare JWS. \
        --key is the server's receipt key: a JWK file (from https://HOST/.well-known/\
        ferry-receipt-key or `ferry receipt key --jwk`), the JWK itself, or its base64url \
        public key. --fingerprint FP (as `ferry serve` prints it) also checks that the key is \
        that one: get the key from anywhere and the fingerprint from someone you trust. A \
        fingerprint alone cannot check a signature, so --key is always needed.\n\n\
        Prints what the receipt says. With --file, also hashes the local file and compares \
        its size and SHA-256 with the receipt's.\n\n\
        Exit status: 0 valid (and the file matches), 1 invalid or the file differs (the \
        reason on stderr), 2 usage, or the check could not run (unreadable file, unusable \
        key).\n\n\
        Examples:\n  ferry receipt verify report.pdf.ferry-receipt.json --key receipt-key.jwk \
        --file report.pdf\n  curl -sT report.pdf https://HOST/d/TOKEN/ | ferry receipt verify - \
        --key receipt-key.jwk --fingerprint ed25519:If4x36FU...")]
    Verify(VerifyArgs),
    /// Print the receipt key's fingerprint and its public half as a JWK, for senders.
    #[command(
        long_about = "Print the fingerprint of the server's receipt key and its public \
        half as a JWK (RFC 8037), to hand to senders: they check receipts with `ferry receipt \
        verify --key`. The key is DIR/receipt.key, made by `ferry certs` or `ferry serve`; \
        this command never makes one.\n\n\
        Examples:\n  ferry receipt key\n  ferry receipt key --certs /etc/ferry/certs --jwk > \
        receipt-key.jwk"
    )]
    Key {
        /// The certificate directory holding receipt.key.
        #[arg(long, value_name = "DIR", default_value = "certs")]
        certs: PathBuf,
        /// Print only the JWK (one line), e.g. to save it to a file.
        #[arg(long)]
        jwk: bool,
    },
}

#[derive(Debug, Args)]
pub(super) struct VerifyArgs {
    /// The receipt: a file, or - for stdin.
    #[arg(value_name = "RECEIPT")]
    receipt: PathBuf,
    /// The server's receipt key: a JWK file, a JWK, or the base64url public key.
    #[arg(long, value_name = "PUB")]
    key: Option<String>,
    /// The fingerprint the key must have (ed25519:...).
    #[arg(long, value_name = "FP")]
    fingerprint: Option<String>,
    /// A local file to compare with the receipt (size and SHA-256).
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
}

/// Runs `ferry receipt ...`.
pub(super) fn run(cmd: ReceiptCommand) -> Result<ExitCode> {
    match cmd {
        ReceiptCommand::Verify(a) => verify(a),
        ReceiptCommand::Key { certs, jwk } => key(&certs, jwk),
    }
}

fn key(dir: &Path, jwk_only: bool) -> Result<ExitCode> {
    let path = receipt::key_path(dir);
    if !path.exists() {
        anyhow::bail!(
            "no receipt key at {} (`ferry certs --dir {}` or `ferry serve` makes it)",
            path.display(),
            dir.display()
        );
    }
    let key = ReceiptKey::load(&path)?;
    let mut out = io::stdout().lock();
    if !jwk_only {
        writeln!(out, "receipt key: {}", key.fingerprint())?;
    }
    writeln!(out, "{}", key.public_key().jwk())?;
    Ok(ExitCode::SUCCESS)
}

/// Prints `ferry: MESSAGE` on stderr and returns `code`.
fn fail(code: u8, message: impl std::fmt::Display) -> Result<ExitCode> {
    eprintln!("ferry: {message}");
    Ok(ExitCode::from(code))
}

fn verify(a: VerifyArgs) -> Result<ExitCode> {
    let Some(key_arg) = a.key else {
        let why = if a.fingerprint.is_some() {
            "--fingerprint needs the key too: a fingerprint names a key but cannot check a \
             signature"
        } else {
            "a key is needed to check a receipt"
        };
        return fail(
            USAGE,
            format!(
                "{why}; give --key (the JWK from https://HOST{} or from `ferry receipt key \
                 --jwk` on the server)",
                receipt::WELL_KNOWN_PATH
            ),
        );
    };
    let public = match load_public(&key_arg) {
        Ok(k) => k,
        Err(e) => return fail(USAGE, format!("--key: {e:#}")),
    };
    if let Some(fp) = &a.fingerprint {
        let fp = fp.trim();
        if !fp.starts_with(receipt::FINGERPRINT_PREFIX) {
            return fail(
                USAGE,
                format!(
                    "--fingerprint {:?} is not a receipt key's fingerprint \
                     ({}...)",
                    for_terminal(fp),
                    receipt::FINGERPRINT_PREFIX
                ),
            );
        }
        if public.fingerprint() != fp {
            return fail(
                INVALID,
                format!(
                    "the key given is {}, not {}: it is not the key you expected",
                    public.fingerprint(),
                    for_terminal(fp)
                ),
            );
        }
    }
    let input = if a.receipt.as_os_str() == "-" {
        receipt::read_bounded_from(io::stdin().lock())
    } else {
        receipt::read_bounded(&a.receipt)
    };
    let input = match input {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            return fail(
                INVALID,
                format!("invalid receipt: {}", receipt::VerifyError::TooLarge),
            );
        }
        Err(e) => return fail(USAGE, format!("cannot read {}: {e}", a.receipt.display())),
    };
    let verified = match public.verify(&input) {
        Ok(v) => v,
        Err(e) => return fail(INVALID, format!("invalid receipt: {e}")),
    };
    print_receipt(&verified)?;
    let Some(path) = a.file else {
        return Ok(ExitCode::SUCCESS);
    };
    let (size, sha256) = match hash_file(&path) {
        Ok(found) => found,
        Err(e) => return fail(USAGE, format!("cannot read {}: {e}", path.display())),
    };
    let r = &verified.receipt;
    if size != r.size {
        return fail(
            INVALID,
            format!(
                "{} does not match the receipt: it has {size} bytes, the receipt says {}",
                path.display(),
                r.size
            ),
        );
    }
    if sha256 != r.sha256 {
        return fail(
            INVALID,
            format!(
                "{} does not match the receipt: its SHA-256 is {sha256}, the receipt says {}",
                path.display(),
                r.sha256
            ),
        );
    }
    println!(
        "file:        {} matches (size and SHA-256)",
        for_terminal(&path.display().to_string())
    );
    Ok(ExitCode::SUCCESS)
}

/// The public key from `--key`: a file (a JWK, a base64url key, or the private receipt.key
/// itself), else the argument as a JWK or base64url key.
fn load_public(arg: &str) -> Result<PublicKey> {
    let path = Path::new(arg);
    if !path.is_file() {
        return Ok(PublicKey::parse(arg)?);
    }
    let bytes = receipt::read_bounded(path).with_context(|| format!("cannot read {arg}"))?;
    let text = std::str::from_utf8(&bytes).with_context(|| format!("{arg}: not UTF-8 text"))?;
    if text.trim_start().starts_with("-----BEGIN") {
        return Ok(*ReceiptKey::load(path)?.public_key());
    }
    PublicKey::parse(text).with_context(|| arg.to_string())
}

/// Size and lowercase hex SHA-256 of a local file, read in pieces.
fn hash_file(path: &Path) -> io::Result<(u64, String)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// What the receipt says, one field a line; every name from it escaped for the terminal.
fn print_receipt(v: &Verified) -> io::Result<()> {
    let r = &v.receipt;
    let mut out = io::stdout().lock();
    let to = match &r.to {
        Recipient::User(u) => format!("user {}", for_terminal(u)),
        Recipient::Link(l) => format!("drop link {}", for_terminal(l)),
    };
    let verified = match r.verified {
        Verification::Sender => {
            "sender (the server committed the file only after the sender's SHA-256 matched)"
        }
        Verification::ServerOnly => {
            "server-only (the sender sent no digest; the SHA-256 is the server's own)"
        }
    };
    writeln!(out, "valid receipt, signed by {}", v.kid)?;
    writeln!(out, "server:      {}", for_terminal(&r.server))?;
    writeln!(out, "upload id:   {}", for_terminal(&r.id))?;
    writeln!(out, "to:          {to}")?;
    writeln!(out, "sent as:     {}", for_terminal(&r.sent_name))?;
    writeln!(out, "stored as:   {}", for_terminal(&r.name))?;
    writeln!(out, "size:        {} bytes", r.size)?;
    writeln!(out, "sha256:      {}", r.sha256)?;
    writeln!(out, "verified:    {verified}")?;
    writeln!(out, "received at: {}", for_terminal(&r.received_at))?;
    Ok(())
}
