//! The evaluator's side: one task per shard that subscribes from the position the pipeline
//! holds, forwards the frames, and reconnects after a break. It decides nothing: the pipeline
//! applies the frames, keeps the positions and counts the gaps ([`crate::pipeline`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::PathAndQuery;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::frame::{BytesCodec, Frame, Subscribe, decode, encode};
use super::{MAX_FRAME, PATH};

/// What the pipeline receives from a shard's task.
#[derive(Debug)]
pub enum Input {
    Frame {
        shard: String,
        frame: Frame,
    },
    /// The stream broke (or never came up): `why`.
    Disconnected {
        shard: String,
        why: String,
    },
}

/// Each shard's (incarnation, last sequence number applied), written by the pipeline.
pub type Positions = Arc<Mutex<HashMap<String, (u64, u64)>>>;

pub struct Subscriber {
    pub shard: String,
    pub evaluator: String,
    pub token: Option<String>,
    pub reconnect: Duration,
    pub positions: Positions,
    pub inputs: mpsc::Sender<Input>,
    /// Set once the pipeline restored its checkpoint (positions are known only then).
    pub ready: watch::Receiver<bool>,
}

impl Subscriber {
    pub async fn run(mut self, stop: CancellationToken) {
        if self.ready.wait_for(|r| *r).await.is_err() {
            return;
        }
        loop {
            let why = tokio::select! {
                why = self.session() => why,
                _ = stop.cancelled() => return,
            };
            tracing::warn!(shard = %self.shard, error = %why, "shard stream broken; reconnecting");
            if self.inputs.send(Input::Disconnected { shard: self.shard.clone(), why }).await.is_err() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(self.reconnect) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// One connection, until it breaks: the reason.
    async fn session(&self) -> String {
        let after = self.positions.lock().unwrap_or_else(|p| p.into_inner()).get(&self.shard).copied();
        let endpoint = match tonic::transport::Endpoint::from_shared(self.shard.clone()) {
            Ok(e) => e.connect_timeout(Duration::from_secs(5)).http2_keep_alive_interval(Duration::from_secs(10)).keep_alive_timeout(Duration::from_secs(10)),
            Err(e) => return format!("bad shard address: {e}"),
        };
        let channel = match endpoint.connect().await {
            Ok(c) => c,
            Err(e) => return format!("cannot connect: {e}"),
        };
        let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(MAX_FRAME);
        if let Err(e) = grpc.ready().await {
            return format!("not ready: {e}");
        }
        let mut request = tonic::Request::new(encode(&Subscribe { evaluator: self.evaluator.clone(), after }));
        if let Some(token) = &self.token
            && let Ok(value) = format!("Bearer {token}").parse()
        {
            request.metadata_mut().insert("authorization", value);
        }
        let mut stream = match grpc.server_streaming(request, PathAndQuery::from_static(PATH), BytesCodec).await {
            Ok(r) => r.into_inner(),
            Err(status) => return format!("refused: {status}"),
        };
        loop {
            match stream.message().await {
                Ok(Some(bytes)) => {
                    let frame = match decode::<Frame>(&bytes) {
                        Ok(f) => f,
                        Err(e) => return e,
                    };
                    if self.inputs.send(Input::Frame { shard: self.shard.clone(), frame }).await.is_err() {
                        return "the pipeline stopped".into();
                    }
                }
                Ok(None) => return "the shard ended the stream".into(),
                Err(status) => return format!("stream error: {status}"),
            }
        }
    }
}
