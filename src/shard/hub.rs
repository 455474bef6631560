//! The shard's side of the stream: numbers each delta frame, keeps the recent ones (bounded in
//! bytes) for evaluators that reconnect, and hands live frames to every subscriber.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::frame::{Frame, encode};
use crate::aggregate::image::AggregatorImage;
use crate::time::Timestamp;

/// A request to the pipeline for its whole windows and the sequence number they are as of
/// (it flushes its pending delta first, so the image holds exactly the frames up to it).
pub type ImageRequest = oneshot::Sender<(u64, AggregatorImage)>;

pub struct Hub {
    pub shard: String,
    /// Changes at every start: frames of another incarnation cannot be resumed.
    pub incarnation: u64,
    state: Mutex<State>,
    live: broadcast::Sender<(u64, Bytes)>,
    /// To the pipeline, for bootstraps.
    pub images: mpsc::Sender<ImageRequest>,
}

struct State {
    seq: u64,
    recent: VecDeque<(u64, Bytes)>,
    bytes: usize,
    max_bytes: usize,
}

/// Where a subscriber starts.
pub struct Start {
    pub hello: Frame,
    /// Frames after the subscriber's position still held (sent before the live ones).
    pub backlog: Vec<(u64, Bytes)>,
    pub live: broadcast::Receiver<(u64, Bytes)>,
}

impl Hub {
    pub fn new(shard: String, max_bytes: usize, images: mpsc::Sender<ImageRequest>) -> Hub {
        // Live frames a slow subscriber may fall behind by before it is cut off (it then
        // reconnects and resumes from `recent`).
        let (live, _) = broadcast::channel(1024);
        let incarnation = rand::random::<u64>() | 1;
        Hub { shard, incarnation, state: Mutex::new(State { seq: 0, recent: VecDeque::new(), bytes: 0, max_bytes }), live, images }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent state (pushes and pops only).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last sequence number published.
    pub fn seq(&self) -> u64 {
        self.state().seq
    }

    /// Publishes frame `seq` (the next one: the encoder hands them over in order).
    pub fn publish_encoded(&self, seq: u64, bytes: Bytes) {
        let mut state = self.state();
        debug_assert_eq!(seq, state.seq + 1, "frames are published in order");
        state.seq = seq;
        state.bytes += bytes.len();
        state.recent.push_back((seq, bytes.clone()));
        while state.bytes > state.max_bytes && state.recent.len() > 1 {
            if let Some((_, old)) = state.recent.pop_front() {
                state.bytes -= old.len();
            }
        }
        // No subscriber is not an error.
        let _ = self.live.send((seq, bytes));
    }

    /// Images and encodes the deltas the pipeline hands over, in order, off the pipeline's
    /// thread (imaging 10,000 changed series took 18–38 ms: a tick's worth), and publishes them.
    pub async fn encode_frames(self: std::sync::Arc<Self>, mut deltas: mpsc::Receiver<(u64, crate::aggregate::Aggregator, Timestamp)>) {
        while let Some((seq, delta, at)) = deltas.recv().await {
            let encoded = tokio::task::spawn_blocking(move || encode(&Frame::Delta { seq, at: at.as_millis(), delta: delta.image() })).await;
            match encoded {
                Ok(bytes) => self.publish_encoded(seq, bytes),
                // Only a panic in the encoder: evaluators will see the missing frame as a gap.
                Err(e) => tracing::error!(error = %e, seq, "cannot encode a shard frame"),
            }
        }
    }

    /// Where a subscriber at `after` starts: resumed when every frame after its position is
    /// still held; else (another incarnation, or too far behind) from now on, a gap.
    /// `bootstrap_at`: the subscriber has nothing and gets the whole windows as of that
    /// sequence number, then the frames after it.
    pub fn start(&self, after: Option<(u64, u64)>, bootstrap_at: Option<u64>) -> Start {
        let state = self.state();
        // Subscribed under the lock: no frame falls between the backlog and the live ones.
        let live = self.live.subscribe();
        let (resumed, from) = match (bootstrap_at, after) {
            (Some(seq), _) => (false, seq),
            (None, Some((incarnation, seq))) if incarnation == self.incarnation => {
                let oldest = state.recent.front().map_or(state.seq + 1, |(s, _)| *s);
                if seq + 1 >= oldest && seq <= state.seq { (true, seq) } else { (false, state.seq) }
            }
            (None, _) => (false, state.seq),
        };
        let backlog = state.recent.iter().filter(|(s, _)| *s > from).cloned().collect();
        let hello = Frame::Hello { shard: self.shard.clone(), incarnation: self.incarnation, seq: from, resumed, bootstrap: bootstrap_at.is_some() };
        Start { hello, backlog, live }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Aggregator;

    fn hub(max_bytes: usize) -> Hub {
        Hub::new("s0".into(), max_bytes, mpsc::channel(1).0)
    }

    /// Publishes an empty delta as the next frame, as the encoder would.
    fn publish(h: &Hub, t: u64) {
        let seq = h.seq() + 1;
        h.publish_encoded(seq, encode(&Frame::Delta { seq, at: t, delta: Aggregator::new(1).image() }));
    }

    fn hello(start: &Start) -> (u64, bool) {
        match start.hello {
            Frame::Hello { seq, resumed, .. } => (seq, resumed),
            _ => unreachable!("the first frame is a hello"),
        }
    }

    #[test]
    fn a_reconnect_resumes_from_the_buffer_or_is_told_of_its_gap() {
        let h = hub(1 << 20);
        for t in 0..5 {
            publish(&h, t);
        }
        let resumed = h.start(Some((h.incarnation, 2)), None);
        assert_eq!(hello(&resumed), (2, true));
        assert_eq!(resumed.backlog.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![3, 4, 5], "every frame after its position");
        let other = h.start(Some((h.incarnation + 2, 2)), None);
        assert_eq!(hello(&other), (5, false), "another incarnation: a gap, then only new frames");
        assert!(other.backlog.is_empty());
        let ahead = h.start(Some((h.incarnation, 9)), None);
        assert!(!hello(&ahead).1, "a position ahead of the shard is not resumable");
        let boot = h.start(None, Some(4));
        assert_eq!(boot.backlog.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![5], "after the image's sequence number");
    }

    #[test]
    fn the_buffer_is_bounded_and_what_fell_out_is_a_gap() {
        let one = encode(&Frame::Delta { seq: 1, at: 0, delta: Aggregator::new(1).image() }).len();
        let h = hub(one * 3);
        for t in 0..10 {
            publish(&h, t);
        }
        let old = h.start(Some((h.incarnation, 2)), None);
        assert_eq!(hello(&old), (10, false), "frames 3.. are gone: a gap");
        let recent = h.start(Some((h.incarnation, 8)), None);
        assert_eq!(hello(&recent), (8, true));
        assert_eq!(recent.backlog.len(), 2);
    }
}
