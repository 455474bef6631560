//! `flagguard flags stale`: flag hygiene from a running daemon (`GET /v1/flags/stale`) — flags
//! that served a single variant to all traffic for a long time, or that nothing evaluated for a
//! long time: candidates for removal.

use std::time::Duration;

use serde_json::Value;

/// Prints the candidates; returns the exit code (0, or 3 on a usage or connection error).
pub async fn stale(server: &str, token: Option<&str>, single_variant_for: &str, unused_for: &str, json: bool) -> i32 {
    match ask(server, token, single_variant_for, unused_for).await {
        Ok(answer) if json => {
            println!("{answer}");
            0
        }
        Ok(answer) => {
            print!("{}", render(&answer));
            0
        }
        Err(e) => {
            eprintln!("flags stale: {e}");
            super::gate::ERROR
        }
    }
}

async fn ask(server: &str, token: Option<&str>, single_variant_for: &str, unused_for: &str) -> Result<Value, String> {
    let client = crate::app::http_client(Duration::from_secs(10), std::env::var_os("FLAGGUARD_CA_FILE").as_deref().map(std::path::Path::new))
        .map_err(|e| e.to_string())?;
    let mut url = reqwest::Url::parse(server).map_err(|e| format!("--server {server}: {e}"))?;
    url.path_segments_mut().map_err(|_| format!("--server {server} cannot be a base URL"))?.pop_if_empty().extend(["v1", "flags", "stale"]);
    url.query_pairs_mut().append_pair("single_variant_for", single_variant_for).append_pair("unused_for", unused_for);
    let mut request = client.get(url.clone());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|e| format!("cannot reach {url}: {e}"))?;
    let status = response.status();
    let body: Value = response.json().await.map_err(|e| format!("{url}: not an answer: {e}"))?;
    if !status.is_success() {
        return Err(format!("{url}: HTTP {status}: {}", body["error"].as_str().unwrap_or("")));
    }
    Ok(body)
}

/// The human-readable table.
pub fn render(answer: &Value) -> String {
    let flags = answer["flags"].as_array().cloned().unwrap_or_default();
    let mut out = format!("{} of {} flags seen are removal candidates\n", flags.len(), answer["known_flags"].as_u64().unwrap_or(0));
    if !flags.is_empty() {
        out.push_str(&format!("{:<32} {:<15} {:<10} {:<26} {:<26} owner\n", "flag", "why", "variant", "since", "last evaluated"));
    }
    for f in flags {
        let s = |k: &str| f[k].as_str().unwrap_or("-").to_owned();
        out.push_str(&format!("{:<32} {:<15} {:<10} {:<26} {:<26} {}\n", s("flag"), s("why"), s("variant"), s("since"), s("last_evaluated"), s("owner")));
    }
    out
}
