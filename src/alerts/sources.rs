//! One parser per alert source, each turning a JSON body into normalised [`Alert`]s.
//! Formats: `reference/alert-webhooks.md`; realistic bodies: `fixtures/webhooks/`.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Alert, AlertError, AlertStatus, Source, parse_tags};

/// Parses a delivery from `source`. `delivery_id` is a transport-level id when the source has
/// one (PagerDuty's `X-Webhook-Id`).
pub fn parse(source: Source, body: &[u8]) -> Result<Vec<Alert>, AlertError> {
    let malformed = |message: String| AlertError::Malformed { origin: source, message };
    let json: Value = serde_json::from_slice(body).map_err(|e| malformed(e.to_string()))?;
    if !json.is_object() {
        return Err(malformed("expected a JSON object".into()));
    }
    match source {
        Source::Alertmanager | Source::Grafana => grouped(source, &json),
        Source::Datadog => Ok(vec![datadog(&json)]),
        Source::Newrelic => Ok(vec![newrelic(&json)]),
        Source::Dynatrace => Ok(vec![dynatrace(&json)]),
        Source::Pagerduty => pagerduty(&json).map(|a| vec![a]),
        Source::Generic => generic(&json).map(|a| vec![a]),
    }
    .map_err(|e| match e {
        AlertError::Malformed { message, .. } => malformed(message),
        other => other,
    })
}

fn s(v: &Value, pointer: &str) -> Option<String> {
    match v.pointer(pointer)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn string_map(v: Option<&Value>, into: &mut BTreeMap<String, String>) {
    if let Some(Value::Object(map)) = v {
        for (k, v) in map {
            let value = match v {
                Value::String(s) => s.clone(),
                Value::Null => continue,
                other => other.to_string(),
            };
            into.insert(k.clone(), value);
        }
    }
}

fn bad(source: Source, message: &str) -> AlertError {
    AlertError::Malformed { origin: source, message: message.into() }
}

/// Alertmanager v4 and Grafana: a group of alerts, each with its own status — never the
/// group's.
fn grouped(source: Source, json: &Value) -> Result<Vec<Alert>, AlertError> {
    let alerts = json.get("alerts").and_then(Value::as_array).ok_or_else(|| bad(source, "missing alerts[]"))?;
    alerts
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let mut labels = BTreeMap::new();
            string_map(a.get("labels"), &mut labels);
            let status = match a.get("status").and_then(Value::as_str) {
                Some("firing") => AlertStatus::Firing,
                Some("resolved") => AlertStatus::Resolved,
                Some(other) => AlertStatus::Other(other.into()),
                None => return Err(bad(source, &format!("alerts[{i}].status missing"))),
            };
            // The fingerprint names the label set, the same in every episode; with `startsAt` it
            // names this episode, so the same alert firing again after a restore is new.
            let series = s(a, "/fingerprint").unwrap_or_else(|| format!("{}#{}", s(json, "/groupKey").unwrap_or_default(), labels_key(&labels)));
            let dedup_key = match s(a, "/startsAt") {
                Some(starts) => format!("{series}@{starts}"),
                None => series,
            };
            Ok(Alert {
                source,
                dedup_key,
                status,
                severity: labels.get("severity").cloned(),
                summary: s(a, "/annotations/summary").or_else(|| s(a, "/annotations/description")),
                labels,
            })
        })
        .collect()
}

fn labels_key(labels: &BTreeMap<String, String>) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// Datadog: custom payloads carry `$TAGS`, `$ALERT_SCOPE`, `$ALERT_TRANSITION`; the default
/// payload has only free text (no target: it can only be mapped by configuration).
fn datadog(json: &Value) -> Alert {
    let mut labels = BTreeMap::new();
    if let Some(tags) = s(json, "/tags") {
        parse_tags(&tags, &mut labels);
    }
    if let Some(scope) = s(json, "/alert_scope") {
        parse_tags(&scope, &mut labels);
    }
    // Unified service tagging's `env` is the deployment environment: the flag's, unless a
    // `flag_environment` tag says otherwise.
    if let Some(env) = labels.get("env").cloned() {
        labels.entry("flag_environment".into()).or_insert(env);
    }
    for (field, label) in [("/alert_id", "monitor_id"), ("/event_type", "event_type"), ("/id", "event_id")] {
        if let Some(v) = s(json, field) {
            labels.insert(label.into(), v);
        }
    }
    let transition = s(json, "/alert_transition").or_else(|| {
        // Default payload: the transition only shows in the title, "[Triggered on …] …".
        let title = s(json, "/title")?;
        title.strip_prefix('[').and_then(|t| t.split([' ', ']']).next()).map(str::to_owned)
    });
    let status = match transition.as_deref() {
        Some("Triggered" | "Re-Triggered") => AlertStatus::Firing,
        Some("Recovered") => AlertStatus::Resolved,
        Some(other) => AlertStatus::Other(other.to_ascii_lowercase()),
        None => AlertStatus::Other("unknown".into()),
    };
    Alert {
        source: Source::Datadog,
        dedup_key: s(json, "/alert_cycle_key").or_else(|| s(json, "/aggreg_key")).or_else(|| s(json, "/id")).unwrap_or_default(),
        status,
        severity: s(json, "/alert_priority").or_else(|| s(json, "/alert_type")),
        summary: s(json, "/title"),
        labels,
    }
}

/// New Relic workflows: the default template names no flag; templates extended with tags
/// (`featureFlag`, `flagEnvironment`, `cohort`, `region`) or `conditionFamilyId` do.
fn newrelic(json: &Value) -> Alert {
    let mut labels = BTreeMap::new();
    for (field, label) in [
        ("/featureFlag", "feature_flag"),
        ("/flagEnvironment", "flag_environment"),
        ("/cohort", "cohort"),
        ("/region", "region"),
        ("/conditionFamilyId/0", "condition_family_id"),
        ("/workflowName", "workflow"),
        ("/priority", "priority"),
    ] {
        if let Some(v) = s(json, field) {
            labels.insert(label.into(), v);
        }
    }
    let status = match s(json, "/state").as_deref() {
        Some("CREATED" | "ACTIVATED") => AlertStatus::Firing,
        Some("CLOSED") => AlertStatus::Resolved,
        Some(other) => AlertStatus::Other(other.to_ascii_lowercase()),
        None => AlertStatus::Other("unknown".into()),
    };
    Alert {
        source: Source::Newrelic,
        dedup_key: s(json, "/id").unwrap_or_default(),
        status,
        severity: s(json, "/priority"),
        summary: s(json, "/title"),
        labels,
    }
}

/// Dynatrace problem notifications: `Tags` (`key:value, …`) and the affected entities' tags.
fn dynatrace(json: &Value) -> Alert {
    let mut labels = BTreeMap::new();
    if let Some(tags) = s(json, "/Tags") {
        parse_tags(&tags, &mut labels);
    }
    if let Some(Value::Array(tags)) = json.pointer("/ProblemDetailsJSON/tagsOfAffectedEntities") {
        for tag in tags {
            if let Some(key) = s(tag, "/key") {
                labels.entry(key).or_insert_with(|| s(tag, "/value").unwrap_or_default());
            }
        }
    }
    if let Some(id) = s(json, "/ProblemID") {
        labels.insert("problem_id".into(), id);
    }
    let status = match s(json, "/State").as_deref() {
        Some("OPEN") => AlertStatus::Firing,
        Some("RESOLVED") => AlertStatus::Resolved,
        Some(other) => AlertStatus::Other(other.to_ascii_lowercase()),
        None => AlertStatus::Other("unknown".into()),
    };
    Alert {
        source: Source::Dynatrace,
        dedup_key: s(json, "/PID").or_else(|| s(json, "/ProblemID")).unwrap_or_default(),
        status,
        severity: s(json, "/ProblemDetailsJSON/severityLevel"),
        summary: s(json, "/ProblemTitle"),
        labels,
    }
}

/// PagerDuty v3: one event; no labels — map `incident_key` or `service_id`.
fn pagerduty(json: &Value) -> Result<Alert, AlertError> {
    let event_type = s(json, "/event/event_type").ok_or_else(|| bad(Source::Pagerduty, "missing event.event_type"))?;
    let mut labels = BTreeMap::new();
    for (field, label) in [
        ("/event/data/incident_key", "incident_key"),
        ("/event/data/service/id", "service_id"),
        ("/event/data/id", "incident_id"),
        ("/event/data/urgency", "urgency"),
        ("/event/data/priority/summary", "priority"),
    ] {
        if let Some(v) = s(json, field) {
            labels.insert(label.into(), v);
        }
    }
    labels.insert("event_type".into(), event_type.clone());
    let status = match event_type.as_str() {
        "incident.triggered" | "incident.reopened" => AlertStatus::Firing,
        "incident.resolved" => AlertStatus::Resolved,
        other => AlertStatus::Other(other.into()),
    };
    Ok(Alert {
        source: Source::Pagerduty,
        dedup_key: s(json, "/event/id").ok_or_else(|| bad(Source::Pagerduty, "missing event.id"))?,
        status,
        severity: labels.get("priority").or(labels.get("urgency")).cloned(),
        summary: s(json, "/event/data/title"),
        labels,
    })
}

/// flagguard's own `flagguard.alert/v1`.
fn generic(json: &Value) -> Result<Alert, AlertError> {
    match s(json, "/schema").as_deref() {
        Some("flagguard.alert/v1") => {}
        Some(other) => return Err(bad(Source::Generic, &format!("unknown schema {other:?}: this flagguard reads flagguard.alert/v1"))),
        None => return Err(bad(Source::Generic, "missing schema (flagguard.alert/v1)")),
    }
    let id = s(json, "/id").ok_or_else(|| bad(Source::Generic, "missing id"))?;
    let mut labels = BTreeMap::new();
    string_map(json.get("labels"), &mut labels);
    for (field, label) in [
        ("/target/flag", "feature_flag"),
        ("/target/environment", "flag_environment"),
        ("/target/cohort", "cohort"),
        ("/target/region", "region"),
        ("/target/project", "flag_project"),
        ("/target/provider", "flag_provider"),
        ("/dedup_key", "dedup_key"),
        ("/action/type", "action"),
    ] {
        if let Some(v) = s(json, field) {
            labels.insert(label.into(), v);
        }
    }
    let status = match s(json, "/status").as_deref() {
        Some("firing") => AlertStatus::Firing,
        Some("resolved") => AlertStatus::Resolved,
        Some(other) => return Err(bad(Source::Generic, &format!("status must be firing or resolved, got {other:?}"))),
        None => return Err(bad(Source::Generic, "missing status")),
    };
    Ok(Alert { source: Source::Generic, dedup_key: id, status, severity: s(json, "/severity"), summary: s(json, "/summary"), labels })
}
