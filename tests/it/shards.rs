//! Scale-out: trace-ID shards streaming window deltas to evaluators (docs/cluster.md,
//! "Scale-out"), with real daemons on real sockets. A router in the test does what the
//! Collector's `loadbalancing` exporter does with `routing_key: traceID` (each span to the
//! shard its trace id hashes to), and a reference instance gets all of the traffic: the
//! ground truth the evaluators' merged windows must equal — after a bootstrap, a shard's
//! restart (a gap, never a double count), a shard added and one removed.

use std::time::Duration;

use flagguard::cli::traffic::{Request, build};
use flagguard::config::ConfigFile;
use flagguard::shard::{MergeConfig, ShardConfig};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;

use crate::support::*;

const RULE: &str = "rules:\n  - name: sharded\n    flag: checkout-shard\n    treatment: \"on\"\n    control: \"off\"\n    where: { service: payments }\n    when: [ { error_rate: { above: 0.1 } } ]\n    window: 10m\n    min_samples: 30\n    action: { kill: flags }\n    mode: enforce\n";

/// The shard a trace id routes to.
fn shard_of(trace_id: &[u8], n: usize) -> usize {
    let mut h = 0u64;
    for b in trace_id {
        h = h.wrapping_mul(0x100_0000_01b3) ^ u64::from(*b);
    }
    (h % n as u64) as usize
}

/// One request per shard, each span where its trace id routes.
fn route(request: &ExportTraceServiceRequest, n: usize) -> Vec<ExportTraceServiceRequest> {
    (0..n)
        .map(|i| {
            let mut part = request.clone();
            for rs in &mut part.resource_spans {
                for ss in &mut rs.scope_spans {
                    ss.spans.retain(|s| shard_of(&s.trace_id, n) == i);
                }
            }
            part
        })
        .collect()
}

fn traffic(requests: u64, error_every: u64) -> ExportTraceServiceRequest {
    let requests: Vec<Request> = (0..requests)
        .map(|i| Request {
            user: i,
            variant: if i % 2 == 0 { "on" } else { "off" }.into(),
            region: "eu".into(),
            payments_error: i % 2 == 0 && i % error_every == 0,
        })
        .collect();
    let now_ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    build("checkout-shard", "production", &requests, now_ns, &mut rand::rng())
}

async fn send(daemon: &Daemon, request: ExportTraceServiceRequest) {
    let mut client = TraceServiceClient::connect(format!("http://{}", daemon.addrs.grpc)).await.unwrap();
    client.export(request).await.unwrap();
}

/// Every series' and baseline's counts over 5 minutes (longer than the test), sorted: what the
/// evaluators must read as the reference.
fn counts(daemon: &Daemon) -> Vec<(String, String, String, String, u64, u64, u64)> {
    let snapshot = daemon.snapshot();
    let mut out: Vec<_> = snapshot
        .series
        .iter()
        .chain(&snapshot.unflagged)
        .map(|s| (s.flag.clone(), s.variant.clone(), s.service.clone(), s.region.clone(), s.last_5m.requests, s.last_5m.errors, s.last_5m.exposures))
        .collect();
    out.sort();
    out
}

fn shard_config(dir: &std::path::Path, server: &FlagServer, listen: &str) -> ConfigFile {
    let mut file = Daemon::config(dir, "rules: []\n", server);
    file.actuators.clear();
    file.act.notify_url = None;
    file.shard = Some(ShardConfig { stream_listen: listen.into(), token: None, buffer_bytes: 64 << 20 });
    file
}

fn evaluator_config(dir: &std::path::Path, server: &FlagServer, shards: &[&Daemon]) -> ConfigFile {
    let mut file = Daemon::config(dir, RULE, server);
    let shards = shards.iter().map(|s| format!("http://{}", s.addrs.stream.expect("a shard's stream address"))).collect();
    file.merge = Some(MergeConfig { shards, token: None, reconnect: Duration::from_millis(200) });
    file
}

async fn metric(daemon: &Daemon, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", daemon.addrs.api)).await.unwrap().text().await.unwrap();
    text.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

/// Waits until the reference has attributed `per_variant` requests of each variant to
/// payments (all the traffic sent so far: the traces are joined after `trace_idle`), then
/// until the evaluator's windows equal the reference's.
async fn same_counts(what: &str, evaluator: &Daemon, reference: &Daemon, per_variant: u64) {
    wait_until(&format!("the reference to count all the traffic before {what}"), Duration::from_secs(30), || {
        ["on", "off"].iter().all(|v| {
            reference.snapshot().series.iter().filter(|s| s.variant == *v && s.service == "payments").map(|s| s.last_5m.requests).sum::<u64>() == per_variant
        })
    })
    .await;
    let start = std::time::Instant::now();
    loop {
        let (e, r) = (counts(evaluator), counts(reference));
        if !r.is_empty() && e == r {
            return;
        }
        if start.elapsed() >= Duration::from_secs(30) {
            let status = reqwest::get(format!("http://{}/v1/cluster", evaluator.addrs.api)).await.unwrap().text().await.unwrap();
            let kinds = evaluator.audit_kinds();
            panic!("timed out waiting for {what}:\nevaluator {e:#?}\nreference {r:#?}\nevaluator status {status}\nevaluator audit {kinds:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_evaluators_read_and_kill_as_one_instance_through_bootstrap_restart_and_membership_changes() {
    let (server, reference_server, idle) = (FlagServer::start().await, FlagServer::start().await, FlagServer::start().await);
    let dirs: Vec<tempfile::TempDir> = (0..6).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut dirs = dirs.into_iter();
    let mut dir = || dirs.next().unwrap();
    let (d0, d1) = (dir(), dir());
    let shard0 = Daemon::start(shard_config(d0.path(), &idle, "127.0.0.1:0"), d0).await;
    let d = dir();
    let shard1_file = shard_config(d.path(), &idle, "127.0.0.1:0");
    let shard1 = Daemon::start(shard1_file.clone(), d).await;
    let reference = Daemon::start(Daemon::config(d1.path(), RULE, &reference_server), d1).await;
    let d = dir();
    let evaluator_file = evaluator_config(d.path(), &server, &[&shard0, &shard1]);
    let evaluator = Daemon::start(evaluator_file.clone(), d).await;

    // Healthy traffic: the merged windows equal the reference's.
    let healthy = traffic(300, 1_000_000);
    for (shard, part) in [&shard0, &shard1].into_iter().zip(route(&healthy, 2)) {
        send(shard, part).await;
    }
    send(&reference, healthy).await;
    same_counts("the evaluator's merged windows to equal the reference's", &evaluator, &reference, 150).await;
    assert!(server.kill_calls().is_empty(), "healthy: no kill");

    // An evaluator that joins now bootstraps from the shards' windows.
    let d = dir();
    let late = Daemon::start(evaluator_config(d.path(), &idle, &[&shard0, &shard1]), d).await;
    same_counts("a late evaluator to bootstrap to the reference's windows", &late, &reference, 150).await;
    late.stop().await;

    // Shard 1 restarts on its port: a new incarnation, a gap; it restores its own windows and
    // does not send them again, so nothing is counted twice.
    let stream = shard1.addrs.stream.unwrap();
    let d = shard1.stop_keeping_data().await;
    let mut restarted = shard1_file.clone();
    restarted.shard.as_mut().unwrap().stream_listen = stream.to_string();
    let shard1 = Daemon::start(restarted, d).await;
    let gaps_seen = async { metric(&evaluator, "flagguard_shard_gaps_total").await >= 1.0 };
    let mut gaps = gaps_seen.await;
    for _ in 0..200 {
        if gaps {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        gaps = metric(&evaluator, "flagguard_shard_gaps_total").await >= 1.0;
    }
    assert!(gaps, "the restart is counted as a gap");

    // A regression, routed across both shards: the evaluator kills, with full coverage since
    // the gap, and its windows still equal the reference's.
    let bad = traffic(200, 2);
    for (shard, part) in [&shard0, &shard1].into_iter().zip(route(&bad, 2)) {
        send(shard, part).await;
    }
    send(&reference, bad).await;
    same_counts("the windows to equal the reference's after the restart", &evaluator, &reference, 250).await;
    wait_until("the evaluator to kill", Duration::from_secs(20), || !server.kill_calls().is_empty()).await;
    wait_until("the reference to kill", Duration::from_secs(20), || !reference_server.kill_calls().is_empty()).await;
    let decided = evaluator.store.audit_log(10, None, Some("kill_decided")).unwrap();
    assert_eq!(decided.len(), 1);
    let coverage = &decided[0].evidence.as_ref().unwrap()["coverage"];
    assert_eq!(coverage["shards"].as_array().unwrap().len(), 2, "{coverage}");
    assert_eq!(coverage["complete"], false, "the decision record says coverage was reduced by the gap: {coverage}");
    assert!(coverage["shards"].as_array().unwrap().iter().any(|s| s["gaps"] == 1), "{coverage}");
    // The status (from the snapshot, published every 200 ms) catches up.
    let mut status = serde_json::Value::Null;
    for _ in 0..100 {
        status = reqwest::get(format!("http://{}/v1/cluster", evaluator.addrs.api)).await.unwrap().json().await.unwrap();
        let shards = status["scale_out"]["shards"].as_array().cloned().unwrap_or_default();
        if shards.len() == 2 && shards.iter().all(|s| s["connected"] == true) && shards.iter().any(|s| s["gaps"] == 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status["scale_out"]["role"], "evaluator", "{status}");
    assert_eq!(status["scale_out"]["complete"], false, "{status}");
    let shards = status["scale_out"]["shards"].as_array().unwrap();
    assert!(shards.iter().all(|s| s["connected"] == true) && shards.iter().any(|s| s["gaps"] == 1), "both streaming again, one gap: {status}");
    let shard_status: serde_json::Value = reqwest::get(format!("http://{}/v1/cluster", shard0.addrs.api)).await.unwrap().json().await.unwrap();
    assert_eq!(shard_status["scale_out"]["role"], "shard", "{shard_status}");

    // A shard added: the evaluator restarts with three (it resumes the two from its checkpoint
    // and bootstraps the new one); traffic over three shards still reads as the reference's.
    let d = dir();
    let shard2 = Daemon::start(shard_config(d.path(), &idle, "127.0.0.1:0"), d).await;
    let d = evaluator.stop_keeping_data().await;
    let mut three = evaluator_file.clone();
    three.merge.as_mut().unwrap().shards.push(format!("http://{}", shard2.addrs.stream.unwrap()));
    let evaluator = Daemon::start(three, d).await;
    same_counts("the restarted evaluator to resume to the reference's windows", &evaluator, &reference, 250).await;
    let more = traffic(150, 1_000_000);
    for (shard, part) in [&shard0, &shard1, &shard2].into_iter().zip(route(&more, 3)) {
        send(shard, part).await;
    }
    send(&reference, more).await;
    same_counts("three shards to read as the reference", &evaluator, &reference, 325).await;

    // A shard removed: the evaluator restarts with two again. The removed shard's data stays in
    // the windows (it ages out); traffic over the two remaining shards reads as the reference.
    let d = evaluator.stop_keeping_data().await;
    let evaluator = Daemon::start(evaluator_file, d).await;
    same_counts("the evaluator without the removed shard to resume to the reference's windows", &evaluator, &reference, 325).await;
    let last = traffic(100, 1_000_000);
    for (shard, part) in [&shard0, &shard1].into_iter().zip(route(&last, 2)) {
        send(shard, part).await;
    }
    send(&reference, last).await;
    same_counts("two shards, one removed, to read as the reference", &evaluator, &reference, 375).await;
    for daemon in [evaluator, shard0, shard1, shard2, reference] {
        daemon.stop().await;
    }
}

/// The shard → evaluator stream broken at varied moments (the connection reset while traffic
/// flows, held down for a varied time, then healed): every break resumes from the shard's
/// buffer, and the merged windows end exactly at the reference's — nothing lost, nothing
/// doubled. `FLAGGUARD_CLUSTER_RUNS=N` sets the number of breaks (default 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_breaks_at_varied_moments_resume_without_loss_or_double_count() {
    use rand::Rng;
    let runs: usize = std::env::var("FLAGGUARD_CLUSTER_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let (idle, reference_server) = (FlagServer::start().await, FlagServer::start().await);
    let (d0, d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let shard = Daemon::start(shard_config(d0.path(), &idle, "127.0.0.1:0"), d0).await;
    let proxy = crate::cluster::proxy::Proxy::start(shard.addrs.stream.unwrap()).await;
    let mut file = Daemon::config(d1.path(), RULE, &idle);
    file.merge = Some(MergeConfig { shards: vec![format!("http://{}", proxy.addr)], token: None, reconnect: Duration::from_millis(100) });
    let evaluator = Daemon::start(file, d1).await;
    let reference = Daemon::start(Daemon::config(d2.path(), RULE, &reference_server), d2).await;
    let mut rng = rand::rng();
    for run in 0..runs {
        let before = traffic(60, 1_000_000);
        send(&shard, before.clone()).await;
        send(&reference, before).await;
        // Break at a varied moment after the traffic: mid-frame, between frames, or after.
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..120))).await;
        proxy.reset();
        let during = traffic(40, 1_000_000);
        send(&shard, during.clone()).await;
        send(&reference, during).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..400))).await;
        proxy.restore();
        same_counts(&format!("run {run}: the evaluator to catch up after the break"), &evaluator, &reference, 50 * (run as u64 + 1)).await;
    }
    let gaps = metric(&evaluator, "flagguard_shard_gaps_total").await;
    let connections = proxy.accepted.load(std::sync::atomic::Ordering::SeqCst);
    println!("runs {runs}, stream breaks injected {runs}, connections {connections}, gaps {}, counts missed 0, counts doubled 0", gaps as u64);
    assert!(connections > runs, "every break was a reconnect ({connections} connections for {runs} breaks)");
    assert_eq!(gaps, 0.0, "the buffer covered every break: no gap");
    for daemon in [evaluator, shard, reference] {
        daemon.stop().await;
    }
}
