//! `flagguard cluster status`: the cluster as one replica sees it (`GET /v1/cluster`) —
//! members, the leader, its epoch and lease expiry. Exit 0 a leader holds the lease, 1 none
//! does (nobody acts), 3 error.

use serde_json::Value;

/// Prints the status; returns the exit code.
pub async fn status(server: &str, token: Option<&str>, json: bool) -> i32 {
    let answer = match ask(server, token).await {
        Ok(answer) => answer,
        Err(e) => {
            eprintln!("cluster status: {e}");
            return super::gate::ERROR;
        }
    };
    if json {
        println!("{answer}");
    } else {
        print!("{}", render(&answer));
    }
    if has_leader(&answer) { 0 } else { 1 }
}

/// A replica holds an unexpired lease (embedded: the one process always does).
pub fn has_leader(answer: &Value) -> bool {
    answer["mode"] == "embedded" || (answer["holder"].is_string() && answer["lease_expires_in_ms"].as_i64().is_some_and(|ms| ms > 0))
}

async fn ask(server: &str, token: Option<&str>) -> Result<Value, String> {
    let client = crate::app::http_client(std::time::Duration::from_secs(10), std::env::var_os("FLAGGUARD_CA_FILE").as_deref().map(std::path::Path::new))
        .map_err(|e| e.to_string())?;
    let mut url = reqwest::Url::parse(server).map_err(|e| format!("--server {server}: {e}"))?;
    url.path_segments_mut().map_err(|_| format!("--server {server} cannot be a base URL"))?.pop_if_empty().extend(["v1", "cluster"]);
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

/// The human-readable summary.
pub fn render(a: &Value) -> String {
    let mut out = lease(a);
    out.push_str(&scale_out(&a["scale_out"]));
    out
}

/// A shard's stream, or an evaluator's shards with their lag and gaps.
fn scale_out(s: &Value) -> String {
    match s["role"].as_str() {
        Some("shard") => format!("shard: streaming window deltas, last frame {}\n", s["seq"]),
        Some("evaluator") => {
            let mut out = format!(
                "evaluator of {} shard(s), coverage {}\n",
                s["shards"].as_array().map_or(0, Vec::len),
                if s["complete"] == true { "complete" } else { "REDUCED" }
            );
            out.push_str(&format!("{:<40} {:<10} {:>8} {:>6} {:>15}\n", "shard", "stream", "lag ms", "gaps", "missing frames"));
            for shard in s["shards"].as_array().cloned().unwrap_or_default() {
                out.push_str(&format!(
                    "{:<40} {:<10} {:>8} {:>6} {:>15}\n",
                    shard["shard"].as_str().unwrap_or("-"),
                    if shard["connected"] == true { "connected" } else { "DOWN" },
                    shard["lag_ms"],
                    shard["gaps"],
                    shard["missing_frames"]
                ));
            }
            out
        }
        _ => String::new(),
    }
}

fn lease(a: &Value) -> String {
    if a["mode"] == "embedded" {
        return "embedded: one process on SQLite, always the one that acts\n".into();
    }
    let s = |k: &str| a[k].as_str().map(str::to_owned).or_else(|| a[k].as_i64().map(|n| n.to_string())).unwrap_or_else(|| "-".into());
    let mut out = format!(
        "instance {} ({}), leader {} at epoch {}, lease expires in {} ms (read {} ms ago), fence rejections {}\n",
        s("instance"),
        if a["leader"] == true { "leading" } else { "standby" },
        s("holder"),
        s("epoch"),
        s("lease_expires_in_ms"),
        s("observed_ms_ago"),
        s("fence_rejections"),
    );
    if !has_leader(a) {
        out.push_str("NO LEADER: nobody decides or acts until a replica takes the lease\n");
    }
    out.push_str(&format!("{:<24} {:<24} last seen\n", "member", "api"));
    for m in a["members"].as_array().cloned().unwrap_or_default() {
        let leader = if m["instance"] == a["holder"] { " (leader)" } else { "" };
        out.push_str(&format!("{:<24} {:<24} {} ms ago{leader}\n", m["instance"].as_str().unwrap_or("-"), m["api"].as_str().unwrap_or("-"), m["seen_ms_ago"]));
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn an_evaluator_shows_each_shard_and_says_when_coverage_is_reduced() {
        let a = json!({ "mode": "embedded", "leader": true, "scale_out": { "role": "evaluator", "complete": false, "shards": [
            { "shard": "http://s0:4320", "connected": true, "gaps": 0, "missing_frames": 0, "lag_ms": 12 },
            { "shard": "http://s1:4320", "connected": false, "gaps": 2, "missing_frames": 40, "lag_ms": 9 } ] } });
        let text = super::render(&a);
        assert!(text.contains("evaluator of 2 shard(s), coverage REDUCED"), "{text}");
        assert!(text.lines().any(|l| l.starts_with("http://s1:4320") && l.contains("DOWN") && l.contains("40")), "{text}");
        let shard = super::render(&json!({ "mode": "embedded", "scale_out": { "role": "shard", "seq": 7 } }));
        assert!(shard.contains("last frame 7"), "{shard}");
    }

    #[test]
    fn an_expired_lease_is_no_leader() {
        let live = json!({ "mode": "cluster", "instance": "a", "leader": true, "holder": "a", "epoch": 3, "lease_expires_in_ms": 5000, "members": [{ "instance": "a", "api": "x", "seen_ms_ago": 10 }] });
        assert!(super::has_leader(&live));
        assert!(super::render(&live).contains("a (leading), leader a at epoch 3"));
        let expired = json!({ "mode": "cluster", "instance": "b", "leader": false, "holder": "a", "epoch": 3, "lease_expires_in_ms": -20, "members": [] });
        assert!(!super::has_leader(&expired));
        assert!(super::render(&expired).contains("NO LEADER"));
    }
}
