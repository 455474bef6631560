//! API access control: bearer tokens with roles. Tokens come from `[[api.tokens]]` (`${VAR}`
//! only) or `api.tokens_file`; only their SHA-256 is kept in memory, compared in constant time.
//!
//! | Role | May |
//! |---|---|
//! | viewer | read: cohorts, rules, verdicts, actions, audit, gates, rollouts, the dashboard's data |
//! | operator | viewer, plus kill / restore / rollout changes, pause / resume / abort plans |
//! | admin | operator, plus reload rules |
//!
//! `/healthz`, `/readyz`, `/metrics` and the dashboard's static files are open; alert webhooks
//! have their own per-source authentication. No token configured: no authentication.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

/// Who is calling (a request extension handlers read to record the actor).
#[derive(Clone, Debug)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

/// The configured tokens, hashed.
#[derive(Clone, Default)]
pub struct Tokens {
    entries: Arc<Vec<([u8; 32], Caller)>>,
    anonymous: Option<Role>,
    /// Host names (besides localhost and IP addresses) served to requests without a token.
    allowed_hosts: Arc<Vec<String>>,
}

impl Tokens {
    /// From the configuration: `(name, role, secret)` triples.
    pub fn new(tokens: impl IntoIterator<Item = (String, Role, String)>, anonymous: Option<Role>) -> Tokens {
        let entries = tokens.into_iter().map(|(name, role, secret)| (Sha256::digest(secret.as_bytes()).into(), Caller { name, role })).collect();
        Tokens { entries: Arc::new(entries), anonymous, allowed_hosts: Arc::default() }
    }

    /// Host names served to requests without a token (`api.allowed_hosts`).
    pub fn allow_hosts(mut self, hosts: Vec<String>) -> Tokens {
        self.allowed_hosts = Arc::new(hosts);
        self
    }

    pub fn enabled(&self) -> bool {
        !self.entries.is_empty()
    }

    /// The caller a bearer token belongs to. Every entry is compared (in constant time each).
    pub fn caller(&self, token: &str) -> Option<Caller> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (hash, caller) in self.entries.iter() {
            if bool::from(hash.ct_eq(&digest)) {
                found = Some(caller.clone());
            }
        }
        found
    }
}

/// Parses a tokens file: `ROLE NAME TOKEN` per line, `#` comments. Errors name the line.
pub fn parse_file(text: &str) -> Result<Vec<(String, Role, String)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [role, name, token] = parts.as_slice() else { return Err(format!("line {}: expected ROLE NAME TOKEN", i + 1)) };
        let role: Role = serde_json::from_value(serde_json::Value::String((*role).into()))
            .map_err(|_| format!("line {}: role {role:?} is not viewer, operator or admin", i + 1))?;
        if token.len() < 16 {
            return Err(format!("line {}: token of {name} is shorter than 16 characters", i + 1));
        }
        out.push(((*name).to_owned(), role, (*token).to_owned()));
    }
    Ok(out)
}

/// The role a request needs; `None` for open routes.
pub fn required(method: &Method, path: &str) -> Option<Role> {
    if matches!(path, "/healthz" | "/readyz" | "/metrics" | "/") || path.starts_with("/assets/") || path.starts_with("/v1/alerts/") {
        return None;
    }
    if method == Method::GET || method == Method::HEAD {
        return Some(Role::Viewer);
    }
    if path == "/v1/rules/reload" {
        return Some(Role::Admin);
    }
    Some(Role::Operator)
}

/// Refuses what a web page in an operator's browser could send: a mutation from another
/// origin (`Origin` or `Sec-Fetch-Site` say so; curl and SDKs send neither), and — for a
/// request served without a token (no tokens configured, or the anonymous role) — a `Host`
/// that is a name other than `localhost` or one of `api.allowed_hosts` (DNS rebinding: a page
/// of evil.example resolving to 127.0.0.1 is same-origin with itself, so only the Host tells).
/// Alert webhooks and the probe / scrape routes are exempt.
fn same_origin(request: &Request, tokenless: bool, allowed_hosts: &[String]) -> Result<(), String> {
    let path = request.uri().path();
    if path.starts_with("/v1/alerts/") || matches!(path, "/healthz" | "/readyz" | "/metrics") {
        return Ok(());
    }
    let headers = request.headers();
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    // HTTP/2 carries the host as `:authority`, in the URI.
    let host = get("host").map(str::to_owned).or_else(|| request.uri().authority().map(|a| a.to_string())).unwrap_or_default();
    let host = host.as_str();
    if tokenless {
        let name = host.rsplit_once(':').filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit())).map_or(host, |(name, _)| name);
        let name = name.trim_start_matches('[').trim_end_matches(']');
        let allowed = name.is_empty()
            || name.eq_ignore_ascii_case("localhost")
            || name.parse::<std::net::IpAddr>().is_ok()
            || allowed_hosts.iter().any(|h| h.eq_ignore_ascii_case(name));
        if !allowed {
            return Err(format!(
                "Host {host:?} refused for a request without a token: only localhost, IP addresses and api.allowed_hosts are served (DNS rebinding)"
            ));
        }
    }
    let safe = matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe {
        if matches!(get("sec-fetch-site"), Some("cross-site" | "same-site")) {
            return Err("cross-site request refused".into());
        }
        if let Some(origin) = get("origin").filter(|o| *o != "null") {
            let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
            if origin_host != host {
                return Err(format!("cross-origin request from {origin} refused"));
            }
        } else if get("origin") == Some("null") {
            return Err("request from an opaque origin refused".into());
        }
    }
    Ok(())
}

/// The middleware: 401 without a valid token, 403 with too small a role.
pub async fn check(State(tokens): State<Tokens>, mut request: Request, next: Next) -> Response {
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.get(..7).filter(|p| p.eq_ignore_ascii_case("bearer ")).map(|_| v[7..].to_owned()));
    let tokenless = !tokens.enabled() || (bearer.is_none() && tokens.anonymous.is_some());
    if let Err(why) = same_origin(&request, tokenless, &tokens.allowed_hosts) {
        return (StatusCode::FORBIDDEN, axum::Json(serde_json::json!({ "error": why }))).into_response();
    }
    if !tokens.enabled() {
        return next.run(request).await;
    }
    let Some(needed) = required(request.method(), request.uri().path()) else { return next.run(request).await };
    let caller = match bearer {
        Some(token) => tokens.caller(token.trim()),
        None => tokens.anonymous.map(|role| Caller { name: "anonymous".into(), role }),
    };
    let deny = |status: StatusCode, message: String| {
        let mut response = (status, axum::Json(serde_json::json!({ "error": message }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        response
    };
    match caller {
        None => deny(StatusCode::UNAUTHORIZED, "a valid bearer token is required".into()),
        Some(c) if c.role < needed => deny(StatusCode::FORBIDDEN, format!("{} has role {:?}; this needs {:?}", c.name, c.role, needed)),
        Some(c) => {
            request.extensions_mut().insert(c);
            next.run(request).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_per_route() {
        assert_eq!(required(&Method::GET, "/v1/actions"), Some(Role::Viewer));
        assert_eq!(required(&Method::POST, "/v1/flags/f/kill"), Some(Role::Operator));
        assert_eq!(required(&Method::POST, "/v1/actions/3/restore"), Some(Role::Operator));
        assert_eq!(required(&Method::POST, "/v1/rules/reload"), Some(Role::Admin));
        assert_eq!(required(&Method::GET, "/healthz"), None);
        assert_eq!(required(&Method::POST, "/v1/alerts/alertmanager"), None, "webhooks authenticate per source");
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
    }

    #[test]
    fn requests_without_a_token_need_a_local_or_allowed_host() {
        let req = |host: Option<&str>, uri: &str| {
            let mut b = axum::http::Request::builder().method(Method::GET).uri(uri);
            if let Some(h) = host {
                b = b.header("host", h);
            }
            b.body(axum::body::Body::empty()).unwrap()
        };
        let allowed = vec!["flagguard.internal".to_owned()];
        for ok in ["localhost:8080", "127.0.0.1:8080", "[::1]:8080", "[::1]", "flagguard.internal:8080"] {
            assert!(same_origin(&req(Some(ok), "/v1/actions"), true, &allowed).is_ok(), "{ok}");
        }
        assert!(same_origin(&req(Some("evil.example:8080"), "/v1/actions"), true, &allowed).is_err(), "rebinding");
        assert!(same_origin(&req(Some("evil.example:8080"), "/v1/actions"), false, &allowed).is_ok(), "with a token the host is not the defence");
        assert!(same_origin(&req(Some("evil.example"), "/metrics"), true, &allowed).is_ok(), "scrapes are exempt");
        // HTTP/2: no Host header, the authority is in the URI.
        assert!(same_origin(&req(None, "https://evil.example:8080/v1/actions"), true, &allowed).is_err());
        assert!(same_origin(&req(None, "https://localhost:8080/v1/actions"), true, &allowed).is_ok());
    }

    #[test]
    fn tokens_are_matched_by_hash_and_files_are_checked() {
        let tokens = Tokens::new([("ci".to_owned(), Role::Viewer, "0123456789abcdef-ci".to_owned())], None);
        assert_eq!(tokens.caller("0123456789abcdef-ci").map(|c| c.name), Some("ci".into()));
        assert!(tokens.caller("0123456789abcdef-cj").is_none());
        let parsed = parse_file("# comment\nadmin alice aaaaaaaaaaaaaaaaaaaa\n\noperator bob bbbbbbbbbbbbbbbbbbbb\n").unwrap();
        assert_eq!(parsed.len(), 2);
        assert!(parse_file("root alice aaaaaaaaaaaaaaaaaaaa").unwrap_err().contains("line 1"));
        assert!(parse_file("admin alice short").unwrap_err().contains("shorter"));
    }
}
