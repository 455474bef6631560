//! flagguard-load: the performance comparison's tools (`scripts/bench-load.sh` runs them).
//!
//! - `null`: a null OTLP/gRPC receiver built from the same crates as flagguard (tonic + prost):
//!   it decodes each export request and counts its spans, nothing else.
//! - `drive`: a load generator. It pre-encodes realistic export requests once (512 spans of ~10
//!   attributes, one flag evaluation per trace) and only patches fresh trace ids into the bytes
//!   per send, over several connections, so that the generator is never the bottleneck; it
//!   reports spans/s and the receiver's CPU-seconds (from `/proc/PID/stat`).
//! - `memory`: fills flagguard's windows with N series over an hour of simulated time and reports
//!   RSS and bytes per series.
//! - `detect`: runs the real daemon under background load and measures, per probe, from the
//!   moment the OTLP request that completes a breach is accepted to the moment the flag server
//!   receives the kill.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use clap::{Parser, Subcommand};
use flagguard::cli::traffic::{Request, build, realistic};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Null OTLP receiver, gRPC and HTTP protobuf: prints `listening GRPC_ADDR HTTP_ADDR`, then
    /// decodes and counts.
    Null {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:0")]
        http_listen: SocketAddr,
    },
    /// Sends pre-encoded requests to `target` for `duration`; prints one JSON line.
    Drive {
        /// `http://HOST:PORT` of an OTLP/gRPC receiver (with `--http`: of an OTLP/HTTP one).
        target: String,
        /// OTLP/HTTP protobuf (`POST /v1/traces`, HTTP/1.1, one connection per request in
        /// flight) instead of gRPC.
        #[arg(long)]
        http: bool,
        /// The receiver's process id (for its CPU-seconds).
        #[arg(long)]
        pid: u32,
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Requests in flight per connection.
        #[arg(long, default_value_t = 2)]
        in_flight: usize,
        #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Load sent before measuring (connections up, heaps grown), not counted.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        warmup: Duration,
        /// Traces per request (5 spans each).
        #[arg(long, default_value_t = 103)]
        traces: u64,
        /// Requests per second over all connections; 0: as fast as the receiver takes them.
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
    },
    /// Windows memory with N series and an hour of history.
    Memory {
        #[arg(long, default_value_t = 10_000)]
        series: usize,
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        history: Duration,
        /// Seconds between two requests of one series.
        #[arg(long, default_value_t = 1)]
        every: u64,
        /// Also time a checkpoint of the filled windows (taken, encoded, written here, read
        /// back, restored) and report its size.
        #[arg(long)]
        checkpoint: Option<std::path::PathBuf>,
    },
    /// Bytes of a shard's delta frame per changed series: `--series` series each gaining
    /// `--requests` requests (of distinct users) within one frame.
    StreamBytes {
        #[arg(long, default_value_t = 10_000)]
        series: usize,
        #[arg(long, default_value_t = 1)]
        requests: u64,
        /// Frames per second (the shard's tick: 40 at 25 ms) for the bytes-per-second figure.
        #[arg(long, default_value_t = 40.0)]
        frames_per_second: f64,
    },
    /// Detection latency of the real daemon (`--flagguard` binary) under background load.
    Detect {
        #[arg(long)]
        flagguard: std::path::PathBuf,
        /// Background load in requests per second (each `--traces` traces).
        #[arg(long, default_value_t = 100.0)]
        background_rate: f64,
        #[arg(long, default_value_t = 103)]
        traces: u64,
        #[arg(long, default_value_t = 50)]
        probes: usize,
        /// Where the daemon runs: `embedded` (one process, SQLite), `postgres` (cluster mode on
        /// `--postgres`, this replica the leader) or `sharded` (the traffic to a shard, the rule
        /// and the kill on an evaluator subscribed to it).
        #[arg(long, default_value = "embedded")]
        topology: Topology,
        /// PostgreSQL URL for `--topology postgres` (an empty database).
        #[arg(long)]
        postgres: Option<String>,
    },
    /// Overload: the daemon's capacity measured, then twice that offered for `duration`, with a
    /// regression injected halfway and every refused request retried afterwards.
    Overload {
        #[arg(long)]
        flagguard: std::path::PathBuf,
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 103)]
        traces: u64,
        /// Offered load as a multiple of the measured capacity.
        #[arg(long, default_value_t = 2.0)]
        factor: f64,
    },
    /// Soak: mixed traffic for `duration` with kills and rule reloads, RSS sampled.
    Soak {
        #[arg(long)]
        flagguard: std::path::PathBuf,
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Background requests per second (each `--traces` traces of 5 spans).
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        #[arg(long, default_value_t = 103)]
        traces: u64,
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        probe_every: Duration,
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        reload_every: Duration,
        #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
        sample_every: Duration,
    },
}

/// The same allocator as flagguard, so that the null receiver is compared like for like.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let code = rt.block_on(async move {
        match cli.command {
            Cmd::Null { listen, http_listen } => null(listen, http_listen).await,
            Cmd::Drive { target, http, pid, connections, in_flight, duration, warmup, traces, rate } => {
                drive(&target, http, pid, connections, in_flight, warmup, duration, traces, rate).await
            }
            Cmd::StreamBytes { series, requests, frames_per_second } => stream_bytes(series, requests, frames_per_second),
            Cmd::Memory { series, history, every, checkpoint } => memory(series, history, every, checkpoint.as_deref()),
            Cmd::Detect { flagguard, background_rate, traces, probes, topology, postgres } => {
                detect(&flagguard, background_rate, traces, probes, topology, postgres.as_deref()).await
            }
            Cmd::Overload { flagguard, duration, traces, factor } => overload(&flagguard, duration, traces, factor).await,
            Cmd::Soak { flagguard, duration, rate, traces, probe_every, reload_every, sample_every } => {
                soak(&flagguard, duration, rate, traces, probe_every, reload_every, sample_every).await
            }
        }
    });
    std::process::exit(code);
}

// ---------------------------------------------------------------------------- null receiver

#[derive(Default, Clone)]
struct Null {
    spans: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Null {
    async fn export(&self, request: tonic::Request<ExportTraceServiceRequest>) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n: usize = request.get_ref().resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
        self.spans.fetch_add(n as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn null(listen: SocketAddr, http_listen: SocketAddr) -> i32 {
    let (listener, http_listener) = match (tokio::net::TcpListener::bind(listen).await, tokio::net::TcpListener::bind(http_listen).await) {
        (Ok(l), Ok(h)) => (l, h),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("null: bind {listen} / {http_listen}: {e}");
            return 1;
        }
    };
    println!("listening {} {}", listener.local_addr().expect("bound"), http_listener.local_addr().expect("bound"));
    let service = Null::default();
    // OTLP/HTTP protobuf: prost decode, count, an empty response (flagguard's body limit).
    let http_spans = service.spans.clone();
    let http = axum::Router::new()
        .route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| {
                let spans = http_spans.clone();
                async move {
                    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                        return (http::StatusCode::BAD_REQUEST, Vec::new());
                    };
                    let n: usize = request.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
                    spans.fetch_add(n as u64, Ordering::Relaxed);
                    (http::StatusCode::OK, ExportTraceServiceResponse::default().encode_to_vec())
                }
            }),
        )
        .layer(axum::extract::DefaultBodyLimit::max(16 << 20));
    tokio::spawn(async move { axum::serve(http_listener, http).await });
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    // The same limits flagguard's receiver uses.
    let server = tonic::transport::Server::builder().add_service(TraceServiceServer::new(service.clone()).max_decoding_message_size(16 << 20));
    let _ = server.serve_with_incoming_shutdown(incoming, async { tokio::signal::ctrl_c().await.ok().unwrap_or_default() }).await;
    eprintln!("null: {} spans", service.spans.load(Ordering::Relaxed));
    0
}

// ------------------------------------------------------------------------------- generator

/// Sends already-encoded export requests (bytes) and decodes the response.
#[derive(Clone, Default)]
struct RawCodec;

struct RawEncoder;
struct ResponseDecoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for ResponseDecoder {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, tonic::Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        ExportTraceServiceResponse::decode(bytes).map(Some).map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = RawEncoder;
    type Decoder = ResponseDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}

/// One pre-encoded request and where its trace ids are, to make them fresh per send.
struct Template {
    bytes: Vec<u8>,
    offsets: Vec<usize>,
    spans: u64,
}

impl Template {
    fn new(req: &ExportTraceServiceRequest) -> Template {
        let bytes = req.encode_to_vec();
        let ids: std::collections::HashSet<Vec<u8>> =
            req.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans).map(|s| s.trace_id.clone()).collect();
        let mut offsets = Vec::new();
        for id in &ids {
            let mut from = 0;
            while let Some(at) = bytes[from..].windows(id.len()).position(|w| w == id.as_slice()) {
                offsets.push(from + at);
                from += at + 1;
            }
        }
        let spans = req.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len() as u64).sum();
        Template { bytes, offsets, spans }
    }

    /// The request with every trace id's first 4 bytes XORed with `salt`.
    fn fresh(&self, salt: u32) -> Bytes {
        let mut out = self.bytes.clone();
        let salt = salt.to_le_bytes();
        for &off in &self.offsets {
            for (b, s) in out[off..off + 4].iter_mut().zip(salt) {
                *b ^= s;
            }
        }
        Bytes::from(out)
    }
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks())
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf").arg("CLK_TCK").output().ok().and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok()).unwrap_or(100.0)
}

fn rss_bytes(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// [`send`] bounded by `limit`: no answer in time is a DEADLINE_EXCEEDED (retried like a refusal).
async fn send_within(limit: Duration, channel: tonic::transport::Channel, body: Bytes) -> Result<(), tonic::Status> {
    tokio::time::timeout(limit, send(channel, body)).await.unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer in time")))
}

async fn send(channel: tonic::transport::Channel, body: Bytes) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = http::uri::PathAndQuery::from_static("/opentelemetry.proto.collector.trace.v1.TraceService/Export");
    grpc.unary(tonic::Request::new(body), path, RawCodec).await.map(|_| ())
}

/// Where `drive` sends: gRPC channels, or an HTTP/1.1 client and the `/v1/traces` URL.
#[derive(Clone)]
enum Transport {
    Grpc(tonic::transport::Channel),
    Http(reqwest::Client, Arc<str>),
}

impl Transport {
    async fn send(&self, body: Bytes) -> Result<(), String> {
        match self {
            Transport::Grpc(channel) => send(channel.clone(), body).await.map_err(|e| e.to_string()),
            Transport::Http(client, url) => {
                let response = client.post(&**url).header("content-type", "application/x-protobuf").body(body).send().await.map_err(|e| e.to_string())?;
                let status = response.status();
                let _ = response.bytes().await;
                if status.is_success() { Ok(()) } else { Err(status.to_string()) }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn drive(target: &str, http: bool, pid: u32, connections: usize, in_flight: usize, warmup: Duration, duration: Duration, traces: u64, rate: f64) -> i32 {
    let templates: Arc<Vec<Template>> = Arc::new((0..16).map(|seed| Template::new(&realistic(traces, seed))).collect());
    let spans_per_request = templates[0].spans;
    let mut channels = Vec::new();
    if http {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder().pool_max_idle_per_host(connections * in_flight).build().expect("HTTP client");
        channels.push(Transport::Http(client, format!("{}/v1/traces", target.trim_end_matches('/')).into()));
    }
    for _ in 0..connections {
        if http {
            break;
        }
        match tonic::transport::Endpoint::from_shared(target.to_owned()).map(|e| e.connect_lazy()) {
            Ok(c) => channels.push(Transport::Grpc(c)),
            Err(e) => {
                eprintln!("drive: {target}: {e}");
                return 3;
            }
        }
    }
    let (ok, refused, salt) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU32::new(1)));
    let start = Instant::now();
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(warmup.is_zero()));
    let workers = connections * in_flight;
    let per_worker = if rate > 0.0 { Some(Duration::from_secs_f64(workers as f64 / rate)) } else { None };
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (channel, templates, ok, refused, salt, measuring) =
            (channels[w % channels.len()].clone(), templates.clone(), ok.clone(), refused.clone(), salt.clone(), measuring.clone());
        tasks.push(tokio::spawn(async move {
            let mut next = Instant::now();
            while start.elapsed() < warmup + duration {
                let s = salt.fetch_add(1, Ordering::Relaxed);
                let body = templates[s as usize % templates.len()].fresh(s);
                let sent = channel.send(body).await;
                if measuring.load(Ordering::Relaxed) {
                    match sent {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => refused.fetch_add(1, Ordering::Relaxed),
                    };
                }
                if let Some(every) = per_worker {
                    next += every;
                    tokio::time::sleep_until(next.into()).await;
                }
            }
        }));
    }
    tokio::time::sleep(warmup).await;
    let cpu_start = cpu_seconds(pid);
    let measured_from = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let seconds = measured_from.elapsed().as_secs_f64();
    let cpu = cpu_start.zip(cpu_seconds(pid)).map(|(a, b)| b - a);
    let spans = ok.load(Ordering::Relaxed) * spans_per_request;
    let result = serde_json::json!({
        "target": target,
        "transport": if http { "http/protobuf" } else { "grpc" },
        "seconds": seconds,
        "requests_ok": ok.load(Ordering::Relaxed),
        "requests_refused": refused.load(Ordering::Relaxed),
        "spans_per_request": spans_per_request,
        "bytes_per_request": templates[0].bytes.len(),
        "spans_per_s": spans as f64 / seconds,
        "receiver_cpu_s": cpu,
        "spans_per_cpu_s": cpu.filter(|c| *c > 0.0).map(|c| spans as f64 / c),
        "receiver_rss_bytes": rss_bytes(&pid.to_string()),
    });
    println!("{result}");
    0
}

// ---------------------------------------------------------------------------------- memory

fn memory(series: usize, history: Duration, every: u64, checkpoint: Option<&std::path::Path>) -> i32 {
    use flagguard::aggregate::Aggregator;
    use flagguard::correlate::Sink;
    use flagguard::model::{Dims, FlagKey, Outcome, SpanId, TraceId, Variant};
    use flagguard::time::Timestamp;
    let before = rss_bytes("self").unwrap_or(0);
    let mut agg = Aggregator::new(series + 10);
    let keys: Vec<(FlagKey, Variant, Dims)> = (0..series)
        .map(|i| {
            // Every series distinct: 50 flags × 2 variants × 100 services (or fewer for small N).
            let dims = Dims { service: format!("svc-{}", (i / 2) % 100).into(), environment: "production".into(), region: "eu-west".into() };
            (FlagKey::new(None, &format!("flag-{}", i / 200)), Variant(if i % 2 == 0 { "on" } else { "off" }.into()), dims)
        })
        .collect();
    let start = Timestamp(1_700_000_000_000);
    let started = Instant::now();
    let mut n = 0u64;
    for t in (0..history.as_secs()).step_by(every.max(1) as usize) {
        let now = start.plus(Duration::from_secs(t));
        for (i, (flag, variant, dims)) in keys.iter().enumerate() {
            let outcome = Outcome {
                trace: TraceId([0; 16]),
                span: SpanId([0; 8]),
                dims: dims.clone(),
                error: (t as usize + i).is_multiple_of(50),
                latency_us: latency(t, i),
            };
            agg.observe(flag, variant, &outcome, None, now);
            n += 1;
        }
    }
    let after = rss_bytes("self").unwrap_or(0);
    let window_bytes = agg.bytes();
    let mut report = serde_json::json!({
        "series": agg.series_count(), "history_s": history.as_secs(), "requests": n, "fill_seconds": started.elapsed().as_secs_f64(),
        "rss_bytes": after, "rss_growth_bytes": after.saturating_sub(before), "window_bytes": window_bytes,
        "bytes_per_series": window_bytes / series.max(1), "rss_per_series": after.saturating_sub(before) / series.max(1) as u64,
    });
    if let Some(dir) = checkpoint {
        match time_checkpoint(&agg, dir, start.plus(history)) {
            Ok(timings) => report["checkpoint"] = timings,
            Err(e) => {
                eprintln!("checkpoint: {e}");
                return 1;
            }
        }
    }
    println!("{report}");
    0
}

fn stream_bytes(series: usize, requests: u64, frames_per_second: f64) -> i32 {
    use flagguard::aggregate::Aggregator;
    use flagguard::correlate::Sink;
    use flagguard::model::{Dims, FlagKey, Outcome, SpanId, TraceId, Variant};
    use flagguard::shard::frame::{Frame, encode};
    use flagguard::time::Timestamp;
    let mut delta = Aggregator::new(series + 10);
    let now = Timestamp(1_700_000_000_000);
    for i in 0..series {
        let dims = Dims { service: format!("svc-{}", (i / 2) % 100).into(), environment: "production".into(), region: "eu-west".into() };
        let (flag, variant) = (FlagKey::new(None, &format!("flag-{}", i / 200)), Variant(if i % 2 == 0 { "on" } else { "off" }.into()));
        for r in 0..requests {
            let mut trace = [0u8; 16];
            trace[..8].copy_from_slice(&(i as u64 * 1_000 + r).to_le_bytes());
            let outcome = Outcome { trace: TraceId(trace), span: SpanId([0; 8]), dims: dims.clone(), error: r % 50 == 0, latency_us: latency(r, i) };
            delta.observe(&flag, &variant, &outcome, Some((i as u64) << 20 | r), now);
        }
    }
    let started = Instant::now();
    let frame = encode(&Frame::Delta { seq: 1, at: now.as_millis(), delta: delta.image() });
    let encode_ms = started.elapsed().as_secs_f64() * 1000.0;
    let per_series = frame.len() as f64 / series.max(1) as f64;
    println!(
        "{}",
        serde_json::json!({
            "series": series, "requests_per_series": requests, "frame_bytes": frame.len(), "bytes_per_changed_series": per_series,
            "frames_per_second": frames_per_second, "bytes_per_second_per_changed_series": per_series * frames_per_second,
            "image_and_encode_ms": encode_ms,
        })
    );
    0
}

/// Times each step of a checkpoint of `agg` (no rules: the windows are what is large).
fn time_checkpoint(agg: &flagguard::aggregate::Aggregator, dir: &std::path::Path, now: flagguard::time::Timestamp) -> Result<serde_json::Value, String> {
    use flagguard::pipeline::checkpoint::{Checkpoint, FILE, decode, encode, write};
    use flagguard::rules::engine::{EngineSettings, RuleEngine};
    let settings =
        EngineSettings { sequential_fdr: true, stale_after: Duration::from_secs(300), max_concurrent_kills: 1, incident_window: Duration::from_secs(600) };
    let engine = RuleEngine::new(Default::default(), settings, Default::default(), now);
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1000.0;
    // As the pipeline takes it: a series at a time (the slowest one bounds how far a tick's
    // slice can overrun its budget).
    let t = Instant::now();
    let mut slowest_us = 0f64;
    let mut series = Vec::new();
    for key in agg.series_keys() {
        let one = Instant::now();
        series.extend(agg.image_of(&key));
        slowest_us = slowest_us.max(one.elapsed().as_secs_f64() * 1e6);
    }
    let image = Checkpoint {
        written_at: now.as_millis(),
        aggregator: agg.image_with(series),
        engine: engine.image(),
        restores_seen: vec![],
        restores_since: 0,
        shards: vec![],
    };
    let image_ms = ms(t);
    let t = Instant::now();
    let bytes = encode(&image).map_err(|e| e.to_string())?;
    let encode_ms = ms(t);
    let path = dir.join(FILE);
    let t = Instant::now();
    write(&path, &bytes).map_err(|e| e.to_string())?;
    let write_ms = ms(t);
    let t = Instant::now();
    let read = std::fs::read(&path).map_err(|e| e.to_string())?;
    let back = decode(&read).map_err(|e| e.to_string())?;
    let decode_ms = ms(t);
    let t = Instant::now();
    let mut restored = flagguard::aggregate::Aggregator::new(agg.max_series());
    let outcome = restored.restore(back.aggregator)?;
    let restore_ms = ms(t);
    Ok(serde_json::json!({
        "bytes": bytes.len(), "bytes_per_series": bytes.len() / agg.series_count().max(1), "restored_series": outcome.series,
        "image_ms": image_ms, "slowest_series_image_us": slowest_us, "encode_ms": encode_ms, "write_fsync_ms": write_ms, "read_decode_ms": decode_ms, "restore_ms": restore_ms,
    }))
}

/// A log-normal-ish latency (median 20 ms, σ 0.5), deterministic in (t, i): what request
/// latencies of one endpoint look like, so histograms hold a realistic number of distinct bins.
fn latency(t: u64, i: usize) -> u64 {
    let mut x = (t.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)).wrapping_add(0x1656_67B1_9E37_79F9);
    let mut uniform = || {
        x ^= x >> 33;
        x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        x ^= x >> 29;
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    let z = (uniform() + uniform() + uniform() - 1.5) * 2.0;
    (20_000.0 * (0.5 * z).exp()) as u64
}

// ------------------------------------------------------------------------------- detection

/// A real `flagguard serve` child with a rule guarding `probe-*` flags and a flag server that
/// remembers when each kill arrived.
/// Where the detection probe's daemon runs.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Topology {
    Embedded,
    Postgres,
    Sharded,
}

struct Harness {
    dir: tempfile::TempDir,
    child: tokio::process::Child,
    /// A sharded topology's evaluator and second shard (the child is then the first shard).
    others: Vec<tokio::process::Child>,
    /// Every process that takes the traffic (the shards; else the one daemon): requests go to
    /// them in turn, each request's traces to one of them, as a trace-ID router would.
    targets: Vec<tonic::transport::Channel>,
    channel: tonic::transport::Channel,
    kills: Arc<std::sync::Mutex<std::collections::HashMap<String, Instant>>>,
}

const PROBE_RULE: &str = "rules:\n  - name: probe\n    flag: \"probe-*\"\n    treatment: \"on\"\n    control: \"off\"\n    where: { service: payments }\n    when: [ { error_rate: { above: 0.3 } } ]\n    window: 10s\n    min_samples: 20\n    cooldown: 1h\n    action: { kill: hook }\n    mode: enforce\n";

/// Starts `flagguard serve --config CONFIG` and returns it with its "flagguard is running" line.
async fn serve(flagguard: &std::path::Path, config: &std::path::Path) -> Option<(tokio::process::Child, serde_json::Value)> {
    let mut child = tokio::process::Command::new(flagguard)
        .args(["serve", "--config"])
        .arg(config)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let stderr = child.stderr.take()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let mut tx = Some(tx);
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["message"] == "flagguard is running"
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(v);
            }
        }
    });
    match tokio::time::timeout(Duration::from_secs(30), rx).await {
        Ok(Ok(running)) => Some((child, running)),
        _ => None,
    }
}

impl Harness {
    async fn start(flagguard: &std::path::Path) -> Option<Harness> {
        Harness::start_as(flagguard, Topology::Embedded, None).await
    }

    async fn start_as(flagguard: &std::path::Path, topology: Topology, postgres: Option<&str>) -> Option<Harness> {
        use axum::routing::post;
        let dir = tempfile::tempdir().expect("temp dir");
        let kills: Arc<std::sync::Mutex<std::collections::HashMap<String, Instant>>> = Default::default();
        let app = axum::Router::new()
            .route(
                "/kill/{flag}",
                post({
                    let kills = kills.clone();
                    move |axum::extract::Path(flag): axum::extract::Path<String>| async move {
                        kills.lock().unwrap().entry(flag).or_insert_with(Instant::now);
                        "ok"
                    }
                }),
            )
            .into_make_service();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let hook = listener.local_addr().expect("bound");
        tokio::spawn(async move { axum::serve(listener, app).await });
        std::fs::create_dir_all(dir.path().join("rules")).expect("rules dir");
        std::fs::write(dir.path().join("rules/probe.yaml"), PROBE_RULE).expect("rule");
        let common = "[otlp]\ngrpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\n[api]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\nlevel = \"warn,flagguard=info\"\n";
        let daemon = format!(
            "data_dir = \"{}\"\nrules_dir = \"{}\"\n{common}[rules]\nmax_concurrent_kills = 100000\n[actuators.hook]\ntype = \"webhook\"\nurl = \"http://{hook}/kill/{{flag}}\"\n",
            dir.path().join("data").display(),
            dir.path().join("rules").display()
        );
        let config = dir.path().join("flagguard.toml");
        let grpc = |running: &serde_json::Value| {
            let url = format!("http://{}", running["grpc"].as_str().unwrap_or_default());
            tonic::transport::Endpoint::from_shared(url).expect("endpoint").connect_lazy()
        };
        let (child, running, others, targets) = match topology {
            Topology::Embedded => {
                std::fs::write(&config, daemon).ok()?;
                let (child, running) = serve(flagguard, &config).await?;
                let targets = vec![grpc(&running)];
                (child, running, Vec::new(), targets)
            }
            Topology::Postgres => {
                let url = postgres?;
                std::fs::write(&config, format!("{daemon}[cluster]\ninstance_id = \"bench\"\npostgres_url = \"{url}\"\n")).ok()?;
                let (child, running) = serve(flagguard, &config).await?;
                let targets = vec![grpc(&running)];
                (child, running, Vec::new(), targets)
            }
            Topology::Sharded => {
                // Two shards and an evaluator subscribed to both.
                let mut shards = Vec::new();
                for i in 0..2 {
                    std::fs::create_dir_all(dir.path().join(format!("shard-{i}-rules"))).ok()?;
                    let shard = dir.path().join(format!("shard-{i}.toml"));
                    let (data, rules) = (dir.path().join(format!("shard-{i}-data")), dir.path().join(format!("shard-{i}-rules")));
                    let body =
                        format!("data_dir = \"{}\"\nrules_dir = \"{}\"\n{common}[shard]\nstream_listen = \"127.0.0.1:0\"\n", data.display(), rules.display());
                    std::fs::write(&shard, body).ok()?;
                    shards.push(serve(flagguard, &shard).await?);
                }
                let streams: Vec<String> = shards.iter().map(|(_, r)| format!("\"http://{}\"", r["stream"].as_str().unwrap_or_default())).collect();
                std::fs::write(&config, format!("{daemon}[merge]\nshards = [{}]\n", streams.join(", "))).ok()?;
                let (evaluator, _) = serve(flagguard, &config).await?;
                let targets = shards.iter().map(|(_, r)| grpc(r)).collect();
                let (second, _) = shards.pop()?;
                let (first, running) = shards.pop()?;
                (first, running, vec![second, evaluator], targets)
            }
        };
        let channel = grpc(&running);
        Some(Harness { dir, child, others, targets, channel, kills })
    }

    /// Healthy traffic of another flag at `rate` requests per second until `stop`.
    fn background(&self, rate: f64, traces: u64, stop: Arc<std::sync::atomic::AtomicBool>) -> tokio::task::JoinHandle<()> {
        let targets = self.targets.clone();
        let templates: Vec<Template> = (0..16).map(|seed| Template::new(&realistic(traces, 1000 + seed))).collect();
        tokio::spawn(async move {
            let every = Duration::from_secs_f64(1.0 / rate.max(0.1));
            let mut next = Instant::now();
            let mut salt = 1u32;
            let mut inflight = tokio::task::JoinSet::new();
            while !stop.load(Ordering::Relaxed) {
                let body = templates[salt as usize % templates.len()].fresh(salt);
                salt = salt.wrapping_add(1);
                let channel = targets[salt as usize % targets.len()].clone();
                inflight.spawn(async move { send(channel, body).await });
                while inflight.len() > 16 {
                    inflight.join_next().await;
                }
                next += every;
                tokio::time::sleep_until(next.into()).await;
            }
        })
    }

    /// Sends one request that completes a regression of `flag` and waits for its kill:
    /// milliseconds from acceptance to the flag server's receipt, or None if missed.
    async fn probe(&self, flag: &str) -> Option<f64> {
        // Each probe to one target (its traces on one shard), in turn across probes.
        let target = flag.bytes().map(usize::from).sum::<usize>() % self.targets.len();
        let mut client = opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient::new(self.targets[target].clone());
        // 25 users on `on` with every payment failing, 25 healthy on `off`: the evidence is
        // complete with this one request (min_samples 20 per arm).
        let requests: Vec<Request> = (0..50)
            .map(|u| Request { user: u, variant: if u % 2 == 0 { "on" } else { "off" }.into(), region: "eu-west".into(), payments_error: u % 2 == 0 })
            .collect();
        let now_ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
        // Bounded: a probe that cannot be delivered counts as missed, never stalls the run.
        let export = client.export(build(flag, "production", &requests, now_ns, &mut rand::rng()));
        match tokio::time::timeout(Duration::from_secs(10), export).await {
            Ok(Ok(_)) => {}
            Ok(Err(status)) => {
                eprintln!("probe {flag}: refused: {status}");
                return None;
            }
            Err(_) => {
                eprintln!("probe {flag}: no answer within 10 s");
                return None;
            }
        }
        let accepted = Instant::now();
        let deadline = accepted + Duration::from_secs(10);
        loop {
            if let Some(at) = self.kills.lock().unwrap().get(flag) {
                return Some(at.saturating_duration_since(accepted).as_secs_f64() * 1000.0);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

async fn detect(flagguard: &std::path::Path, background_rate: f64, traces: u64, probes: usize, topology: Topology, postgres: Option<&str>) -> i32 {
    let Some(mut h) = Harness::start_as(flagguard, topology, postgres).await else {
        eprintln!("detect: the daemon did not start");
        return 1;
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let background = h.background(background_rate, traces, stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut latencies = Vec::new();
    let mut missed = 0;
    for i in 0..probes {
        match h.probe(&format!("probe-{i}")).await {
            Some(ms) => latencies.push(ms),
            None => missed += 1,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = background.await;
    let _ = h.child.kill().await;
    for other in &mut h.others {
        let _ = other.kill().await;
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| latencies.get(((latencies.len() as f64 - 1.0) * p).round() as usize).copied();
    println!(
        "{}",
        serde_json::json!({ "probes": probes, "detected": latencies.len(), "missed": missed, "background_rps": background_rate,
                            "topology": format!("{topology:?}").to_lowercase(), "p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": latencies.last() })
    );
    0
}

/// An hour (or `duration`) of mixed traffic against the real daemon: healthy background load,
/// a regression of a new flag every `probe_every` (each must be killed), the rule file
/// rewritten every `reload_every` (each rewrite hot-reloaded), the daemon's RSS sampled every
/// `sample_every`. One JSON line per sample, then a summary line; exit 1 if a probe was missed
/// or the daemon died.
#[allow(clippy::too_many_arguments)]
async fn soak(
    flagguard: &std::path::Path,
    duration: Duration,
    rate: f64,
    traces: u64,
    probe_every: Duration,
    reload_every: Duration,
    sample_every: Duration,
) -> i32 {
    let Some(mut h) = Harness::start(flagguard).await else {
        eprintln!("soak: the daemon did not start");
        return 1;
    };
    let pid = h.child.id().unwrap_or_default().to_string();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let background = h.background(rate, traces, stop.clone());
    let start = Instant::now();
    let (mut next_probe, mut next_reload, mut next_sample) = (start, start + reload_every, start);
    let (mut probes, mut missed, mut reloads) = (0u64, 0u64, 0u64);
    let mut samples: Vec<(f64, u64)> = Vec::new();
    while start.elapsed() < duration {
        let now = Instant::now();
        if now >= next_sample {
            let Some(rss) = rss_bytes(&pid) else {
                eprintln!("soak: the daemon is gone");
                return 1;
            };
            let minute = start.elapsed().as_secs_f64() / 60.0;
            samples.push((minute, rss));
            println!(
                "{}",
                serde_json::json!({ "minute": (minute * 10.0).round() / 10.0, "rss_mib": rss >> 20, "probes": probes, "missed": missed, "reloads": reloads })
            );
            next_sample += sample_every;
        }
        if now >= next_reload {
            // A real edit (the window alternates), so that every reload changes the rule set.
            let window = if reloads % 2 == 0 { "12s" } else { "10s" };
            let _ = std::fs::write(h.dir.path().join("rules/probe.yaml"), PROBE_RULE.replace("window: 10s", &format!("window: {window}")));
            reloads += 1;
            next_reload += reload_every;
        }
        if now >= next_probe {
            probes += 1;
            let flag = format!("probe-{probes}");
            let took = h.probe(&flag).await;
            eprintln!("soak: {flag} killed after {took:?} ms");
            let _ = std::io::Write::flush(&mut std::io::stdout());
            if took.is_none() {
                missed += 1;
            }
            next_probe += probe_every;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = background.await;
    let _ = h.child.kill().await;
    let mib = |b: u64| b as f64 / 1048576.0;
    let half = samples.len() / 2;
    let max_first_half = samples[..half.max(1)].iter().map(|s| s.1).max().unwrap_or(0);
    let max_second_half = samples[half..].iter().map(|s| s.1).max().unwrap_or(0);
    println!(
        "{}",
        serde_json::json!({
            "summary": true, "minutes": duration.as_secs() / 60, "background_rps": rate, "probes": probes, "missed": missed, "reloads": reloads,
            "rss_first_mib": samples.first().map(|s| mib(s.1).round()), "rss_max_mib": mib(samples.iter().map(|s| s.1).max().unwrap_or(0)).round(),
            "rss_last_mib": samples.last().map(|s| mib(s.1).round()),
            "max_first_half_mib": mib(max_first_half).round(), "max_second_half_mib": mib(max_second_half).round(),
        })
    );
    if missed > 0 { 1 } else { 0 }
}

/// Whether a refusal is the daemon's retryable backpressure.
fn retryable(status: &tonic::Status) -> bool {
    matches!(status.code(), tonic::Code::Unavailable | tonic::Code::ResourceExhausted)
}

/// Sends requests as fast as `workers` connections-in-flight allow for `seconds` (after
/// `warmup`): accepted requests per second.
async fn saturate(channel: &tonic::transport::Channel, templates: &Arc<Vec<Template>>, warmup: Duration, seconds: Duration) -> f64 {
    let accepted = Arc::new(AtomicU64::new(0));
    let counting = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let end = Instant::now() + warmup + seconds;
    let mut tasks = Vec::new();
    for w in 0..16u32 {
        let (channel, templates, accepted, counting) = (channel.clone(), templates.clone(), accepted.clone(), counting.clone());
        tasks.push(tokio::spawn(async move {
            let mut salt = 0x4000_0000u32 + w * 0x10_0000;
            while Instant::now() < end {
                salt += 1;
                if send_within(Duration::from_secs(10), channel.clone(), templates[salt as usize % templates.len()].fresh(salt)).await.is_ok()
                    && counting.load(Ordering::Relaxed)
                {
                    accepted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(warmup).await;
    counting.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    accepted.load(Ordering::Relaxed) as f64 / seconds.as_secs_f64()
}

async fn overload(flagguard: &std::path::Path, duration: Duration, traces: u64, factor: f64) -> i32 {
    let Some(mut h) = Harness::start(flagguard).await else {
        eprintln!("overload: the daemon did not start");
        return 1;
    };
    let pid = h.child.id().unwrap_or_default().to_string();
    let templates: Arc<Vec<Template>> = Arc::new((0..16).map(|seed| Template::new(&realistic(traces, seed))).collect());
    let spans_per_request = templates[0].spans;
    let capacity = saturate(&h.channel, &templates, Duration::from_secs(3), Duration::from_secs(10)).await;
    let rss_before = rss_bytes(&pid).unwrap_or(0);
    let offered = capacity * factor;
    eprintln!("overload: capacity {capacity:.0} requests/s; offering {offered:.0}/s for {duration:?}");

    // Offer `offered` requests per second, whatever the answers; remember every refused one.
    let (accepted, refused, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let to_retry: Arc<std::sync::Mutex<Vec<u32>>> = Default::default();
    let rss_max = Arc::new(AtomicU64::new(rss_before));
    let sampling = {
        let (pid, rss_max) = (pid.clone(), rss_max.clone());
        tokio::spawn(async move {
            while let Some(rss) = rss_bytes(&pid) {
                rss_max.fetch_max(rss, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let start = Instant::now();
    let every = Duration::from_secs_f64(1.0 / offered.max(1.0));
    let mut next = start;
    let mut inflight = tokio::task::JoinSet::new();
    let mut sent = 0u64;
    let mut probe: Option<tokio::task::JoinHandle<(u32, Option<f64>)>> = None;
    while start.elapsed() < duration {
        // The regression, halfway: delivered with retries like any client, then timed to the kill.
        if probe.is_none() && start.elapsed() >= duration / 2 {
            let (channel, kills) = (h.channel.clone(), h.kills.clone());
            probe = Some(tokio::spawn(async move {
                let mut client = opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient::new(channel);
                let requests: Vec<Request> = (0..50)
                    .map(|u| Request { user: u, variant: if u % 2 == 0 { "on" } else { "off" }.into(), region: "eu-west".into(), payments_error: u % 2 == 0 })
                    .collect();
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    let now_ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
                    let request = build("probe-overload", "production", &requests, now_ns, &mut rand::rng());
                    let answer = tokio::time::timeout(Duration::from_secs(10), client.export(request)).await;
                    match answer.unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer in time"))) {
                        Ok(_) => break,
                        Err(_) if attempts < 200 => tokio::time::sleep(Duration::from_millis(100)).await,
                        Err(_) => return (attempts, None),
                    }
                }
                let accepted_at = Instant::now();
                while accepted_at.elapsed() < Duration::from_secs(20) {
                    if let Some(at) = kills.lock().unwrap().get("probe-overload") {
                        return (attempts, Some(at.saturating_duration_since(accepted_at).as_secs_f64() * 1000.0));
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                (attempts, None)
            }));
        }
        sent += 1;
        let salt = sent as u32;
        let (channel, templates, accepted, refused, failed, to_retry) =
            (h.channel.clone(), templates.clone(), accepted.clone(), refused.clone(), failed.clone(), to_retry.clone());
        inflight.spawn(async move {
            match send_within(Duration::from_secs(10), channel, templates[salt as usize % templates.len()].fresh(salt)).await {
                Ok(()) => drop(accepted.fetch_add(1, Ordering::Relaxed)),
                Err(status) => {
                    if retryable(&status) {
                        refused.fetch_add(1, Ordering::Relaxed)
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed)
                    };
                    to_retry.lock().unwrap().push(salt);
                }
            }
        });
        while inflight.try_join_next().is_some() {}
        // A client's own bound: past 1024 outstanding it waits (counted as offered all the same).
        while inflight.len() > 1024 {
            inflight.join_next().await;
        }
        next += every;
        tokio::time::sleep_until(next.into()).await;
    }
    while inflight.join_next().await.is_some() {}
    let offered_seconds = start.elapsed().as_secs_f64();
    let rss_during = rss_max.load(Ordering::Relaxed);
    let (probe_attempts, probe_ms) = match probe {
        Some(p) => p.await.unwrap_or((0, None)),
        None => (0, None),
    };

    // Load drops: every refused request is retried until accepted (or 120 s pass).
    let pending: Vec<u32> = std::mem::take(&mut *to_retry.lock().unwrap());
    let (refused_total, retried) = (pending.len() as u64, Arc::new(AtomicU64::new(0)));
    let queue = Arc::new(std::sync::Mutex::new(pending));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (channel, templates, queue, retried) = (h.channel.clone(), templates.clone(), queue.clone(), retried.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let Some(salt) = queue.lock().unwrap().pop() else { return };
                loop {
                    match send_within(Duration::from_secs(10), channel.clone(), templates[salt as usize % templates.len()].fresh(salt)).await {
                        Ok(()) => {
                            retried.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
                        Err(_) => return,
                    }
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let alive = rss_bytes(&pid).is_some();
    sampling.abort();
    let _ = h.child.kill().await;
    let mib = |b: u64| (b as f64 / 1048576.0).round();
    let (accepted, retried) = (accepted.load(Ordering::Relaxed), retried.load(Ordering::Relaxed));
    let lost = sent - accepted - retried;
    println!(
        "{}",
        serde_json::json!({
            "capacity_rps": capacity.round(), "capacity_spans_per_s": (capacity * spans_per_request as f64).round(), "factor": factor,
            "offered_rps": (sent as f64 / offered_seconds).round(), "seconds": offered_seconds.round(),
            "sent": sent, "accepted_at_once": accepted, "refused_retryable": refused.load(Ordering::Relaxed), "failed_other": failed.load(Ordering::Relaxed),
            "refused_total": refused_total, "accepted_on_retry": retried, "lost": lost,
            "rss_before_mib": mib(rss_before), "rss_max_during_mib": mib(rss_during), "daemon_alive": alive,
            "regression_delivery_attempts": probe_attempts, "regression_kill_ms_after_acceptance": probe_ms,
        })
    );
    if lost == 0 && alive && probe_ms.is_some() { 0 } else { 1 }
}
