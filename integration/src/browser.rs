//! Headless Debian Chromium driven through ChromeDriver's W3C WebDriver HTTP
//! protocol (plain JSON over loopback, with the harness's own HTTP client):
//! navigate, find elements by CSS selector, type, click, read text and
//! attributes, take a PNG screenshot. ChromeDriver runs on a free loopback
//! port and starts Chromium with a fresh profile directory; both are stopped
//! when the [`Browser`] drops.

use crate::output::Captured;
use crate::process;
use crate::{free_port, wait_for, TempDir};
use base64::Engine as _;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;
use ureq::Agent;

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The element id key of the W3C WebDriver protocol.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Chromium's flags: headless, no sandbox (tests may run as root), and no
/// background traffic (this machine's network is closed; only loopback is used).
const CHROMIUM_ARGS: [&str; 10] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
];

/// The paths of Chromium and ChromeDriver, or why the browser tests cannot run.
pub fn find() -> Result<(PathBuf, PathBuf), String> {
    for p in [CHROMIUM, CHROMEDRIVER] {
        if !Path::new(p).is_file() {
            return Err(format!(
                "{p} is missing (apt-get install -y chromium chromium-driver; scripts/test.sh does)"
            ));
        }
    }
    Ok((CHROMIUM.into(), CHROMEDRIVER.into()))
}

/// One browser session.
pub struct Browser {
    driver: Child,
    output: Captured,
    agent: Agent,
    /// `http://127.0.0.1:PORT/session/ID`.
    session: String,
    /// Chromium's profile (`--user-data-dir`), fresh for every browser.
    _profile: TempDir,
}

/// A WebDriver error answer (`{"value": {"error", "message"}}`).
#[derive(Debug)]
pub struct WebDriverError {
    pub error: String,
    pub message: String,
}

impl Browser {
    /// Starts ChromeDriver and a Chromium session; panics with ChromeDriver's
    /// output when either does not come up.
    pub fn start() -> Browser {
        let (chromium, chromedriver) = find().unwrap_or_else(|e| panic!("{e}"));
        let agent: Agent = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut cmd = Command::new(&chromedriver);
            cmd.arg(format!("--port={port}"))
                .arg("--allowed-ips=127.0.0.1");
            let (mut driver, output) = match process::start(&mut cmd, |l| {
                l.contains("started successfully")
            }) {
                Ok(started) => (started.child, started.output),
                Err(f) => {
                    last = format!("--- stdout ---\n{}\n--- stderr ---\n{}", f.stdout, f.stderr);
                    continue;
                }
            };
            let base = format!("http://127.0.0.1:{port}");
            let profile = TempDir::new("chromium");
            let caps = json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium,
                    "args": CHROMIUM_ARGS.iter().map(|a| a.to_string())
                        .chain([format!("--user-data-dir={}", profile.path().display())])
                        .collect::<Vec<_>>(),
                },
            }}});
            let answer = post(&agent, &format!("{base}/session"), &caps);
            match answer {
                Ok(v) => {
                    let id = v["sessionId"]
                        .as_str()
                        .unwrap_or_else(|| panic!("no sessionId in {v}"))
                        .to_string();
                    return Browser {
                        driver,
                        output,
                        agent,
                        session: format!("{base}/session/{id}"),
                        _profile: profile,
                    };
                }
                Err(e) => {
                    let _ = driver.kill();
                    let _ = driver.wait();
                    last = format!("new session: {e:?}\n{}", output.describe());
                }
            }
        }
        panic!("could not start chromedriver + chromium: {last}");
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, WebDriverError> {
        let url = format!("{}{path}", self.session);
        let result = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            (_, body) => self
                .agent
                .post(&url)
                .header("content-type", "application/json")
                .send(body.unwrap_or(json!({})).to_string().as_bytes()),
        };
        answer(result)
    }

    fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, path, body).unwrap_or_else(|e| {
            panic!(
                "WebDriver {method} {path}: {e:?}\n{}",
                self.output.describe()
            )
        })
    }

    /// Loads `url` and waits for the document to load.
    pub fn goto(&self, url: &str) {
        self.ok("POST", "/url", Some(json!({ "url": url })));
    }

    /// Sets the window's size (the screenshot's size).
    pub fn set_size(&self, width: u32, height: u32) {
        self.ok(
            "POST",
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        );
    }

    /// The ids of the elements matching `css`, in document order.
    pub fn find_all(&self, css: &str) -> Vec<String> {
        let v = self.ok(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        );
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT_KEY].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The first element matching `css`, or None.
    pub fn find(&self, css: &str) -> Option<String> {
        self.find_all(css).into_iter().next()
    }

    fn element(&self, css: &str) -> String {
        self.find(css)
            .unwrap_or_else(|| panic!("no element matches {css:?}"))
    }

    /// The rendered (visible) text of an element; None when it is gone or
    /// became stale while it was read.
    pub fn text_of(&self, element: &str) -> Option<String> {
        self.call("GET", &format!("/element/{element}/text"), None)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
    }

    /// The visible text of the first element matching `css` (None: no such element).
    pub fn text(&self, css: &str) -> Option<String> {
        self.find(css).and_then(|e| self.text_of(&e))
    }

    /// The visible texts of every element matching `css`.
    pub fn texts(&self, css: &str) -> Vec<String> {
        self.find_all(css)
            .iter()
            .filter_map(|e| self.text_of(e))
            .collect()
    }

    /// An attribute of an element (None: absent).
    pub fn attribute(&self, element: &str, name: &str) -> Option<String> {
        self.call("GET", &format!("/element/{element}/attribute/{name}"), None)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
    }

    /// Whether the first element matching `css` is displayed.
    pub fn is_displayed(&self, css: &str) -> bool {
        self.find(css).is_some_and(|e| {
            self.call("GET", &format!("/element/{e}/displayed"), None)
                .is_ok_and(|v| v == true)
        })
    }

    /// Clears the input matching `css` and types `text` into it.
    pub fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css);
        self.ok("POST", &format!("/element/{e}/clear"), None);
        self.ok(
            "POST",
            &format!("/element/{e}/value"),
            Some(json!({ "text": text })),
        );
    }

    pub fn click(&self, css: &str) {
        let e = self.element(css);
        self.ok("POST", &format!("/element/{e}/click"), None);
    }

    /// Runs `script` (a function body) in the page and returns its value.
    pub fn execute(&self, script: &str) -> Value {
        self.ok(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Polls until the text of the first element matching `css` satisfies `pred`;
    /// returns it. Panics after `timeout` with the last text seen.
    pub fn wait_text(&self, css: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let what = format!("the text of {css:?} to reach the expected value");
        wait_for(timeout, &what, || self.text(css).filter(|t| pred(t)))
    }

    /// Polls until `css` matches an element that is displayed.
    pub fn wait_displayed(&self, css: &str, timeout: Duration) {
        let what = format!("{css:?} to be displayed");
        wait_for(timeout, &what, || self.is_displayed(css).then_some(()))
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> Vec<u8> {
        let v = self.ok("GET", "/screenshot", None);
        let b64 = v.as_str().expect("screenshot is a base64 string");
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("screenshot decodes")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closing the session ends Chromium; then ChromeDriver itself.
        let _ = self.call("DELETE", "", None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        if std::thread::panicking() {
            eprintln!("=== chromedriver output ===\n{}", self.output.describe());
        }
    }
}

fn post(agent: &Agent, url: &str, body: &Value) -> Result<Value, WebDriverError> {
    answer(
        agent
            .post(url)
            .header("content-type", "application/json")
            .send(body.to_string().as_bytes()),
    )
}

/// The `value` of a WebDriver answer, or its error.
fn answer(
    result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<Value, WebDriverError> {
    let mut resp = result.map_err(|e| WebDriverError {
        error: "transport".into(),
        message: e.to_string(),
    })?;
    let status = resp.status().as_u16();
    let body: Value = resp
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_json()
        .map_err(|e| WebDriverError {
            error: "decode".into(),
            message: e.to_string(),
        })?;
    let value = body["value"].clone();
    if status == 200 {
        Ok(value)
    } else {
        Err(WebDriverError {
            error: value["error"].as_str().unwrap_or("unknown").to_string(),
            message: value["message"].as_str().unwrap_or("").to_string(),
        })
    }
}
