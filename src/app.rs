//! The only wiring: binds the listeners, builds every stage from the validated [`Config`],
//! connects them with bounded channels and a `watch`, spawns the tasks, and shuts them down in
//! order — stop listeners, drain ingest, judge once more, let in-flight actions finish (the
//! outbox keeps the rest) — within a grace period.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::act::Actuator;
use crate::act::executor::{Executor, ExecutorSettings};
use crate::act::notify::Routing;
use crate::act::outbox::Outbox;
use crate::aggregate::Aggregator;
use crate::api::{ApiState, router};
use crate::config::Config;
use crate::correlate::{CorrelateSettings, Correlator};
use crate::ingest::{ExtractOptions, Ingest};
use crate::pipeline::{Pipeline, PipelineSettings};
use crate::rules::engine::{EngineSettings, RuleEngine};
use crate::store::{AuditEntry, Store, StoreError};
use crate::telemetry::Metrics;
use crate::time::Clock;
use crate::view::Snapshot;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("invalid rules:\n  {}", .0.join("\n  "))]
    Rules(Vec<String>),
    #[error("actuator {name}: {message}")]
    Actuator { name: String, message: String },
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(String),
    #[error("notification routes: {0}")]
    Notify(String),
    #[error("{what}: {source}")]
    Tls { what: &'static str, source: crate::tls::TlsError },
}

/// The addresses actually bound (port 0 in the configuration picks a free port).
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Addrs {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub api: SocketAddr,
    /// A shard's window-delta stream (`[shard]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<SocketAddr>,
}

/// A built daemon, listeners bound, not yet running.
pub struct App {
    config: Config,
    clock: Arc<dyn Clock>,
    listeners: (TcpListener, TcpListener, TcpListener),
    addrs: Addrs,
    store: Store,
    metrics: Arc<Metrics>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    snapshot_tx: watch::Sender<Arc<Snapshot>>,
    engine: RuleEngine,
    actuators: HashMap<String, Arc<dyn Actuator>>,
    routing: Arc<Routing>,
    /// TLS of the OTLP listeners and of the API, loaded at build (a bad file refuses to start).
    tls: (Option<crate::tls::Reloading>, Option<crate::tls::Reloading>),
    /// Cluster mode: the fenced lease (none: embedded, always the one that acts).
    lease: Option<Arc<crate::cluster::lease::Lease>>,
    /// A shard's stream listener.
    stream_listener: Option<TcpListener>,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr).await.map_err(|source| AppError::Bind { what, addr, source })
}

/// The HTTP client for flag systems: rustls with the platform's roots (ring provider) plus
/// `ca_file`'s. Redirects are not followed: a redirect would carry the actuator's credential
/// headers to another host.
pub fn http_client(timeout: Duration, ca_file: Option<&std::path::Path>) -> Result<reqwest::Client, AppError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder =
        reqwest::Client::builder().timeout(timeout).redirect(reqwest::redirect::Policy::none()).user_agent(concat!("flagguard/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| AppError::HttpClient(format!("act.ca_file {}: {e}", path.display())))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| AppError::HttpClient(format!("act.ca_file {}: {e}", path.display())))? {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| AppError::HttpClient(e.to_string()))
}

impl App {
    /// Opens the store, loads the rules (invalid rules refuse to start), builds the actuators
    /// and binds the listeners.
    pub async fn build(config: Config, clock: Arc<dyn Clock>) -> Result<App, AppError> {
        let file = &config.file;
        let store = match &config.cluster {
            None => Store::open(&file.data_dir)?,
            Some(cluster) => Store::open_postgres(&cluster.store)?,
        };
        let rules = crate::rulefile::load_dir(&file.rules_dir, &config.actuator_names())
            .map_err(|errors| AppError::Rules(errors.iter().map(|e| e.to_string()).collect()))?;
        let metrics = Arc::new(Metrics::new());
        metrics.rules_loaded.set(rules.rules.len() as i64);
        let client = http_client(file.act.timeout, file.act.ca_file.as_deref())?;
        let mut actuators: HashMap<String, Arc<dyn Actuator>> = HashMap::new();
        for (name, actuator) in &file.actuators {
            let built = actuator.build(name, &client).map_err(|message| AppError::Actuator { name: name.clone(), message })?;
            actuators.insert(name.clone(), built);
        }
        let routing = Routing::build(file.act.notify_url.as_deref(), &file.act.routes, client.clone()).map_err(AppError::Notify)?;
        let now = clock.now();
        let engine = RuleEngine::new(
            Arc::new(rules),
            EngineSettings {
                sequential_fdr: file.rules.sequential_fdr,
                stale_after: file.rules.stale_after,
                max_concurrent_kills: file.rules.max_concurrent_kills,
                incident_window: file.rules.incident_window,
            },
            store.last_fired()?,
            now,
        );
        let load = |what: &'static str, files: &Option<crate::tls::TlsFiles>| {
            files.clone().map(crate::tls::Reloading::new).transpose().map_err(|source| AppError::Tls { what, source })
        };
        let tls = (load("otlp.tls", &file.otlp.tls)?, load("api.tls", &file.api.tls)?);
        let grpc = bind("OTLP gRPC", config.grpc_listen).await?;
        let http = bind("OTLP HTTP", config.http_listen).await?;
        let api = bind("API", config.api_listen).await?;
        let stream_listener = match &config.shard {
            Some(shard) => Some(bind("shard stream", shard.stream_listen).await?),
            None => None,
        };
        let local = |l: &TcpListener, fallback| l.local_addr().unwrap_or(fallback);
        let addrs = Addrs {
            grpc: local(&grpc, config.grpc_listen),
            http: local(&http, config.http_listen),
            api: local(&api, config.api_listen),
            stream: stream_listener.as_ref().and_then(|l| l.local_addr().ok()),
        };
        let (snapshot_tx, snapshots) = watch::channel(Arc::new(Snapshot { rule_set: engine.rules().clone(), ..Snapshot::default() }));
        let lease = match &config.cluster {
            Some(cluster) => Some(Arc::new(crate::cluster::lease::Lease::connect(cluster, metrics.clone(), addrs.api.to_string())?)),
            None => None,
        };
        Ok(App {
            config,
            clock,
            listeners: (grpc, http, api),
            addrs,
            store,
            metrics,
            snapshots,
            snapshot_tx,
            engine,
            actuators,
            routing,
            tls,
            lease,
            stream_listener,
        })
    }

    pub fn addrs(&self) -> Addrs {
        self.addrs
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    pub fn store(&self) -> Store {
        self.store.clone()
    }

    pub fn snapshots(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshots.clone()
    }

    /// Runs until `shutdown` is cancelled, then stops in order within the grace period.
    pub async fn run(self, shutdown: CancellationToken, grace: Duration) {
        let App { config, clock, listeners, addrs, store, metrics, snapshots, snapshot_tx, engine, actuators, routing, tls, lease, stream_listener } = self;
        let outbox = Outbox::new(store.clone(), routing);
        // The leader's door: fenced by the lease in cluster mode.
        let fence = lease.as_ref().map(|l| l.fence());
        let acting = match &fence {
            Some(fence) => outbox.fenced(fence.clone()),
            None => outbox.clone(),
        };
        let lease_stop = CancellationToken::new();
        let lease_task = lease.clone().map(|lease| tokio::spawn(lease.run(lease_stop.clone())));
        let (otlp_tls, api_tls) = tls;
        let file = &config.file;
        let (grpc_listener, http_listener, api_listener) = listeners;
        let (batch_tx, batch_rx) = mpsc::channel(file.otlp.queue_capacity);
        let (command_tx, command_rx) = mpsc::channel(16);
        let ready = Arc::new(AtomicBool::new(false));
        let wake = Arc::new(Notify::new());
        let mut ingest = Ingest::new(
            batch_tx,
            ExtractOptions { flag_attribute_prefixes: file.otlp.flag_attribute_prefixes.clone() },
            file.otlp.retry_after,
            metrics.clone(),
        )
        .with_queue_items(file.otlp.queue_items);
        if let Some(dir) = &file.record.dir {
            let settings = crate::ingest::record::RecordSettings { dir: dir.clone(), file_bytes: file.record.file_bytes, max_bytes: file.record.max_bytes };
            match crate::ingest::record::Recorder::start(settings) {
                Ok(recorder) => ingest = ingest.with_recorder(recorder, clock.clone()),
                Err(e) => tracing::error!(error = %e, dir = %dir.display(), "cannot record OTLP requests"),
            }
        }
        let ingest = Arc::new(ingest);

        // The configuration is audited at every start, with what changed since the last one.
        let redacted = serde_json::to_value(file.redacted()).unwrap_or_default();
        let changed = match store.last_started_config() {
            Ok(Some(previous)) => serde_json::json!(crate::store::diff::json_diff(&previous, &redacted)),
            _ => serde_json::Value::Null,
        };
        let _ = store.audit(&AuditEntry {
            at: clock.now(),
            actor: "system".into(),
            kind: "started".into(),
            after: Some(serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "listen": addrs,
                "config": redacted,
                "config_changed": changed,
                "rules": engine.rules().rules.len(),
            })),
            ..AuditEntry::default()
        });

        let listeners_stop = shutdown.child_token();
        let otlp_auth = crate::ingest::OtlpAuth::new(&config.otlp_tokens, metrics.clone());
        if let Some(tls) = &otlp_tls {
            tokio::spawn(tls.clone().watch("otlp", listeners_stop.clone()));
        }
        let grpc_routes = crate::ingest::grpc::router(ingest.clone(), file.otlp.max_body_bytes, otlp_auth.clone());
        let grpc_stop = listeners_stop.clone();
        let grpc_tls = otlp_tls.clone();
        let grpc_task = tokio::spawn(async move {
            // Bounded per connection, and idle or dead peers dropped: a slow or stuck client
            // cannot hold a request open for ever.
            let server = tonic::transport::Server::builder()
                .timeout(Duration::from_secs(30))
                .concurrency_limit_per_connection(64)
                // Past the limit a request is refused at once with UNAVAILABLE (retryable),
                // not queued behind the others until the client times out.
                .load_shed(true)
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .http2_keepalive_timeout(Some(Duration::from_secs(20)))
                .add_routes(grpc_routes);
            let served = match grpc_tls {
                Some(tls) => {
                    let incoming = crate::tls::accept(grpc_listener, tls, "otlp-grpc", grpc_stop.clone()).into_stream();
                    server.serve_with_incoming_shutdown(incoming, grpc_stop.cancelled_owned()).await
                }
                None => {
                    let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc_listener);
                    server.serve_with_incoming_shutdown(incoming, grpc_stop.cancelled_owned()).await
                }
            };
            if let Err(e) = served {
                tracing::error!(error = %e, "OTLP gRPC server failed");
            }
        });
        let http_app = crate::ingest::http::router(ingest.clone(), file.otlp.max_body_bytes, otlp_auth);
        let http_task = tokio::spawn(serve_http(http_listener, otlp_tls, http_app, "OTLP HTTP", listeners_stop.clone()));
        drop(ingest);
        // The drift watch over the flag manifests, when configured.
        let (drift_tx, drift_rx) = watch::channel(Arc::new(crate::manifest::watch::DriftState { dir: file.manifests.dir.clone(), ..Default::default() }));
        let drift_stop = CancellationToken::new();
        let drift_task = file.manifests.dir.clone().map(|dir| {
            let watcher = crate::manifest::watch::DriftWatch {
                dir,
                interval: file.manifests.drift_interval,
                actuators: actuators.clone(),
                outbox: acting.clone(),
                fence: fence.clone(),
                metrics: metrics.clone(),
                clock: clock.clone(),
                publish: drift_tx,
                regulated: file.governance.regulated_environments.clone(),
                approval_expiry: file.governance.approval_expiry,
            };
            tokio::spawn(watcher.run(drift_stop.clone()))
        });
        let alerts = crate::api::alerts::AlertsState {
            routes: Arc::new(crate::api::alerts::routes(&file.alerts, clock.now())),
            snapshots: snapshots.clone(),
            outbox: outbox.clone(),
            wake: wake.clone(),
            clock: clock.clone(),
            metrics: metrics.clone(),
        };
        let api_app = router(
            ApiState {
                snapshots: snapshots.clone(),
                store: store.clone(),
                outbox: outbox.clone(),
                metrics: metrics.clone(),
                commands: command_tx,
                ready: ready.clone(),
                clock: clock.clone(),
                wake: wake.clone(),
                actuators: config.actuator_names(),
                flag_systems: actuators.clone(),
                drift: drift_rx,
                governance: crate::api::approvals::Governance {
                    regulated_environments: file.governance.regulated_environments.clone(),
                    approval_expiry: file.governance.approval_expiry,
                    max_rollout_age: file.governance.max_rollout_age,
                },
                tokens: crate::api::auth::Tokens::new(config.tokens.clone(), file.api.anonymous_role).allow_hosts(file.api.allowed_hosts.clone()),
                lease,
            },
            alerts,
        );
        let api_stop = CancellationToken::new();
        if let Some(tls) = &api_tls {
            tokio::spawn(tls.clone().watch("api", api_stop.clone()));
        }
        let api_task = tokio::spawn(serve_http(api_listener, api_tls, api_app, "API", api_stop.clone()));

        let pipeline = Pipeline::new(
            Correlator::new(CorrelateSettings {
                trace_idle: file.correlate.trace_idle,
                tombstone_ttl: file.correlate.tombstone_ttl,
                max_traces: file.correlate.max_traces,
            }),
            Aggregator::new(file.aggregate.max_series),
            engine,
            acting.clone(),
            metrics.clone(),
            clock.clone(),
            wake.clone(),
            snapshot_tx,
            PipelineSettings {
                tick: file.aggregate.tick,
                snapshot_interval: file.aggregate.snapshot_interval,
                reload_interval: file.rules.reload_interval,
                rules_dir: file.rules_dir.clone(),
                actuators: config.actuator_names(),
                verify: config.verify_settings(),
                audit_retention: file.audit.retention,
            },
        );
        // The rollout plans' external checks, in their own task (never on the pipeline's).
        let checks = crate::rollout::checks::CheckResults::default();
        let checks_stop = CancellationToken::new();
        let checks_client = http_client(file.act.timeout, file.act.ca_file.as_deref()).unwrap_or_default();
        let checks_task = tokio::spawn(crate::rollout::checks::run(snapshots.clone(), checks.clone(), checks_client, clock.clone(), checks_stop.clone()));
        let pipeline = pipeline.with_checks(checks).with_governance(file.governance.regulated_environments.clone(), file.governance.approval_expiry);
        let pipeline = match &fence {
            Some(fence) => pipeline.with_fence(fence.clone()),
            None => pipeline,
        };
        // Every replica checkpoints its own state (each ingests the whole stream).
        let pipeline = match file.state.checkpoint_interval {
            interval if interval.is_zero() => pipeline,
            interval => pipeline
                .with_checkpoints(crate::pipeline::checkpoint::CheckpointSettings { path: file.data_dir.join(crate::pipeline::checkpoint::FILE), interval }),
        };
        // Scale-out: a shard serves its deltas (until after the pipeline's last frame), an
        // evaluator subscribes to every shard.
        let stream_stop = CancellationToken::new();
        let mut stream_task = None;
        let pipeline = match (&config.shard, stream_listener) {
            (Some(shard), Some(listener)) => {
                let (image_tx, image_rx) = mpsc::channel(4);
                let name = addrs.stream.map_or_else(|| shard.stream_listen.to_string(), |a| a.to_string());
                let hub = Arc::new(crate::shard::hub::Hub::new(name, shard.buffer_bytes, image_tx));
                let server = crate::shard::server::StreamServer::new(hub.clone(), shard.token.clone(), stream_stop.clone());
                stream_task = Some(tokio::spawn(crate::shard::server::serve(listener, server)));
                let (side, encoder) = crate::pipeline::shard::ShardSide::new(hub, image_rx, file.aggregate.max_series);
                tokio::spawn(encoder);
                pipeline.with_shard(side)
            }
            _ => pipeline,
        };
        let pipeline = match &config.merge {
            Some(merge) => {
                let positions = crate::shard::subscriber::Positions::default();
                let (input_tx, input_rx) = mpsc::channel(1024);
                let (ready_tx, ready_rx) = watch::channel(false);
                let evaluator = file.cluster.as_ref().map_or_else(|| "flagguard".to_owned(), |c| c.instance_id.clone());
                for shard in &merge.shards {
                    let subscriber = crate::shard::subscriber::Subscriber {
                        shard: shard.clone(),
                        evaluator: evaluator.clone(),
                        token: merge.token.clone(),
                        reconnect: merge.reconnect,
                        positions: positions.clone(),
                        inputs: input_tx.clone(),
                        ready: ready_rx.clone(),
                    };
                    tokio::spawn(subscriber.run(listeners_stop.clone()));
                }
                pipeline.with_merge(crate::pipeline::shard::MergeSide::new(&merge.shards, positions, input_rx, ready_tx))
            }
            None => pipeline,
        };
        let pipeline_stop = CancellationToken::new();
        let pipeline_task = tokio::spawn(pipeline.run(batch_rx, command_rx, pipeline_stop.clone()));

        let executor = Arc::new(Executor {
            outbox: acting,
            actuators,
            settings: ExecutorSettings {
                max_attempts: file.act.max_attempts,
                initial_backoff: file.act.initial_backoff,
                max_backoff: file.act.max_backoff,
                timeout: file.act.timeout,
            },
            metrics: metrics.clone(),
            wake,
            clock: clock.clone(),
            verify: config.verify_settings(),
            fence,
        });
        let executor_stop = CancellationToken::new();
        let executor_task = tokio::spawn(executor.run(executor_stop.clone(), grace));

        ready.store(true, Ordering::Relaxed);
        let stream = addrs.stream.map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(grpc = %addrs.grpc, http = %addrs.http, api = %addrs.api, stream, rules = %file.rules_dir.display(), "flagguard is running");
        shutdown.cancelled().await;

        tracing::info!("shutting down: stopping listeners");
        ready.store(false, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + grace;
        let _ = tokio::time::timeout_at(deadline, async {
            let _ = grpc_task.await;
            let _ = http_task.await;
        })
        .await;
        tracing::info!("draining the pipeline");
        pipeline_stop.cancel();
        let _ = tokio::time::timeout_at(deadline, pipeline_task).await;
        stream_stop.cancel();
        if let Some(mut task) = stream_task
            && tokio::time::timeout(Duration::from_secs(1), &mut task).await.is_err()
        {
            task.abort();
        }
        checks_stop.cancel();
        checks_task.abort();
        // A pass under way is dropped: the next start reads the flag systems again.
        drift_stop.cancel();
        if let Some(task) = drift_task {
            task.abort();
        }
        tracing::info!("finishing in-flight actions");
        executor_stop.cancel();
        let _ = executor_task.await;
        // Released once nothing of this replica acts any more: a standby takes over within
        // its acquire interval.
        lease_stop.cancel();
        if let Some(task) = lease_task {
            let _ = task.await;
        }
        api_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), api_task).await;
        let _ = store.audit(&AuditEntry { at: clock.now(), actor: "system".into(), kind: "stopped".into(), ..AuditEntry::default() });
        tracing::info!("stopped");
    }
}

/// Serves an axum app on a listener, over TLS when configured, until `stop`.
async fn serve_http(listener: TcpListener, tls: Option<crate::tls::Reloading>, app: axum::Router, what: &'static str, stop: CancellationToken) {
    let served = match tls {
        Some(tls) => {
            let listener = crate::tls::accept(listener, tls, what, stop.clone());
            axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await
        }
        None => axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await,
    };
    if let Err(e) = served {
        tracing::error!(error = %e, server = what, "server failed");
    }
}
