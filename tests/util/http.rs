//! The tests' HTTP client: hyper's client over tokio-rustls, with the protocol forced through
//! ALPN, so every route can be tested on both h2 and http/1.1 against the real server.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::TestServer;

/// The HTTP version a test speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
}

pub const BOTH: [Proto; 2] = [Proto::H1, Proto::H2];

impl Proto {
    pub fn alpn(self) -> &'static [u8] {
        match self {
            Proto::H1 => b"http/1.1",
            Proto::H2 => b"h2",
        }
    }
}

/// A client TLS configuration trusting `server`'s CA, offering exactly `alpn`.
pub fn tls_offering(server: &TestServer, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in ferry::tls::load_certs(&server.ca).unwrap() {
        roots.add(cert).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(config)
}

/// TCP + TLS to `addr` offering `alpn`.
pub async fn tls_to(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ferry::tls::server_name("127.0.0.1").unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// One HTTP connection.
pub struct Client {
    pub proto: Proto,
    send: Sender,
    /// The connection task; it ends when the server closes the connection.
    pub task: tokio::task::JoinHandle<Result<(), hyper::Error>>,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// A response with its body read whole.
pub struct Reply {
    pub head: hyper::http::response::Parts,
    pub body: Bytes,
}

impl Reply {
    pub fn status(&self) -> u16 {
        self.head.status.as_u16()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

impl Client {
    /// Connects to `server` speaking `proto`.
    pub async fn connect(server: &TestServer, proto: Proto) -> Client {
        let tls = tls_to(server.addr, tls_offering(server, &[proto.alpn()]))
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(proto.alpn()));
        Client::over(tls, proto).await
    }

    /// Runs HTTP over an established stream.
    pub async fn over<S>(io: S, proto: Proto) -> Client
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(io);
        match proto {
            Proto::H1 => {
                let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
                Client {
                    proto,
                    send: Sender::H1(send),
                    task: tokio::spawn(conn),
                }
            }
            Proto::H2 => {
                let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .unwrap();
                Client {
                    proto,
                    send: Sender::H2(send),
                    task: tokio::spawn(conn),
                }
            }
        }
    }

    /// Sends a request and reads its response whole.
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Reply, hyper::Error> {
        let resp: Response<hyper::body::Incoming> = match &mut self.send {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
        };
        let (head, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply { head, body })
    }

    /// `GET path`.
    pub async fn get(&mut self, path: &str) -> Reply {
        self.send(request("GET", path).body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap()
    }
}

/// A request builder for `method path` with the authority set (h2 needs it).
pub fn request(method: &str, path: &str) -> hyper::http::request::Builder {
    Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"))
}

/// A new API token for `user` in the server's tokens file, as `ferry token add` makes one.
pub async fn token_for(server: &TestServer, user: &str, read_only: bool) -> String {
    use ferry::state::tokens::{ApiTokens, TokenScope, issue};
    let scope = if read_only {
        TokenScope::ReadOnly
    } else {
        TokenScope::Full
    };
    let (secret, record) = issue(
        user,
        "test",
        scope,
        Some(std::time::Duration::from_secs(3600)),
        std::time::SystemTime::now(),
        |_| false,
    )
    .unwrap();
    let store = ferry::accounts::tokens::TomlTokens::beside_users(&server.users_file);
    store.add(&record).await.unwrap();
    secret.expose().to_string()
}

/// `sha-256=:<base64>:` of `data` (RFC 9530).
pub fn digest_field(data: &[u8]) -> String {
    use sha2::Digest;
    let d: [u8; 32] = sha2::Sha256::digest(data).into();
    ferry::frontend::http::parse::format_digest_field(&d)
}

impl Client {
    /// `method path` with a Bearer token, extra headers and a body.
    pub async fn authed(
        &mut self,
        method: &str,
        path: &str,
        token: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let mut req = request(method, path).header("authorization", format!("Bearer {token}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req.body(Full::new(body.into())).unwrap())
            .await
            .unwrap()
    }
}

/// A drop link into `folder` of `owner`'s home, as `ferry link add` makes one; returns the
/// token and the link's id.
pub async fn link_for(
    server: &TestServer,
    owner: &str,
    folder: &str,
    spec: impl FnOnce(&mut ferry::state::links::LinkSpec),
) -> (String, String) {
    use ferry::state::links::{LinkKind, LinkSpec, LinkStore, issue};
    let mut s = LinkSpec {
        owner: owner.to_string(),
        folder: folder.to_string(),
        kind: LinkKind::Upload,
        ttl: Some(std::time::Duration::from_secs(3600)),
        max_files: None,
        max_bytes: None,
        max_downloads: None,
        password: None,
        note: None,
    };
    spec(&mut s);
    let (token, link) = issue(s, std::time::SystemTime::now(), |_| false).unwrap();
    let store = ferry::accounts::links::TomlLinks::beside_users(&server.users_file);
    store.add(&link).await.unwrap();
    (token.expose().to_string(), link.id.to_string())
}

impl Client {
    /// `method path` with extra headers and a body, no credentials.
    pub async fn plain(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let mut req = request(method, path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req.body(Full::new(body.into())).unwrap())
            .await
            .unwrap()
    }
}
