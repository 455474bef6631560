//! Record and replay: recorded fixtures of a healthy rollout and of a regression replay to
//! golden timelines, byte for byte; `serve --record` writes what `replay` reads.

use std::path::{Path, PathBuf};
use std::time::Duration;

use flagguard::cli::replay::replay;
use flagguard::cli::traffic::{Request, build};
use flagguard::config::ConfigFile;
use flagguard::ingest::record::{self, Record, Signal};
use flagguard::time::Timestamp;
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::support::*;

/// 2026-11-25T12:00:00Z, the fixtures' first arrival.
const T0: u64 = 1_795_608_000_000;
/// The regression fixture's incident starts 40 s in.
const INCIDENT_S: u64 = 40;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/replay")
}

/// 90 s of three-service traffic, 8 requests/s half on `checkout-v2=on`; with `regression`,
/// payments fails 40 % of the `on` requests from 40 s on.
fn fixture(regression: bool, seed: u64) -> Vec<Record> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..180u64)
        .map(|tick| {
            let at = T0 + tick * 500;
            let requests: Vec<Request> = (0..4)
                .map(|i| {
                    let user = tick * 4 + i;
                    let on = user % 2 == 0;
                    let failing = regression && on && tick * 500 >= INCIDENT_S * 1000 && rng.random_bool(0.4);
                    Request { user, variant: if on { "on" } else { "off" }.into(), region: "eu-west".into(), payments_error: failing }
                })
                .collect();
            Record {
                arrival: Timestamp(at),
                signal: Signal::Traces,
                protobuf: build("checkout-v2", "production", &requests, at * 1_000_000, &mut rng).encode_to_vec(),
            }
        })
        .collect()
}

fn golden(name: &str, incident: Option<Timestamp>) {
    let out = replay(&ConfigFile::default(), &dir().join("rules"), &[dir().join(format!("{name}.otlprec"))], incident).unwrap();
    let again = replay(&ConfigFile::default(), &dir().join("rules"), &[dir().join(format!("{name}.otlprec"))], incident).unwrap();
    assert_eq!(out, again, "same input, byte-identical output");
    let path = dir().join(format!("{name}.txt"));
    if std::env::var_os("FLAGGUARD_BLESS").is_some() {
        std::fs::write(&path, &out).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(out, want, "replay of {name} differs from {} (FLAGGUARD_BLESS=1 rewrites it after review)", path.display());
}

#[test]
fn a_healthy_rollout_replays_to_no_kill() {
    golden("healthy", None);
    let text = std::fs::read_to_string(dir().join("healthy.txt")).unwrap();
    assert!(text.contains("-> healthy") && text.contains(", 0 kills"), "{text}");
}

#[test]
fn a_regression_replays_to_a_kill_with_its_detection_delay() {
    golden("regression", Some(Timestamp(T0 + INCIDENT_S * 1000)));
    let text = std::fs::read_to_string(dir().join("regression.txt")).unwrap();
    assert!(text.contains("WOULD KILL via flags") && text.contains("after the incident start"), "{text}");
}

/// Regenerates the recorded fixtures (deterministic: seeded).
#[test]
#[ignore = "manual: rewrites tests/fixtures/replay/*.otlprec"]
fn regenerate_replay_fixtures() {
    record::write_file(&dir().join("healthy.otlprec"), &fixture(false, 7)).unwrap();
    record::write_file(&dir().join("regression.otlprec"), &fixture(true, 8)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_records_what_replay_reads() {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    let server = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let recordings = dir.path().join("recordings");
    let rules = "rules:\n  - name: rec\n    flag: rec-flag\n    treatment: \"on\"\n    control: \"off\"\n    where: { service: payments }\n    when: [ { error_rate: { above: 0.1 } } ]\n    window: 1m\n    min_samples: 20\n    action: { kill: flags }\n    mode: enforce\n";
    let mut config = Daemon::config(dir.path(), rules, &server);
    config.record.dir = Some(recordings.clone());
    let rules_dir = dir.path().join("rules");
    let daemon = Daemon::start(config, dir).await;
    let mut client = TraceServiceClient::connect(format!("http://{}", daemon.addrs.grpc)).await.unwrap();
    let requests: Vec<Request> =
        (0..100).map(|i| Request { user: i, variant: if i % 2 == 0 { "on" } else { "off" }.into(), region: "eu".into(), payments_error: i % 4 == 0 }).collect();
    client.export(build("rec-flag", "production", &requests, 1_700_000_000_000_000_000, &mut rand::rng())).await.unwrap();
    wait_until("the live kill", Duration::from_secs(10), || !server.kill_calls().is_empty()).await;
    let files = || -> Vec<PathBuf> { std::fs::read_dir(&recordings).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default() };
    wait_until("the recording", Duration::from_secs(10), || files().iter().any(|p| record::read(std::slice::from_ref(p)).is_ok_and(|r| !r.is_empty()))).await;
    let out = replay(&ConfigFile::default(), Path::new(&rules_dir), &files(), None).unwrap();
    assert!(out.contains("rule rec flag rec-flag WOULD KILL via flags: error_rate > 0.1"), "{out}");
    daemon.stop().await;
}
