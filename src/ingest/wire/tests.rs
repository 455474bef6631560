//! The wire reader against prost: every request prost decodes must convert to the same batch,
//! and the wire reader must never refuse what prost accepts.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue, KeyValueList, any_value::Value as V};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span::Event};
use proptest::prelude::*;
use prost::Message;

use crate::ingest::otlp::{ExtractOptions, convert_traces, convert_traces_wire};

fn options() -> ExtractOptions {
    ExtractOptions { flag_attribute_prefixes: vec!["app.flags.".to_owned()] }
}

/// Asserts the property the daemon relies on for one byte string.
pub(crate) fn assert_agrees(bytes: &[u8]) {
    let by_prost = ExportTraceServiceRequest::decode(bytes).map(|r| convert_traces(&r, &options()));
    let by_wire = convert_traces_wire(bytes, &options());
    match (&by_prost, &by_wire) {
        (Ok(p), Ok(w)) => assert_eq!(format!("{p:?}"), format!("{w:?}"), "prost and the wire reader disagree on {bytes:?}"),
        (Ok(p), Err(e)) => panic!("the wire reader refused ({e}) what prost accepts: {p:?} from {bytes:?}"),
        (Err(_), _) => {}
    }
}

/// A field key and a length-delimited payload.
fn field(tag: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    out
}

fn value() -> impl Strategy<Value = Option<AnyValue>> {
    let leaf = prop_oneof![
        prop::sample::select(vec!["on", "off", "\"#c05543\"", "", "503", "x|y", ".."]).prop_map(|s| V::StringValue(s.into())),
        any::<bool>().prop_map(V::BoolValue),
        prop::sample::select(vec![0i64, 2, 14, 404, 500, 503, -1]).prop_map(V::IntValue),
        prop::sample::select(vec![0.5f64, 503.0, -2.0]).prop_map(V::DoubleValue),
        prop::collection::vec(any::<u8>(), 0..3).prop_map(V::BytesValue),
        Just(V::ArrayValue(ArrayValue { values: vec![] })),
        Just(V::KvlistValue(KeyValueList {
            values: vec![KeyValue { key: "value".into(), value: Some(AnyValue { value: Some(V::BoolValue(true)) }), key_strindex: 0 }]
        })),
        Just(V::StringValueStrindex(3)),
    ];
    prop::option::weighted(0.9, prop::option::weighted(0.95, leaf).prop_map(|value| AnyValue { value }))
}

fn attributes(keys: Vec<&'static str>) -> impl Strategy<Value = Vec<KeyValue>> {
    prop::collection::vec((prop::sample::select(keys), value()).prop_map(|(key, value)| KeyValue { key: key.into(), value, key_strindex: 0 }), 0..6)
}

const FLAG_KEYS: [&str; 13] = [
    "feature_flag.key",
    "feature_flag.flag_key",
    "feature_flag.result.variant",
    "feature_flag.variant",
    "feature_flag.result.value",
    "feature_flag.result.reason",
    "feature_flag.evaluation.reason",
    "error.type",
    "feature_flag.set.id",
    "feature_flag.context.id",
    "http.response.status_code",
    "rpc.grpc.status_code",
    "app.flags.checkout",
];

fn span() -> impl Strategy<Value = Span> {
    let ids = (
        prop::sample::select(vec![vec![1u8; 16], vec![0; 16], vec![7; 2], vec![]]),
        prop::sample::select(vec![vec![2u8; 8], vec![0; 8], vec![3; 8], vec![1]]),
        prop::sample::select(vec![vec![], vec![9u8; 8], vec![1; 3]]),
    );
    let event = (prop::sample::select(vec!["feature_flag.evaluation", "feature_flag", "exception"]), attributes(FLAG_KEYS.to_vec()))
        .prop_map(|(name, attributes)| Event { name: name.into(), attributes, ..Default::default() });
    (
        ids,
        0i32..7,
        prop::sample::select(vec![0u32, 0x100, 0x300]),
        prop::sample::select(vec!["feature_flag.evaluation", "GET /cart", ""]),
        (any::<u64>(), any::<u64>()),
        prop::option::of(0i32..4),
        attributes(FLAG_KEYS.to_vec()),
        prop::collection::vec(event, 0..3),
    )
        .prop_map(|((trace_id, span_id, parent_span_id), kind, flags, name, (start, end), code, attributes, events)| Span {
            trace_id,
            span_id,
            parent_span_id,
            kind,
            flags,
            name: name.into(),
            start_time_unix_nano: start,
            end_time_unix_nano: end,
            status: code.map(|code| Status { code, message: String::new() }),
            attributes,
            events,
            ..Default::default()
        })
}

fn resource() -> impl Strategy<Value = Option<Resource>> {
    prop::option::weighted(
        0.9,
        attributes(vec!["service.name", "deployment.environment.name", "deployment.environment", "cloud.region", "flagguard.self"])
            .prop_map(|attributes| Resource { attributes, ..Default::default() }),
    )
}

fn request() -> impl Strategy<Value = ExportTraceServiceRequest> {
    let scope = prop::collection::vec(span(), 0..4).prop_map(|spans| ScopeSpans { spans, ..Default::default() });
    let resource_spans =
        (resource(), prop::collection::vec(scope, 0..3)).prop_map(|(resource, scope_spans)| ResourceSpans { resource, scope_spans, ..Default::default() });
    prop::collection::vec(resource_spans, 0..3).prop_map(|resource_spans| ExportTraceServiceRequest { resource_spans })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn the_wire_reader_converts_as_prost_does(request in request()) {
        let bytes = request.encode_to_vec();
        let by_wire = convert_traces_wire(&bytes, &options()).expect("a prost encoding is valid");
        prop_assert_eq!(format!("{:?}", convert_traces(&request, &options())), format!("{by_wire:?}"));
    }

    /// Damaged bytes: whatever prost still accepts, the wire reader reads the same.
    #[test]
    fn damaged_requests_agree_or_prost_refuses(request in request(), edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4)) {
        let mut bytes = request.encode_to_vec();
        for (at, byte, op) in edits {
            if bytes.is_empty() {
                break;
            }
            let i = at.index(bytes.len());
            match op {
                0 => bytes[i] = byte,
                1 => bytes.truncate(i),
                _ => bytes.insert(i, byte),
            }
        }
        assert_agrees(&bytes);
    }

    /// A message field that occurs twice is the merge of both (protobuf's concatenation rule):
    /// a span's status and ids, a `ResourceSpans.resource`, an attribute's value.
    #[test]
    fn repeated_message_fields_merge_as_in_prost(first in span(), second in span(), r1 in resource(), r2 in resource()) {
        let spans = [field(2, &first.encode_to_vec()), field(2, &[first.encode_to_vec(), second.encode_to_vec()].concat())].concat();
        let resource_spans = [
            r1.map(|r| field(1, &r.encode_to_vec())).unwrap_or_default(),
            field(2, &spans),
            r2.map(|r| field(1, &r.encode_to_vec())).unwrap_or_default(),
        ]
        .concat();
        assert_agrees(&field(1, &resource_spans));
    }
}

#[test]
fn merged_attribute_values_take_the_last_oneof_field() {
    // One KeyValue whose `value` occurs twice: a string, then an int.
    let key_value = [
        field(1, b"http.response.status_code"),
        field(2, &AnyValue { value: Some(V::StringValue("200".into())) }.encode_to_vec()),
        field(2, &AnyValue { value: Some(V::IntValue(503)) }.encode_to_vec()),
    ]
    .concat();
    let span = Span { trace_id: vec![1; 16], span_id: vec![2; 8], kind: 2, ..Default::default() };
    let span_bytes = [span.encode_to_vec(), field(9, &key_value)].concat();
    let request = field(1, &field(2, &field(2, &span_bytes)));
    let converted = convert_traces_wire(&request, &options()).unwrap();
    assert!(converted.batch.outcomes[0].error, "the merged value is 503");
    assert_agrees(&request);
}

#[test]
fn framing_errors_are_refused() {
    let span = Span { trace_id: vec![1; 16], span_id: vec![2; 8], kind: 2, ..Default::default() };
    let good = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans { scope_spans: vec![ScopeSpans { spans: vec![span], ..Default::default() }], ..Default::default() }],
    }
    .encode_to_vec();
    assert_eq!(convert_traces_wire(&good, &options()).unwrap().batch.outcomes.len(), 1);
    for bad in [&good[..good.len() - 1], &[0x0a, 0xff][..], &[0x00][..], &[0x0f][..], &[0x0c][..], &[0x0b, 0x00][..], &[0xff; 11][..]] {
        assert!(convert_traces_wire(bad, &options()).is_err(), "{bad:?}");
        assert!(ExportTraceServiceRequest::decode(bad).is_err(), "prost refuses {bad:?} too");
    }
    // A span field with the wrong wire type (kind as length-delimited).
    let bad_kind = field(1, &field(2, &field(2, &field(6, b"x"))));
    assert!(convert_traces_wire(&bad_kind, &options()).is_err());
    assert!(ExportTraceServiceRequest::decode(bad_kind.as_slice()).is_err());
    // Groups are skipped as prost skips them.
    let group = [0x1b, 0x08, 0x01, 0x1c];
    assert_agrees(&group);
    assert!(convert_traces_wire(&group, &options()).is_ok());
}
