//! Ingest: the OTLP receivers. gRPC ([`grpc`]) and HTTP ([`http`]) decode their transport's
//! encoding and call one [`Ingest::accept_traces`] / [`Ingest::accept_logs`], which converts the
//! request ([`otlp`], [`extract`]) and hands the batch to the pipeline.
//!
//! Backpressure: the pipeline queue is bounded (`otlp.queue_capacity` batches). When it is
//! full, the request is refused with a retryable error carrying a retry delay (gRPC UNAVAILABLE
//! + RetryInfo, HTTP 503 + Retry-After). Nothing accepted is ever dropped silently.

pub mod extract;
pub mod grpc;
pub mod http;
pub mod otlp;
pub mod record;
pub mod semconv;
pub mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse};
use tokio::sync::mpsc;

use crate::model::Batch;
use crate::telemetry::Metrics;
pub use otlp::ExtractOptions;

/// Why an OTLP request was not accepted. Mapped outward once per transport
/// (`grpc::to_status`, `http::to_response`).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The payload cannot be decoded: 400 / INVALID_ARGUMENT, never retried.
    #[error("invalid OTLP payload: {0}")]
    Invalid(String),
    /// The pipeline queue is full: 503 / UNAVAILABLE with a retry delay.
    #[error("pipeline queue is full, retry after {retry_after:?}")]
    Overloaded { retry_after: Duration },
    /// The daemon is shutting down: 503 / UNAVAILABLE, retryable.
    #[error("flagguard is shutting down")]
    ShuttingDown,
    #[error("unsupported content type {0:?}: use application/x-protobuf or application/json")]
    UnsupportedMediaType(String),
    #[error("request body exceeds {limit} bytes after decompression")]
    TooLarge { limit: usize },
}

/// Optional bearer-token authentication of OTLP requests (`otlp.bearer_tokens`): only the
/// tokens' SHA-256 is kept, each compared in constant time. Checked before the body is read
/// (HTTP) or decoded (gRPC interceptor); refused requests are UNAUTHENTICATED / 401 and counted
/// as `otlp_requests_total{result="unauthenticated"}`.
#[derive(Clone, Default)]
pub struct OtlpAuth {
    hashes: Arc<Vec<[u8; 32]>>,
    metrics: Option<Arc<Metrics>>,
}

impl OtlpAuth {
    pub fn new(tokens: &[String], metrics: Arc<Metrics>) -> OtlpAuth {
        use sha2::Digest;
        OtlpAuth { hashes: Arc::new(tokens.iter().map(|t| sha2::Sha256::digest(t.as_bytes()).into()).collect()), metrics: Some(metrics) }
    }

    /// Whether a request with this `authorization` header (or gRPC metadata) may pass.
    pub fn allows(&self, authorization: Option<&[u8]>, transport: Transport) -> bool {
        use sha2::Digest;
        use subtle::ConstantTimeEq;
        if self.hashes.is_empty() {
            return true;
        }
        let token = authorization.filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ")).map(|v| v[7..].trim_ascii());
        let digest: Option<[u8; 32]> = token.map(|t| sha2::Sha256::digest(t).into());
        let mut ok = false;
        if let Some(digest) = digest {
            for hash in self.hashes.iter() {
                ok |= bool::from(hash.ct_eq(&digest));
            }
        }
        if !ok && let Some(m) = &self.metrics {
            Metrics::count(&m.otlp_requests, &[("transport", transport.label()), ("signal", "any"), ("result", "unauthenticated")]);
        }
        ok
    }
}

/// What a caller is told about an accepted request.
#[derive(Debug, Default, PartialEq)]
pub struct Accepted {
    pub rejected: i64,
    /// Empty when everything was usable.
    pub message: String,
}

impl Accepted {
    /// Whether the reply carries a partial success (something rejected, or a message).
    fn partial(&self) -> bool {
        self.rejected > 0 || !self.message.is_empty()
    }

    /// The OTLP reply to a trace request, for both transports.
    pub fn trace_response(&self) -> ExportTraceServiceResponse {
        let partial_success = self.partial().then(|| ExportTracePartialSuccess { rejected_spans: self.rejected, error_message: self.message.clone() });
        ExportTraceServiceResponse { partial_success }
    }

    /// The OTLP reply to a logs request, for both transports.
    pub fn logs_response(&self) -> ExportLogsServiceResponse {
        let partial_success = self.partial().then(|| ExportLogsPartialSuccess { rejected_log_records: self.rejected, error_message: self.message.clone() });
        ExportLogsServiceResponse { partial_success }
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Transport {
    Grpc,
    Http,
}

impl Transport {
    fn label(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::Http => "http",
        }
    }
}

/// The one entry point both transports call.
pub struct Ingest {
    tx: mpsc::Sender<Queued>,
    /// Optional recording of accepted requests (for `replay`), with the clock that stamps them.
    recorder: Option<(record::Recorder, Arc<dyn crate::time::Clock>)>,
    options: ExtractOptions,
    retry_after: Duration,
    metrics: Arc<Metrics>,
    /// Evaluations and outcomes that may wait for the pipeline at once (memory bound).
    max_queued_items: usize,
    budget: QueueBudget,
}

/// Evaluations and outcomes accepted but not yet fed through by the pipeline: the memory
/// bound of the ingest queue. Reserved atomically when a request is accepted (two requests
/// cannot both pass a nearly full budget), released when the pipeline drops the batch (the
/// [`Reservation`] travels with it); the `queue_items` gauge only mirrors it.
#[derive(Clone)]
struct QueueBudget {
    queued: Arc<AtomicUsize>,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl QueueBudget {
    /// Reserves `items` unless that would pass `max` while something already waits (one
    /// request larger than the whole budget is still taken when nothing does).
    fn reserve(&self, items: usize, max: usize) -> Option<Reservation> {
        self.queued.fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| (queued == 0 || queued + items <= max).then_some(queued + items)).ok()?;
        self.gauge.inc_by(items as i64);
        Some(Reservation { budget: self.clone(), items })
    }
}

/// A batch's share of the queue budget, released on drop.
pub struct Reservation {
    budget: QueueBudget,
    items: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.queued.fetch_sub(self.items, Ordering::AcqRel);
        self.budget.gauge.dec_by(self.items as i64);
    }
}

/// A batch on its way to the pipeline, with its reservation of the queue budget.
pub struct Queued {
    pub batch: Batch,
    pub reservation: Reservation,
}

impl Ingest {
    pub fn new(tx: mpsc::Sender<Queued>, options: ExtractOptions, retry_after: Duration, metrics: Arc<Metrics>) -> Self {
        let budget = QueueBudget { queued: Arc::new(AtomicUsize::new(0)), gauge: metrics.queue_items.clone() };
        Ingest { tx, recorder: None, options, retry_after, metrics, max_queued_items: usize::MAX, budget }
    }

    /// Bounds the items waiting for the pipeline (beyond: retryable backpressure).
    pub fn with_queue_items(mut self, max: usize) -> Self {
        self.max_queued_items = max;
        self
    }

    /// Records every accepted request from now on.
    pub fn with_recorder(mut self, recorder: record::Recorder, clock: Arc<dyn crate::time::Clock>) -> Self {
        self.recorder = Some((recorder, clock));
        self
    }

    fn record(&self, signal: record::Signal, encode: impl FnOnce() -> Vec<u8>) {
        if let Some((recorder, clock)) = &self.recorder {
            recorder.record(record::Record { arrival: clock.now(), signal, protobuf: encode() });
        }
    }

    pub fn accept_traces(&self, request: &ExportTraceServiceRequest, transport: Transport) -> Result<Accepted, IngestError> {
        let converted = otlp::convert_traces(request, &self.options);
        let accepted = self.accept(converted, "traces", transport)?;
        self.record(record::Signal::Traces, || prost::Message::encode_to_vec(request));
        Ok(accepted)
    }

    /// Accepts a protobuf trace request from its bytes (gRPC and OTLP/HTTP protobuf), read by
    /// the selective [`wire`] reader; bytes that are not a protobuf message are invalid.
    pub fn accept_traces_protobuf(&self, request: &[u8], transport: Transport) -> Result<Accepted, IngestError> {
        let converted = otlp::convert_traces_wire(request, &self.options).map_err(|e| IngestError::Invalid(e.to_string()))?;
        let accepted = self.accept(converted, "traces", transport)?;
        self.record(record::Signal::Traces, || request.to_vec());
        Ok(accepted)
    }

    pub fn accept_logs(&self, request: &ExportLogsServiceRequest, transport: Transport) -> Result<Accepted, IngestError> {
        let converted = otlp::convert_logs(request);
        let accepted = self.accept(converted, "logs", transport)?;
        self.record(record::Signal::Logs, || prost::Message::encode_to_vec(request));
        Ok(accepted)
    }

    /// Records a request refused before conversion (decode errors, size, media type).
    pub fn count_refused(&self, signal: &'static str, transport: Transport, error: &IngestError) {
        let result = match error {
            IngestError::Overloaded { .. } | IngestError::ShuttingDown => "overloaded",
            _ => "invalid",
        };
        Metrics::count(&self.metrics.otlp_requests, &[("transport", transport.label()), ("signal", signal), ("result", result)]);
    }

    fn accept(&self, converted: otlp::Converted, signal: &'static str, transport: Transport) -> Result<Accepted, IngestError> {
        let accepted = Accepted { rejected: converted.rejected, message: converted.message() };
        let batch = converted.batch;
        let useful = !batch.evaluations.is_empty() || !batch.outcomes.is_empty();
        let (spans, logs, evaluations, outcomes) = (batch.spans_seen, batch.logs_seen, batch.evaluations.len(), batch.outcomes.len());
        if useful {
            let Some(reservation) = self.budget.reserve(evaluations + outcomes, self.max_queued_items) else {
                let error = IngestError::Overloaded { retry_after: self.retry_after };
                self.count_refused(signal, transport, &error);
                return Err(error);
            };
            // A refused send drops the batch and its reservation with it.
            if let Err(e) = self.tx.try_send(Queued { batch, reservation }) {
                let error = match e {
                    mpsc::error::TrySendError::Full(_) => IngestError::Overloaded { retry_after: self.retry_after },
                    mpsc::error::TrySendError::Closed(_) => IngestError::ShuttingDown,
                };
                self.count_refused(signal, transport, &error);
                return Err(error);
            }
        }
        let result = if accepted.rejected > 0 { "partial" } else { "ok" };
        Metrics::count(&self.metrics.otlp_requests, &[("transport", transport.label()), ("signal", signal), ("result", result)]);
        self.metrics.spans_received.inc_by(spans);
        self.metrics.log_records_received.inc_by(logs);
        self.metrics.items_rejected.inc_by(accepted.rejected as u64);
        self.metrics.evaluations.inc_by(evaluations as u64);
        self.metrics.outcomes.inc_by(outcomes as u64);
        Ok(accepted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_budget_is_reserved_at_once_and_released_with_the_batch() {
        let budget = QueueBudget { queued: Arc::new(AtomicUsize::new(0)), gauge: Default::default() };
        let big = budget.reserve(500, 100).expect("one request larger than the budget is taken when nothing waits");
        assert!(budget.reserve(1, 100).is_none(), "nothing more while it waits");
        drop(big);
        let a = budget.reserve(60, 100).expect("released with its batch");
        assert!(budget.reserve(41, 100).is_none());
        let b = budget.reserve(40, 100).expect("up to the budget");
        assert_eq!((budget.queued.load(Ordering::Acquire), budget.gauge.get()), (100, 100), "the gauge mirrors the budget");
        drop((a, b));
        assert_eq!((budget.queued.load(Ordering::Acquire), budget.gauge.get()), (0, 0));
    }
}
