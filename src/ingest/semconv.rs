//! The OpenTelemetry feature-flag semantic-convention names the wire reader and the extractor
//! share (reference: `otel-feature-flags.md`): the event that records an evaluation, in its
//! current and its older name.

/// The evaluation event (span event, log record `event.name`, or child span name).
pub const EVENT_NEW: &str = "feature_flag.evaluation";
/// The evaluation event's name before semantic conventions v1.29.0 (`feature_flag`).
pub const EVENT_OLD: &str = "feature_flag";
