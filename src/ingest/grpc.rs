//! OTLP/gRPC: `TraceService` and `LogsService` on one tonic server (gzip accepted and sent).

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse};
use prost::Message;
use tonic::codec::CompressionEncoding;
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

pub struct GrpcTraces(pub Arc<Ingest>);
pub struct GrpcLogs(pub Arc<Ingest>);

#[tonic::async_trait]
impl TraceService for GrpcTraces {
    async fn export(&self, request: Request<ExportTraceServiceRequest>) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let Accepted { rejected, message } = self.0.accept_traces(request.get_ref(), Transport::Grpc).map_err(to_status)?;
        let partial_success = (rejected > 0 || !message.is_empty()).then_some(ExportTracePartialSuccess { rejected_spans: rejected, error_message: message });
        Ok(Response::new(ExportTraceServiceResponse { partial_success }))
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
    let traces = TraceServiceServer::new(GrpcTraces(ingest.clone()))
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max_message);
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
