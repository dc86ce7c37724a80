//! A client connection with typed methods: the library API that the shell and the one-shot
//! commands are built on.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::ClientError;
use super::local;
use crate::protocol::{
    ClientMessage, Entry, ErrorCode, Frame, FrameReader, FrameWriter, MAX_FRAME_LEN,
    PROTOCOL_VERSION, ServerMessage, WireError, decode_server_message, hex_digest,
};
use crate::transfer::{CHANNEL_DEPTH, ReadChunk, is_hex_digest, read_and_hash};
use crate::users::Password;

type Stream = TlsStream<TcpStream>;

/// Time allowed to open the TCP connection and finish the TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Longest wait for any frame from the server. A transfer that makes no progress for this
/// long, or a reply that never comes, fails instead of hanging the client.
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// Most entries a listing may return; a hostile server cannot make the client grow forever.
const MAX_LIST_ENTRIES: usize = 10_000_000;

/// Called with the number of bytes moved so far.
pub type Progress<'a> = &'a mut (dyn FnMut(u64) + Send);

/// The result of a verified transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transferred {
    /// Bytes moved.
    pub size: u64,
    /// SHA-256 both ends agreed on, hex.
    pub sha256: String,
    /// Wall time of the transfer.
    pub elapsed: Duration,
}

/// One logged-in (or about to log in) session with a server.
pub struct Connection {
    reader: FrameReader<ReadHalf<Stream>>,
    writer: FrameWriter<WriteHalf<Stream>>,
    next_id: u64,
    server_software: String,
    user: Option<String>,
    read_only: bool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("server", &self.server_software)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Opens TCP + TLS to `host:port`, verifies the certificate against `tls`'s roots for
    /// `host`, checks the `ferry/1` ALPN, and exchanges hellos.
    pub async fn connect(
        host: &str,
        port: u16,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Connection, ClientError> {
        let addr = format!("{host}:{port}");
        let server_name =
            crate::tls::server_name(host).map_err(|e| ClientError::Usage(e.to_string()))?;
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((bare_host, port)))
            .await
            .map_err(|_| ClientError::Connect {
                addr: addr.clone(),
                reason: "timed out".into(),
            })?
            .map_err(|e| ClientError::Connect {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        let _ = tcp.set_nodelay(true);
        let connector = TlsConnector::from(tls);
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(server_name, tcp))
            .await
            .map_err(|_| ClientError::Tls(format!("{addr}: handshake timed out")))?
            .map_err(|e| ClientError::Tls(format!("{addr}: {e}")))?;
        if !crate::tls::alpn_ok(stream.get_ref().1) {
            return Err(ClientError::Tls(format!(
                "{addr} does not speak ferry/1 (ALPN not agreed)"
            )));
        }
        let (r, w) = tokio::io::split(stream);
        let mut conn = Connection {
            reader: FrameReader::new(r, MAX_FRAME_LEN),
            writer: FrameWriter::new(w),
            next_id: 1,
            server_software: String::new(),
            user: None,
            read_only: false,
        };
        conn.writer
            .send_message(&ClientMessage::Hello {
                versions: vec![PROTOCOL_VERSION],
                software: format!("ferry {}", env!("CARGO_PKG_VERSION")),
            })
            .await?;
        match conn.read_message().await? {
            ServerMessage::Hello { version, software } if version == PROTOCOL_VERSION => {
                conn.server_software = software;
            }
            ServerMessage::Error { code, message, .. } => {
                return Err(ClientError::Remote(WireError { code, message }));
            }
            other => {
                return Err(ClientError::Protocol(format!(
                    "unexpected reply to hello: {other:?}"
                )));
            }
        }
        Ok(conn)
    }

    /// The server's software string from its hello.
    pub fn server_software(&self) -> &str {
        &self.server_software
    }

    /// Whether the logged-in user may only read.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Logs in. A wrong user or password is `ClientError::Auth`.
    pub async fn login(&mut self, user: &str, password: &Password) -> Result<(), ClientError> {
        let id = self.id();
        let password = String::from_utf8_lossy(password.as_bytes()).into_owned();
        self.writer
            .send_message(&ClientMessage::Login {
                id,
                user: user.to_string(),
                password,
            })
            .await?;
        match self.final_reply(id).await {
            Ok(ServerMessage::Ok { read_only, .. }) => {
                self.user = Some(user.to_string());
                self.read_only = read_only.unwrap_or(false);
                Ok(())
            }
            Ok(other) => Err(unexpected(&other)),
            Err(ClientError::Remote(WireError {
                code: ErrorCode::AuthFailed,
                ..
            })) => Err(ClientError::Auth),
            Err(e) => Err(e),
        }
    }

    /// Metadata of one remote path.
    pub async fn stat(&mut self, path: &str) -> Result<Entry, ClientError> {
        let id = self.id();
        self.send(&ClientMessage::Stat {
            id,
            path: path.to_string(),
        })
        .await?;
        match self.final_reply(id).await? {
            ServerMessage::Ok {
                entry: Some(entry), ..
            } => Ok(entry),
            other => Err(unexpected(&other)),
        }
    }

    /// Lists a directory (or a single file), in the server's order.
    pub async fn list(&mut self, path: &str) -> Result<Vec<Entry>, ClientError> {
        let id = self.id();
        self.send(&ClientMessage::List {
            id,
            path: path.to_string(),
        })
        .await?;
        let mut all = Vec::new();
        loop {
            match self.read_message().await? {
                ServerMessage::Entries { id: rid, entries } if rid == id => {
                    if all.len() + entries.len() > MAX_LIST_ENTRIES {
                        return Err(ClientError::Protocol("listing too long".into()));
                    }
                    all.extend(entries);
                }
                ServerMessage::Ok { id: rid, .. } if rid == id => return Ok(all),
                ServerMessage::Error {
                    id: rid,
                    code,
                    message,
                } if rid == Some(id) || rid.is_none() => {
                    return Err(ClientError::Remote(WireError { code, message }));
                }
                other => return Err(unexpected(&other)),
            }
        }
    }

    /// Creates a remote directory.
    pub async fn mkdir(&mut self, path: &str) -> Result<(), ClientError> {
        let id = self.id();
        let path = path.to_string();
        self.simple(id, ClientMessage::Mkdir { id, path }).await
    }

    /// Removes an empty remote directory.
    pub async fn rmdir(&mut self, path: &str) -> Result<(), ClientError> {
        let id = self.id();
        let path = path.to_string();
        self.simple(id, ClientMessage::Rmdir { id, path }).await
    }

    /// Removes a remote file.
    pub async fn remove(&mut self, path: &str) -> Result<(), ClientError> {
        let id = self.id();
        let path = path.to_string();
        self.simple(id, ClientMessage::Remove { id, path }).await
    }

    /// Renames a remote file or directory.
    pub async fn rename(
        &mut self,
        from: &str,
        to: &str,
        overwrite: bool,
    ) -> Result<(), ClientError> {
        let id = self.id();
        let msg = ClientMessage::Rename {
            id,
            from: from.to_string(),
            to: to.to_string(),
            overwrite,
        };
        self.simple(id, msg).await
    }

    /// Uploads `local` to `remote`. Returns once the server has committed the file and both
    /// digests agree.
    pub async fn put(
        &mut self,
        local: &Path,
        remote: &str,
        overwrite: bool,
        progress: Progress<'_>,
    ) -> Result<Transferred, ClientError> {
        let started = Instant::now();
        let file = std::fs::File::open(local).map_err(|e| ClientError::local(local, e))?;
        let meta = file.metadata().map_err(|e| ClientError::local(local, e))?;
        if meta.is_dir() {
            return Err(ClientError::local(
                local,
                std::io::Error::from(std::io::ErrorKind::IsADirectory),
            ));
        }
        let size = meta.len();
        let id = self.id();
        self.writer.queue_message(&ClientMessage::Put {
            id,
            path: remote.to_string(),
            size,
            overwrite,
        })?;

        let (tx, mut rx) = mpsc::channel::<ReadChunk>(CHANNEL_DEPTH);
        tokio::task::spawn_blocking(move || read_and_hash(file, size, &tx));

        // Sending and reading run side by side: the server may refuse early (exists, no
        // space), and then the client stops sending and aborts.
        let stop = AtomicBool::new(false);
        let writer = &mut self.writer;
        let reader = &mut self.reader;
        let send = async {
            let mut sent = 0u64;
            let result = loop {
                if stop.load(Ordering::Relaxed) {
                    writer.queue_message(&ClientMessage::Abort { id })?;
                    break Err(None);
                }
                match rx.recv().await {
                    Some(ReadChunk::Data(bytes)) => {
                        writer.queue_data(&bytes)?;
                        timed(writer.write_if_large()).await??;
                        sent += bytes.len() as u64;
                        progress(sent);
                    }
                    Some(ReadChunk::Done(sha)) => {
                        writer.queue_message(&ClientMessage::End {
                            id,
                            sha256: sha.clone(),
                        })?;
                        break Ok(sha);
                    }
                    Some(ReadChunk::Failed(e)) => {
                        writer.queue_message(&ClientMessage::Abort { id })?;
                        break Err(Some(ClientError::local(local, e)));
                    }
                    Some(ReadChunk::Shrunk) | None => {
                        writer.queue_message(&ClientMessage::Abort { id })?;
                        break Err(Some(ClientError::local(
                            local,
                            std::io::Error::other("file shrank while it was being sent"),
                        )));
                    }
                }
            };
            timed(writer.flush()).await??;
            Ok::<_, ClientError>(result)
        };
        let receive = async {
            let reply = final_reply_from(reader, id).await;
            if reply.is_err() {
                stop.store(true, Ordering::Relaxed);
            }
            reply
        };
        let (sent, reply) = tokio::join!(send, receive);
        let local_sha = match sent {
            Ok(Ok(sha)) => Some(sha),
            Ok(Err(Some(e))) => {
                // Our own read failed; the server answers the abort with `cancelled`.
                let _ = reply;
                return Err(e);
            }
            Ok(Err(None)) => None,
            // The server's own reason (e.g. it refused and closed) explains more than the
            // failed write that followed it.
            Err(e) => return Err(reply.err().unwrap_or(e)),
        };
        let reply = reply?;
        let Some(local_sha) = local_sha else {
            return Err(unexpected(&reply));
        };
        match reply {
            ServerMessage::Ok {
                size: Some(n),
                sha256: Some(remote_sha),
                ..
            } => {
                if n != size || remote_sha != local_sha {
                    return Err(ClientError::Integrity {
                        local: local_sha,
                        remote: remote_sha,
                    });
                }
                Ok(Transferred {
                    size,
                    sha256: local_sha,
                    elapsed: started.elapsed(),
                })
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Downloads `remote` to `local` (a file path; the caller resolves directories). The
    /// data goes to a temp file beside `local`, is hashed as it is written, fsynced, compared
    /// with the server's digest, and only then renamed into place.
    pub async fn get(
        &mut self,
        remote: &str,
        local: &Path,
        overwrite: bool,
        progress: Progress<'_>,
    ) -> Result<Transferred, ClientError> {
        let started = Instant::now();
        if !overwrite && std::fs::symlink_metadata(local).is_ok() {
            return Err(ClientError::LocalExists(local.to_path_buf()));
        }
        let mut temp = local::TempFile::beside(local).map_err(|e| ClientError::local(local, e))?;
        let id = self.id();
        self.send(&ClientMessage::Get {
            id,
            path: remote.to_string(),
        })
        .await?;
        let size = match self.read_message().await? {
            ServerMessage::File { id: rid, size, .. } if rid == id => size,
            ServerMessage::Error {
                id: rid,
                code,
                message,
            } if rid == Some(id) || rid.is_none() => {
                return Err(ClientError::Remote(WireError { code, message }));
            }
            other => return Err(unexpected(&other)),
        };

        let mut hasher = Sha256::new();
        let mut received = 0u64;
        loop {
            let frame = self.read_frame().await?;
            match frame {
                Frame::Data(bytes) => {
                    received += bytes.len() as u64;
                    if received > size {
                        return Err(ClientError::Protocol(
                            "server sent more data than it announced".into(),
                        ));
                    }
                    hasher.update(&bytes);
                    temp.write_all(&bytes)
                        .map_err(|e| ClientError::local(local, e))?;
                    progress(received);
                }
                Frame::Message(m) => {
                    let msg = decode_server_message(&m)
                        .map_err(|_| ClientError::Protocol("malformed message".into()))?;
                    match msg {
                        ServerMessage::Ok {
                            id: rid,
                            sha256: Some(remote_sha),
                            ..
                        } if rid == id => {
                            let local_sha = hex_digest(&hasher.finalize());
                            if received != size || !is_hex_digest(&remote_sha) {
                                return Err(ClientError::Protocol(format!(
                                    "server announced {size} bytes and sent {received}"
                                )));
                            }
                            if local_sha != remote_sha {
                                return Err(ClientError::Integrity {
                                    local: local_sha,
                                    remote: remote_sha,
                                });
                            }
                            temp.commit(overwrite).map_err(|e| match e.kind() {
                                std::io::ErrorKind::AlreadyExists => {
                                    ClientError::LocalExists(local.to_path_buf())
                                }
                                _ => ClientError::local(local, e),
                            })?;
                            return Ok(Transferred {
                                size,
                                sha256: local_sha,
                                elapsed: started.elapsed(),
                            });
                        }
                        ServerMessage::Error {
                            id: rid,
                            code,
                            message,
                        } if rid == Some(id) || rid.is_none() => {
                            return Err(ClientError::Remote(WireError { code, message }));
                        }
                        other => return Err(unexpected(&other)),
                    }
                }
            }
        }
    }

    /// Ends the session politely (TLS close_notify).
    pub async fn close(mut self) -> Result<(), ClientError> {
        timed(self.writer.shutdown()).await??;
        Ok(())
    }

    fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    async fn send(&mut self, msg: &ClientMessage) -> Result<(), ClientError> {
        timed(self.writer.send_message(msg)).await??;
        Ok(())
    }

    async fn simple(&mut self, id: u64, msg: ClientMessage) -> Result<(), ClientError> {
        self.send(&msg).await?;
        match self.final_reply(id).await? {
            ServerMessage::Ok { .. } => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    async fn read_frame(&mut self) -> Result<Frame, ClientError> {
        read_frame_from(&mut self.reader).await
    }

    async fn read_message(&mut self) -> Result<ServerMessage, ClientError> {
        read_message_from(&mut self.reader).await
    }

    async fn final_reply(&mut self, id: u64) -> Result<ServerMessage, ClientError> {
        final_reply_from(&mut self.reader, id).await
    }
}

async fn timed<F: std::future::Future>(f: F) -> Result<F::Output, ClientError> {
    tokio::time::timeout(REPLY_TIMEOUT, f)
        .await
        .map_err(|_| ClientError::Timeout)
}

async fn read_frame_from(reader: &mut FrameReader<ReadHalf<Stream>>) -> Result<Frame, ClientError> {
    match timed(reader.read_frame()).await?? {
        Some(f) => Ok(f),
        None => Err(ClientError::ConnectionLost),
    }
}

async fn read_message_from(
    reader: &mut FrameReader<ReadHalf<Stream>>,
) -> Result<ServerMessage, ClientError> {
    match read_frame_from(reader).await? {
        Frame::Message(m) => decode_server_message(&m)
            .map_err(|_| ClientError::Protocol("malformed message from server".into())),
        Frame::Data(_) => Err(ClientError::Protocol("unexpected data from server".into())),
    }
}

/// Reads until the final reply to `id`: `Ok` is returned, an error reply becomes `Err`.
async fn final_reply_from(
    reader: &mut FrameReader<ReadHalf<Stream>>,
    id: u64,
) -> Result<ServerMessage, ClientError> {
    match read_message_from(reader).await? {
        msg @ ServerMessage::Ok { id: rid, .. } if rid == id => Ok(msg),
        ServerMessage::Error {
            id: rid,
            code,
            message,
        } if rid == Some(id) || rid.is_none() => {
            Err(ClientError::Remote(WireError { code, message }))
        }
        other => Err(unexpected(&other)),
    }
}

fn unexpected(msg: &ServerMessage) -> ClientError {
    let what = match msg {
        ServerMessage::Hello { .. } => "hello",
        ServerMessage::Ok { .. } => "ok",
        ServerMessage::Error { .. } => "error",
        ServerMessage::Entries { .. } => "entries",
        ServerMessage::File { .. } => "file",
    };
    ClientError::Protocol(format!("unexpected {what} message from server"))
}

/// Where a download of `remote_name` lands when the user names `local` (or nothing).
pub fn download_target(local: Option<&Path>, remote_name: &str) -> PathBuf {
    match local {
        Some(p) if p.is_dir() => p.join(remote_name),
        Some(p) => p.to_path_buf(),
        None => PathBuf::from(remote_name),
    }
}
