//! The promotion gate, pure: promote / hold / rollback for a flag (or one environment, region or
//! variant of it) from the current verdicts of every rule slice that guards it, with the
//! evidence. It reads the typed verdicts (slices, verdicts, times) the engine publishes and the
//! rules; text appears only in its JSON answer. Served by `GET /v1/gates/{flag}` (`api::gates`), turned into exit codes by
//! `flagguard gate`, and asked by rollout plans (`rollout`) before every step.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::model::Dimension;
use crate::rules::Rule;
use crate::rules::evaluate::Verdict;
use crate::rules::published::VerdictView;
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

/// Decides the gate from the published verdicts and the rules that produced them; `at` is the
/// verdicts' publication time, echoed. Pure: the handler, rollout plans and tests call it.
pub fn decide(verdicts: &[VerdictView], rules: &[Rule], at: &str, flag: &str, query: &GateQuery, now: Timestamp) -> Result<Value, String> {
    let min_healthy = match &query.min_healthy {
        Some(d) => humantime::parse_duration(d).map_err(|e| format!("min_healthy: {e}"))?,
        None => std::time::Duration::ZERO,
    };
    let matches = |v: &&VerdictView| {
        let rule = rules.iter().find(|r| r.name == v.rule);
        let dim_ok = |dim: Dimension, want: &Option<String>, from_rule: Option<&str>| match want {
            None => true,
            Some(w) => v.slice.get(dim).or(from_rule).is_none_or(|have| have == w),
        };
        let variant_ok = query.variant.as_ref().is_none_or(|want| rule.is_none_or(|r| r.treatment.iter().any(|t| t == want)));
        v.flag == flag
            && dim_ok(Dimension::Environment, &query.environment, rule.and_then(|r| r.filter.environment.as_deref()))
            && dim_ok(Dimension::Region, &query.region, rule.and_then(|r| r.filter.region.as_deref()))
            && variant_ok
    };
    let slices: Vec<&VerdictView> = verdicts.iter().filter(matches).collect();
    // Published with millisecond precision, as the API shows it.
    let healthy_for = |v: &VerdictView| now.since(v.since);
    let mut decision = if slices.is_empty() { Decision::Hold } else { Decision::Promote };
    let mut why = if slices.is_empty() { vec![format!("no rule guards {flag} (in this environment/region): no evidence to promote on")] } else { Vec::new() };
    for v in &slices {
        match &v.verdict {
            Verdict::Breached => {
                decision = Decision::Rollback;
                why.push(format!("{} {}: breached", v.rule, v.slice));
            }
            Verdict::Healthy => {
                let for_ = healthy_for(v);
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
                why.push(format!("{} {}: {other}{}", v.rule, v.slice, other.reason().map(|r| format!(" ({r})")).unwrap_or_default()));
            }
        }
    }
    let evidence: Vec<Value> = slices
        .iter()
        .map(|v| {
            json!({
                "rule": v.rule,
                "slice": v.slice.to_string(),
                "verdict": v.verdict.label(),
                "reason": v.verdict.reason(),
                "since": v.since.rfc3339(),
                "healthy_for_s": (v.verdict == Verdict::Healthy).then(|| healthy_for(v).as_secs()),
                "samples": v.evidence.pointer("/treatment/stats/requests"),
                "required": v.evidence.get("min_samples"),
                "mode": v.mode,
            })
        })
        .collect();
    Ok(json!({ "flag": flag, "decision": decision, "why": why, "slices": evidence, "at": at }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Mode, Slice};

    fn rule() -> Rule {
        let set = crate::rulefile::parse(
            std::path::Path::new("g.yaml"),
            "rules:\n  - name: g\n    flag: f\n    treatment: \"on\"\n    control: \"off\"\n    per: [region]\n    when: [ { error_rate: { above: 0.1 } } ]\n    window: 1m\n",
            &Default::default(),
        );
        set.map(|p| p.rules.into_iter().next()).ok().flatten().expect("a valid rule")
    }

    fn view(region: &str, verdict: Verdict, since: Timestamp) -> VerdictView {
        VerdictView {
            rule: "g".into(),
            flag: "f".into(),
            slice: Slice(vec![(Dimension::Region, region.into())]),
            verdict,
            since,
            mode: Mode::DryRun,
            evidence: Value::Null,
        }
    }

    #[test]
    fn the_gate_reads_typed_slices_and_times() {
        let now = Timestamp(10_000_000);
        let verdicts = [view("eu", Verdict::Breached, now), view("us", Verdict::Healthy, Timestamp(10_000_000 - 120_000))];
        let rules = [rule()];
        let ask = |region: &str, min_healthy: Option<&str>| {
            let query = GateQuery { region: Some(region.into()), min_healthy: min_healthy.map(str::to_owned), ..GateQuery::default() };
            decide(&verdicts, &rules, "at", "f", &query, now).expect("a valid query")
        };
        assert_eq!(ask("eu", None)["decision"], "rollback");
        assert_eq!(ask("us", None)["decision"], "promote");
        assert_eq!(ask("us", None)["slices"][0]["healthy_for_s"], 120);
        assert_eq!(ask("us", Some("5m"))["decision"], "hold", "healthy for 2 minutes of 5");
        assert_eq!(ask("us", None)["slices"][0]["slice"], "region=us");
        assert_eq!(ask("ap", None)["decision"], "hold", "no rule slice guards ap");
    }
}
