//! flagguard's own telemetry: log setup (text or JSON through tracing-subscriber) and the
//! Prometheus metrics every stage counts into. Stages never log per span; they count here.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// Every counter and gauge flagguard exports on `/metrics`. Cheap to update (atomics), shared by
/// `Arc`; no stage reads another stage's numbers from here.
pub struct Metrics {
    registry: Registry,
    /// OTLP requests by transport, signal and result (ok, partial, invalid, overloaded).
    pub otlp_requests: Family<Labels, Counter>,
    pub spans_received: Counter,
    pub log_records_received: Counter,
    /// Spans and log records rejected through partial success or a 400.
    pub items_rejected: Counter,
    pub evaluations: Counter,
    /// Flag evaluations that themselves failed (`error.type`); never request errors.
    pub evaluation_errors: Counter,
    /// Evaluations without a variant: counted, never a cohort.
    pub evaluations_without_variant: Counter,
    pub outcomes: Counter,
    /// Batches waiting between ingest and the pipeline.
    pub queue_depth: Gauge,
    /// Evaluations and outcomes queued for the pipeline (the budget `otlp.queue_items` bounds).
    pub queue_items: Gauge,
    pub traces_in_flight: Gauge,
    /// Traces leaving the correlator, by reason (idle, capacity).
    pub traces_evicted: Family<Labels, Counter>,
    /// Outcomes by attribution (flagged, unflagged, late, duplicate, mixed).
    pub attribution: Family<Labels, Counter>,
    pub series: Gauge,
    pub series_overflow: Counter,
    /// Current verdicts by kind over all rule slices.
    pub verdicts: Family<Labels, Gauge>,
    /// Actions by kind and state transition.
    pub actions: Family<Labels, Counter>,
    pub actuator_errors: Family<Labels, Counter>,
    /// Seconds per actuator attempt (call and read-back), by actuator.
    pub actuator_latency: Family<Labels, Histogram, fn() -> Histogram>,
    /// Alert webhook deliveries by source and status.
    pub alerts_received: Family<Labels, Counter>,
    /// Alert webhook deliveries refused by authentication, by source.
    pub alert_auth_failures: Family<Labels, Counter>,
    /// Actions waiting in the outbox.
    pub actions_pending: Gauge,
    pub rules_loaded: Gauge,
    pub rule_reloads: Family<Labels, Counter>,
    /// Rules whose guarded flag has sent no telemetry for longer than `stale_after`.
    pub rules_stale: Gauge,
    /// Checkpoints of the windows and rule state by result (written, failed).
    pub checkpoints: Family<Labels, Counter>,
    pub checkpoint_bytes: Gauge,
    /// Unix seconds of the last checkpoint written (alert when it falls behind).
    pub checkpoint_written: Gauge,
    /// A shard: the last frame's sequence number.
    pub shard_stream_seq: Gauge,
    /// An evaluator: breaks in a shard's stream that could not be resumed, by shard.
    pub shard_gaps: Family<Labels, Counter>,
    /// An evaluator: milliseconds between a shard's frame and its arrival, by shard.
    pub shard_lag: Family<Labels, Gauge>,
    /// Compliance report findings by problem (no_owner, expired, unapproved_change, drifted,
    /// long_rollout), as of the last scrape.
    pub compliance_findings: Family<Labels, Gauge>,
    /// Flag manifests: 1 for each flag × environment's current drift status, 0 for the others.
    pub manifest_drift: Family<Labels, Gauge>,
    /// Cluster mode: 1 while this replica holds the lease.
    pub cluster_leader: Gauge,
    pub cluster_leadership_changes: Counter,
    /// Writes refused because this replica did not (or no longer) hold the lease.
    pub cluster_fence_rejections: Counter,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("flagguard");
        let m = Metrics {
            otlp_requests: Family::default(),
            spans_received: Counter::default(),
            log_records_received: Counter::default(),
            items_rejected: Counter::default(),
            evaluations: Counter::default(),
            evaluation_errors: Counter::default(),
            evaluations_without_variant: Counter::default(),
            outcomes: Counter::default(),
            queue_depth: Gauge::default(),
            queue_items: Gauge::default(),
            traces_in_flight: Gauge::default(),
            traces_evicted: Family::default(),
            attribution: Family::default(),
            series: Gauge::default(),
            series_overflow: Counter::default(),
            verdicts: Family::default(),
            actions: Family::default(),
            actuator_errors: Family::default(),
            actuator_latency: Family::new_with_constructor(|| Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])),
            actions_pending: Gauge::default(),
            alerts_received: Family::default(),
            alert_auth_failures: Family::default(),
            rules_loaded: Gauge::default(),
            rule_reloads: Family::default(),
            rules_stale: Gauge::default(),
            checkpoints: Family::default(),
            checkpoint_bytes: Gauge::default(),
            checkpoint_written: Gauge::default(),
            shard_stream_seq: Gauge::default(),
            shard_gaps: Family::default(),
            shard_lag: Family::default(),
            manifest_drift: Family::default(),
            compliance_findings: Family::default(),
            cluster_leader: Gauge::default(),
            cluster_leadership_changes: Counter::default(),
            cluster_fence_rejections: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("otlp_requests", "OTLP export requests by transport, signal and result", m.otlp_requests.clone());
        registry.register("spans_received", "Spans accepted", m.spans_received.clone());
        registry.register("log_records_received", "Log records accepted", m.log_records_received.clone());
        registry.register("items_rejected", "Spans and log records rejected as invalid", m.items_rejected.clone());
        registry.register("flag_evaluations", "Flag evaluations found in telemetry", m.evaluations.clone());
        registry.register("flag_evaluation_errors", "Flag evaluations that failed (error.type), not request errors", m.evaluation_errors.clone());
        registry.register("flag_evaluations_without_variant", "Flag evaluations with no variant or value", m.evaluations_without_variant.clone());
        registry.register("request_outcomes", "Entry-span outcomes seen", m.outcomes.clone());
        registry.register("ingest_queue_depth", "Batches queued between ingest and the pipeline", m.queue_depth.clone());
        registry.register("ingest_queue_items", "Evaluations and outcomes queued between ingest and the pipeline", m.queue_items.clone());
        registry.register("traces_in_flight", "Traces held by the correlator", m.traces_in_flight.clone());
        registry.register("traces_evicted", "Traces evicted from the correlator by reason", m.traces_evicted.clone());
        registry.register("attribution", "Request outcomes by attribution", m.attribution.clone());
        registry.register("series", "Active series (flag x variant x service x environment x region)", m.series.clone());
        registry.register("series_overflow", "Observations dropped because the series cap was reached", m.series_overflow.clone());
        registry.register("verdicts", "Current verdicts over all rule slices", m.verdicts.clone());
        registry.register("actions", "Action state transitions by kind and state", m.actions.clone());
        registry.register("actuator_errors", "Actuator call failures by actuator and class", m.actuator_errors.clone());
        registry.register("actuator_latency_seconds", "Seconds per actuator attempt (call and read-back)", m.actuator_latency.clone());
        registry.register("alerts_received", "Alerts received through webhooks by source and status", m.alerts_received.clone());
        registry.register("alert_auth_failures", "Alert webhook deliveries refused by authentication", m.alert_auth_failures.clone());
        registry.register("actions_pending", "Actions waiting in the outbox", m.actions_pending.clone());
        registry.register("rules_loaded", "Rules in the active rule set", m.rules_loaded.clone());
        registry.register("rule_reloads", "Rule reloads by result", m.rule_reloads.clone());
        registry.register("rules_stale", "Rules whose guarded flag sent no telemetry for longer than stale_after", m.rules_stale.clone());
        registry.register("checkpoints", "Checkpoints of the windows and rule state by result", m.checkpoints.clone());
        registry.register("checkpoint_bytes", "Size of the last checkpoint written", m.checkpoint_bytes.clone());
        registry.register("checkpoint_last_written_timestamp_seconds", "When the last checkpoint was written (Unix seconds)", m.checkpoint_written.clone());
        registry.register("shard_stream_seq", "A shard: sequence number of the last window delta published", m.shard_stream_seq.clone());
        registry.register("shard_gaps", "An evaluator: breaks in a shard's stream that could not be resumed", m.shard_gaps.clone());
        registry.register("shard_lag_milliseconds", "An evaluator: delay of a shard's last frame", m.shard_lag.clone());
        registry.register("compliance_findings", "Compliance report findings by problem", m.compliance_findings.clone());
        registry.register("manifest_drift", "Flag manifests: 1 for each pair's drift status", m.manifest_drift.clone());
        registry.register("cluster_leader", "Cluster mode: 1 while this replica holds the actuator lease", m.cluster_leader.clone());
        registry.register("cluster_leadership_changes", "Cluster mode: times this replica acquired or lost the lease", m.cluster_leadership_changes.clone());
        registry.register("cluster_fence_rejections", "Cluster mode: writes refused because the lease was not held", m.cluster_fence_rejections.clone());
        Metrics { registry, ..m }
    }

    /// Renders the Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    pub fn count(family: &Family<Labels, Counter>, labels: &[(&'static str, &str)]) {
        family.get_or_create(&labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()).inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}
