//! flagguard's own telemetry, through the real binary: off without an endpoint, exported over
//! OTLP/gRPC to a receiver when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (marked
//! `flagguard.self`), and refused when the endpoint is flagguard's own receiver.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;

use crate::support::*;

/// An OTLP trace receiver that keeps what it gets.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Capture {
    async fn export(&self, request: tonic::Request<ExportTraceServiceRequest>) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Capture {
    /// (span name, resource attributes as `key=value`) of everything received.
    fn spans(&self) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        for request in self.0.lock().unwrap().iter() {
            for rs in &request.resource_spans {
                let attrs: Vec<String> = rs
                    .resource
                    .iter()
                    .flat_map(|r| r.attributes.iter())
                    .map(|kv| {
                        let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                            Some(Value::StringValue(s)) => s.clone(),
                            Some(Value::BoolValue(b)) => b.to_string(),
                            other => format!("{other:?}"),
                        };
                        format!("{}={v}", kv.key)
                    })
                    .collect();
                for ss in &rs.scope_spans {
                    for span in &ss.spans {
                        out.push((span.name.clone(), attrs.clone()));
                    }
                }
            }
        }
        out
    }
}

fn config(dir: &std::path::Path, grpc: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    let path = dir.join("flagguard.toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = {:?}\nrules_dir = {:?}\n[otlp]\ngrpc_listen = {grpc:?}\nhttp_listen = \"127.0.0.1:0\"\n[api]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n",
            dir.join("data").display().to_string(),
            dir.join("rules").display().to_string()
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn its_own_spans_go_to_the_configured_endpoint_marked_as_its_own() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let capture = Capture::default();
    let server = capture.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(server))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_flagguard"))
        .args(["serve", "--config"])
        .arg(config(dir.path(), "127.0.0.1:0"))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "100000")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["message"] == "flagguard is running"
            {
                let _ = tx.send(v["api"].as_str().unwrap_or_default().to_owned());
            }
        }
    });
    let api_addr = rx.recv_timeout(Duration::from_secs(30)).expect("the daemon reports its addresses");
    let http = flagguard::app::http_client(Duration::from_secs(5), None).unwrap();
    let reloaded = http.post(format!("http://{api_addr}/v1/rules/reload")).send().await.unwrap();
    assert_eq!(reloaded.status().as_u16(), 200);
    wait_until("the reload span at the OTLP endpoint", Duration::from_secs(20), || capture.spans().iter().any(|(name, _)| name == "flagguard.rules.reload"))
        .await;
    let spans = capture.spans();
    let (_, resource) = spans.iter().find(|(name, _)| name == "flagguard.rules.reload").unwrap();
    assert!(resource.contains(&"flagguard.self=true".to_owned()), "{resource:?}");
    assert!(resource.contains(&"service.name=flagguard".to_owned()), "{resource:?}");
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_is_its_own_receiver_is_refused() {
    // A free port for flagguard's own gRPC receiver, and the same port as the OTLP endpoint.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_flagguard"))
        .args(["serve", "--config"])
        .arg(config(dir.path(), &format!("127.0.0.1:{port}")))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://localhost:{port}"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("own OTLP receiver"));
}

#[test]
fn its_own_telemetry_looped_back_is_not_a_cohort() {
    use flagguard::cli::traffic::{Request, build};
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
    let requests = vec![Request { user: 1, variant: "on".into(), region: "eu".into(), payments_error: true }];
    let mut request = build("loop", "production", &requests, 1_700_000_000_000_000_000, &mut rand::rng());
    let options = flagguard::ingest::ExtractOptions::default();
    assert!(!flagguard::ingest::otlp::convert_traces(&request, &options).batch.evaluations.is_empty());
    // A mark that is not the first occurrence of the key still counts (a Collector processor
    // may append it after an `insert` of false).
    for rs in &mut request.resource_spans {
        for own in [false, true] {
            rs.resource.as_mut().unwrap().attributes.push(KeyValue {
                key: "flagguard.self".into(),
                value: Some(AnyValue { value: Some(Value::BoolValue(own)) }),
                ..Default::default()
            });
        }
    }
    let converted = flagguard::ingest::otlp::convert_traces(&request, &options);
    assert!(converted.batch.evaluations.is_empty() && converted.batch.outcomes.is_empty());
    let wire = flagguard::ingest::otlp::convert_traces_wire(&prost::Message::encode_to_vec(&request), &options).unwrap();
    assert!(wire.batch.evaluations.is_empty() && wire.batch.outcomes.is_empty());
}
