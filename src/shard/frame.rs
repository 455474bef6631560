//! What travels from a shard to an evaluator: one request, then frames, each postcard-encoded
//! in one gRPC message ([`BytesCodec`] moves the bytes; both ends are flagguard).

use bytes::{Buf, BufMut, Bytes};
use serde::{Deserialize, Serialize};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::aggregate::image::AggregatorImage;

/// An evaluator's subscription: where it is in this shard's stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Subscribe {
    /// The evaluator's name (the shard's log).
    pub evaluator: String,
    /// `(incarnation, last sequence number applied)`; `None`: nothing yet (bootstrap).
    pub after: Option<(u64, u64)>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Frame {
    /// First: who the shard is and whether what follows continues the evaluator's position
    /// (`resumed`), starts with a bootstrap (`bootstrap`), or neither (a gap: the frames after
    /// the evaluator's position are gone).
    Hello { shard: String, incarnation: u64, seq: u64, resumed: bool, bootstrap: bool },
    /// Part of the shard's whole windows as of `seq` (bootstrap); `last` ends them.
    Image { seq: u64, part: AggregatorImage, last: bool },
    /// What the shard's windows gained since the frame before (`at`: the shard's clock, ms).
    Delta { seq: u64, at: u64, delta: AggregatorImage },
}

pub fn encode<T: Serialize>(value: &T) -> Bytes {
    // Plain data into a Vec: cannot fail.
    Bytes::from(postcard::to_stdvec(value).unwrap_or_default())
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|e| format!("undecodable frame: {e}"))
}

/// Messages as bytes, both ways.
#[derive(Clone, Copy, Debug, Default)]
pub struct BytesCodec;

impl Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = BytesCodec;
    type Decoder = BytesCodec;
    fn encoder(&mut self) -> Self {
        BytesCodec
    }
    fn decoder(&mut self) -> Self {
        BytesCodec
    }
}

impl Encoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
