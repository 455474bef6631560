//! `flagguard approvals list | approve ID | reject ID`: proposals in regulated environments
//! (`/v1/approvals`), decided by a second token.

use serde_json::{Value, json};

use super::api::{Api, failure};

/// Exit 0 done, 1 refused (decided already, expired, the approver is the proposer, outside the
/// token's scope, the change conflicts), 3 error.
pub const DONE: i32 = 0;
pub const REFUSED: i32 = 1;
pub const ERROR: i32 = 3;

pub async fn list(server: &str, token: Option<&str>, all: bool, json: bool) -> i32 {
    let answer = async {
        let api = Api::new(server, token)?;
        match api.get(&["v1", "approvals"], &[("state", (!all).then_some("pending"))]).await? {
            (200, body) => Ok(body),
            (status, body) => Err(failure(status, &body)),
        }
    };
    match answer.await {
        Ok(body) if json => {
            println!("{body}");
            DONE
        }
        Ok(body) => {
            print!("{}", render(&body));
            DONE
        }
        Err(e) => {
            eprintln!("approvals list: {e}");
            ERROR
        }
    }
}

/// The human-readable list.
pub fn render(body: &Value) -> String {
    let proposals = body["proposals"].as_array().cloned().unwrap_or_default();
    if proposals.is_empty() {
        return "no proposals\n".into();
    }
    let mut out = format!("{:<5} {:<9} {:<8} {:<28} {:<12} {:<22} expires\n", "id", "state", "kind", "flag", "environment", "proposer");
    for p in proposals {
        let s = |k: &str| p[k].as_str().unwrap_or("-").to_owned();
        out.push_str(&format!(
            "{:<5} {:<9} {:<8} {:<28} {:<12} {:<22} {}\n",
            p["id"],
            s("state"),
            s("kind"),
            s("flag"),
            s("environment"),
            s("proposer"),
            s("expires")
        ));
        if let Some(reason) = p["reason"].as_str() {
            out.push_str(&format!("      reason: {reason}\n"));
        }
    }
    out
}

/// `approve` (`decision` = "approve") or `reject`.
pub async fn decide(server: &str, token: Option<&str>, id: i64, decision: &str, reason: Option<&str>, json: bool) -> i32 {
    let answer = async {
        let api = Api::new(server, token)?;
        api.post(&["v1", "approvals", &id.to_string(), decision], &json!({ "reason": reason })).await
    };
    match answer.await {
        Ok((200, body)) => {
            if json {
                println!("{body}");
            } else {
                let action = body["action"].as_i64().map(|a| format!(", action {a}")).unwrap_or_default();
                println!("proposal {id} {}{action}", body["state"].as_str().unwrap_or(""));
            }
            DONE
        }
        Ok((status @ (403 | 404 | 409), body)) => {
            eprintln!("approvals {decision} {id}: refused: {}", failure(status, &body));
            REFUSED
        }
        Ok((status, body)) => {
            eprintln!("approvals {decision} {id}: {}", failure(status, &body));
            ERROR
        }
        Err(e) => {
            eprintln!("approvals {decision} {id}: {e}");
            ERROR
        }
    }
}
