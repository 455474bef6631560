//! The kill and restore paths under the faults the outside review found them wrong in
//! (`shared/reference/kill-path-review.md`): a success whose answer was lost, a second kill
//! of a killed flag, a read-back that fails after the call, a store write that fails in the
//! middle of an outcome, a restart while a kill is held. Each test names its finding.

use std::time::Duration;

use flagguard::act::launchdarkly::LaunchDarklyConfig;
use flagguard::act::webhook::ReadBackConfig;
use flagguard::act::webhook::WebhookConfig;
use flagguard::config::{ActuatorConfig, VerifyConfig};
use serde_json::json;

use crate::contract::{Fault, FaultProxy, FlagsmithStub, LdStub, daemon_with, manual_kill, settled, state};
use crate::support::*;

/// Finding 1(a): LaunchDarkly applies the kill but its answer is lost (504); the retry finds
/// the flag off. The restore must still turn it on (it used to save "off" and do nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_whose_answer_was_lost_still_restores_the_flag() {
    let ld = LdStub::start().await;
    ld.create("lost");
    // GET (state before the kill, stored), GET (the kill's own read), PATCH: applied, answer lost.
    let proxy = FaultProxy::start(&format!("http://{}", ld.addr), vec![Fault::Pass, Fault::Pass, Fault::AppliedThen(504)]).await;
    let (daemon, _) = daemon_with("ld", ActuatorConfig::Launchdarkly(LaunchDarklyConfig { url: proxy.url(), ..ld.config() }), "rules: []\n", |_| {}).await;
    let id = manual_kill(&daemon, "ld", "lost", None).await;
    let row = settled(&daemon, id).await;
    assert_eq!((row.state.as_str(), row.attempts), ("confirmed", 2), "{:?}", row.last_error);
    assert!(!ld.on("lost", "production"));
    assert_eq!(row.result.as_ref().unwrap()["before"]["on"], true, "the state before the first call is what is saved");
    let (status, body) = api(&daemon, &format!("/v1/actions/{id}/restore"), json!({ "reason": "fixed" })).await;
    assert_eq!(status, 202, "{body}");
    wait_until("the restore", Duration::from_secs(20), || state(&daemon, id).state == "restored").await;
    assert!(ld.on("lost", "production"), "the restore turned the flag back on");
    daemon.stop().await;
}

/// Finding 1(c): a second kill of a killed target (an operator after a rule, a re-fired
/// alert) saves the state before the first kill, and a restore of it returns there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_kill_of_a_killed_flag_restores_to_the_state_before_the_first() {
    let ld = LdStub::start().await;
    ld.create("twice");
    let (daemon, _) = daemon_with("ld", ActuatorConfig::Launchdarkly(ld.config()), "rules: []\n", |_| {}).await;
    let first = manual_kill(&daemon, "ld", "twice", None).await;
    assert_eq!(settled(&daemon, first).await.state, "confirmed");
    let second = manual_kill(&daemon, "ld", "twice", None).await;
    let row = settled(&daemon, second).await;
    assert_eq!(row.state, "confirmed");
    assert_eq!(row.result.as_ref().unwrap()["before"]["on"], true, "inherited from the first kill");
    let (status, body) = api(&daemon, "/v1/flags/twice/restore", json!({ "environment": "production", "reason": "fixed" })).await;
    assert_eq!(status, 202, "{body}");
    wait_until("both kills restored", Duration::from_secs(20), || state(&daemon, first).state == "restored" && state(&daemon, second).state == "restored")
        .await;
    assert!(ld.on("twice", "production"));
    daemon.stop().await;
}

/// Finding 1(a) on Flagsmith (classic API): the same lost answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flagsmith_kill_whose_answer_was_lost_still_restores() {
    let fs = FlagsmithStub::start().await;
    fs.create("lost");
    let proxy = FaultProxy::start(&format!("http://{}", fs.addr), vec![Fault::Pass, Fault::Pass, Fault::AppliedThen(504)]).await;
    let config = flagguard::act::flagsmith::FlagsmithConfig { url: proxy.url(), ..fs.config("env-v1", flagguard::act::flagsmith::FlagsmithApi::Classic) };
    let (daemon, _) = daemon_with("fs", ActuatorConfig::Flagsmith(config), "rules: []\n", |_| {}).await;
    let id = manual_kill(&daemon, "fs", "lost", None).await;
    let row = settled(&daemon, id).await;
    assert_eq!((row.state.as_str(), row.attempts), ("confirmed", 2), "{:?}", row.last_error);
    assert!(!fs.enabled("env-v1", "lost"));
    let (status, _) = api(&daemon, &format!("/v1/actions/{id}/restore"), json!({ "reason": "fixed" })).await;
    assert_eq!(status, 202);
    wait_until("the restore", Duration::from_secs(20), || state(&daemon, id).state == "restored").await;
    assert!(fs.enabled("env-v1", "lost"));
    daemon.stop().await;
}

/// A webhook with a restore body whose read-back path is `read_back_path`.
fn hook(flags: &FlagServer, read_back_path: &str) -> WebhookConfig {
    WebhookConfig {
        body: Some(r#"{"enabled": false}"#.into()),
        restore_body: Some(r#"{"enabled": true}"#.into()),
        read_back: Some(ReadBackConfig {
            method: "GET".into(),
            url: format!("http://{}{read_back_path}", flags.addr),
            pointer: "/enabled".into(),
            killed_value: json!(false),
            rollout_pointer: None,
        }),
        ..WebhookConfig::to(&flags.url())
    }
}

/// Finding 6: the call succeeded but the read-back 404s. The kill is `sent` (not "never
/// reached the flag system"): its state is saved, a restore is accepted, and the rollout
/// guard sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_whose_read_back_fails_is_sent_and_still_held_and_restorable() {
    let flags = FlagServer::start().await;
    let (daemon, _) = daemon_with("hook", ActuatorConfig::Webhook(hook(&flags, "/missing/{flag}")), "rules: []\n", |c| {
        c.act.max_attempts = 2;
    })
    .await;
    let id = manual_kill(&daemon, "hook", "rb", None).await;
    let row = settled(&daemon, id).await;
    assert_eq!(row.state, "sent", "{:?}", row.last_error);
    assert!(row.result.is_some(), "what the call applied is kept");
    let (status, body) =
        api(&daemon, "/v1/flags/rb/rollout", json!({ "actuator": "hook", "environment": "production", "percent": 50, "reason": "step" })).await;
    assert_eq!(status, 409, "the flag is killed: {body}");
    let (status, body) = api(&daemon, &format!("/v1/actions/{id}/restore"), json!({ "reason": "fixed" })).await;
    assert_eq!(status, 202, "{body}");
    daemon.stop().await;
}

/// Finding 11(a): the primary escalates (403) while the store refuses the fallback's row.
/// The escalation and its fallback are one write, so the kill stays pending, is tried again,
/// and once the store accepts it the fallback is queued — never lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_refused_by_the_store_is_not_lost() {
    let primary = FlagServer::start().await;
    primary.status.store(403, std::sync::atomic::Ordering::SeqCst);
    let backup = FlagServer::start().await;
    let verify = VerifyConfig { fallback: Some("backup".into()), ..VerifyConfig::default() };
    let (daemon, _) = daemon_with("primary", ActuatorConfig::Webhook(WebhookConfig { verify, ..hook(&primary, "/v1/flags/{flag}") }), "rules: []\n", |c| {
        c.actuators.insert("backup".into(), ActuatorConfig::Webhook(hook(&backup, "/v1/flags/{flag}")));
    })
    .await;
    let db = daemon.db();
    db.execute_batch(
        "CREATE TRIGGER no_fallback BEFORE INSERT ON outbox WHEN NEW.request LIKE '%\"actuator\":\"backup\"%' BEGIN SELECT RAISE(FAIL, 'injected'); END",
    )
    .unwrap();
    let id = manual_kill(&daemon, "primary", "fb", None).await;
    wait_until("the primary to be tried twice", Duration::from_secs(20), || primary.kill_calls().len() >= 2).await;
    assert_eq!(state(&daemon, id).state, "pending", "not escalated without its fallback");
    db.execute_batch("DROP TRIGGER no_fallback").unwrap();
    wait_until("the escalation", Duration::from_secs(20), || state(&daemon, id).state == "escalated").await;
    wait_until("the fallback kill", Duration::from_secs(20), || !backup.kill_calls().is_empty()).await;
    assert_eq!(daemon.audit_kinds().iter().filter(|k| *k == "kill_fallback").count(), 1, "queued once");
    daemon.stop().await;
}

/// Finding 11(b): the restore is confirmed but the store refuses to mark the kill `restored`.
/// One write for both: the restore stays pending and is tried again; the kill ends
/// `restored`, never `overridden` (the drift checker would call flagguard's restore a human).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_whose_bookkeeping_fails_is_finished_later_never_called_drift() {
    let ld = LdStub::start().await;
    ld.create("bk");
    let mut config = ld.config();
    config.verify.drift_interval = Duration::from_secs(1);
    let (daemon, _) = daemon_with("ld", ActuatorConfig::Launchdarkly(config), "rules: []\n", |_| {}).await;
    let id = manual_kill(&daemon, "ld", "bk", None).await;
    assert_eq!(settled(&daemon, id).await.state, "confirmed");
    let db = daemon.db();
    db.execute_batch("CREATE TRIGGER no_restored BEFORE UPDATE OF state ON outbox WHEN NEW.state = 'restored' BEGIN SELECT RAISE(FAIL, 'injected'); END")
        .unwrap();
    let (status, body) = api(&daemon, &format!("/v1/actions/{id}/restore"), json!({ "reason": "fixed" })).await;
    assert_eq!(status, 202, "{body}");
    let restore = body["action"].as_i64().unwrap();
    let turned_on = || ld.log.lock().unwrap().iter().filter(|c| c.method == "PATCH" && c.body["instructions"][0]["kind"] == "turnFlagOn").count();
    wait_until("the restore call to be made twice", Duration::from_secs(20), || turned_on() >= 2).await;
    assert!(ld.on("bk", "production"));
    assert_eq!(state(&daemon, restore).state, "pending");
    assert_eq!(state(&daemon, id).state, "confirmed", "not overridden while flagguard's own restore is pending");
    db.execute_batch("DROP TRIGGER no_restored").unwrap();
    wait_until("the kill restored", Duration::from_secs(20), || state(&daemon, id).state == "restored").await;
    assert_eq!(state(&daemon, restore).state, "confirmed");
    assert!(!daemon.audit_kinds().contains(&"kill_overridden".to_owned()));
    daemon.stop().await;
}

/// Finding 13: a kill held by a pause re-arms when the pause is lifted, also after a restart
/// in between (the held slice used to live in memory only, so it waited out its cooldown).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_kill_re_arms_after_a_restart_when_the_pause_is_lifted() {
    let rules = "rules:\n  - name: held\n    flag: held-f\n    treatment: \"on\"\n    control: \"off\"\n    where: { service: payments, environment: production }\n    when: [ { error_rate: { above: 0.1 } } ]\n    window: 1m\n    min_samples: 30\n    action: { kill: flags }\n    mode: enforce\n";
    let flags = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = Daemon::config(dir.path(), rules, &flags);
    let daemon = Daemon::start(config.clone(), dir).await;
    let (status, _) = api(&daemon, "/v1/controls/pause", json!({ "reason": "failover" })).await;
    assert_eq!(status, 200);
    let traffic = Traffic::start(&daemon, "held-f");
    wait_until("the held kill", Duration::from_secs(30), || daemon.audit_kinds().contains(&"kill_held".to_owned())).await;
    traffic.stop().await;
    let dir = daemon.stop_keeping_data().await;
    let daemon = Daemon::start(config, dir).await;
    let (status, _) = api(&daemon, "/v1/controls/resume", json!({ "reason": "done" })).await;
    assert_eq!(status, 200);
    let traffic = Traffic::start(&daemon, "held-f");
    wait_until("the kill after the resume", Duration::from_secs(30), || daemon.audit_kinds().contains(&"kill_decided".to_owned())).await;
    traffic.stop().await;
    wait_until("the kill call", Duration::from_secs(20), || !flags.kill_calls().is_empty()).await;
    daemon.stop().await;
}

/// Bad traffic for `flag` until stopped: half `on` with a quarter of payments failing.
struct Traffic {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(daemon: &Daemon, flag: &str) -> Traffic {
        use flagguard::cli::traffic::{Request, build};
        use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
        let stop = tokio_util::sync::CancellationToken::new();
        let (grpc, flag, halt) = (daemon.addrs.grpc, flag.to_owned(), stop.clone());
        let task = tokio::spawn(async move {
            let mut client = TraceServiceClient::connect(format!("http://{grpc}")).await.unwrap();
            while !halt.is_cancelled() {
                let requests: Vec<Request> = (0..40)
                    .map(|i| Request { user: i, variant: if i % 2 == 0 { "on" } else { "off" }.into(), region: "eu".into(), payments_error: i % 4 == 0 })
                    .collect();
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
                let export = build(&flag, "production", &requests, now, &mut rand::rng());
                client.export(export).await.unwrap();
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        Traffic { stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

/// Review S2: a segment override still serving the flag makes an environment-level Flagsmith
/// kill no kill there; it must not read `confirmed` (against the contract stub, which lists
/// segment overrides as feature states as Flagsmith does; not checked against a real Flagsmith).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flagsmith_kill_with_an_enabled_segment_override_is_not_confirmed() {
    let fs = FlagsmithStub::start().await;
    fs.create("seg");
    fs.segments.lock().unwrap().insert(("env-v1".into(), "seg".into(), 456), true);
    let (daemon, _) = daemon_with("fs", ActuatorConfig::Flagsmith(fs.config("env-v1", flagguard::act::flagsmith::FlagsmithApi::Classic)), "rules: []\n", |c| {
        c.act.max_attempts = 2;
    })
    .await;
    let row = settled(&daemon, manual_kill(&daemon, "fs", "seg", None).await).await;
    assert_eq!(row.state, "escalated");
    assert!(row.last_error.unwrap().contains("still on"));
    assert!(!fs.enabled("env-v1", "seg"), "the default is off; the override still serves");
    daemon.stop().await;
}
