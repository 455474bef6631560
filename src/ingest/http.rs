//! OTLP/HTTP: `POST /v1/traces` and `/v1/logs`, protobuf or JSON by Content-Type, gzip request
//! bodies, the body limit applied after decompression (a gzip bomb gets 413), and replies in the
//! request's encoding (error bodies are `google.rpc.Status`).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tower_http::decompression::RequestDecompressionLayer;

use super::{Accepted, Ingest, IngestError, Transport};

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

#[derive(Clone, Copy, PartialEq)]
pub enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => PROTOBUF,
            Encoding::Json => JSON,
        }
    }
}

#[derive(Clone)]
struct HttpState {
    ingest: Arc<Ingest>,
    max_body: usize,
}

/// Builds the OTLP/HTTP router. `max_body` bounds the decompressed body.
/// `auth` is checked before the body is read.
pub fn router(ingest: Arc<Ingest>, max_body: usize, auth: super::OtlpAuth) -> Router {
    Router::new()
        .route("/v1/traces", post(traces))
        .route("/v1/logs", post(logs))
        .with_state(HttpState { ingest, max_body })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(RequestDecompressionLayer::new().gzip(true).pass_through_unaccepted(false))
        .layer(axum::middleware::from_fn_with_state(auth, authenticate))
}

async fn authenticate(
    axum::extract::State(auth): axum::extract::State<super::OtlpAuth>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if auth.allows(request.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes()), Transport::Http) {
        return next.run(request).await;
    }
    // Refused before the body is read: read (a bounded part of) it anyway and close the
    // connection. Dropping a connection with the body unread resets it under a keep-alive
    // client that is still sending, and real exporters reuse their connections: they would
    // see a connection error instead of this 401.
    let _ = axum::body::to_bytes(request.into_body(), REFUSED_BODY_DRAIN).await;
    (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer"), (header::CONNECTION, "close")], "a valid bearer token is required").into_response()
}

/// How much of a refused request's body is read before the connection is closed.
const REFUSED_BODY_DRAIN: usize = 4 << 20;

fn media_type(headers: &HeaderMap) -> Result<Encoding, IngestError> {
    let raw = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media = raw.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match media.as_str() {
        PROTOBUF => Ok(Encoding::Protobuf),
        JSON => Ok(Encoding::Json),
        _ => Err(IngestError::UnsupportedMediaType(raw.to_owned())),
    }
}

fn body_bytes(body: Result<Bytes, BytesRejection>, max_body: usize) -> Result<Bytes, IngestError> {
    body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => IngestError::TooLarge { limit: max_body },
        _ => IngestError::Invalid(rejection.body_text()),
    })
}

pub fn decode<T: Message + Default + serde::de::DeserializeOwned>(encoding: Encoding, body: &[u8]) -> Result<T, IngestError> {
    match encoding {
        Encoding::Protobuf => T::decode(body).map_err(|e| IngestError::Invalid(e.to_string())),
        Encoding::Json => {
            let decoded: T = serde_json::from_slice(body).map_err(|e| IngestError::Invalid(e.to_string()))?;
            // Unknown keys are ignored by OTLP/JSON, so proto field names decode to nothing.
            if decoded.encoded_len() == 0 && SNAKE_CASE_KEYS.iter().any(|k| body.windows(k.len()).any(|w| w == k.as_bytes())) {
                return Err(IngestError::Invalid("OTLP/JSON keys must be lowerCamelCase (resourceSpans, not resource_spans)".into()));
            }
            Ok(decoded)
        }
    }
}

/// Top-level proto field names that mean a sender used snake_case OTLP/JSON.
const SNAKE_CASE_KEYS: [&str; 2] = ["\"resource_spans\"", "\"resource_logs\""];

/// One OTLP signal over HTTP: how to accept its request and encode its protobuf reply.
trait Signal {
    type Request: Message + Default + serde::de::DeserializeOwned;
    const NAME: &'static str;
    /// The JSON field of the partial-success count.
    const REJECTED_FIELD: &'static str;
    fn accept(ingest: &Ingest, request: &Self::Request) -> Result<Accepted, IngestError>;
    /// Accepts a protobuf body.
    fn accept_protobuf(ingest: &Ingest, body: &Bytes) -> Result<Accepted, IngestError> {
        Self::accept(ingest, &decode(Encoding::Protobuf, body)?)
    }
    fn reply(accepted: &Accepted) -> Vec<u8>;
}

struct Traces;
struct Logs;

impl Signal for Traces {
    type Request = ExportTraceServiceRequest;
    const NAME: &'static str = "traces";
    const REJECTED_FIELD: &'static str = "rejectedSpans";
    fn accept(ingest: &Ingest, request: &Self::Request) -> Result<Accepted, IngestError> {
        ingest.accept_traces(request, Transport::Http)
    }
    /// Read by the selective wire reader, not decoded by prost.
    fn accept_protobuf(ingest: &Ingest, body: &Bytes) -> Result<Accepted, IngestError> {
        ingest.accept_traces_protobuf(body, Transport::Http)
    }
    fn reply(a: &Accepted) -> Vec<u8> {
        a.trace_response().encode_to_vec()
    }
}

impl Signal for Logs {
    type Request = ExportLogsServiceRequest;
    const NAME: &'static str = "logs";
    const REJECTED_FIELD: &'static str = "rejectedLogRecords";
    fn accept(ingest: &Ingest, request: &Self::Request) -> Result<Accepted, IngestError> {
        ingest.accept_logs(request, Transport::Http)
    }
    fn reply(a: &Accepted) -> Vec<u8> {
        a.logs_response().encode_to_vec()
    }
}

async fn traces(state: State<HttpState>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    export::<Traces>(state, headers, body)
}

async fn logs(state: State<HttpState>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    export::<Logs>(state, headers, body)
}

/// Decodes, accepts and answers one export request of signal `S`.
fn export<S: Signal>(State(state): State<HttpState>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let result = (|| {
        let encoding = media_type(&headers)?;
        let body = body_bytes(body, state.max_body)?;
        let accepted = match encoding {
            Encoding::Protobuf => S::accept_protobuf(&state.ingest, &body)?,
            Encoding::Json => S::accept(&state.ingest, &decode(encoding, &body)?)?,
        };
        Ok((encoding, accepted))
    })();
    match result {
        Ok((Encoding::Protobuf, accepted)) => ok(Encoding::Protobuf, S::reply(&accepted)),
        Ok((Encoding::Json, accepted)) => ok(Encoding::Json, json_partial(S::REJECTED_FIELD, accepted.rejected, &accepted.message)),
        Err(error) => {
            state.ingest.count_refused(S::NAME, Transport::Http, &error);
            to_response(error, media_type(&headers).unwrap_or(Encoding::Json))
        }
    }
}

/// OTLP/JSON response body: `{}` on full success (not `{"partialSuccess":null}`), int64 as a string.
fn json_partial(field: &str, rejected: i64, message: &str) -> Vec<u8> {
    if rejected == 0 && message.is_empty() {
        return b"{}".to_vec();
    }
    let mut partial = serde_json::Map::new();
    partial.insert(field.to_owned(), serde_json::Value::String(rejected.to_string()));
    partial.insert("errorMessage".to_owned(), serde_json::Value::String(message.to_owned()));
    serde_json::json!({ "partialSuccess": partial }).to_string().into_bytes()
}

fn ok(encoding: Encoding, body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, encoding.content_type())], body).into_response()
}

/// Maps an ingest error to its HTTP response: the status code, `Retry-After` when retryable,
/// and a `google.rpc.Status` body in the request's encoding.
fn to_response(error: IngestError, encoding: Encoding) -> Response {
    let (status, retry_after) = match &error {
        IngestError::Invalid(_) => (StatusCode::BAD_REQUEST, None),
        IngestError::Overloaded { retry_after } => (StatusCode::SERVICE_UNAVAILABLE, Some(retry_after.as_secs_f64().ceil().max(1.0) as u64)),
        IngestError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, Some(1)),
        IngestError::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, None),
        IngestError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, None),
    };
    let message = error.to_string();
    let body = match encoding {
        Encoding::Protobuf => tonic_types::pb::Status { code: 0, message, details: vec![] }.encode_to_vec(),
        Encoding::Json => serde_json::json!({ "message": message }).to_string().into_bytes(),
    };
    let mut response = (status, [(header::CONTENT_TYPE, encoding.content_type())], body).into_response();
    if let Some(seconds) = retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if matches!(error, IngestError::TooLarge { .. }) {
        // The rest of the body was never read: the connection cannot be reused.
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}
