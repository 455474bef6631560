//! The shard's gRPC stream (`flagguard.shard.v1.Shard/Subscribe`, server streaming): one
//! [`Subscribe`] in, then a hello, a bootstrap's image parts when the evaluator has nothing,
//! the frames it missed and the live ones. Hand-written like the OTLP services
//! (`ingest::grpc`): both ends are flagguard and move postcard bytes, so there is no .proto to
//! generate from.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::frame::{BytesCodec, Frame, Subscribe, decode, encode};
use super::hub::Hub;
use super::{MAX_FRAME, PATH, SERVICE};

/// Series per bootstrap frame.
const SERIES_PER_PART: usize = 2_000;

#[derive(Clone)]
pub struct StreamServer {
    hub: Arc<Hub>,
    token: Option<Arc<str>>,
    /// Ends every stream (a stopping shard closes its connections; evaluators reconnect).
    stop: tokio_util::sync::CancellationToken,
}

impl StreamServer {
    pub fn new(hub: Arc<Hub>, token: Option<String>, stop: tokio_util::sync::CancellationToken) -> Self {
        StreamServer { hub, token: token.map(Into::into), stop }
    }
}

impl tonic::server::NamedService for StreamServer {
    const NAME: &'static str = SERVICE;
}

impl<B> tonic::codegen::Service<http::Request<B>> for StreamServer
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
        if request.uri().path() != PATH {
            return Box::pin(async { Ok(Status::unimplemented("unknown method").into_http()) });
        }
        if let Some(token) = &self.token {
            let sent = request.headers().get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
            let ok = sent.is_some_and(|s| subtle::ConstantTimeEq::ct_eq(s.as_bytes(), token.as_bytes()).into());
            if !ok {
                return Box::pin(async { Ok(Status::unauthenticated("a valid bearer token is required").into_http()) });
            }
        }
        let call = SubscribeCall(self.hub.clone(), self.stop.clone());
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(BytesCodec).apply_max_message_size_config(Some(1 << 20), Some(MAX_FRAME));
            Ok(grpc.server_streaming(call, request).await)
        })
    }
}

struct SubscribeCall(Arc<Hub>, tokio_util::sync::CancellationToken);

impl tonic::server::ServerStreamingService<Bytes> for SubscribeCall {
    type Response = Bytes;
    type ResponseStream = ReceiverStream<Result<Bytes, Status>>;
    type Future = tonic::codegen::BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let (hub, stop) = (self.0.clone(), self.1.clone());
        Box::pin(async move {
            let subscribe: Subscribe = decode(request.get_ref()).map_err(Status::invalid_argument)?;
            // A bootstrap: the pipeline's whole windows, as of a sequence number.
            let image = match subscribe.after {
                Some(_) => None,
                None => {
                    let (reply, answer) = oneshot::channel();
                    hub.images.send(reply).await.map_err(|_| Status::unavailable("shutting down"))?;
                    // A pipeline that cannot answer (stopping, stuck): the evaluator retries.
                    match tokio::time::timeout(std::time::Duration::from_secs(60), answer).await {
                        Ok(Ok(image)) => Some(image),
                        Ok(Err(_)) => return Err(Status::unavailable("shutting down")),
                        Err(_) => return Err(Status::unavailable("the shard's windows were not imaged in time; retry")),
                    }
                }
            };
            let start = hub.start(subscribe.after, image.as_ref().map(|(seq, _)| *seq));
            tracing::info!(evaluator = %subscribe.evaluator, bootstrap = image.is_some(), "evaluator subscribed");
            let (tx, rx) = mpsc::channel(16);
            tokio::spawn(async move {
                // Frames up to the hello's position are the evaluator's already (or in the image);
                // the backlog continues from there, the live frames after it.
                let hello_seq = match start.hello {
                    Frame::Hello { seq, .. } => seq,
                    _ => 0,
                };
                let mut frames = vec![encode(&start.hello)];
                if let Some((seq, image)) = image {
                    let parts = image.split(SERIES_PER_PART);
                    let n = parts.len();
                    frames.extend(parts.into_iter().enumerate().map(|(i, part)| encode(&Frame::Image { seq, part, last: i + 1 == n })));
                }
                let mut last = start.backlog.last().map_or(hello_seq, |(seq, _)| *seq);
                frames.extend(start.backlog.into_iter().map(|(_, frame)| frame));
                for frame in frames {
                    if tx.send(Ok(frame)).await.is_err() {
                        return;
                    }
                }
                let mut live = start.live;
                loop {
                    let next = tokio::select! {
                        next = live.recv() => next,
                        _ = stop.cancelled() => return,
                    };
                    match next {
                        Ok((seq, frame)) if seq > last => {
                            last = seq;
                            if tx.send(Ok(frame)).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        // Fell behind the live frames: end the stream; the evaluator resumes
                        // from the buffer when it reconnects.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            let _ = tx.send(Err(Status::resource_exhausted("fell behind; resume"))).await;
                            return;
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            });
            Ok(Response::new(ReceiverStream::new(rx)))
        })
    }
}

/// Serves the stream on `listener` until `stop`.
pub async fn serve(listener: tokio::net::TcpListener, server: StreamServer) {
    let stop = server.stop.clone();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let served = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .add_service(server)
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "shard stream server failed");
    }
}
