//! A blocking HTTP client for the tests: every status is a normal [`Reply`], and a reply
//! keeps status, lower-cased headers, raw text and (when it parses) the JSON body.

use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;
use ureq::Agent;

/// One HTTP answer, kept whole so assertions can quote it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// Header names lower-cased; repeated headers joined with ", ".
    pub headers: BTreeMap<String, String>,
    /// The body as text (lossy UTF-8).
    pub text: String,
    /// The body as JSON, or `Value::Null` when it is not JSON.
    pub json: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// `json[key]` as u64, panicking with the whole reply when absent.
    pub fn u64_field(&self, key: &str) -> u64 {
        self.json[key]
            .as_u64()
            .unwrap_or_else(|| panic!("field {key:?} missing or not an integer in {self}"))
    }

    pub fn allowed(&self) -> Option<bool> {
        self.json["allowed"].as_bool()
    }

    /// The error object's `(code, message)`, panicking when the body is not
    /// `{"error": {"code": "...", "message": "..."}}` with non-empty strings.
    pub fn error(&self) -> (String, String) {
        let code = self.json["error"]["code"].as_str().unwrap_or("");
        let message = self.json["error"]["message"].as_str().unwrap_or("");
        assert!(
            !code.is_empty() && !message.is_empty(),
            "expected an error body {{\"error\": {{\"code\", \"message\"}}}}, got {self}"
        );
        (code.to_string(), message.to_string())
    }

    /// Asserts the status and an error body whose message names `field`.
    pub fn assert_error(&self, status: u16, field: &str) {
        assert_eq!(self.status, status, "expected status {status}, got {self}");
        let (_, message) = self.error();
        assert!(
            message.contains(field),
            "error message should name {field:?}: {self}"
        );
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text: String = self.text.chars().take(600).collect();
        write!(f, "HTTP {} {:?} body: {}", self.status, self.headers, text)
    }
}

/// A shared, cloneable client bound to one base URL.
#[derive(Clone)]
pub struct Client {
    agent: Agent,
    base: String,
    /// Sent as `Authorization: Bearer <token>` on every request when set (the admin
    /// listener of a node started with an admin token).
    bearer: Option<String>,
}

impl Client {
    pub fn new(base: String) -> Client {
        let agent: Agent = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(15)))
            .max_idle_connections_per_host(16)
            .build()
            .into();
        Client {
            agent,
            base,
            bearer: None,
        }
    }

    /// The same client sending `Authorization: Bearer <token>`.
    pub fn with_bearer(mut self, token: &str) -> Client {
        self.bearer = Some(token.to_string());
        self
    }

    /// The same client without a bearer token.
    pub fn without_bearer(mut self) -> Client {
        self.bearer = None;
        self
    }

    fn auth(&self) -> Option<String> {
        self.bearer.as_ref().map(|t| format!("Bearer {t}"))
    }

    /// `GET path` with extra request headers.
    pub fn get_with_headers(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let url = format!("{}{path}", self.base);
        let mut req = self.agent.get(&url);
        if let Some(a) = self.auth() {
            req = req.header("authorization", &a);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.call()
            .and_then(into_reply)
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }

    /// `PUT path` with a JSON body.
    pub fn put_json(&self, path: &str, body: &Value) -> Reply {
        self.put_raw(path, body.to_string().as_bytes())
    }

    /// `PUT path` with `body` sent as is, as `application/json`.
    pub fn put_raw(&self, path: &str, body: &[u8]) -> Reply {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .agent
            .put(&url)
            .header("content-type", "application/json");
        if let Some(a) = self.auth() {
            req = req.header("authorization", &a);
        }
        req.send(body)
            .and_then(into_reply)
            .unwrap_or_else(|e| panic!("PUT {url}: {e}"))
    }

    /// `DELETE path`.
    pub fn delete(&self, path: &str) -> Reply {
        self.request("DELETE", path)
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn get(&self, path: &str) -> Reply {
        self.try_get(path)
            .unwrap_or_else(|e| panic!("GET {}{path}: {e}", self.base))
    }

    pub fn try_get(&self, path: &str) -> Result<Reply, ureq::Error> {
        let url = format!("{}{path}", self.base);
        let mut req = self.agent.get(&url);
        if let Some(a) = self.auth() {
            req = req.header("authorization", &a);
        }
        req.call().and_then(into_reply)
    }

    /// Sends `body` as is with an optional content type.
    pub fn post_raw(&self, path: &str, content_type: Option<&str>, body: &[u8]) -> Reply {
        let headers: Vec<(&str, &str)> = content_type
            .map(|ct| ("content-type", ct))
            .into_iter()
            .collect();
        self.post_with_headers(path, &headers, body)
    }

    /// Sends `body` as is with the given request headers; panics on a transport error.
    pub fn post_with_headers(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        self.try_post(path, headers, body)
            .unwrap_or_else(|e| panic!("POST {}{path} ({} bytes): {e}", self.base, body.len()))
    }

    /// Like [`Client::post_with_headers`], but a transport error (connection refused or
    /// reset, timeout) is returned instead of panicking: load loops count them.
    pub fn try_post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Reply, ureq::Error> {
        let url = format!("{}{path}", self.base);
        let mut req = self.agent.post(&url);
        if let Some(a) = self.auth() {
            req = req.header("authorization", &a);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.send(body).and_then(into_reply)
    }

    pub fn post_json(&self, path: &str, body: &Value) -> Reply {
        self.post_raw(path, Some("application/json"), body.to_string().as_bytes())
    }

    /// `post_json` that returns transport errors instead of panicking.
    pub fn try_post_json(&self, path: &str, body: &Value) -> Result<Reply, ureq::Error> {
        let headers = [("content-type", "application/json")];
        self.try_post(path, &headers, body.to_string().as_bytes())
    }

    /// A request with an arbitrary method and an empty body (for 405 / 404 checks).
    /// Methods that carry a body send `content-length: 0`.
    pub fn request(&self, method: &str, path: &str) -> Reply {
        let url = format!("{}{path}", self.base);
        let mut builder = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(a) = self.auth() {
            builder = builder.header("authorization", a);
        }
        let result = match method {
            "GET" | "HEAD" | "DELETE" | "OPTIONS" => {
                self.agent.run(builder.body(()).expect("request"))
            }
            _ => self.agent.run(builder.body(&[][..]).expect("request")),
        };
        result
            .and_then(into_reply)
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
    }
}

fn into_reply(mut resp: ureq::http::Response<ureq::Body>) -> Result<Reply, ureq::Error> {
    let status = resp.status().as_u16();
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in resp.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_ascii_lowercase())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let bytes = resp.body_mut().read_to_vec()?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok(Reply {
        status,
        headers,
        text,
        json,
    })
}
