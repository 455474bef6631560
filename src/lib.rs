//! flagguard: progressive delivery's kill switch, driven by OpenTelemetry.
//!
//! # Layout
//!
//! Data flows top to bottom; each module owns one stage of the pipeline.
//!
//! - [`ingest`]    — OTLP gRPC and HTTP receivers (TLS, bearer tokens, limits); decode with the
//!   selective wire reader, validate, extract flag evaluations and request outcomes (the only
//!   module that names OTLP types).
//! - [`correlate`] — the trace join: evaluations + entry-span outcomes → observations per cohort.
//! - [`aggregate`] — per-series windows (counts + hdrhistogram latency).
//! - [`rules`]     — rule files → validated rules; pure evaluation to verdicts; the engine that
//!   applies `for`, cooldown and blast-radius guards and decides actions.
//! - [`rulefile`]  — the rule-file loader: a rules directory → rules, alert mappings, plans.
//! - [`view`]      — the API's read model (snapshots of series, typed verdicts, rules).
//! - [`gate`]      — the promotion gate (promote / hold / rollback) from typed verdicts.
//! - [`stats`]     — sequential statistics (mSPRT, e-BH) the rules use.
//! - [`action`]    — the vocabulary of actions: targets, slices, kinds, the state machine.
//! - [`act`]       — the outbox door every action goes through (`act::outbox`), actuators (one
//!   per flag system: Unleash, LaunchDarkly, Flagsmith, flagd, webhook), the executor with
//!   retries and read-back, kill verification, notifications.
//! - [`alerts`]    — alert webhooks (Alertmanager, Grafana, Datadog, New Relic, Dynatrace,
//!   PagerDuty, generic): authentication, normalisation, mapping to flags.
//! - [`rollout`]   — rollout plans (steps gated by the promotion gate) and flag hygiene.
//! - [`manifest`]  — flag manifests in Git (owners, lifecycle, intended state per environment)
//!   and drift against the flag systems.
//! - [`controls`]  — operator controls over automatic actions (pause, allow/deny, silences).
//! - [`store`]     — SQLite: audit log, action outbox, rule state, plans, controls.
//! - [`api`]       — the admin HTTP API (tokens and roles), the dashboard and `/metrics`.
//! - [`config`]    — the TOML file shape and its validated form.
//! - [`pipeline`]  — the async shell around correlate → aggregate → rules (one task), one file
//!   per chore after the verdict.
//! - [`app`]       — the only wiring: channels, tasks, shutdown.
//! - [`model`], [`time`], [`telemetry`], [`otel`], [`tls`] — shared vocabulary, injected time,
//!   metrics, logs and flagguard's own traces, certificates.
//! - [`cli`]       — the subcommands: `serve`, `check`, `demo`, `gate`, `replay`, `simulate`,
//!   `traffic`, `flags`, `drift`, `apply`, `backup`.

pub mod act;
pub mod action;
pub mod aggregate;
pub mod alerts;
pub mod api;
pub mod app;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod controls;
pub mod correlate;
pub mod gate;
pub mod ingest;
pub mod manifest;
pub mod model;
pub mod otel;
pub mod pipeline;
pub mod rollout;
pub mod rulefile;
pub mod rules;
pub mod secrets;
pub mod shard;
pub mod stats;
pub mod store;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod view;
