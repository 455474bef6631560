//! OTLP requests → [`Batch`]: validates ids, finds flag evaluations in all four shapes (span
//! event `feature_flag.evaluation`, span event `feature_flag`, log record event, Node SpanHook
//! child span) and the outcome of every entry span. Spans it cannot use are rejected one by one
//! and reported through partial success; the rest of the request is kept.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};

use super::extract::{self, EVENT_NEW, EVENT_OLD, RawEvaluation};
use super::wire::{self, Attrs, SpanView, Val, WireError};
use crate::model::{Batch, Dims, Evaluation, FlagKey, Outcome, SpanId, TraceId, Variant};

/// Span flags bit: the parent span is remote (W3C `is_remote`, OTLP 1.1+).
const FLAG_PARENT_IS_REMOTE: u32 = 0x200;
/// How many per-item error messages a partial-success reply carries.
const MAX_MESSAGES: usize = 3;

/// Extraction options from configuration.
#[derive(Clone, Debug, Default)]
pub struct ExtractOptions {
    /// Span attribute prefixes whose suffix is a flag key and whose value is the variant.
    pub flag_attribute_prefixes: Vec<String>,
}

/// The result of converting one request.
#[derive(Debug, Default)]
pub struct Converted {
    pub batch: Batch,
    pub rejected: i64,
    /// Why items were rejected (the first few), for the partial-success message.
    pub messages: Vec<String>,
}

impl Converted {
    fn reject(&mut self, message: String) {
        self.rejected += 1;
        if self.messages.len() < MAX_MESSAGES {
            self.messages.push(message);
        }
    }

    /// The partial-success message: empty when nothing was rejected.
    pub fn message(&self) -> String {
        if self.rejected == 0 {
            return String::new();
        }
        let more = self.rejected as usize - self.messages.len();
        let mut msg = self.messages.join("; ");
        if more > 0 {
            msg.push_str(&format!("; and {more} more"));
        }
        msg
    }
}

fn prost_resource(resource: Option<&Resource>) -> Attrs<'_> {
    resource.map_or(Attrs::EMPTY, |r| Attrs::Prost(&r.attributes))
}

/// Reads the slicing dimensions from a resource's attributes; `None` for flagguard's own
/// telemetry (`flagguard.self = true`), looped back by a Collector: never part of the cohorts.
pub fn resource_dims(attrs: Attrs<'_>) -> Option<Dims> {
    // Any occurrence marks it (not only the first): a looped-back batch must never count.
    let mut own = false;
    attrs.for_each(|key, value| own |= key == crate::otel::SELF_ATTRIBUTE && value == Some(Val::Bool(true)));
    if own {
        return None;
    }
    let [service, environment, old_environment, region] =
        attrs.lookup(["service.name", "deployment.environment.name", "deployment.environment", "cloud.region"]);
    // A value flagguard could not put in an action target or a URL reads as unknown.
    let usable = |v: Option<&str>| -> Arc<str> { v.filter(|v| extract::usable(v)).unwrap_or("").into() };
    let environment = extract::as_str(environment).or_else(|| extract::as_str(old_environment));
    Some(Dims { service: usable(extract::as_str(service)), environment: usable(environment), region: usable(extract::as_str(region)) })
}

fn trace_id(bytes: &[u8]) -> Option<TraceId> {
    let id: [u8; 16] = bytes.try_into().ok()?;
    (id != [0; 16]).then_some(TraceId(id))
}

fn span_id(bytes: &[u8]) -> Option<SpanId> {
    let id: [u8; 8] = bytes.try_into().ok()?;
    (id != [0; 8]).then_some(SpanId(id))
}

fn to_evaluation(raw: RawEvaluation, trace: Option<TraceId>, dims: &Dims) -> Evaluation {
    Evaluation {
        trace,
        flag: FlagKey::new(raw.set_id.as_deref(), &raw.key),
        variant: raw.variant.map(|v| Variant(v.into())),
        error_type: raw.error_type.map(Into::into),
        dims: dims.clone(),
        context: raw.context,
    }
}

/// Converts a trace export request decoded by prost (OTLP/JSON).
pub fn convert_traces(request: &ExportTraceServiceRequest, options: &ExtractOptions) -> Converted {
    let mut converter = TraceConverter::new(options);
    for (ri, resource_spans) in request.resource_spans.iter().enumerate() {
        if !converter.start_resource(prost_resource(resource_spans.resource.as_ref())) {
            continue;
        }
        for scope_spans in &resource_spans.scope_spans {
            for (si, span) in scope_spans.spans.iter().enumerate() {
                converter.convert_span(ri, si, &SpanView::from_prost(span));
            }
        }
    }
    converter.out
}

/// Converts a protobuf trace export request straight from its bytes ([`wire`]): the same result
/// as prost's decode followed by [`convert_traces`], without allocating the request.
pub fn convert_traces_wire(request: &[u8], options: &ExtractOptions) -> Result<Converted, WireError> {
    let mut converter = TraceConverter::new(options);
    wire::walk_traces(request, &mut converter)?;
    Ok(converter.out)
}

/// The conversion of one trace request, fed resource by resource and span by span.
struct TraceConverter<'o> {
    options: &'o ExtractOptions,
    out: Converted,
    dims: Dims,
    raw: Vec<RawEvaluation>,
}

impl<'o> TraceConverter<'o> {
    fn new(options: &'o ExtractOptions) -> Self {
        TraceConverter { options, out: Converted::default(), dims: Dims::default(), raw: Vec::new() }
    }

    /// Starts a resource; false when its spans are to be skipped (flagguard's own telemetry).
    fn start_resource(&mut self, attrs: Attrs<'_>) -> bool {
        match resource_dims(attrs) {
            Some(dims) => {
                self.dims = dims;
                true
            }
            None => false,
        }
    }

    fn convert_span(&mut self, ri: usize, si: usize, span: &SpanView<'_>) {
        let out = &mut self.out;
        let Some(trace) = trace_id(span.trace_id) else {
            out.reject(format!("resource {ri} span {si}: trace_id must be 16 bytes and non-zero, got {} bytes", span.trace_id.len()));
            return;
        };
        let Some(span_id_value) = span_id(span.span_id) else {
            out.reject(format!("resource {ri} span {si}: span_id must be 8 bytes and non-zero, got {} bytes", span.span_id.len()));
            return;
        };
        if !span.parent_span_id.is_empty() && span.parent_span_id.len() != 8 {
            out.reject(format!("resource {ri} span {si}: parent_span_id must be empty or 8 bytes, got {}", span.parent_span_id.len()));
            return;
        }
        out.batch.spans_seen += 1;
        span_evaluations(span, self.options, &mut self.raw);
        for r in self.raw.drain(..) {
            out.batch.evaluations.push(to_evaluation(r, Some(trace), &self.dims));
        }
        if is_entry(span) {
            out.batch.outcomes.push(Outcome {
                trace,
                span: span_id_value,
                dims: self.dims.clone(),
                error: is_error(span),
                latency_us: span.end_time_unix_nano.saturating_sub(span.start_time_unix_nano) / 1_000,
            });
        }
    }
}

impl<'a> wire::TraceVisitor<'a> for TraceConverter<'_> {
    fn resource(&mut self, _: usize, attributes: Attrs<'a>) -> bool {
        self.start_resource(attributes)
    }

    fn span(&mut self, ri: usize, si: usize, span: SpanView<'a>) {
        self.convert_span(ri, si, &span);
    }
}

/// Collects the evaluations a span carries: its flag events, itself when it is a SpanHook
/// evaluation span, and configured prefixed attributes.
fn span_evaluations(span: &SpanView<'_>, options: &ExtractOptions, out: &mut Vec<RawEvaluation>) {
    if span.flag_events {
        span.events.for_each(|event| {
            if (event.name == EVENT_NEW.as_bytes() || event.name == EVENT_OLD.as_bytes())
                && let Some(raw) = extract::evaluation(event.attributes, None)
            {
                out.push(raw);
            }
        });
    }
    if span.name == EVENT_NEW.as_bytes()
        && let Some(raw) = extract::evaluation(span.attributes, None)
    {
        out.push(raw);
    }
    extract::prefixed_evaluations(span.attributes, &options.flag_attribute_prefixes, out);
}

/// An entry span is one request of its service: SERVER or CONSUMER, or a span whose parent is
/// absent or remote — except CLIENT and PRODUCER spans, which are calls, never requests.
pub fn is_entry(span: &SpanView<'_>) -> bool {
    let kind = SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified);
    match kind {
        SpanKind::Server | SpanKind::Consumer => true,
        SpanKind::Client | SpanKind::Producer => false,
        SpanKind::Internal | SpanKind::Unspecified => {
            span.name != EVENT_NEW.as_bytes() && (span.parent_span_id.is_empty() || span.flags & FLAG_PARENT_IS_REMOTE != 0)
        }
    }
}

/// gRPC status codes that mean the server failed (not the caller): UNKNOWN, DEADLINE_EXCEEDED,
/// UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS.
const GRPC_SERVER_ERRORS: [i64; 6] = [2, 4, 12, 13, 14, 15];

/// A request failed when its status is ERROR; when the status is UNSET, an HTTP status ≥ 500 or
/// a gRPC server-error code also counts. 4xx never counts. OK is never an error.
pub fn is_error(span: &SpanView<'_>) -> bool {
    let code = span.status_code;
    if code == StatusCode::Error as i32 {
        return true;
    }
    if code != StatusCode::Unset as i32 {
        return false;
    }
    let [http, old_http, grpc] = span.attributes.lookup(["http.response.status_code", "http.status_code", "rpc.grpc.status_code"]);
    if let Some(status) = extract::as_int(http).or_else(|| extract::as_int(old_http)) {
        return status >= 500;
    }
    if let Some(code) = extract::as_int(grpc) {
        return GRPC_SERVER_ERRORS.contains(&code);
    }
    false
}

/// Converts a logs export request: only log records that are flag-evaluation events matter;
/// everything else is counted and ignored.
pub fn convert_logs(request: &ExportLogsServiceRequest) -> Converted {
    let mut out = Converted::default();
    for (ri, resource_logs) in request.resource_logs.iter().enumerate() {
        let Some(dims) = resource_dims(prost_resource(resource_logs.resource.as_ref())) else { continue };
        for scope_logs in &resource_logs.scope_logs {
            for (li, record) in scope_logs.log_records.iter().enumerate() {
                let is_event = record.event_name == EVENT_NEW || extract::attr_str(Attrs::Prost(&record.attributes), "event.name") == Some(EVENT_NEW);
                if !is_event {
                    out.batch.logs_seen += 1;
                    continue;
                }
                if !record.trace_id.is_empty() && record.trace_id.len() != 16 {
                    out.reject(format!("resource {ri} log record {li}: trace_id must be empty or 16 bytes, got {}", record.trace_id.len()));
                    continue;
                }
                out.batch.logs_seen += 1;
                if let Some(raw) = extract::evaluation(Attrs::Prost(&record.attributes), record.body.as_ref().and_then(Val::from_prost)) {
                    out.batch.evaluations.push(to_evaluation(raw, trace_id(&record.trace_id), &dims));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::KeyValue;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value::Value};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span::Event};

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue { key: key.into(), value: Some(AnyValue { value: Some(Value::StringValue(value.into())) }), ..Default::default() }
    }
    fn kvi(key: &str, value: i64) -> KeyValue {
        KeyValue { key: key.into(), value: Some(AnyValue { value: Some(Value::IntValue(value)) }), ..Default::default() }
    }
    fn entry(span: &Span) -> bool {
        is_entry(&SpanView::from_prost(span))
    }
    fn error(span: &Span) -> bool {
        is_error(&SpanView::from_prost(span))
    }
    fn span(kind: SpanKind, parent: &[u8]) -> Span {
        Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            parent_span_id: parent.to_vec(),
            kind: kind as i32,
            start_time_unix_nano: 1_000_000,
            end_time_unix_nano: 5_000_000,
            ..Default::default()
        }
    }

    #[test]
    fn entry_span_rules() {
        assert!(entry(&span(SpanKind::Server, &[3; 8])));
        assert!(entry(&span(SpanKind::Consumer, &[3; 8])));
        assert!(!entry(&span(SpanKind::Client, &[])));
        assert!(entry(&span(SpanKind::Internal, &[])));
        assert!(!entry(&span(SpanKind::Internal, &[3; 8])));
        let mut remote = span(SpanKind::Internal, &[3; 8]);
        remote.flags = 0x300;
        assert!(entry(&remote));
    }

    #[test]
    fn error_rules() {
        let mut s = span(SpanKind::Server, &[]);
        assert!(!error(&s));
        s.status = Some(Status { code: 2, message: String::new() });
        assert!(error(&s));
        s.status = Some(Status { code: 1, message: String::new() });
        s.attributes = vec![kvi("http.response.status_code", 503)];
        assert!(!error(&s), "status OK wins over the HTTP code");
        s.status = None;
        assert!(error(&s));
        s.attributes = vec![kvi("http.response.status_code", 404)];
        assert!(!error(&s), "4xx is the caller's error");
        s.attributes = vec![kvi("rpc.grpc.status_code", 14)];
        assert!(error(&s));
        s.attributes = vec![kvi("rpc.grpc.status_code", 5)];
        assert!(!error(&s));
    }

    fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", "checkout"), kv("deployment.environment", "prod"), kv("cloud.region", "eu-west")],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn span_event_and_child_span_shapes() {
        let mut root = span(SpanKind::Server, &[]);
        root.events = vec![
            Event { name: EVENT_OLD.into(), attributes: vec![kv("feature_flag.key", "a"), kv("feature_flag.variant", "on")], ..Default::default() },
            Event { name: "exception".into(), attributes: vec![kv("feature_flag.key", "ignored")], ..Default::default() },
            Event { name: EVENT_NEW.into(), attributes: vec![kv("feature_flag.key", "b"), kv("feature_flag.result.variant", "blue")], ..Default::default() },
        ];
        let mut child = span(SpanKind::Internal, &[2; 8]);
        child.span_id = vec![9; 8];
        child.name = EVENT_NEW.into();
        child.attributes = vec![kv("feature_flag.key", "c"), kv("feature_flag.result.variant", "x")];
        let got = convert_traces(&request(vec![root, child]), &ExtractOptions::default());
        assert_eq!(got.rejected, 0);
        let keys: Vec<_> = got.batch.evaluations.iter().map(|e| (e.flag.as_str().to_owned(), e.variant.as_ref().unwrap().as_str().to_owned())).collect();
        assert_eq!(keys, vec![("a".into(), "on".into()), ("b".into(), "blue".into()), ("c".into(), "x".into())]);
        assert_eq!(got.batch.outcomes.len(), 1, "the evaluation child span is not a request");
        let outcome = &got.batch.outcomes[0];
        assert_eq!(outcome.latency_us, 4_000);
        assert_eq!(&*outcome.dims.environment, "prod", "falls back to deployment.environment");
        assert_eq!(&*outcome.dims.region, "eu-west");
    }

    #[test]
    fn bad_ids_are_rejected_one_by_one() {
        let mut bad_trace = span(SpanKind::Server, &[]);
        bad_trace.trace_id = vec![1, 2];
        let mut bad_span = span(SpanKind::Server, &[]);
        bad_span.span_id = vec![0; 8];
        let mut bad_parent = span(SpanKind::Server, &[]);
        bad_parent.parent_span_id = vec![1; 3];
        let good = span(SpanKind::Server, &[]);
        let got = convert_traces(&request(vec![bad_trace, bad_span, bad_parent, good]), &ExtractOptions::default());
        assert_eq!(got.rejected, 3);
        assert_eq!(got.batch.outcomes.len(), 1);
        assert!(got.message().contains("trace_id must be 16 bytes"), "{}", got.message());
    }
}
