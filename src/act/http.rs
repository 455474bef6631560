//! The HTTP plumbing the flag-system actuators share: one JSON call with the credential header,
//! status classification (2xx ok; 408/425/429/5xx transient; other 4xx permanent, with
//! per-system exceptions) and the provider's retry hints (`Retry-After` in seconds, or
//! LaunchDarkly's `X-Ratelimit-Reset` in epoch milliseconds).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::ActError;
use super::retry::parse_retry_after;

/// One flag system's API: base URL and the credential header (never logged or audited).
pub struct JsonApi {
    pub system: &'static str,
    pub base: String,
    auth: (&'static str, String),
    extra: Vec<(&'static str, String)>,
    client: reqwest::Client,
}

/// A successful answer: status and JSON body (`Null` when empty or not JSON).
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
}

impl JsonApi {
    pub fn new(system: &'static str, base: &str, auth: (&'static str, String), client: reqwest::Client) -> JsonApi {
        JsonApi { system, base: base.trim_end_matches('/').to_owned(), auth, extra: Vec::new(), client }
    }

    /// Adds a header sent with every call (e.g. an API version pin).
    pub fn with_header(mut self, name: &'static str, value: &str) -> JsonApi {
        self.extra.push((name, value.to_owned()));
        self
    }

    /// Calls `method base+path` with an optional JSON body (and its content type).
    /// `special` may classify a status first (e.g. LaunchDarkly's 405 = approval required).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, &Value)>,
        idempotency_key: Option<&str>,
        special: fn(StatusCode, &str) -> Option<ActError>,
    ) -> Result<Reply, ActError> {
        let url = format!("{}{path}", self.base);
        let mut call = self.client.request(method.clone(), &url).header(self.auth.0, &self.auth.1);
        for (name, value) in &self.extra {
            call = call.header(*name, value);
        }
        if let Some(key) = idempotency_key {
            call = call.header("Idempotency-Key", key);
        }
        if let Some((content_type, json)) = body {
            call = call.header(reqwest::header::CONTENT_TYPE, content_type).body(json.to_string());
        }
        let response = call.send().await.map_err(|e| with_context(self.system, &method, path, transport_error(e)))?;
        let status = response.status();
        let retry_after = retry_hint(response.headers());
        let text = response.text().await.unwrap_or_default();
        if let Some(error) = special(status, &text) {
            return Err(with_context(self.system, &method, path, error));
        }
        classify(status, retry_after, &text).map_err(|e| with_context(self.system, &method, path, e))?;
        let body = if text.trim().is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        Ok(Reply { status, body })
    }

    pub async fn get(&self, path: &str) -> Result<Value, ActError> {
        Ok(self.call(Method::GET, path, None, None, none).await?.body)
    }
}

/// No special statuses.
pub fn none(_: StatusCode, _: &str) -> Option<ActError> {
    None
}

fn with_context(system: &str, method: &Method, path: &str, error: ActError) -> ActError {
    match error {
        ActError::Transient { message, retry_after } => ActError::Transient { message: format!("{system} {method} {path}: {message}"), retry_after },
        ActError::Permanent(message) => ActError::Permanent(format!("{system} {method} {path}: {message}")),
        refused @ ActError::Refused(_) => refused,
    }
}

/// `Retry-After` (seconds), else `X-Ratelimit-Reset` (epoch milliseconds, LaunchDarkly).
pub fn retry_hint(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    parse_retry_after(header("retry-after")).or_else(|| {
        let reset_ms: u64 = header("x-ratelimit-reset")?.trim().parse().ok()?;
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_millis() as u64;
        Some(Duration::from_millis(reset_ms.saturating_sub(now_ms)))
    })
}

/// Percent-encodes a path segment (the webhook's placeholder encoding).
pub use super::webhook::percent_encode as segment;

/// The credential of an API actuator, read from the environment (`token = "${VAR}"`).
pub fn token(configured: &str) -> Result<String, String> {
    crate::secrets::expand_env(configured).map_err(|var| format!("environment variable {var} is not set"))
}

/// The flag system's environment for a request: the telemetry environment through `map`, else
/// the default; none is a permanent error (a kill must never guess an environment).
pub fn environment(request: &super::ActionRequest, map: &std::collections::BTreeMap<String, String>, default: Option<&String>) -> Result<String, ActError> {
    match request.environment.clone().or_else(|| request.scoped("environment").map(str::to_owned)) {
        Some(env) => Ok(map.get(&env).cloned().unwrap_or(env)),
        None => default
            .cloned()
            .ok_or_else(|| ActError::Permanent("the telemetry names no deployment environment and the actuator has no default_environment".into())),
    }
}

/// Classifies an HTTP status: 2xx ok; 408, 425, 429, 5xx transient; other 4xx permanent.
pub fn classify(status: reqwest::StatusCode, retry_after: Option<Duration>, body: &str) -> Result<(), ActError> {
    let snippet: String = body.chars().take(300).collect();
    match status.as_u16() {
        200..=299 => Ok(()),
        408 | 425 | 429 | 500..=599 => Err(ActError::Transient { message: format!("HTTP {status}: {snippet}"), retry_after }),
        _ => Err(ActError::Permanent(format!("HTTP {status}: {snippet}"))),
    }
}

/// Maps a transport error: timeouts and connection failures are transient.
pub fn transport_error(e: reqwest::Error) -> ActError {
    // Without the URL: it may hold a secret (`${VAR}` in a webhook or notification URL).
    let e = e.without_url();
    if e.is_builder() { ActError::Permanent(format!("bad request: {e}")) } else { ActError::transient(format!("{e}")) }
}

/// The checks every HTTP flag-system API's config shares: a URL, and a token that comes from
/// the environment (`${VAR}`) so that it never sits in a file that is audited or committed.
pub fn check_api(errors: &mut Vec<String>, field: &str, url: &str, token: &str) {
    if let Err(e) = reqwest::Url::parse(url) {
        errors.push(format!("{field}.url: {url:?} is not a URL ({e})"));
    }
    if !token.contains("${") {
        errors.push(format!("{field}.token: give the credential as ${{VAR}} (read from the environment), not literally"));
    } else if let Err(var) = crate::secrets::expand_env(token) {
        errors.push(format!("{field}.token: environment variable {var} is not set"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_hint_reads_seconds_or_launchdarkly_reset() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(retry_hint(&h), None);
        let in_3s = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64 + 3000;
        h.insert("x-ratelimit-reset", in_3s.to_string().parse().unwrap());
        let d = retry_hint(&h).unwrap();
        assert!(d > Duration::from_millis(2000) && d <= Duration::from_millis(3000), "{d:?}");
        h.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_hint(&h), Some(Duration::from_secs(7)), "Retry-After wins");
    }
}
