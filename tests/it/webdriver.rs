//! A headless Chromium driven over the W3C WebDriver protocol (Debian's `chromium` and
//! `chromedriver`, installed by `scripts/setup-browser.sh`). A few endpoints only: the test
//! speaks plain HTTP to a local chromedriver, so no WebDriver client crate with its own TLS
//! stack is pulled into the build.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

pub struct Browser {
    http: reqwest::Client,
    base: String,
    driver: Child,
    _profile: tempfile::TempDir,
}

fn binary(var: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(default));
    assert!(path.exists(), "{} is missing: run scripts/test.sh (or scripts/setup-browser.sh) first", path.display());
    path
}

impl Browser {
    pub async fn start() -> Browser {
        let chromium = binary("FLAGGUARD_TEST_CHROMIUM", "/usr/bin/chromium");
        let chromedriver = binary("FLAGGUARD_TEST_CHROMEDRIVER", "/usr/bin/chromedriver");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        // Its own process group: the Chromium tree it starts is ended with it ([`Drop`]).
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver starts");
        // Installs the rustls provider reqwest needs (the client speaks plain HTTP here).
        let http = flagguard::app::http_client(Duration::from_secs(60), None).unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(start.elapsed() < Duration::from_secs(20), "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let capabilities = json!({ "capabilities": { "alwaysMatch": { "browserName": "chrome", "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1400,1100",
                     format!("--user-data-dir={}", profile.path().display())]
        } } } });
        let session: Value = http.post(format!("{base}/session")).json(&capabilities).send().await.unwrap().json().await.unwrap();
        let id = session["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {session}")).to_owned();
        Browser { http, base: format!("{base}/session/{id}"), driver, _profile: profile }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let reply: Value = request.send().await.unwrap().json().await.unwrap();
        assert!(reply["value"].get("error").is_none(), "webdriver {path}: {reply}");
        reply["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url }))).await;
    }

    /// Runs `script` (a function body; `return` its result) in the page.
    pub async fn eval(&self, script: &str) -> Value {
        self.call(reqwest::Method::POST, "/execute/sync", Some(json!({ "script": script, "args": [] }))).await
    }

    /// Polls `condition` (a JS expression) until it is true.
    pub async fn wait_for(&self, what: &str, condition: &str, deadline: Duration) {
        let start = Instant::now();
        loop {
            if self.eval(&format!("return !!({condition});")).await == json!(true) {
                return;
            }
            assert!(start.elapsed() < deadline, "timed out waiting for {what} ({condition})");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a PNG of the viewport.
    pub async fn screenshot(&self, path: &Path) {
        let png = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap()).unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

/// Ends the driver and every browser process it started, also when the test failed (drop
/// runs on unwind): the whole process group, then anything still using this browser's
/// profile directory (a Chromium helper that left the group). A test used to leave one
/// Chromium tree behind per run.
impl Drop for Browser {
    fn drop(&mut self) {
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let profile = format!("--user-data-dir={}", self._profile.path().display());
        let _ = Command::new("pkill").args(["-KILL", "-f", "--", &profile]).status();
    }
}
