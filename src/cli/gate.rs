//! `flagguard gate FLAG`: the promotion gate for CI pipelines. Asks a running daemon
//! (`GET /v1/gates/{flag}`) and exits 0 promote, 1 breached (roll back), 2 not enough data yet
//! (after `--wait`, if given), 3 usage or connection error.

use std::time::{Duration, Instant};

use serde_json::Value;

/// What to ask.
#[derive(Clone, Debug, Default)]
pub struct GateArgs {
    pub flag: String,
    pub environment: Option<String>,
    pub region: Option<String>,
    pub variant: Option<String>,
    pub min_healthy: Option<String>,
    pub wait: Duration,
    pub server: String,
    pub token: Option<String>,
    pub json: bool,
}

/// Exit codes.
pub const PROMOTE: i32 = 0;
pub const ROLLBACK: i32 = 1;
pub const HOLD: i32 = 2;
pub const ERROR: i32 = 3;

async fn ask(client: &reqwest::Client, args: &GateArgs) -> Result<Value, String> {
    let mut url = reqwest::Url::parse(&args.server).map_err(|e| format!("--server {}: {e}", args.server))?;
    url.path_segments_mut().map_err(|_| format!("--server {} cannot be a base URL", args.server))?.pop_if_empty().extend(["v1", "gates", &args.flag]);
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in [("environment", &args.environment), ("region", &args.region), ("variant", &args.variant), ("min_healthy", &args.min_healthy)] {
            if let Some(v) = v {
                q.append_pair(k, v);
            }
        }
    }
    let mut request = client.get(url.clone());
    if let Some(token) = &args.token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|e| format!("cannot reach {url}: {e}"))?;
    let status = response.status();
    let body: Value = response.json().await.map_err(|e| format!("{url}: not a gate answer: {e}"))?;
    if !status.is_success() {
        return Err(format!("{url}: HTTP {status}: {}", body["error"].as_str().unwrap_or("")));
    }
    Ok(body)
}

/// Runs the gate; returns the exit code.
pub async fn run(args: GateArgs) -> i32 {
    let client = match crate::app::http_client(Duration::from_secs(10), std::env::var_os("FLAGGUARD_CA_FILE").as_deref().map(std::path::Path::new)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gate: {e}");
            return ERROR;
        }
    };
    let started = Instant::now();
    loop {
        let answer = match ask(&client, &args).await {
            Ok(a) => a,
            Err(e) => {
                eprintln!("gate: {e}");
                return ERROR;
            }
        };
        let code = match answer["decision"].as_str() {
            Some("promote") => PROMOTE,
            Some("rollback") => ROLLBACK,
            Some("hold") => HOLD,
            _ => {
                eprintln!("gate: unexpected answer {answer}");
                return ERROR;
            }
        };
        if code == HOLD && started.elapsed() + Duration::from_secs(5) <= args.wait {
            tokio::time::sleep(Duration::from_secs(5)).await;
            continue;
        }
        if args.json {
            println!("{answer}");
        } else {
            let verb = match code {
                PROMOTE => "PROMOTE",
                ROLLBACK => "ROLL BACK",
                _ => "HOLD (not enough evidence yet)",
            };
            println!("{}: {verb}", args.flag);
            for why in answer["why"].as_array().into_iter().flatten() {
                println!("  - {}", why.as_str().unwrap_or(""));
            }
            for s in answer["slices"].as_array().into_iter().flatten() {
                println!(
                    "  {} {}: {} ({} of {} samples)",
                    s["rule"].as_str().unwrap_or(""),
                    s["slice"].as_str().unwrap_or(""),
                    s["verdict"].as_str().unwrap_or(""),
                    s["samples"],
                    s["required"]
                );
            }
        }
        return code;
    }
}
