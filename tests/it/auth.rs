//! API access control over a real socket: 401 without a valid token, 403 with too small a
//! role, the token's name as the actor of what it does, open health routes, no secret audited.

use std::time::Duration;

use flagguard::api::auth::Role;
use flagguard::config::TokenConfig;
use serde_json::json;

use crate::support::*;

pub fn token(name: &str, role: Role, secret: &str) -> TokenConfig {
    TokenConfig { name: name.into(), role, token: secret.into(), flags: vec![], environments: vec![], teams: vec![] }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_gate_every_route_and_name_the_actor() {
    // SAFETY: only this test reads these variables.
    unsafe {
        std::env::set_var("FG_TEST_VIEWER", "viewer-secret-0123456789");
        std::env::set_var("FG_TEST_OPERATOR", "operator-secret-0123456789");
    }
    let flags = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Daemon::config(dir.path(), "rules: []\n", &flags);
    config.api.tokens = vec![token("grafana", Role::Viewer, "${FG_TEST_VIEWER}"), token("alice", Role::Operator, "${FG_TEST_OPERATOR}")];
    std::fs::write(dir.path().join("tokens"), "# role name token\nadmin root admin-secret-0123456789\n").unwrap();
    config.api.tokens_file = Some(dir.path().join("tokens"));
    let daemon = Daemon::start(config, dir).await;
    let http = flagguard::app::http_client(Duration::from_secs(5), None).unwrap();
    let base = format!("http://{}", daemon.addrs.api);
    let call = |method: reqwest::Method, path: &str, token: Option<&str>| {
        let mut r = http.request(method, format!("{base}{path}")).json(&json!({ "actuator": "flags", "environment": "production", "reason": "INC-9" }));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let status = |r: reqwest::Response| r.status().as_u16();
    use reqwest::Method as M;
    assert_eq!(status(call(M::GET, "/healthz", None).await.unwrap()), 200, "health stays open");
    assert_eq!(status(call(M::GET, "/metrics", None).await.unwrap()), 200);
    let denied = call(M::GET, "/v1/actions", None).await.unwrap();
    assert_eq!(denied.status().as_u16(), 401);
    assert_eq!(denied.headers()["www-authenticate"], "Bearer");
    assert_eq!(status(call(M::GET, "/v1/actions", Some("not-a-token-at-all")).await.unwrap()), 401);
    assert_eq!(status(call(M::GET, "/v1/actions", Some("viewer-secret-0123456789")).await.unwrap()), 200);
    assert_eq!(status(call(M::POST, "/v1/flags/f/kill", Some("viewer-secret-0123456789")).await.unwrap()), 403, "a viewer cannot kill");
    assert_eq!(status(call(M::POST, "/v1/rules/reload", Some("operator-secret-0123456789")).await.unwrap()), 403, "an operator cannot reload rules");
    assert_eq!(status(call(M::POST, "/v1/rules/reload", Some("admin-secret-0123456789")).await.unwrap()), 200);
    let killed = call(M::POST, "/v1/flags/f/kill", Some("operator-secret-0123456789")).await.unwrap();
    assert_eq!(killed.status().as_u16(), 202);
    let decided = &daemon.store.audit_log(10, None, Some("kill_decided")).unwrap()[0];
    assert_eq!(decided.actor, "token:alice", "the token's name is the actor, whatever the body claims");
    let reloaded = &daemon.store.audit_log(10, None, Some("rules_reloaded")).unwrap()[0];
    assert_eq!(reloaded.actor, "token:root");
    let all = serde_json::to_string(&daemon.store.audit_log(1000, None, None).unwrap()).unwrap();
    assert!(!all.contains("secret-0123456789"), "a token reached the audit log");
    daemon.stop().await;
}
