//! The promotion gate, pure: promote / hold / rollback for a flag (or one environment, region or
//! variant of it) from the current verdicts of every rule slice that guards it, with the
//! evidence. Served by `GET /v1/gates/{flag}` (`api::gates`), turned into exit codes by
//! `flagguard gate`, and asked by rollout plans (`rollout`) before every step.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::aggregate::snapshot::{Snapshot, VerdictView};
use crate::time::Timestamp;

/// What a pipeline should do with the rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Every guarding slice is healthy (for at least `min_healthy`).
    Promote,
    /// Not enough evidence yet (too few samples, no data, healthy for too short, or no rule).
    Hold,
    /// A guarding slice is breached.
    Rollback,
}

#[derive(Debug, Default, Deserialize)]
pub struct GateQuery {
    pub environment: Option<String>,
    pub region: Option<String>,
    pub variant: Option<String>,
    /// How long every slice must have been healthy, e.g. `5m`. Default 0.
    pub min_healthy: Option<String>,
}

fn slice_value<'a>(slice: &'a str, dim: &str) -> Option<&'a str> {
    slice.split(',').find_map(|kv| kv.strip_prefix(dim).and_then(|r| r.strip_prefix('=')))
}

/// Decides the gate from a snapshot. Pure: the handler and tests call it.
pub fn decide(snapshot: &Snapshot, flag: &str, query: &GateQuery, now: Timestamp) -> Result<Value, String> {
    let min_healthy = match &query.min_healthy {
        Some(d) => humantime::parse_duration(d).map_err(|e| format!("min_healthy: {e}"))?,
        None => std::time::Duration::ZERO,
    };
    let matches = |v: &&VerdictView| {
        let rule = snapshot.rule_set.rules.iter().find(|r| r.name == v.rule);
        let dim_ok = |dim: &str, want: &Option<String>, from_rule: Option<&str>| match want {
            None => true,
            Some(w) => slice_value(&v.slice, dim).or(from_rule).is_none_or(|have| have == w),
        };
        let variant_ok = query.variant.as_ref().is_none_or(|want| rule.is_none_or(|r| r.treatment.iter().any(|t| t == want)));
        v.flag == flag
            && dim_ok("environment", &query.environment, rule.and_then(|r| r.filter.environment.as_deref()))
            && dim_ok("region", &query.region, rule.and_then(|r| r.filter.region.as_deref()))
            && variant_ok
    };
    let slices: Vec<&VerdictView> = snapshot.verdicts.iter().filter(matches).collect();
    let healthy_for = |v: &VerdictView| {
        humantime::parse_rfc3339_weak(&v.since)
            .ok()
            .map(|t| now.since(Timestamp(t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64)))
    };
    let mut decision = if slices.is_empty() { Decision::Hold } else { Decision::Promote };
    let mut why = if slices.is_empty() { vec![format!("no rule guards {flag} (in this environment/region): no evidence to promote on")] } else { Vec::new() };
    for v in &slices {
        match v.verdict.as_str() {
            "breached" => {
                decision = Decision::Rollback;
                why.push(format!("{} {}: breached", v.rule, v.slice));
            }
            "healthy" => {
                let for_ = healthy_for(v).unwrap_or_default();
                if for_ < min_healthy && decision == Decision::Promote {
                    decision = Decision::Hold;
                }
                if for_ < min_healthy {
                    why.push(format!(
                        "{} {}: healthy for {}, {} required",
                        v.rule,
                        v.slice,
                        humantime::format_duration(std::time::Duration::from_secs(for_.as_secs())),
                        humantime::format_duration(min_healthy)
                    ));
                }
            }
            other => {
                if decision == Decision::Promote {
                    decision = Decision::Hold;
                }
                why.push(format!("{} {}: {other}{}", v.rule, v.slice, v.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()));
            }
        }
    }
    let evidence: Vec<Value> = slices
        .iter()
        .map(|v| {
            json!({
                "rule": v.rule,
                "slice": v.slice,
                "verdict": v.verdict,
                "reason": v.reason,
                "since": v.since,
                "healthy_for_s": (v.verdict == "healthy").then(|| healthy_for(v).map(|d| d.as_secs())).flatten(),
                "samples": v.evidence.pointer("/treatment/stats/requests"),
                "required": v.evidence.get("min_samples"),
                "mode": v.mode,
            })
        })
        .collect();
    Ok(json!({ "flag": flag, "decision": decision, "why": why, "slices": evidence, "at": snapshot.at }))
}
