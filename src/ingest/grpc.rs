//! OTLP/gRPC: `TraceService` and `LogsService` on one tonic server (gzip accepted and sent).
//! Both take the request's bytes: traces are read by the selective [`super::wire`] reader; logs
//! (rarer, and rarely flag evaluations) are decoded by prost.

use std::marker::PhantomData;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EnabledCompressionEncodings, EncodeBuf, Encoder};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::{Ingest, IngestError, Transport};

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

/// An OTLP export service (`TraceService`, `LogsService`). Unlike the generated servers it
/// does not decode the request in tonic's codec: [`RawCodec`] hands over the request's bytes
/// and [`Export::export`] reads them — traces with the selective [`super::wire`] reader, logs
/// with prost — so that an undecodable request is INVALID_ARGUMENT and counted, where the
/// generated server answers INTERNAL. Compression, the message size limit and the status
/// mapping are tonic's, as for the generated servers.
pub struct RawServer<E> {
    ingest: Arc<Ingest>,
    max_message: usize,
    export: PhantomData<fn() -> E>,
}

impl<E> Clone for RawServer<E> {
    fn clone(&self) -> Self {
        RawServer { ingest: self.ingest.clone(), max_message: self.max_message, export: PhantomData }
    }
}

/// One signal's export call.
pub trait Export: 'static {
    const SERVICE: &'static str;
    const PATH: &'static str;
    const SIGNAL: &'static str;
    type Response: Message + Default + Send + 'static;
    fn export(ingest: &Ingest, request: &[u8]) -> Result<Self::Response, IngestError>;
}

pub struct Traces;

impl Export for Traces {
    const SERVICE: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    const PATH: &'static str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    const SIGNAL: &'static str = "traces";
    type Response = ExportTraceServiceResponse;

    fn export(ingest: &Ingest, request: &[u8]) -> Result<Self::Response, IngestError> {
        Ok(ingest.accept_traces_protobuf(request, Transport::Grpc)?.trace_response())
    }
}

pub struct Logs;

impl Export for Logs {
    const SERVICE: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
    const PATH: &'static str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
    const SIGNAL: &'static str = "logs";
    type Response = ExportLogsServiceResponse;

    fn export(ingest: &Ingest, request: &[u8]) -> Result<Self::Response, IngestError> {
        let request = ExportLogsServiceRequest::decode(request).map_err(|e| IngestError::Invalid(format!("failed to decode protobuf: {e}")))?;
        Ok(ingest.accept_logs(&request, Transport::Grpc)?.logs_response())
    }
}

impl<E: Export> tonic::server::NamedService for RawServer<E> {
    const NAME: &'static str = E::SERVICE;
}

impl<E, B> tonic::codegen::Service<http::Request<B>> for RawServer<E>
where
    E: Export,
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
        if request.uri().path() != E::PATH {
            return Box::pin(async { Ok(Status::unimplemented("unknown method").into_http()) });
        }
        let call = ExportCall::<E>(self.ingest.clone(), PhantomData);
        let max_message = self.max_message;
        Box::pin(async move {
            let mut gzip = EnabledCompressionEncodings::default();
            gzip.enable(CompressionEncoding::Gzip);
            let mut grpc = tonic::server::Grpc::new(RawCodec::<E::Response>(PhantomData))
                .apply_compression_config(gzip, gzip)
                .apply_max_message_size_config(Some(max_message), None);
            Ok(grpc.unary(call, request).await)
        })
    }
}

struct ExportCall<E>(Arc<Ingest>, PhantomData<fn() -> E>);

impl<E: Export> tonic::server::UnaryService<Bytes> for ExportCall<E> {
    type Response = E::Response;
    type Future = std::future::Ready<Result<Response<Self::Response>, Status>>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let exported = E::export(&self.0, request.get_ref()).inspect_err(|error| {
            // Overload and shutdown are counted where the batch is refused.
            if matches!(error, IngestError::Invalid(_)) {
                self.0.count_refused(E::SIGNAL, Transport::Grpc, error);
            }
        });
        std::future::ready(exported.map(Response::new).map_err(to_status))
    }
}

/// Decodes a gRPC message to its bytes (no copy: tonic's buffer is split off) and encodes the
/// response `R` with prost.
struct RawCodec<R>(PhantomData<fn() -> R>);

impl<R: Message + Send + 'static> Codec for RawCodec<R> {
    type Encode = R;
    type Decode = Bytes;
    type Encoder = RawCodec<R>;
    type Decoder = RawCodec<R>;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec(PhantomData)
    }
}

impl<R: Message + Send + 'static> Decoder for RawCodec<R> {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl<R: Message + Send + 'static> Encoder for RawCodec<R> {
    type Item = R;
    type Error = Status;

    fn encode(&mut self, item: R, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst).map_err(|e| Status::internal(e.to_string()))
    }
}

/// Builds the tonic router with both services; `max_message` applies after decompression.
/// `auth` runs as an interceptor, before the message is decoded.
pub fn router(ingest: Arc<Ingest>, max_message: usize, auth: super::OtlpAuth) -> tonic::service::Routes {
    let traces = RawServer::<Traces> { ingest: ingest.clone(), max_message, export: PhantomData };
    let logs = RawServer::<Logs> { ingest, max_message, export: PhantomData };
    let check = move |request: Request<()>| -> Result<Request<()>, Status> {
        let header = request.metadata().get("authorization").map(|v| v.as_bytes());
        if auth.allows(header, Transport::Grpc) { Ok(request) } else { Err(Status::unauthenticated("a valid bearer token is required")) }
    };
    tonic::service::Routes::new(tonic::service::interceptor::InterceptedService::new(traces, check.clone()))
        .add_service(tonic::service::interceptor::InterceptedService::new(logs, check))
}
