//! OTLP receiver behaviour on bad input and overload: clear errors, nothing lost silently.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use flagguard::ingest::{ExtractOptions, Ingest};
use flagguard::telemetry::Metrics;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use prost::Message;
use tower::ServiceExt;

use crate::support::*;

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn request(traces: usize) -> ExportTraceServiceRequest {
    let requests: Vec<_> =
        (0..traces).map(|i| flagguard::cli::traffic::Request { user: i as u64, variant: "on".into(), region: "eu".into(), payments_error: false }).collect();
    flagguard::cli::traffic::build("f", "production", &requests, 1_700_000_000_000_000_000, &mut rand::rng())
}

const BAD_IDS_JSON: &str = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"checkout"}}]},
 "scopeSpans":[{"spans":[
  {"traceId":"abcd","spanId":"0102030405060708","name":"bad","kind":2,"startTimeUnixNano":"1","endTimeUnixNano":"2"},
  {"traceId":"5B8EFFF798038103D269B633813FC60C","spanId":"EEE19B7EC3C1B174","name":"ok","kind":2,"startTimeUnixNano":"1000","endTimeUnixNano":"2000",
   "attributes":[{"key":"ratio","value":{"doubleValue":0.25}}],
   "events":[{"name":"feature_flag.evaluation","attributes":[{"key":"feature_flag.key","value":{"stringValue":"f"}},{"key":"feature_flag.result.value","value":{"boolValue":true}}]}]}
 ]}]}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_errors_are_clear_and_partial_success_keeps_the_rest() {
    let server = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Daemon::config(dir.path(), "rules: []\n", &server);
    config.otlp.max_body_bytes = 1024 * 1024;
    let daemon = Daemon::start(config, dir).await;
    let url = format!("http://{}/v1/traces", daemon.addrs.http);
    let http = reqwest::Client::new();

    let r = http.post(&url).header("content-type", "text/plain").body("hi").send().await.unwrap();
    assert_eq!(r.status(), 415);
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 405);

    let r = http.post(&url).header("content-type", "application/json").body("{\"resourceSpans\": [").send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["content-type"], "application/json");
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("invalid OTLP payload"), "{body}");

    // snake_case OTLP/JSON would silently decode to nothing: say so instead.
    let r = http.post(&url).header("content-type", "application/json").body(r#"{"resource_spans":[{"scope_spans":[]}]}"#).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("lowerCamelCase"));

    let r = http.post(&url).header("content-type", "application/x-protobuf").body(vec![0xff, 0xff, 0xff]).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let status = tonic_types::pb::Status::decode(r.bytes().await.unwrap()).expect("a google.rpc.Status in protobuf");
    assert!(!status.message.is_empty());

    // A gzip bomb: 25 KB on the wire, 8 MiB inflated, over the 1 MiB limit.
    let bomb = gzip(&vec![0u8; 8 * 1024 * 1024]);
    assert!(bomb.len() < 64 * 1024);
    let r = http.post(&url).header("content-type", "application/x-protobuf").header("content-encoding", "gzip").body(bomb).send().await.unwrap();
    assert_eq!(r.status(), 413);

    // Wrong id length: that span is rejected, the other kept (with a doubleValue attribute,
    // which breaks if serde_json's arbitrary_precision ever enters the build).
    let r = http.post(&url).header("content-type", "application/json; charset=utf-8").body(BAD_IDS_JSON).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["partialSuccess"]["rejectedSpans"], "1", "{body}");
    assert!(body["partialSuccess"]["errorMessage"].as_str().unwrap().contains("trace_id must be 16 bytes"), "{body}");

    // Valid gzip'd protobuf: full success, empty partial_success.
    let r = http
        .post(&url)
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "gzip")
        .body(gzip(&request(5).encode_to_vec()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-protobuf");
    let reply = ExportTraceServiceResponse::decode(r.bytes().await.unwrap()).unwrap();
    assert!(reply.partial_success.is_none());

    // Logs: a JSON EventHook-style record with "body": {} is accepted.
    let logs = r#"{"resourceLogs":[{"resource":{"attributes":[]},"scopeLogs":[{"logRecords":[{"timeUnixNano":"1","body":{},"eventName":"feature_flag.evaluation",
      "attributes":[{"key":"feature_flag.key","value":{"stringValue":"f"}},{"key":"feature_flag.result.variant","value":{"stringValue":"on"}}],
      "traceId":"5462a3a4e69e9f3df84c0a9504648a35","spanId":"aa50ab142c34819f"}]}]}]}"#;
    let r = http.post(format!("http://{}/v1/logs", daemon.addrs.http)).header("content-type", "application/json").body(logs).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "{}");

    let metrics = http.get(format!("http://{}/metrics", daemon.addrs.api)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("flagguard_items_rejected_total 1"), "{metrics}");
    assert!(metrics.contains("flagguard_spans_received_total 26"), "1 + 25 spans: {metrics}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_gzip_and_partial_success() {
    let server = FlagServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(Daemon::config(dir.path(), "rules: []\n", &server), dir).await;
    let mut client =
        TraceServiceClient::connect(format!("http://{}", daemon.addrs.grpc)).await.unwrap().send_compressed(tonic::codec::CompressionEncoding::Gzip);
    let mut req = request(3);
    req.resource_spans[0].scope_spans[0].spans[0].span_id = vec![1, 2, 3];
    let reply = client.export(req).await.unwrap().into_inner();
    let partial = reply.partial_success.expect("partial success");
    assert_eq!(partial.rejected_spans, 1);
    assert!(partial.error_message.contains("span_id must be 8 bytes"));

    // Bytes that are not an OTLP trace request (field 1 holds 0xff 0xff, not a ResourceSpans):
    // INVALID_ARGUMENT, which exporters do not retry.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", daemon.addrs.grpc)).unwrap().connect().await.unwrap();
    let mut raw = tonic::client::Grpc::new(channel);
    raw.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/opentelemetry.proto.collector.trace.v1.TraceService/Export");
    #[derive(Clone, PartialEq, prost::Message)]
    struct Garbage {
        #[prost(bytes = "vec", tag = "1")]
        value: Vec<u8>,
    }
    let garbage = Garbage { value: vec![0xff, 0xff] };
    let status = raw.unary(tonic::Request::new(garbage.clone()), path, tonic_prost::ProstCodec::<_, ExportTraceServiceResponse>::default()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("failed to decode protobuf"), "{status:?}");
    // A log record with a flag evaluation over gRPC, gzip: accepted whole.
    use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, logs_service_client::LogsServiceClient};
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    let attribute =
        |key: &str, value: &str| KeyValue { key: key.into(), value: Some(AnyValue { value: Some(Value::StringValue(value.into())) }), ..Default::default() };
    let record = LogRecord {
        event_name: "feature_flag.evaluation".into(),
        attributes: vec![attribute("feature_flag.key", "f"), attribute("feature_flag.result.variant", "on")],
        trace_id: vec![7; 16],
        span_id: vec![8; 8],
        ..Default::default()
    };
    let logs = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Default::default()),
            scope_logs: vec![ScopeLogs { log_records: vec![record], ..Default::default() }],
            ..Default::default()
        }],
    };
    let mut logs_client =
        LogsServiceClient::connect(format!("http://{}", daemon.addrs.grpc)).await.unwrap().send_compressed(tonic::codec::CompressionEncoding::Gzip);
    let reply = logs_client.export(logs).await.unwrap().into_inner();
    assert_eq!(reply.partial_success, None);

    // The same for logs (tonic's generated server would answer INTERNAL), counted as invalid.
    let path = http::uri::PathAndQuery::from_static("/opentelemetry.proto.collector.logs.v1.LogsService/Export");
    raw.ready().await.unwrap();
    let status = raw
        .unary(
            tonic::Request::new(garbage),
            path,
            tonic_prost::ProstCodec::<_, opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("failed to decode protobuf"), "{status:?}");
    let metrics = reqwest::get(format!("http://{}/metrics", daemon.addrs.api)).await.unwrap().text().await.unwrap();
    for (signal, result) in [("traces", "invalid"), ("logs", "invalid"), ("logs", "ok")] {
        let line = format!("flagguard_otlp_requests_total{{transport=\"grpc\",signal=\"{signal}\",result=\"{result}\"}} 1");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    assert!(metrics.contains("flagguard_log_records_received_total 1"), "{metrics}");
    daemon.stop().await;
}

/// A full pipeline queue refuses with a retry delay on both transports; nothing is dropped
/// silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_retryable_backpressure() {
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    let ingest = Arc::new(Ingest::new(tx, ExtractOptions::default(), Duration::from_secs(3), Arc::new(Metrics::new())));
    let body = request(2).encode_to_vec();
    let http = flagguard::ingest::http::router(ingest.clone(), 1 << 20, Default::default());
    let call = || axum::http::Request::post("/v1/traces").header("content-type", "application/x-protobuf").body(axum::body::Body::from(body.clone())).unwrap();
    assert_eq!(http.clone().oneshot(call()).await.unwrap().status(), 200, "the first batch fills the queue");
    let refused = http.oneshot(call()).await.unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "3");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let routes = flagguard::ingest::grpc::router(ingest, 1 << 20, Default::default());
    tokio::spawn(tonic::transport::Server::builder().add_routes(routes).serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)));
    let mut client = TraceServiceClient::connect(format!("http://{addr}")).await.unwrap();
    let status = client.export(request(2)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let trailer = status.metadata().get_bin("google.rpc.retryinfo-bin").expect("the trailer the Python exporter reads");
    let info = tonic_types::pb::RetryInfo::decode(trailer.to_bytes().unwrap()).unwrap();
    assert_eq!(info.retry_delay.unwrap().seconds, 3);
    use tonic_types::StatusExt;
    assert_eq!(status.get_details_retry_info().and_then(|r| r.retry_delay), Some(Duration::from_secs(3)));
}
