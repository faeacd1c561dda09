//! A headless Chromium driven through WebDriver (Debian's `chromium` and
//! `chromium-driver`, which `scripts/test` installs when missing), for the
//! console's browser tests.
//!
//! chromedriver runs in a process group of its own, with the browser it
//! starts; dropping the [`Browser`] ends the WebDriver session when it can
//! and kills the whole group either way, so no browser outlives its test.

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use nix::sys::signal::{Signal, killpg};

use crate::process::{Proc, Stream};

/// How long a page may take to show what a test waits for.
pub const WAIT: Duration = Duration::from_secs(30);

/// A headless browser and the chromedriver that drives it.
pub struct Browser {
    /// The WebDriver client.
    pub client: Client,
    driver: Option<Proc>,
    _profile: tempfile::TempDir,
}

fn chromedriver() -> PathBuf {
    let found = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "chromedriver is not installed: run the suite with scripts/test, which installs \
             Debian's chromium and chromium-driver, or `apt-get install chromium chromium-driver`"
        )
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

impl Browser {
    /// Starts chromedriver on a loopback port and a headless Chromium with
    /// a fresh profile, 1280×1200.
    pub async fn start() -> Self {
        let profile = tempfile::tempdir().expect("a profile directory");
        // chromedriver takes a port, not a listener: a free one is found
        // and tried; another process taking it first makes the start fail
        // loudly, and the next attempt takes another.
        for attempt in 0..3 {
            let port = free_port();
            let mut cmd = Command::new(chromedriver());
            cmd.arg(format!("--port={port}"))
                .arg("--allowed-ips=127.0.0.1")
                .process_group(0);
            let mut driver = Proc::spawn(cmd);
            driver.wait_for_line(WAIT, |s, l| {
                s == Stream::Stdout && (l.contains("started successfully") || l.contains("bind"))
            });
            let mut caps = serde_json::Map::new();
            caps.insert(
                "goog:chromeOptions".into(),
                serde_json::json!({
                    "binary": "/usr/bin/chromium",
                    "args": [
                        "--headless=new",
                        "--no-sandbox",
                        "--disable-gpu",
                        "--disable-dev-shm-usage",
                        "--no-first-run",
                        "--disable-crash-reporter",
                        "--disable-breakpad",
                        "--window-size=1280,1200",
                        format!("--user-data-dir={}", profile.path().display()),
                    ],
                }),
            );
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps)
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => {
                    return Browser {
                        client,
                        driver: Some(driver),
                        _profile: profile,
                    };
                }
                Err(e) if attempt < 2 => eprintln!("chromedriver on port {port}: {e}; again"),
                Err(e) => panic!("no browser session: {e}"),
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// Opens `url` and waits for its page.
    pub async fn open(&self, url: &str) {
        self.client.goto(url).await.expect("open a page");
    }

    /// The element `css` matches, waiting for it.
    pub async fn find(&self, css: &str) -> Element {
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
    }

    /// The elements `css` matches now.
    pub async fn all(&self, css: &str) -> Vec<Element> {
        self.client
            .find_all(Locator::Css(css))
            .await
            .unwrap_or_default()
    }

    /// Whether an element matches `css` now.
    pub async fn has(&self, css: &str) -> bool {
        !self.all(css).await.is_empty()
    }

    /// Waits until an element matches `css`.
    pub async fn wait_for(&self, what: &str, css: &str) {
        crate::until(what, WAIT, async || self.has(css).await.then_some(())).await
    }

    /// Waits until an element `css` matches holds `needle` (a new page's
    /// message, not the one the page before had), and returns its text.
    pub async fn wait_text(&self, what: &str, css: &str, needle: &str) -> String {
        crate::until(what, WAIT, async || {
            let text = match self.all(css).await.into_iter().next() {
                Some(el) => el.text().await.unwrap_or_default(),
                None => String::new(),
            };
            if text.contains(needle) {
                Ok(text)
            } else {
                Err(text)
            }
        })
        .await
    }

    /// The text of the element `css` matches, waiting for it.
    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap_or_default()
    }

    /// Types `text` into the field `css` matches.
    pub async fn type_into(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field.clear().await.expect("clear a field");
        field.send_keys(text).await.expect("type into a field");
    }

    /// Clicks the element `css` matches.
    pub async fn click(&self, css: &str) {
        self.find(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// The path of the page shown.
    pub async fn path(&self) -> String {
        self.client
            .current_url()
            .await
            .map(|u| u.path().to_string())
            .unwrap_or_default()
    }

    /// Saves a screenshot of the page as `name`.png into `dir`.
    pub async fn screenshot(&self, dir: &std::path::Path, name: &str) {
        let png = self.client.screenshot().await.expect("a screenshot");
        std::fs::create_dir_all(dir).expect("the screenshots directory");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("save a screenshot");
    }

    /// Ends the session (the browser quits) and stops chromedriver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        self.kill();
    }

    fn kill(&mut self) {
        if let Some(driver) = self.driver.take() {
            let _ = killpg(driver.pid(), Signal::SIGKILL);
            drop(driver);
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.kill();
    }
}
