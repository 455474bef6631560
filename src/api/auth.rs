//! API access control: bearer tokens with roles. Tokens come from `[[api.tokens]]` (`${VAR}`
//! only) or `api.tokens_file`; only their SHA-256 is kept in memory, compared in constant time.
//!
//! | Role | May |
//! |---|---|
//! | viewer | read: cohorts, rules, verdicts, actions, audit, gates, rollouts, the dashboard's data |
//! | operator | viewer, plus kill / restore / rollout changes, pause / resume / abort plans |
//! | admin | operator, plus reload rules |
//!
//! A token may be scoped ([`Scope`]): to flags (globs), environments or owning teams; a change
//! outside its scope is refused (403) and audited (`access_denied`).
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
    /// What it may change (empty: everything its role allows).
    pub scope: Scope,
}

/// What a token may change: flags matching one of `flags` (globs), in one of `environments`,
/// owned (flag manifests) by one of `teams`. An empty list does not limit. Reads are not
/// limited: a scope bounds changes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scope {
    pub flags: Vec<String>,
    pub environments: Vec<String>,
    pub teams: Vec<String>,
}

impl Scope {
    pub fn is_whole(&self) -> bool {
        self.flags.is_empty() && self.environments.is_empty() && self.teams.is_empty()
    }

    /// Why a change of `flag` in `environment` (none: every environment) owned by `team` is
    /// outside the scope; `None` when it is inside.
    pub fn refuses(&self, flag: &str, environment: Option<&str>, team: Option<&str>) -> Option<String> {
        if !self.flags.is_empty() && !self.flags.iter().any(|g| globset::Glob::new(g).is_ok_and(|g| g.compile_matcher().is_match(flag))) {
            return Some(format!("flag {flag} is outside the token's flags {:?}", self.flags));
        }
        if !self.environments.is_empty() {
            match environment {
                Some(env) if self.environments.iter().any(|e| e == env) => {}
                Some(env) => return Some(format!("environment {env} is outside the token's environments {:?}", self.environments)),
                None => return Some(format!("a change in every environment is outside the token's environments {:?}", self.environments)),
            }
        }
        if !self.teams.is_empty() && !team.is_some_and(|t| self.teams.iter().any(|x| x == t)) {
            return Some(format!("flag {flag} is owned by {} (flag manifests), outside the token's teams {:?}", team.unwrap_or("no team"), self.teams));
        }
        None
    }

    /// `flags=a*,b environments=staging teams=payments` (the tokens file's form).
    fn parse(words: &[&str]) -> Result<Scope, String> {
        let mut scope = Scope::default();
        for word in words {
            let (key, values) = word.split_once('=').ok_or_else(|| format!("{word:?} is not KEY=VALUE,…"))?;
            let values: Vec<String> = values.split(',').filter(|v| !v.is_empty()).map(str::to_owned).collect();
            match key {
                "flags" => {
                    if let Some(bad) = values.iter().find(|g| globset::Glob::new(g).is_err()) {
                        return Err(format!("flags: {bad:?} is not a glob"));
                    }
                    scope.flags = values
                }
                "environments" => scope.environments = values,
                "teams" => scope.teams = values,
                other => return Err(format!("{other:?} is not flags, environments or teams")),
            }
        }
        Ok(scope)
    }
}

/// One configured token: who, with which role and scope, and its secret.
#[derive(Clone, Debug)]
pub struct TokenEntry {
    pub name: String,
    pub role: Role,
    pub secret: String,
    pub scope: Scope,
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
    /// From the configuration.
    pub fn new(tokens: impl IntoIterator<Item = TokenEntry>, anonymous: Option<Role>) -> Tokens {
        let entries = tokens.into_iter().map(|t| (Sha256::digest(t.secret.as_bytes()).into(), Caller { name: t.name, role: t.role, scope: t.scope })).collect();
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

/// Parses a tokens file: `ROLE NAME TOKEN [flags=GLOB,…] [environments=E,…] [teams=T,…]` per
/// line, `#` comments. Errors name the line.
pub fn parse_file(text: &str) -> Result<Vec<TokenEntry>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [role, name, token, scope @ ..] = parts.as_slice() else { return Err(format!("line {}: expected ROLE NAME TOKEN [SCOPE…]", i + 1)) };
        let scope = Scope::parse(scope).map_err(|e| format!("line {}: {e}", i + 1))?;
        let role: Role = serde_json::from_value(serde_json::Value::String((*role).into()))
            .map_err(|_| format!("line {}: role {role:?} is not viewer, operator or admin", i + 1))?;
        if token.len() < 16 {
            return Err(format!("line {}: token of {name} is shorter than 16 characters", i + 1));
        }
        out.push(TokenEntry { name: (*name).to_owned(), role, secret: (*token).to_owned(), scope });
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
        None => tokens.anonymous.map(|role| Caller { name: "anonymous".into(), role, scope: Scope::default() }),
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
        let tokens = Tokens::new([TokenEntry { name: "ci".into(), role: Role::Viewer, secret: "0123456789abcdef-ci".into(), scope: Scope::default() }], None);
        assert_eq!(tokens.caller("0123456789abcdef-ci").map(|c| c.name), Some("ci".into()));
        assert!(tokens.caller("0123456789abcdef-cj").is_none());
        let parsed = parse_file("# comment\nadmin alice aaaaaaaaaaaaaaaaaaaa\n\noperator bob bbbbbbbbbbbbbbbbbbbb\n").unwrap();
        assert_eq!(parsed.len(), 2);
        assert!(parse_file("root alice aaaaaaaaaaaaaaaaaaaa").unwrap_err().contains("line 1"));
        assert!(parse_file("admin alice short").unwrap_err().contains("shorter"));
        let scoped = parse_file("operator payments-ci cccccccccccccccccccc flags=checkout-*,pay environments=staging\n").unwrap();
        assert_eq!(scoped[0].scope, Scope { flags: vec!["checkout-*".into(), "pay".into()], environments: vec!["staging".into()], teams: vec![] });
        assert!(parse_file("operator x cccccccccccccccccccc regions=eu").unwrap_err().contains("line 1"));
    }

    #[test]
    fn a_scope_bounds_flags_environments_and_teams() {
        let scope = Scope { flags: vec!["checkout-*".into()], environments: vec!["staging".into()], teams: vec![] };
        assert_eq!(scope.refuses("checkout-v2", Some("staging"), None), None);
        assert!(scope.refuses("search-v3", Some("staging"), None).unwrap().contains("outside the token's flags"));
        assert!(scope.refuses("checkout-v2", Some("production"), None).unwrap().contains("environment production"));
        assert!(scope.refuses("checkout-v2", None, None).unwrap().contains("every environment"));
        let team = Scope { teams: vec!["payments".into()], ..Scope::default() };
        assert_eq!(team.refuses("x", None, Some("payments")), None);
        assert!(team.refuses("x", None, Some("search")).is_some() && team.refuses("x", None, None).is_some());
        assert!(Scope::default().is_whole() && Scope::default().refuses("anything", None, None).is_none());
    }
}
