//! A TCP relay between a client and a test server, standing in for the network: it can be
//! slowed, cut (every live connection dropped at once, as a lost Wi-Fi or a dead route does),
//! and taken offline (new connections closed at once). Bytes pass through untouched, so TLS
//! runs end to end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Relay {
    pub addr: SocketAddr,
    cuts: watch::Sender<u64>,
    offline: Arc<AtomicBool>,
    rate: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// A relay on a loopback port of its own to `to`.
    pub async fn start(to: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cuts, _) = watch::channel(0u64);
        let offline = Arc::new(AtomicBool::new(false));
        let rate = Arc::new(AtomicU64::new(0));
        let task = {
            let (cuts, offline, rate) = (cuts.clone(), offline.clone(), rate.clone());
            tokio::spawn(async move {
                while let Ok((down, _)) = listener.accept().await {
                    if offline.load(Ordering::SeqCst) {
                        drop(down);
                        continue;
                    }
                    let Ok(up) = TcpStream::connect(to).await else {
                        continue;
                    };
                    let mut cut = cuts.subscribe();
                    let rate = rate.clone();
                    tokio::spawn(async move {
                        let (mut dr, mut dw) = down.into_split();
                        let (mut ur, mut uw) = up.into_split();
                        let upstream = async {
                            let mut buf = vec![0u8; 16 * 1024];
                            loop {
                                let n = match dr.read(&mut buf).await {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => n,
                                };
                                if uw.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                                let r = rate.load(Ordering::SeqCst);
                                if r > 0 {
                                    tokio::time::sleep(Duration::from_secs_f64(
                                        n as f64 / r as f64,
                                    ))
                                    .await;
                                }
                            }
                            let _ = uw.shutdown().await;
                        };
                        let downstream = async {
                            let _ = tokio::io::copy(&mut ur, &mut dw).await;
                            let _ = dw.shutdown().await;
                        };
                        tokio::select! {
                            _ = async { tokio::join!(upstream, downstream) } => {}
                            _ = cut.changed() => {} // dropped: both sockets close
                        }
                    });
                }
            })
        };
        Relay {
            addr,
            cuts,
            offline,
            rate,
            task,
        }
    }

    /// Drops every connection now open.
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    /// While offline, a new connection is closed as soon as it is accepted.
    pub fn set_offline(&self, offline: bool) {
        self.offline.store(offline, Ordering::SeqCst);
    }

    /// Limits what clients send to `bytes_per_sec` (0: no limit).
    pub fn throttle(&self, bytes_per_sec: u64) {
        self.rate.store(bytes_per_sec, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
