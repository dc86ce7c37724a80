//! The real HAProxy (Debian's `haproxy` package) in front of the server, as issue 12 item 4b
//! found it: TCP mode, `send-proxy-v2`, health checks every second (plain `check` on one
//! server line, `check check-send-proxy` on the other, both pointing at the same ferry). Its
//! health checks must never lock out the clients behind it, and a password guesser behind it
//! must be refused alone.
//!
//! Needs `haproxy` on PATH; `.ci/run` installs it. Run with `cargo test -- --ignored needs_`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry::protocol::{
    ClientMessage, ErrorCode, FrameReader, FrameWriter, MAX_FRAME_LEN, ServerMessage,
};
use ferry::server::Limits;
use ferry::server::penalty::PenaltyConfig;
use tokio::net::TcpSocket;

use crate::util::{Raw, TestServer, test_limits};

/// How long clients go through the balancer while its health checks run.
const RUN_FOR: Duration = Duration::from_secs(60);

/// `haproxy` on PATH, or a failure that says how to get it.
fn haproxy_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("haproxy"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "haproxy is not installed (not on PATH, nor in /usr/sbin): this test needs the \
                 real HAProxy. Install it with `apt-get install -y haproxy` (.ci/run does)."
            )
        })
}

/// A running HAProxy; killed (by its PID) when dropped.
struct Haproxy {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Haproxy {
    /// Starts HAProxy in TCP mode on a free loopback port, forwarding to `backend` with PROXY
    /// v2 headers and health checks every second.
    async fn start(backend: SocketAddr) -> Haproxy {
        let bin = haproxy_binary();
        let dir = tempfile::tempdir().unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let config = format!(
            "global\n  maxconn 1000\n\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 5m\n  timeout server 5m\n\
             frontend ferry_in\n  bind 127.0.0.1:{port}\n  default_backend ferry_nodes\n\
             backend ferry_nodes\n  balance roundrobin\n\
             \x20 server plain {backend} send-proxy-v2 check inter 1s\n\
             \x20 server withproxy {backend} send-proxy-v2 check check-send-proxy inter 1s\n"
        );
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg, config).unwrap();
        let check = Command::new(&bin)
            .arg("-c")
            .arg("-f")
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(check.status.success(), "haproxy -c: {check:?}");
        let child = Command::new(&bin)
            .arg("-f")
            .arg(&cfg)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let proxy = Haproxy {
            child,
            port,
            _dir: dir,
        };
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "haproxy did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        proxy
    }
}

/// TCP from `ip` to the balancer, then TLS; the balancer forwards it to ferry.
async fn through(ip: Ipv4Addr, port: u16, tls: &Arc<rustls::ClientConfig>) -> std::io::Result<Raw> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(ip.into(), 0))?;
    let tcp = socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await?;
    let name = ferry::tls::server_name("127.0.0.1").map_err(std::io::Error::other)?;
    let stream = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(Arc::clone(tls)).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("handshake hung"))??;
    let (r, w) = tokio::io::split(stream);
    Ok(Raw {
        reader: FrameReader::new(r, MAX_FRAME_LEN),
        writer: FrameWriter::new(w),
    })
}

/// A full good session through the balancer: TLS, hello, login, a request, close.
async fn good_session(
    ip: Ipv4Addr,
    port: u16,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<(), String> {
    let mut raw = through(ip, port, tls).await.map_err(|e| e.to_string())?;
    raw.login("alice", "alice-pw").await;
    raw.send(&ClientMessage::Stat {
        id: 2,
        path: "/".into(),
    })
    .await;
    match raw.recv().await {
        ServerMessage::Ok { id: 2, .. } => {}
        other => return Err(format!("stat answered {other:?}")),
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.writer.shutdown()).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs haproxy; .ci/run installs it"]
async fn needs_haproxy_health_checks_never_lock_out_clients_and_a_guesser_is_refused_alone() {
    let server = TestServer::start_with(Limits {
        proxy_protocol: true,
        proxy_from: vec!["127.0.0.1/32".parse().unwrap()],
        penalties: Some(PenaltyConfig::default()),
        ..test_limits()
    })
    .await;
    let haproxy = Haproxy::start(server.addr).await;
    let (port, tls) = (haproxy.port, server.client_tls());

    let started = Instant::now();
    let mut sessions = 0;
    let mut guesser_refused_at = None;
    let mut guesser_attempts = 0;
    let guesser = Ipv4Addr::new(127, 0, 0, 66);
    while started.elapsed() < RUN_FOR {
        // Good clients from a few addresses, round robin over both server lines; one of them
        // shares the balancer's own address, as a client on the balancer's host does (the
        // health checks used to get that address banned).
        let ip = match sessions % 4 {
            0 => Ipv4Addr::LOCALHOST,
            n => Ipv4Addr::new(127, 0, 0, 10 + n as u8),
        };
        if let Err(e) = good_session(ip, port, &tls).await {
            panic!(
                "a client from {ip} through HAProxy was refused after {:?} ({sessions} sessions \
                 served): {e}",
                started.elapsed()
            );
        }
        sessions += 1;

        // From 5 s on, a guesser behind the same balancer, until it is refused.
        if started.elapsed() > Duration::from_secs(5) && guesser_refused_at.is_none() {
            match through(guesser, port, &tls).await {
                Ok(mut raw) => {
                    raw.send(&ClientMessage::Hello {
                        versions: vec![ferry::protocol::PROTOCOL_VERSION],
                        software: "guesser".into(),
                    })
                    .await;
                    match raw.frame().await {
                        Some(_) => {
                            for id in 0..3 {
                                raw.send(&ClientMessage::Login {
                                    id,
                                    user: "alice".into(),
                                    password: "wrong".into(),
                                })
                                .await;
                                match raw.frame().await {
                                    Some(ferry::protocol::Frame::Message(m)) => {
                                        let msg =
                                            ferry::protocol::decode_server_message(&m).unwrap();
                                        assert!(
                                            matches!(
                                                msg,
                                                ServerMessage::Error {
                                                    code: ErrorCode::AuthFailed,
                                                    ..
                                                }
                                            ),
                                            "{msg:?}"
                                        );
                                        guesser_attempts += 1;
                                    }
                                    _ => break,
                                }
                            }
                        }
                        None => guesser_refused_at = Some(started.elapsed()),
                    }
                }
                Err(_) => guesser_refused_at = Some(started.elapsed()),
            }
            if let Some(at) = guesser_refused_at {
                eprintln!("guesser refused at {at:?} after {guesser_attempts} wrong passwords");
                // Its neighbour behind the same balancer is served at once.
                good_session(Ipv4Addr::new(127, 0, 0, 67), port, &tls)
                    .await
                    .unwrap_or_else(|e| panic!("the guesser's neighbour was refused: {e}"));
                // And the guesser stays refused.
                assert!(
                    good_session(guesser, port, &tls).await.is_err(),
                    "the guesser got in right after its ban"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let at = guesser_refused_at.expect("the password guesser behind HAProxy was never refused");
    assert!(
        guesser_attempts >= 4,
        "refused after only {guesser_attempts} attempts"
    );
    assert!(
        at < Duration::from_secs(30),
        "the guesser was refused only at {at:?}"
    );
    eprintln!(
        "{sessions} sessions through HAProxy over {:?}, none refused; its health checks ran every \
         second throughout",
        started.elapsed()
    );
    drop(haproxy);
}
