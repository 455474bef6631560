//! Running it safely, over real sockets: operator controls (pause, deny list, silences) hold
//! automatic kills but never a human's; OTLP bearer tokens on both transports; TLS with client
//! certificates (mTLS) and certificate reload without a restart; cross-origin mutations and
//! DNS-rebinding hosts refused.

use std::path::Path;
use std::time::Duration;

use flagguard::cli::traffic::{Request, build};
use flagguard::tls::TlsFiles;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use serde_json::json;

use crate::support::*;

fn rule(flag: &str) -> String {
    format!(
        "rules:\n  - name: {flag}\n    flag: {flag}\n    treatment: \"on\"\n    control: \"off\"\n    where: {{ service: payments }}\n    when: [ {{ error_rate: {{ above: 0.1 }} }} ]\n    window: 1m\n    min_samples: 30\n    action: {{ kill: flags }}\n    mode: enforce\n"
    )
}

fn regression_request(flag: &str) -> opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
    let requests: Vec<Request> =
        (0..200).map(|i| Request { user: i, variant: if i % 2 == 0 { "on" } else { "off" }.into(), region: "eu".into(), payments_error: i % 4 == 0 }).collect();
    build(flag, "production", &requests, 1_700_000_000_000_000_000, &mut rand::rng())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controls_hold_automatic_kills_but_not_a_humans() {
    let server = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(Daemon::config(dir.path(), &rule("held"), &server), dir).await;

    // A silence needs a duration, a pause a reason.
    assert_eq!(api(&daemon, "/v1/rules/held/silence", json!({ "reason": "noisy" })).await.0, 400);
    assert_eq!(api(&daemon, "/v1/controls/pause", json!({})).await.0, 400);
    let (status, paused) = api(&daemon, "/v1/controls/pause", json!({ "reason": "database failover", "for": "10m", "actor": "bob" })).await;
    assert_eq!(status, 200, "{paused}");
    assert_eq!(paused["paused"], true);

    let mut client = TraceServiceClient::connect(format!("http://{}", daemon.addrs.grpc)).await.unwrap();
    client.export(regression_request("held")).await.unwrap();
    wait_until("the held kill", Duration::from_secs(20), || daemon.audit_kinds().contains(&"kill_held".to_owned())).await;
    let held = daemon.store.audit_log(10, None, Some("kill_held")).unwrap();
    let why = held[0].after.as_ref().unwrap()["held"].as_str().unwrap().to_owned();
    assert!(why.contains("paused") && why.contains("database failover"), "{why}");
    assert!(server.kill_calls().is_empty(), "nothing reached the flag system while paused");
    assert!(daemon.store.actions(10).unwrap().iter().all(|a| a.kind != "kill"), "no kill in the outbox");
    wait_until("the [held] notification", Duration::from_secs(10), || {
        server.calls().iter().any(|c| c.path == "/notify" && c.body["text"].as_str().is_some_and(|t| t.starts_with("[held]")))
    })
    .await;

    // The pause is audited with who, before and after; resume clears it.
    let audit = daemon.store.audit_log(10, None, Some("automation_paused")).unwrap();
    assert_eq!(audit[0].actor, "bob");
    assert!(audit[0].before.as_ref().unwrap()["pause"].is_null() && audit[0].after.as_ref().unwrap()["pause"]["reason"] == "database failover");
    assert_eq!(api(&daemon, "/v1/controls/resume", json!({})).await.0, 200);
    assert_eq!(api(&daemon, "/v1/controls/resume", json!({})).await.0, 409, "not paused any more");
    // The regression is still there: once resumed, the held slice is re-armed and killed at
    // once, not a cooldown (15 min) later.
    wait_until("the kill after resume", Duration::from_secs(20), || server.kill_calls().len() == 1).await;

    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_flag_is_held_but_an_operators_kill_goes_out() {
    let server = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(Daemon::config(dir.path(), &rule("denied"), &server), dir).await;
    let http = flagguard::app::http_client(Duration::from_secs(5), None).unwrap();
    let listed = http
        .put(format!("http://{}/v1/controls/flags/denied", daemon.addrs.api))
        .json(&json!({ "list": "deny", "reason": "payments core: humans only" }))
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status().as_u16(), 200);
    let mut client = TraceServiceClient::connect(format!("http://{}", daemon.addrs.grpc)).await.unwrap();
    client.export(regression_request("denied")).await.unwrap();
    wait_until("the held kill", Duration::from_secs(20), || daemon.audit_kinds().contains(&"kill_held".to_owned())).await;
    let why = daemon.store.audit_log(1, None, Some("kill_held")).unwrap()[0].after.clone().unwrap()["held"].as_str().unwrap().to_owned();
    assert!(why.contains("deny list") && why.contains("humans only"), "{why}");
    assert!(server.kill_calls().is_empty());
    let (status, body) = api(&daemon, "/v1/flags/denied/kill", json!({ "actuator": "flags", "environment": "production", "reason": "INC-7" })).await;
    assert_eq!(status, 202, "{body}");
    wait_until("the operator's kill", Duration::from_secs(10), || server.kill_calls().len() == 1).await;
    wait_until("the kill's completion", Duration::from_secs(10), || {
        daemon.store.actions(10).unwrap().iter().any(|a| a.kind == "kill" && matches!(a.state.as_str(), "sent" | "confirmed"))
    })
    .await;
    // Restoring by flag finds that kill; a second restore has nothing left to restore.
    let (status, body) = api(&daemon, "/v1/flags/denied/restore", json!({ "reason": "INC-7 resolved" })).await;
    assert_eq!(status, 202, "{body}");
    wait_until("the restore", Duration::from_secs(10), || daemon.audit_kinds().iter().any(|k| k == "restore_escalated")).await;
    // It is the operator's kill that is being restored (this webhook has no restore template,
    // so the restore is escalated to a human, as documented).
    let kill_id = daemon.store.actions(10).unwrap().iter().find(|a| a.kind == "kill").unwrap().id;
    let restore = &daemon.store.audit_log(1, None, Some("restore_decided")).unwrap()[0];
    assert_eq!(restore.after.as_ref().unwrap()["restores"], kill_id);
    assert_eq!(restore.target.as_deref(), Some("flags|denied|production|"));
    assert_eq!(api(&daemon, "/v1/flags/nothing-killed/restore", json!({})).await.0, 404);
    let controls: serde_json::Value = http.get(format!("http://{}/v1/controls", daemon.addrs.api)).send().await.unwrap().json().await.unwrap();
    assert_eq!(controls["paused"], false);
    assert_eq!(controls["controls"]["flags"]["denied"]["list"], "deny");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_bearer_tokens_guard_both_transports() {
    // SAFETY: only this test reads this variable.
    unsafe { std::env::set_var("FG_TEST_OTLP_TOKEN", "otlp-secret-0123456789") };
    let server = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Daemon::config(dir.path(), &rule("authed"), &server);
    config.otlp.bearer_tokens = vec!["${FG_TEST_OTLP_TOKEN}".into()];
    let daemon = Daemon::start(config, dir).await;

    let mut client = TraceServiceClient::connect(format!("http://{}", daemon.addrs.grpc)).await.unwrap();
    let refused = client.export(regression_request("authed")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let mut request = tonic::Request::new(regression_request("authed"));
    request.metadata_mut().insert("authorization", "Bearer otlp-secret-0123456789".parse().unwrap());
    client.export(request).await.expect("accepted with the token");

    let http = flagguard::app::http_client(Duration::from_secs(5), None).unwrap();
    let url = format!("http://{}/v1/traces", daemon.addrs.http);
    let body = regression_request("authed").encode_to_vec();
    let post = |token: Option<&str>| {
        let mut r = http.post(&url).header("content-type", "application/x-protobuf").body(body.clone());
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    assert_eq!(post(None).await.unwrap().status().as_u16(), 401);
    assert_eq!(post(Some("otlp-secret-wrong-0000")).await.unwrap().status().as_u16(), 401);
    assert_eq!(post(Some("otlp-secret-0123456789")).await.unwrap().status().as_u16(), 200);
    wait_until("the authenticated telemetry in the windows", Duration::from_secs(10), || daemon.requests("authed", "on", "payments").0 > 0).await;

    let metrics = http.get(format!("http://{}/metrics", daemon.addrs.api)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l.contains("result=\"unauthenticated\"") && l.contains("transport=\"http\"") && l.ends_with(" 2")), "{metrics}");
    daemon.stop().await;
}

/// Review finding 16: refused OTLP/HTTP requests on one keep-alive connection (as real
/// exporters send them) each get their 401, and the next good request its 200 — the listener
/// used to drop the connection with the body unread (`hyper::Error(IncompleteMessage)`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_otlp_requests_on_a_kept_alive_connection_all_get_their_answer() {
    // SAFETY: only this test reads this variable.
    unsafe { std::env::set_var("FG_TEST_OTLP_TOKEN_KEEPALIVE", "otlp-keepalive-0123456789") };
    let server = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Daemon::config(dir.path(), &rule("kept"), &server);
    config.otlp.bearer_tokens = vec!["${FG_TEST_OTLP_TOKEN_KEEPALIVE}".into()];
    let daemon = Daemon::start(config, dir).await;
    // One client, one pool: connections are reused whenever the server allows it.
    let http = flagguard::app::http_client(Duration::from_secs(5), None).unwrap();
    let url = format!("http://{}/v1/traces", daemon.addrs.http);
    let body = regression_request("kept").encode_to_vec();
    let (mut refused, mut accepted) = (0, 0);
    for round in 0..50 {
        for token in [None, Some("otlp-wrong-000000000000"), Some("otlp-keepalive-0123456789")] {
            let mut r = http.post(&url).header("content-type", "application/x-protobuf").body(body.clone());
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            let status = r.send().await.unwrap_or_else(|e| panic!("round {round}, token {token:?}: no answer: {e:?}")).status().as_u16();
            match token {
                Some("otlp-keepalive-0123456789") => {
                    assert_eq!(status, 200);
                    accepted += 1;
                }
                _ => {
                    assert_eq!(status, 401);
                    refused += 1;
                }
            }
        }
    }
    println!("keep-alive: {refused} refused and {accepted} accepted requests, every one answered");
    daemon.stop().await;
}

/// A CA and a certificate it signed for `localhost` / 127.0.0.1, as PEM (ca, cert, key).
fn issue(ca_name: &str, client: bool) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, ca_name);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params.extended_key_usages = vec![if client { ExtendedKeyUsagePurpose::ClientAuth } else { ExtendedKeyUsagePurpose::ServerAuth }];
    let cert = params.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

fn write_server_cert(dir: &Path, (ca, cert, key): &(String, String, String)) {
    // Key first, then the certificate: the reload waits for a set that loads.
    std::fs::write(dir.join("server.key"), key).unwrap();
    std::fs::write(dir.join("server.crt"), cert).unwrap();
    std::fs::write(dir.join("ca.crt"), ca).unwrap();
}

fn https_client(ca_pem: &str, identity: Option<&(String, String, String)>) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(5)).tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()]);
    if let Some((_, cert, key)) = identity {
        builder = builder.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates_and_reload_without_restart() {
    let server = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let tls_dir = dir.path().join("tls");
    std::fs::create_dir_all(&tls_dir).unwrap();
    let first = issue("first CA", false);
    write_server_cert(&tls_dir, &first);
    let client_id = issue("client CA", true);
    std::fs::write(tls_dir.join("clients.crt"), &client_id.0).unwrap();
    let mut config = Daemon::config(dir.path(), &rule("tls"), &server);
    let files = TlsFiles {
        cert: tls_dir.join("server.crt"),
        key: tls_dir.join("server.key"),
        client_ca: Some(tls_dir.join("clients.crt")),
        reload_interval: Duration::from_millis(100),
    };
    config.otlp.tls = Some(files.clone());
    config.api.tls = Some(TlsFiles { client_ca: None, ..files });
    let daemon = Daemon::start(config, dir).await;

    // OTLP/HTTP: a client certificate from the client CA is required.
    let body = regression_request("tls").encode_to_vec();
    let url = format!("https://localhost:{}/v1/traces", daemon.addrs.http.port());
    let with_cert = https_client(&first.0, Some(&client_id));
    let sent = with_cert.post(&url).header("content-type", "application/x-protobuf").body(body.clone()).send().await.unwrap();
    assert_eq!(sent.status().as_u16(), 200);
    let without = https_client(&first.0, None).post(&url).header("content-type", "application/x-protobuf").body(body.clone()).send().await;
    assert!(without.is_err(), "no client certificate: the handshake fails");
    let stranger = issue("some other CA", true);
    let wrong = https_client(&first.0, Some(&stranger)).post(&url).header("content-type", "application/x-protobuf").body(body.clone()).send().await;
    assert!(wrong.is_err(), "a client certificate from another CA is refused");
    let plain =
        flagguard::app::http_client(Duration::from_secs(5), None).unwrap().post(format!("http://{}/v1/traces", daemon.addrs.http)).body(body).send().await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success(), "no plaintext on a TLS listener");

    // OTLP/gRPC over TLS with the same client certificate.
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&first.0))
        .identity(tonic::transport::Identity::from_pem(&client_id.1, &client_id.2))
        .domain_name("localhost");
    let channel = tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{}", daemon.addrs.grpc.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("gRPC over mTLS connects");
    TraceServiceClient::new(channel).export(regression_request("tls")).await.expect("gRPC export over mTLS");
    wait_until("telemetry over TLS in the windows", Duration::from_secs(10), || daemon.requests("tls", "on", "payments").0 >= 200).await;

    // The API over TLS (no client certificate needed there).
    let health = https_client(&first.0, None).get(format!("https://localhost:{}/healthz", daemon.addrs.api.port())).send().await.unwrap();
    assert_eq!(health.text().await.unwrap(), "ok");

    // Replace the certificate in place: new connections get it, without a restart.
    let second = issue("second CA", false);
    write_server_cert(&tls_dir, &second);
    let api_url = format!("https://localhost:{}/healthz", daemon.addrs.api.port());
    let trusting_second = https_client(&second.0, None);
    let mut reloaded = false;
    for _ in 0..100 {
        if trusting_second.get(&api_url).send().await.is_ok() {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reloaded, "the API never served the new certificate");
    assert!(https_client(&first.0, None).get(&api_url).send().await.is_err(), "the old certificate is gone");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_origin_mutations_and_rebinding_hosts_are_refused() {
    let server = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(Daemon::config(dir.path(), "rules: []\n", &server), dir).await;
    let http = flagguard::app::http_client(Duration::from_secs(5), None).unwrap();
    let base = format!("http://{}", daemon.addrs.api);
    let pause = |origin: Option<&str>| {
        let mut r = http.post(format!("{base}/v1/controls/pause")).json(&json!({ "reason": "x" }));
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send()
    };
    assert_eq!(pause(Some("http://evil.example")).await.unwrap().status().as_u16(), 403, "a page of another site");
    assert_eq!(pause(Some("null")).await.unwrap().status().as_u16(), 403, "an opaque origin");
    let no_cors = http.post(format!("{base}/v1/controls/pause")).header("sec-fetch-site", "cross-site").send().await.unwrap();
    assert_eq!(no_cors.status().as_u16(), 403, "a no-cors form post");
    let rebound = http.get(format!("{base}/v1/actions")).header("host", "evil.example").send().await.unwrap();
    assert_eq!(rebound.status().as_u16(), 403, "DNS rebinding: a foreign host name without tokens");
    assert_eq!(pause(Some(&base)).await.unwrap().status().as_u16(), 200, "the dashboard's own origin");
    assert_eq!(pause(None).await.unwrap().status().as_u16(), 200, "curl sends no Origin");
    daemon.stop().await;
}
