//! Per-route authentication of alert webhooks, on the raw request before any parsing.
//! Signing sources (Grafana, PagerDuty, generic) are checked with HMAC-SHA256 in constant time
//! (`Mac::verify_slice`), timestamped ones within a replay window; sources that cannot sign
//! use a bearer token or basic credentials, compared in constant time.

use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::{AlertError, Source};
use crate::time::Timestamp;

/// How one source authenticates (from `[alerts.SOURCE]`, secrets already expanded).
#[derive(Clone, Debug, Default)]
pub struct SourceAuth {
    /// Accepted as `Authorization: Bearer <token>`.
    pub bearer_token: Option<String>,
    /// Accepted as `Authorization: Basic …` of `user:password`.
    pub basic: Option<(String, String)>,
    /// HMAC secrets (several during rotation); Grafana, PagerDuty and generic only.
    pub hmac_secrets: Vec<String>,
    /// Grafana: the timestamp header the contact point is configured with; when set, it is
    /// required and `timestamp:body` is what is signed.
    pub timestamp_header: Option<String>,
    /// Signed timestamps further than this from now are refused (replays).
    pub replay_window: Duration,
}

impl SourceAuth {
    pub fn is_configured(&self) -> bool {
        self.bearer_token.is_some() || self.basic.is_some() || !self.hmac_secrets.is_empty()
    }
}

fn unauthorized(why: &str) -> AlertError {
    AlertError::Unauthorized(why.into())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// Whether `mac_hex` is the HMAC-SHA256 of `prefix + body` under any of `secrets`.
fn hmac_ok(secrets: &[String], prefix: &[u8], body: &[u8], mac_hex: &str) -> bool {
    let Ok(mac) = hex::decode(mac_hex.trim()) else { return false };
    // Only a SHA-256 MAC can match; anything else is refused before hashing the body.
    if mac.len() != 32 {
        return false;
    }
    // An empty key never verifies (configuration refuses it too): anyone could compute it.
    secrets.iter().filter(|s| !s.is_empty()).any(|secret| {
        // HMAC accepts keys of any length.
        let Ok(mut m) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else { return false };
        m.update(prefix);
        m.update(body);
        m.verify_slice(&mac).is_ok()
    })
}

fn fresh(ts: &str, now: Timestamp, window: Duration) -> Result<(), AlertError> {
    let ts: u64 = ts.parse().map_err(|_| unauthorized("timestamp is not a Unix time in seconds"))?;
    let now_s = now.as_millis() / 1000;
    if now_s.abs_diff(ts) > window.as_secs() {
        return Err(unauthorized("timestamp outside the replay window"));
    }
    Ok(())
}

/// Checks one delivery. A present-but-wrong signature is refused even when a bearer token
/// would also be accepted; an absent one falls back to the token or basic credentials.
pub fn verify(source: Source, auth: &SourceAuth, headers: &HeaderMap, body: &[u8], now: Timestamp) -> Result<(), AlertError> {
    if !auth.hmac_secrets.is_empty() {
        match signature(source, auth, headers, body, now) {
            Some(result) => return result,
            None if auth.bearer_token.is_none() && auth.basic.is_none() => return Err(unauthorized("missing signature")),
            None => {}
        }
    }
    let given = header(headers, "authorization").unwrap_or("");
    // Empty credentials never match (configuration refuses them too).
    if let Some(token) = auth.bearer_token.as_ref().filter(|t| !t.is_empty())
        && bool::from(given.as_bytes().ct_eq(format!("Bearer {token}").as_bytes()))
    {
        return Ok(());
    }
    if let Some((user, password)) = auth.basic.as_ref().filter(|(u, p)| !u.is_empty() && !p.is_empty()) {
        let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")));
        if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
            return Ok(());
        }
    }
    Err(unauthorized(if given.is_empty() { "missing credentials" } else { "wrong credentials" }))
}

/// `None` when the source's signature header is absent.
fn signature(source: Source, auth: &SourceAuth, headers: &HeaderMap, body: &[u8], now: Timestamp) -> Option<Result<(), AlertError>> {
    let secrets = &auth.hmac_secrets;
    match source {
        Source::Grafana => {
            let sig = header(headers, "x-grafana-alerting-signature")?;
            let ts_name = auth.timestamp_header.as_deref().unwrap_or("x-grafana-alerting-timestamp");
            Some(match (header(headers, ts_name), auth.timestamp_header.is_some()) {
                (Some(ts), _) => fresh(ts, now, auth.replay_window)
                    .and_then(|_| if hmac_ok(secrets, format!("{ts}:").as_bytes(), body, sig) { Ok(()) } else { Err(unauthorized("bad signature")) }),
                (None, true) => Err(unauthorized("missing timestamp header")),
                (None, false) => {
                    if hmac_ok(secrets, b"", body, sig) {
                        Ok(())
                    } else {
                        Err(unauthorized("bad signature"))
                    }
                }
            })
        }
        Source::Pagerduty => {
            let sig = header(headers, "x-pagerduty-signature")?;
            // Several `v1=` values during secret rotation: any one valid is enough.
            // At most four signatures are tried: a crafted header cannot buy unbounded hashing.
            let ok = sig.split(',').filter_map(|v| v.trim().strip_prefix("v1=")).take(4).any(|mac| hmac_ok(secrets, b"", body, mac));
            Some(if ok { Ok(()) } else { Err(unauthorized("bad signature")) })
        }
        Source::Generic => {
            let sig = header(headers, "x-flagguard-signature")?;
            Some(match (header(headers, "x-flagguard-timestamp"), sig.strip_prefix("sha256=")) {
                (None, _) => Err(unauthorized("missing X-Flagguard-Timestamp")),
                (_, None) => Err(unauthorized("signature must be sha256=<hex>")),
                (Some(ts), Some(mac)) => fresh(ts, now, auth.replay_window)
                    .and_then(|_| if hmac_ok(secrets, format!("{ts}.").as_bytes(), body, mac) { Ok(()) } else { Err(unauthorized("bad signature")) }),
            })
        }
        // Sources that cannot sign: credentials only.
        _ => None,
    }
}
