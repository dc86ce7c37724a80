//! The ceiling for a verified transfer on this machine: one process runs a TLS 1.3 server and
//! a client over 127.0.0.1 with exactly ferry's rustls setup (ring provider, TLS 1.3 only, ALPN
//! `ferry/1`, a dev certificate from `ferry::certs`), streams N bytes from memory in 256 KiB
//! writes (ferry's data chunk size), and hashes them with SHA-256 on both ends. Nothing else:
//! no files, no framing, no fsync. `bench/run` reports ferry's 1 GiB transfers as a fraction of
//! the rate printed here.
//!
//! ```sh
//! cargo run --release --example tls_ceiling -- [BYTES] [--inline | --no-hash] [--runs N]
//! ```
//!
//! By default each end hashes on a thread of its own, beside the task that does the TLS I/O,
//! with 256 KiB chunks handed over through a channel of depth 4 (so hashing overlaps with
//! encryption and the socket, as a well-built file transfer would do it). `--inline` hashes in
//! the I/O task instead (hash, then encrypt and write; read and decrypt, then hash);
//! `--no-hash` skips hashing: plain TLS throughput.
//!
//! BYTES defaults to 1 GiB (suffixes K, M, G for powers of 1024). Each run prints one line,
//! `tls_ceiling bytes=... hash=pipelined|inline|none secs=... mb_per_s=...` (MB = 10^6 bytes);
//! the clock runs from the client's first write to the moment the client holds the server's
//! digest of everything it received, and the two digests must match.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Bytes per client write and server read buffer: ferry's `DATA_CHUNK_LEN`.
const CHUNK: usize = ferry::protocol::DATA_CHUNK_LEN;

/// Chunks in flight between a hashing thread and its I/O task.
const DEPTH: usize = 4;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Hash on a thread of its own at each end.
    Pipelined,
    /// Hash inside the I/O task.
    Inline,
    /// No hashing.
    None,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Pipelined => "pipelined",
            Mode::Inline => "inline",
            Mode::None => "none",
        }
    }
}

struct Args {
    bytes: u64,
    mode: Mode,
    runs: usize,
}

fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num.parse().with_context(|| format!("bad size '{s}'"))?;
    n.checked_mul(mult).context("size too large")
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        bytes: 1 << 30,
        mode: Mode::Pipelined,
        runs: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--no-hash" => args.mode = Mode::None,
            "--inline" => args.mode = Mode::Inline,
            "--runs" => {
                args.runs = it
                    .next()
                    .context("--runs needs a number")?
                    .parse()
                    .context("bad --runs")?;
            }
            "-h" | "--help" => {
                println!("usage: tls_ceiling [BYTES] [--inline | --no-hash] [--runs N]");
                std::process::exit(0);
            }
            other if !other.starts_with('-') => args.bytes = parse_size(other)?,
            other => bail!("unknown option {other}"),
        }
    }
    Ok(args)
}

/// Pseudo-random bytes (xorshift), so the cipher sees no trivially repeating block pattern.
fn payload() -> Bytes {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = Vec::with_capacity(CHUNK);
    while buf.len() < CHUNK {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf.extend_from_slice(&x.to_le_bytes());
    }
    buf.truncate(CHUNK);
    Bytes::from(buf)
}

/// A thread that hashes every chunk it is sent and returns the digest when the channel closes.
fn hasher_thread(mut rx: mpsc::Receiver<Bytes>) -> std::thread::JoinHandle<[u8; 32]> {
    std::thread::spawn(move || {
        let mut h = Sha256::new();
        while let Some(chunk) = rx.blocking_recv() {
            h.update(&chunk);
        }
        h.finalize().into()
    })
}

/// Receives `bytes` bytes, hashing them as `mode` says, and answers with the 32-byte digest.
async fn serve_one(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    bytes: u64,
    mode: Mode,
) -> Result<()> {
    let (tcp, _) = listener.accept().await?;
    tcp.set_nodelay(true)?;
    let mut tls = acceptor.accept(tcp).await?;
    if !ferry::tls::alpn_is(tls.get_ref().1, ferry::protocol::ALPN) {
        bail!("server: ALPN ferry/1 not agreed");
    }
    let (tx, rx) = mpsc::channel::<Bytes>(DEPTH);
    let thread = (mode == Mode::Pipelined).then(|| hasher_thread(rx));
    let mut hasher = Sha256::new();
    let mut got = 0u64;
    while got < bytes {
        // Fill one chunk (or the rest of the stream).
        let want = (bytes - got).min(CHUNK as u64) as usize;
        let mut buf = BytesMut::with_capacity(want);
        while buf.len() < want {
            if tls.read_buf(&mut buf).await? == 0 {
                bail!(
                    "server: end of stream after {} of {bytes} bytes",
                    got + buf.len() as u64
                );
            }
        }
        got += buf.len() as u64;
        match mode {
            Mode::Pipelined => tx.send(buf.freeze()).await?,
            Mode::Inline => hasher.update(&buf),
            Mode::None => {}
        }
    }
    drop(tx);
    let digest: [u8; 32] = match thread {
        Some(t) => tokio::task::spawn_blocking(move || t.join())
            .await?
            .map_err(|_| anyhow::anyhow!("hasher thread panicked"))?,
        None => hasher.finalize().into(),
    };
    tls.write_all(&digest).await?;
    tls.flush().await?;
    tls.shutdown().await?;
    Ok(())
}

async fn one_run(
    server_cfg: Arc<rustls::ServerConfig>,
    client_cfg: Arc<rustls::ClientConfig>,
    bytes: u64,
    mode: Mode,
) -> Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(serve_one(
        listener,
        TlsAcceptor::from(server_cfg),
        bytes,
        mode,
    ));

    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ferry::tls::server_name("127.0.0.1")?;
    let mut tls = TlsConnector::from(client_cfg).connect(name, tcp).await?;
    if !ferry::tls::alpn_is(tls.get_ref().1, ferry::protocol::ALPN) {
        bail!("client: ALPN ferry/1 not agreed");
    }
    let data = payload();
    let start = Instant::now();
    let ours: [u8; 32] = match mode {
        Mode::Pipelined => {
            // A producer thread hashes each chunk and hands it to the writer task.
            let (tx, mut rx) = mpsc::channel::<Bytes>(DEPTH);
            let producer = std::thread::spawn(move || {
                let mut h = Sha256::new();
                let mut left = bytes;
                while left > 0 {
                    let n = left.min(CHUNK as u64) as usize;
                    let chunk = data.slice(..n);
                    h.update(&chunk);
                    if tx.blocking_send(chunk).is_err() {
                        break;
                    }
                    left -= n as u64;
                }
                let digest: [u8; 32] = h.finalize().into();
                digest
            });
            while let Some(chunk) = rx.recv().await {
                tls.write_all(&chunk).await?;
            }
            tokio::task::spawn_blocking(move || producer.join())
                .await?
                .map_err(|_| anyhow::anyhow!("producer thread panicked"))?
        }
        Mode::Inline | Mode::None => {
            let mut h = Sha256::new();
            let mut left = bytes;
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                if mode == Mode::Inline {
                    h.update(&data[..n]);
                }
                tls.write_all(&data[..n]).await?;
                left -= n as u64;
            }
            h.finalize().into()
        }
    };
    tls.flush().await?;
    let mut theirs = [0u8; 32];
    tls.read_exact(&mut theirs).await?;
    let secs = start.elapsed().as_secs_f64();
    server.await??;
    if mode != Mode::None && ours != theirs {
        bail!("digest mismatch");
    }
    Ok(secs)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let dir = tempfile::tempdir()?;
    ferry::certs::generate(dir.path(), &[], false)?;
    let paths = ferry::certs::CertPaths::in_dir(dir.path());
    let server_cfg = ferry::tls::server_config(
        &paths.server_cert,
        &paths.server_key,
        ferry::server::ALPN_OFFERED,
    )?;
    let client_cfg = ferry::tls::client_config(Some(&paths.ca_cert), ferry::protocol::ALPN)?;
    // Like `ferry serve` and `ferry connect`: tokio's multi-threaded runtime, one worker per core.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    for _ in 0..args.runs {
        let secs = rt.block_on(one_run(
            Arc::clone(&server_cfg),
            Arc::clone(&client_cfg),
            args.bytes,
            args.mode,
        ))?;
        println!(
            "tls_ceiling bytes={} hash={} secs={:.4} mb_per_s={:.1}",
            args.bytes,
            args.mode.name(),
            secs,
            args.bytes as f64 / secs / 1e6
        );
    }
    Ok(())
}
