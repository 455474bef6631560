//! flagguard's own traces and metrics over OTLP (opentelemetry-otlp, gRPC), configured by the
//! standard `OTEL_*` environment variables and **off unless an endpoint is set explicitly**
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`, or the `_TRACES_` / `_METRICS_` variants): the SDK's default
//! endpoint, localhost:4317, would be flagguard's own receiver.
//!
//! Never fed back into its own cohorts: an endpoint that is one of flagguard's own OTLP
//! listeners is refused at start, and every resource flagguard exports carries
//! `flagguard.self = true`, which the receivers skip (a Collector that loops it back anyway).
//!
//! Traces are the `tracing` spans of what flagguard does (actions, reloads, alert deliveries);
//! metrics are the `/metrics` counters and gauges that have no labels, as observable
//! instruments read at each export.

use std::net::SocketAddr;
use std::sync::Arc;

use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;

use crate::telemetry::Metrics;

/// The resource attribute marking flagguard's own telemetry.
pub const SELF_ATTRIBUTE: &str = "flagguard.self";

const ENDPOINT_VARS: [&str; 3] = ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"];

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Whether the environment asks for flagguard's own telemetry.
pub fn enabled() -> bool {
    let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    !disabled && ENDPOINT_VARS.iter().any(|v| var(v).is_some())
}

/// Refuses a configuration that would export flagguard's telemetry into itself, or over a
/// protocol this build does not speak.
pub fn check(own_receivers: &[SocketAddr]) -> Result<(), String> {
    if !enabled() {
        return Ok(());
    }
    for name in ["OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"] {
        if let Some(p) = var(name).filter(|p| p != "grpc") {
            return Err(format!("{name}={p}: flagguard exports its own telemetry over OTLP/gRPC only (set grpc, or unset it)"));
        }
    }
    for name in ENDPOINT_VARS {
        let Some(endpoint) = var(name) else { continue };
        let uri: http::Uri = endpoint.parse().map_err(|e| format!("{name}={endpoint}: {e}"))?;
        let host = uri.host().unwrap_or("").trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 4317 });
        let local = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified());
        let ours = own_receivers.iter().any(|a| a.port() == port && (local || a.ip().to_string() == host));
        if ours {
            return Err(format!(
                "{name}={endpoint} is flagguard's own OTLP receiver: its telemetry would feed its own cohorts (send it to a Collector or your backend)"
            ));
        }
    }
    Ok(())
}

/// The exporters, kept to flush at shutdown.
#[derive(Default)]
pub struct Exporters {
    traces: Option<SdkTracerProvider>,
    metrics: Option<SdkMeterProvider>,
}

impl Exporters {
    /// Flushes and stops the exporters (at shutdown).
    pub fn shutdown(self) {
        if let Some(t) = self.traces {
            let _ = t.shutdown();
        }
        if let Some(m) = self.metrics {
            let _ = m.shutdown();
        }
    }

    pub fn active(&self) -> bool {
        self.traces.is_some()
    }

    /// Exports the label-free `/metrics` instruments (read at each export interval,
    /// `OTEL_METRIC_EXPORT_INTERVAL`, default 60 s).
    pub fn observe(&self, metrics: &Arc<Metrics>) {
        let Some(provider) = &self.metrics else { return };
        let meter = provider.meter("flagguard");
        type Read = fn(&Metrics) -> u64;
        let counters: [(&'static str, &'static str, Read); 7] = [
            ("flagguard.spans.received", "Spans in accepted OTLP requests", |m| m.spans_received.get()),
            ("flagguard.log_records.received", "Log records in accepted OTLP requests", |m| m.log_records_received.get()),
            ("flagguard.items.rejected", "Spans and log records rejected", |m| m.items_rejected.get()),
            ("flagguard.flag_evaluations", "Flag evaluations found", |m| m.evaluations.get()),
            ("flagguard.flag_evaluation.errors", "Flag evaluations that failed", |m| m.evaluation_errors.get()),
            ("flagguard.request_outcomes", "Entry-span outcomes seen", |m| m.outcomes.get()),
            ("flagguard.series.overflow", "Observations refused by the series cap", |m| m.series_overflow.get()),
        ];
        for (name, description, read) in counters {
            let m = metrics.clone();
            meter.u64_observable_counter(name).with_description(description).with_callback(move |o| o.observe(read(&m), &[])).build();
        }
        type Gauge = fn(&Metrics) -> i64;
        let gauges: [(&'static str, &'static str, Gauge); 7] = [
            ("flagguard.ingest.queue_depth", "Batches queued for the pipeline", |m| m.queue_depth.get()),
            ("flagguard.ingest.queue_items", "Evaluations and outcomes queued for the pipeline", |m| m.queue_items.get()),
            ("flagguard.traces_in_flight", "Live traces in the correlator", |m| m.traces_in_flight.get()),
            ("flagguard.series", "Active flagged series", |m| m.series.get()),
            ("flagguard.actions.pending", "Outbox entries pending", |m| m.actions_pending.get()),
            ("flagguard.rules.loaded", "Rules in the active set", |m| m.rules_loaded.get()),
            ("flagguard.rules.stale", "Rules whose flag sent no telemetry lately", |m| m.rules_stale.get()),
        ];
        for (name, description, read) in gauges {
            let m = metrics.clone();
            meter.i64_observable_gauge(name).with_description(description).with_callback(move |o| o.observe(read(&m), &[])).build();
        }
    }
}

fn resource() -> Resource {
    let mut builder = Resource::builder().with_attribute(KeyValue::new(SELF_ATTRIBUTE, true));
    if var("OTEL_SERVICE_NAME").is_none() {
        builder = builder.with_service_name("flagguard");
    }
    builder.build()
}

/// Builds the exporters when [`enabled`] (call inside the tokio runtime: the gRPC exporter
/// needs it). Errors are returned for the caller to log; flagguard runs without them.
pub fn exporters() -> Result<Exporters, String> {
    if !enabled() {
        return Ok(Exporters::default());
    }
    let spans = opentelemetry_otlp::SpanExporter::builder().with_tonic().build().map_err(|e| format!("OTLP span exporter: {e}"))?;
    let traces = SdkTracerProvider::builder().with_batch_exporter(spans).with_resource(resource()).build();
    let metric_exporter = opentelemetry_otlp::MetricExporter::builder().with_tonic().build().map_err(|e| format!("OTLP metric exporter: {e}"))?;
    let metrics = SdkMeterProvider::builder().with_reader(PeriodicReader::builder(metric_exporter).build()).with_resource(resource()).build();
    Ok(Exporters { traces: Some(traces), metrics: Some(metrics) })
}

/// The `tracing` layer that sends spans through `exporters`, if active.
pub fn layer<S>(exporters: &Exporters) -> Option<tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer>>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    let tracer = exporters.traces.as_ref()?.tracer("flagguard");
    Some(tracing_opentelemetry::layer().with_tracer(tracer))
}

/// Installs the global tracing subscriber. `RUST_LOG` wins over `level`.
/// `exporters` adds flagguard's own spans over OTLP when active .
pub fn init_logging(format: crate::telemetry::LogFormat, level: &str, exporters: &Exporters) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    let fmt = match format {
        crate::telemetry::LogFormat::Text => fmt.boxed(),
        crate::telemetry::LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    };
    let _ = tracing_subscriber::registry().with(filter).with(fmt).with(layer(exporters)).try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test touches the process environment (the variables are read at start only).
    #[test]
    fn off_by_default_and_never_pointed_at_itself() {
        // SAFETY: no other test of this binary reads the OTEL_* variables.
        unsafe {
            for v in ENDPOINT_VARS {
                std::env::remove_var(v);
            }
        }
        assert!(!enabled(), "off unless an endpoint is set");
        let own: Vec<SocketAddr> = vec!["0.0.0.0:4317".parse().unwrap(), "0.0.0.0:4318".parse().unwrap()];
        assert_eq!(check(&own), Ok(()));
        unsafe { std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4317") };
        assert!(enabled());
        assert!(check(&own).unwrap_err().contains("own OTLP receiver"));
        unsafe { std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel-collector:4317") };
        assert_eq!(check(&own), Ok(()), "a collector elsewhere is fine");
        unsafe { std::env::set_var("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json") };
        assert!(check(&own).unwrap_err().contains("gRPC only"));
        unsafe {
            std::env::remove_var("OTEL_EXPORTER_OTLP_PROTOCOL");
            std::env::remove_var("OTEL_EXPORTER_OTLP_ENDPOINT");
        }
    }
}
