//! OTLP/gRPC: `TraceService` and `LogsService` on one tonic server (gzip accepted and sent).
//! Traces are read from the request's bytes by the selective [`super::wire`] reader; logs
//! (rarer, and rarely flag evaluations) are decoded by prost.

use std::sync::Arc;

use bytes::{Buf, Bytes};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTracePartialSuccess, ExportTraceServiceResponse};
use prost::Message;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EnabledCompressionEncodings, EncodeBuf, Encoder};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::{Accepted, Ingest, IngestError, Transport};

/// Maps an ingest error to its gRPC status. Overload carries RetryInfo twice: in the standard
/// status details and as the `google.rpc.retryinfo-bin` trailer the Python exporter reads.
pub fn to_status(error: IngestError) -> Status {
    match error {
        IngestError::Overloaded { retry_after } => {
            let mut status = Status::with_error_details(Code::Unavailable, error.to_string(), ErrorDetails::with_retry_info(Some(retry_after)));
            let info = tonic_types::pb::RetryInfo {
                retry_delay: Some(prost_types::Duration { seconds: retry_after.as_secs() as i64, nanos: retry_after.subsec_nanos() as i32 }),
            };
            status.metadata_mut().insert_bin("google.rpc.retryinfo-bin", MetadataValue::from_bytes(&info.encode_to_vec()));
            status
        }
        IngestError::ShuttingDown => Status::unavailable(error.to_string()),
        IngestError::TooLarge { .. } => Status::resource_exhausted(error.to_string()),
        IngestError::Invalid(_) | IngestError::UnsupportedMediaType(_) => Status::invalid_argument(error.to_string()),
    }
}

pub struct GrpcLogs(pub Arc<Ingest>);

/// The OTLP `TraceService`. Unlike the generated server it does not decode the request with
/// prost: [`RawCodec`] hands over the request's bytes and [`Ingest::accept_traces_protobuf`]
/// reads them with the selective [`super::wire`] reader. Compression, the message size limit
/// and the status mapping are tonic's, as for the generated server.
#[derive(Clone)]
pub struct TraceServer {
    ingest: Arc<Ingest>,
    max_message: usize,
}

const TRACE_SERVICE: &str = "opentelemetry.proto.collector.trace.v1.TraceService";
const TRACE_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

impl tonic::server::NamedService for TraceServer {
    const NAME: &'static str = TRACE_SERVICE;
}

impl<B> tonic::codegen::Service<http::Request<B>> for TraceServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != TRACE_EXPORT {
            return Box::pin(async { Ok(Status::unimplemented("unknown method").into_http()) });
        }
        let export = ExportTraces(self.ingest.clone());
        let max_message = self.max_message;
        Box::pin(async move {
            let mut gzip = EnabledCompressionEncodings::default();
            gzip.enable(CompressionEncoding::Gzip);
            let mut grpc = tonic::server::Grpc::new(RawCodec).apply_compression_config(gzip, gzip).apply_max_message_size_config(Some(max_message), None);
            Ok(grpc.unary(export, request).await)
        })
    }
}

struct ExportTraces(Arc<Ingest>);

impl tonic::server::UnaryService<Bytes> for ExportTraces {
    type Response = ExportTraceServiceResponse;
    type Future = std::future::Ready<Result<Response<Self::Response>, Status>>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let accepted = self.0.accept_traces_protobuf(request.get_ref(), Transport::Grpc).inspect_err(|error| {
            if matches!(error, IngestError::Invalid(_)) {
                self.0.count_refused("traces", Transport::Grpc, error);
            }
        });
        std::future::ready(accepted.map_err(to_status).map(|Accepted { rejected, message }| {
            let partial_success =
                (rejected > 0 || !message.is_empty()).then_some(ExportTracePartialSuccess { rejected_spans: rejected, error_message: message });
            Response::new(ExportTraceServiceResponse { partial_success })
        }))
    }
}

/// Decodes a gRPC message to its bytes (no copy: tonic's buffer is split off) and encodes the
/// trace service's response with prost.
struct RawCodec;

impl Codec for RawCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Encoder for RawCodec {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn encode(&mut self, item: ExportTraceServiceResponse, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst).map_err(|e| Status::internal(e.to_string()))
    }
}

#[tonic::async_trait]
impl LogsService for GrpcLogs {
    async fn export(&self, request: Request<ExportLogsServiceRequest>) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let Accepted { rejected, message } = self.0.accept_logs(request.get_ref(), Transport::Grpc).map_err(to_status)?;
        let partial_success =
            (rejected > 0 || !message.is_empty()).then_some(ExportLogsPartialSuccess { rejected_log_records: rejected, error_message: message });
        Ok(Response::new(ExportLogsServiceResponse { partial_success }))
    }
}

/// Builds the tonic router with both services; `max_message` applies after decompression.
/// `auth` runs as an interceptor, before the message is decoded.
pub fn router(ingest: Arc<Ingest>, max_message: usize, auth: super::OtlpAuth) -> tonic::service::Routes {
    let traces = TraceServer { ingest: ingest.clone(), max_message };
    let logs = LogsServiceServer::new(GrpcLogs(ingest))
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max_message);
    let check = move |request: Request<()>| -> Result<Request<()>, Status> {
        let header = request.metadata().get("authorization").map(|v| v.as_bytes());
        if auth.allows(header, Transport::Grpc) { Ok(request) } else { Err(Status::unauthenticated("a valid bearer token is required")) }
    };
    tonic::service::Routes::new(tonic::service::interceptor::InterceptedService::new(traces, check.clone()))
        .add_service(tonic::service::interceptor::InterceptedService::new(logs, check))
}
