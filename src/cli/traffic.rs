//! Synthetic multi-service OTLP traffic, shaped like what real SDKs send: per request, one
//! trace across frontend → checkout → payments, each service in its own resource, the flag
//! evaluated in checkout (a `feature_flag.evaluation` span event), errors only where injected.
//! Used by `demo`, by tests and by the load generator.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, SpanKind};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use rand::Rng;

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(Value::StringValue(value.into())) }), ..Default::default() }
}

/// One simulated request's choices.
#[derive(Clone, Debug)]
pub struct Request {
    pub user: u64,
    pub variant: String,
    pub region: String,
    pub payments_error: bool,
}

/// Which variant a user gets under a 50 % split: a stable hash of flag and user.
pub fn split(flag: &str, user: u64, percent_on: u64) -> bool {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (flag, user).hash(&mut h);
    h.finish() % 100 < percent_on
}

/// Builds one export request holding `requests` traces for `flag`.
pub fn build(flag: &str, environment: &str, requests: &[Request], now_ns: u64, rng: &mut impl Rng) -> ExportTraceServiceRequest {
    let mut frontend = Vec::new();
    let mut checkout = Vec::new();
    let mut payments = Vec::new();
    let mut regions = Vec::new();
    for r in requests {
        let trace: [u8; 16] = rng.random();
        let ids: [[u8; 8]; 5] = rng.random();
        let start = now_ns - 200_000_000;
        let pay_ms: u64 = rng.random_range(8..30);
        let span = |id: [u8; 8], parent: Option<[u8; 8]>, name: &str, kind: SpanKind, start: u64, dur_ms: u64| Span {
            trace_id: trace.to_vec(),
            span_id: id.to_vec(),
            parent_span_id: parent.map(|p| p.to_vec()).unwrap_or_default(),
            name: name.into(),
            kind: kind as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: start + dur_ms * 1_000_000,
            flags: if parent.is_some() && kind == SpanKind::Server { 0x300 } else { 0x100 },
            ..Default::default()
        };
        let mut pay = span(ids[4], Some(ids[3]), "POST /charge", SpanKind::Server, start + 4_000_000, pay_ms);
        if r.payments_error {
            pay.status = Some(Status { code: 2, message: "card processor timeout".into() });
        }
        let mut chk = span(ids[2], Some(ids[1]), "POST /checkout", SpanKind::Server, start + 2_000_000, pay_ms + 6);
        chk.events.push(Event {
            time_unix_nano: start + 2_500_000,
            name: "feature_flag.evaluation".into(),
            attributes: vec![
                kv("feature_flag.key", flag),
                kv("feature_flag.result.variant", &r.variant),
                kv("feature_flag.provider.name", "flagd"),
                kv("feature_flag.context.id", &format!("user-{}", r.user)),
            ],
            ..Default::default()
        });
        let region_index = regions.iter().position(|x: &String| x == &r.region).unwrap_or_else(|| {
            regions.push(r.region.clone());
            frontend.push(Vec::new());
            checkout.push(Vec::new());
            payments.push(Vec::new());
            regions.len() - 1
        });
        frontend[region_index].push(span(ids[0], None, "GET /cart/checkout", SpanKind::Server, start, pay_ms + 12));
        frontend[region_index].push(span(ids[1], Some(ids[0]), "POST checkout", SpanKind::Client, start + 1_000_000, pay_ms + 8));
        checkout[region_index].push(chk);
        checkout[region_index].push(span(ids[3], Some(ids[2]), "POST payments", SpanKind::Client, start + 3_000_000, pay_ms + 2));
        payments[region_index].push(pay);
    }
    let mut resource_spans = Vec::new();
    for (i, region) in regions.iter().enumerate() {
        for (service, spans) in [("frontend", &mut frontend[i]), ("checkout", &mut checkout[i]), ("payments", &mut payments[i])] {
            resource_spans.push(ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", service), kv("deployment.environment.name", environment), kv("cloud.region", region)],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans { spans: std::mem::take(spans), ..Default::default() }],
                ..Default::default()
            });
        }
    }
    ExportTraceServiceRequest { resource_spans }
}

/// A realistic export request for benchmarks: `traces` traces of 5 spans with ~10 attributes
/// each (~470 bytes per span), one flag evaluation per trace, 5 % on `on`, 1 % failing.
pub fn realistic(traces: u64, seed: u64) -> ExportTraceServiceRequest {
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let requests: Vec<Request> = (0..traces)
        .map(|i| Request { user: i, variant: if i % 20 == 0 { "on" } else { "off" }.into(), region: "eu-west".into(), payments_error: i % 97 == 0 })
        .collect();
    let mut req = build("checkout-v2", "production", &requests, 1_700_000_000_000_000_000, &mut rng);
    for rs in &mut req.resource_spans {
        for ss in &mut rs.scope_spans {
            for span in &mut ss.spans {
                span.attributes.extend([
                    kv("http.request.method", "POST"),
                    kv("url.path", "/api/v2/checkout/confirm"),
                    kv("server.address", "checkout.internal.example.com"),
                    kv("network.protocol.version", "1.1"),
                    kv("user_agent.original", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36"),
                    kv("http.route", "/api/v2/checkout/{id}/confirm"),
                    kv("client.address", "10.42.17.3"),
                    kv("thread.name", "http-nio-8080-exec-17"),
                ]);
            }
        }
    }
    req
}
