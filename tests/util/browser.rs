//! A real headless Chromium for the tests that look at pages: Debian's `chromium`, driven
//! through `chromedriver` by fantoccini. The browser trusts only the test server's key (by its
//! SPKI hash), not every certificate. Tests that use it are named `needs_chromium_*` and
//! ignored by a plain `cargo test`; `.ci/run` installs chromium and runs them. Without it they
//! fail, saying what is missing.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};

use super::TestServer;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A browser session and the chromedriver behind it (stopped when dropped).
pub struct Browser {
    pub client: Client,
    /// Where the browser saves downloads, without asking.
    pub downloads: tempfile::TempDir,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium that trusts `server`'s key.
    pub async fn start(server: &TestServer) -> Browser {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(bin).exists(),
                "needs {bin} (Debian chromium and chromium-driver; .ci/run installs them)"
            );
        }
        let spki = spki_sha256_base64(server);
        let profile = tempfile::tempdir().unwrap();
        let downloads = tempfile::tempdir().unwrap();
        let start = Instant::now();
        loop {
            let port = free_port();
            // A process group of its own: chromedriver's Chromium processes go with it, even
            // when a failing test never ends its session.
            let mut driver = Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("cannot start chromedriver");
            let caps = serde_json::json!({
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": [
                        "--headless=new",
                        "--no-sandbox",
                        "--window-size=1280,800",
                        format!("--user-data-dir={}", profile.path().display()),
                        format!("--ignore-certificate-errors-spki-list={spki}"),
                    ],
                    "prefs": {
                        "download.default_directory": downloads.path().display().to_string(),
                        "download.prompt_for_download": false,
                    },
                }
            });
            let caps: fantoccini::wd::Capabilities = caps.as_object().unwrap().clone();
            let url = format!("http://127.0.0.1:{port}");
            // chromedriver takes a moment to listen; a port someone took meanwhile fails.
            let until = Instant::now() + Duration::from_secs(10);
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            let client = loop {
                match ClientBuilder::new(connector.clone())
                    .capabilities(caps.clone())
                    .connect(&url)
                    .await
                {
                    Ok(c) => break Some(c),
                    Err(_) if Instant::now() < until => {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    Err(e) => {
                        eprintln!("chromedriver on {port}: {e}");
                        break None;
                    }
                }
            };
            match client {
                Some(client) => {
                    return Browser {
                        client,
                        downloads,
                        driver,
                        _profile: profile,
                    };
                }
                None => {
                    stop_group(&mut driver);
                    assert!(
                        start.elapsed() < Duration::from_secs(40),
                        "chromedriver never accepted a session"
                    );
                }
            }
        }
    }

    /// Saves a screenshot of the page as `target/screenshots/<name>.png` (look at them: they
    /// are what a first-time user sees; good ones are copied to docs/img by hand).
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.unwrap();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// The value of a script run in the page (`return ...;`).
    pub async fn eval(&self, script: &str) -> serde_json::Value {
        self.client
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Waits until `script` returns true in the page; panics with `what` (and a screenshot
    /// named `name`) after `limit`.
    pub async fn wait_until(&self, script: &str, limit: Duration, name: &str, what: &str) {
        let until = Instant::now() + limit;
        loop {
            if self.eval(script).await == serde_json::Value::Bool(true) {
                return;
            }
            if Instant::now() > until {
                let shot = self.screenshot(&format!("{name}-timeout")).await;
                panic!("timed out waiting for {what} (see {})", shot.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Opens `url` (the web app) and logs in through its form.
    pub async fn log_in(&self, url: &str, user: &str, password: &str) {
        self.client.goto(url).await.unwrap();
        self.log_in_here(user, password).await;
    }

    /// Logs in through the login form the page shows now (after a logout, say), without
    /// loading the page again.
    pub async fn log_in_here(&self, user: &str, password: &str) {
        use fantoccini::Locator;
        let form = self
            .client
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css("form#login"))
            .await
            .expect("the login form never appeared");
        form.find(Locator::Css("input[name=user]"))
            .await
            .unwrap()
            .send_keys(user)
            .await
            .unwrap();
        form.find(Locator::Css("input[name=password]"))
            .await
            .unwrap()
            .send_keys(password)
            .await
            .unwrap();
        form.find(Locator::Css("button[type=submit]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        self.wait_until(
            "return document.querySelector('table.files') !== null",
            Duration::from_secs(20),
            "login",
            "the file list after logging in",
        )
        .await;
    }

    /// Opens the web app at `url` (logged in) and follows the listing's link to the folder
    /// `name`.
    pub async fn goto_home_and_open(&self, url: &str, name: &str) {
        self.client.goto(url).await.unwrap();
        let sel = format!(
            "return [...document.querySelectorAll('tr[data-kind=dir]')].some(r => r.dataset.name === {})",
            serde_json::to_string(name).unwrap()
        );
        self.wait_until(
            &sel,
            Duration::from_secs(20),
            "open_folder",
            "the folder's row",
        )
        .await;
        self.eval(&format!(
            "[...document.querySelectorAll('tr[data-kind=dir]')].find(r => r.dataset.name === {}).querySelector('a.dir').click(); return true;",
            serde_json::to_string(name).unwrap()
        ))
        .await;
    }

    /// Hands files to the page's file input `css` (as a person picking them would).
    pub async fn pick(&self, css: &str, files: &[PathBuf]) {
        let paths: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        self.client
            .find(fantoccini::Locator::Css(css))
            .await
            .unwrap()
            .send_keys(&paths.join("\n"))
            .await
            .unwrap();
    }

    /// The summed proportional set size (`Pss` in smaps_rollup), in KiB, of chromedriver and
    /// every process below it: the whole browser's memory.
    pub fn memory_kib(&self) -> u64 {
        let root = self.driver.id();
        let mut parents = std::collections::HashMap::<u32, Vec<u32>>::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // The parent is the second field after the parenthesised command name.
            let Some(after) = stat.rsplit_once(')').map(|(_, a)| a) else {
                continue;
            };
            if let Some(ppid) = after.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
                parents.entry(ppid).or_default().push(pid);
            }
        }
        let mut total = 0;
        let mut stack = vec![root];
        while let Some(pid) = stack.pop() {
            if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
                total += text
                    .lines()
                    .find_map(|l| l.strip_prefix("Pss:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                    .unwrap_or(0);
            }
            if let Some(children) = parents.get(&pid) {
                stack.extend(children);
            }
        }
        total
    }

    /// Runs one DevTools command in the page's target (chromedriver's `goog/cdp/execute`).
    pub async fn cdp(&self, cmd: &str, params: serde_json::Value) -> serde_json::Value {
        self.client
            .issue_cmd(Cdp {
                cmd: cmd.to_string(),
                params,
            })
            .await
            .unwrap_or_else(|e| panic!("{cmd}: {e}"))
    }

    /// Ends the session and stops chromedriver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        stop_group(&mut self.driver);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        stop_group(&mut self.driver);
    }
}

/// Kills `driver`'s process group (chromedriver and every Chromium process it started) and
/// reaps chromedriver.
fn stop_group(driver: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", driver.id())])
        .stderr(Stdio::null())
        .status();
    let _ = driver.kill();
    let _ = driver.wait();
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The base64 SHA-256 of the server certificate's SubjectPublicKeyInfo, as Chromium's
/// `--ignore-certificate-errors-spki-list` takes it.
fn spki_sha256_base64(server: &TestServer) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let pem = server.dir().join("certs/server.pem");
    let certs = ferry::tls::load_certs(&pem).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(certs[0].as_ref()).unwrap();
    let spki = cert.tbs_certificate.subject_pki.raw;
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(spki))
}

/// A DevTools command through chromedriver.
#[derive(Debug)]
struct Cdp {
    cmd: String,
    params: serde_json::Value,
}

impl fantoccini::wd::WebDriverCompatibleCommand for Cdp {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!(
            "session/{}/goog/cdp/execute",
            session.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (hyper::http::Method, Option<String>) {
        let body = serde_json::json!({ "cmd": self.cmd, "params": self.params });
        (hyper::http::Method::POST, Some(body.to_string()))
    }
}
