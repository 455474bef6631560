//! The hot path piece by piece, against what a null receiver does (prost decode only), on
//! realistic requests: 512 spans of ~10 attributes, one flag evaluation per trace.
//!
//! `cargo bench --bench hot_path` prints times per request; the ratio decode / full pipeline is
//! the share of a null receiver's throughput flagguard keeps (issue: ≥ 1.0×, floor 0.8×).

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flagguard::aggregate::Aggregator;
use flagguard::cli::traffic::realistic;
use flagguard::correlate::{CorrelateSettings, Correlator};
use flagguard::ingest::otlp::{ExtractOptions, convert_traces, convert_traces_wire};
use flagguard::time::Timestamp;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

fn spans(req: &ExportTraceServiceRequest) -> u64 {
    req.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len() as u64).sum()
}

fn hot_path(c: &mut Criterion) {
    let req = realistic(103, 1);
    let bytes = req.encode_to_vec();
    let n = spans(&req);
    let mut group = c.benchmark_group("per_request");
    group.throughput(Throughput::Elements(n));
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("null: prost decode", |b| b.iter(|| ExportTraceServiceRequest::decode(bytes.as_slice()).map(|r| spans(&r))));
    group.bench_function("prost decode + extract (the OTLP/JSON path's conversion)", |b| {
        b.iter(|| {
            let r = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap_or_default();
            convert_traces(&r, &ExtractOptions::default())
        })
    });
    group.bench_function("wire read + extract (protobuf path)", |b| b.iter(|| convert_traces_wire(&bytes, &ExtractOptions::default())));
    let mut correlator = Correlator::new(CorrelateSettings::default());
    let mut aggregator = Aggregator::new(50_000);
    let mut t = 1_000_000u64;
    // A fresh request per iteration would measure the generator; re-using one means the
    // correlator sees duplicates after the first pass, so use a few distinct ones.
    let variants: Vec<Vec<u8>> = (0..16).map(|i| realistic(103, 100 + i).encode_to_vec()).collect();
    let mut i = 0;
    group.bench_function("wire read + extract + correlate + aggregate", |b| {
        b.iter(|| {
            let bytes = &variants[i % variants.len()];
            i += 1;
            t += 10;
            let now = Timestamp(t);
            let batch = convert_traces_wire(bytes, &ExtractOptions::default()).map(|c| c.batch).unwrap_or_default();
            for e in &batch.evaluations {
                correlator.evaluation(e, now, &mut aggregator);
            }
            for o in batch.outcomes {
                correlator.outcome(o, now, &mut aggregator);
            }
            correlator.evict_idle(now, &mut aggregator);
        })
    });
    group.finish();
    println!("request: {} spans, {} bytes ({} bytes/span)", n, bytes.len(), bytes.len() as u64 / n);
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
