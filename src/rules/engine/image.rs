//! The engine's per-slice state as plain data for the checkpoint (`pipeline::checkpoint`):
//! verdicts and their `for` clocks, each sequential test's segment (its start, index, fixed
//! thresholds and the user-bucket bases it reads from), the evidence e-BH reads across slices,
//! recent kills (the incident limit) and the latest verdict changes. Slices are kept by rule
//! name, as on a rule reload: a rule that is gone loses its slices, one whose conditions changed
//! starts its tests afresh ([`RuleEngine::segment`]). Cooldowns are not here: they are the
//! store's (`last_fired`).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{RuleEngine, SliceKey, SliceState, TransitionView};
use crate::aggregate::image::SeriesImage;
use crate::model::{Dimension, FlagKey, SeriesKey, Slice};
use crate::rules::evaluate::Verdict;
use crate::stats::{NonZeroBuckets, UserBuckets};
use crate::time::Timestamp;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EngineImage {
    slices: Vec<SliceImage>,
    evidence: Vec<(SliceId, f64, f64)>,
    rule_last_data: Vec<(String, u64)>,
    /// (service, environment, flag, at ms).
    recent_kills: Vec<(String, String, String, u64)>,
    transitions: Vec<TransitionImage>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct SliceId {
    rule: String,
    flag: String,
    values: Vec<(Dimension, String)>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct SliceImage {
    id: SliceId,
    started: u64,
    thresholds: Vec<Option<f64>>,
    segment: u32,
    user_base: Vec<(SeriesImage, NonZeroBuckets)>,
    slow_base: Vec<(SeriesImage, NonZeroBuckets)>,
    verdict: VerdictImage,
    since: u64,
    breached_since: Option<u64>,
    incident_since: Option<u64>,
    /// The decision record as JSON text.
    record: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum VerdictImage {
    Healthy,
    Breached,
    Inconclusive(String),
    NoData,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct TransitionImage {
    at: u64,
    rule: String,
    flag: String,
    slice: Vec<(Dimension, String)>,
    from: String,
    to: String,
}

/// What a restore brought back, and what it dropped because its rule is gone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    pub slices: usize,
    pub dropped: usize,
}

fn label(label: &str) -> Option<&'static str> {
    ["healthy", "breached", "inconclusive", "no_data"].into_iter().find(|l| *l == label)
}

fn buckets(base: &HashMap<SeriesKey, UserBuckets>) -> Vec<(SeriesImage, NonZeroBuckets)> {
    base.iter().map(|(k, b)| (k.into(), b.nonzero())).collect()
}

fn base(image: Vec<(SeriesImage, NonZeroBuckets)>) -> Result<HashMap<SeriesKey, UserBuckets>, String> {
    image.into_iter().map(|(key, nonzero)| Ok((SeriesKey::from(key), UserBuckets::from_nonzero(nonzero)?))).collect()
}

impl RuleEngine {
    fn image_id(&self, key: &SliceKey) -> SliceId {
        SliceId {
            rule: self.rules.rules[key.rule].name.clone(),
            flag: key.flag.to_string(),
            values: key.values.iter().map(|(d, v)| (*d, v.to_string())).collect(),
        }
    }

    pub fn image(&self) -> EngineImage {
        let slices = self
            .slices
            .iter()
            .map(|(key, s)| SliceImage {
                id: self.image_id(key),
                started: s.started.as_millis(),
                thresholds: s.thresholds.clone(),
                segment: s.segment,
                user_base: buckets(&s.user_base),
                slow_base: buckets(&s.slow_base),
                verdict: match &s.verdict {
                    Verdict::Healthy => VerdictImage::Healthy,
                    Verdict::Breached => VerdictImage::Breached,
                    Verdict::Inconclusive(why) => VerdictImage::Inconclusive(why.clone()),
                    Verdict::NoData => VerdictImage::NoData,
                },
                since: s.since.as_millis(),
                breached_since: s.breached_since.map(Timestamp::as_millis),
                incident_since: s.incident_since.map(Timestamp::as_millis),
                record: s.record.to_string(),
            })
            .collect();
        EngineImage {
            slices,
            evidence: self.evidence.iter().map(|(k, &(e, alpha))| (self.image_id(k), e, alpha)).collect(),
            rule_last_data: self.rule_last_data.iter().map(|(r, t)| (r.clone(), t.as_millis())).collect(),
            recent_kills: self.recent_kills.iter().map(|(s, e, f, t)| (s.clone(), e.clone(), f.clone(), t.as_millis())).collect(),
            transitions: self
                .transitions
                .iter()
                .map(|t| TransitionImage {
                    at: t.at.as_millis(),
                    rule: t.rule.clone(),
                    flag: t.flag.clone(),
                    slice: t.slice.0.iter().map(|(d, v)| (*d, v.to_string())).collect(),
                    from: t.from.to_owned(),
                    to: t.to.to_owned(),
                })
                .collect(),
        }
    }

    /// Takes the image's slice state for the rules this engine has (by name); checked whole
    /// before anything is replaced.
    pub fn restore(&mut self, image: EngineImage) -> Result<Restored, String> {
        let index: HashMap<&str, usize> = self.rules.rules.iter().enumerate().map(|(i, r)| (r.name.as_str(), i)).collect();
        let key = |id: SliceId| -> Option<SliceKey> {
            Some(SliceKey {
                rule: *index.get(id.rule.as_str())?,
                flag: FlagKey(id.flag.into()),
                values: id.values.into_iter().map(|(d, v)| (d, v.into())).collect(),
            })
        };
        let mut restored = Restored::default();
        let mut slices = HashMap::new();
        for s in image.slices {
            let rule = s.id.rule.clone();
            let Some(k) = key(s.id) else {
                restored.dropped += 1;
                continue;
            };
            let record = serde_json::from_str(&s.record).map_err(|e| format!("rule {rule}: decision record: {e}"))?;
            let state = SliceState {
                started: Timestamp(s.started),
                thresholds: s.thresholds,
                segment: s.segment,
                user_base: base(s.user_base).map_err(|e| format!("rule {rule}: {e}"))?,
                slow_base: base(s.slow_base).map_err(|e| format!("rule {rule}: {e}"))?,
                verdict: match s.verdict {
                    VerdictImage::Healthy => Verdict::Healthy,
                    VerdictImage::Breached => Verdict::Breached,
                    VerdictImage::Inconclusive(why) => Verdict::Inconclusive(why),
                    VerdictImage::NoData => Verdict::NoData,
                },
                since: Timestamp(s.since),
                breached_since: s.breached_since.map(Timestamp),
                incident_since: s.incident_since.map(Timestamp),
                record,
                mode: self.rules.rules[k.rule].mode,
            };
            slices.insert(k, state);
        }
        restored.slices = slices.len();
        self.slices = slices;
        self.evidence = image.evidence.into_iter().filter_map(|(id, e, alpha)| Some((key(id)?, (e, alpha)))).collect();
        self.rule_last_data = image.rule_last_data.into_iter().map(|(r, t)| (r, Timestamp(t))).collect();
        self.recent_kills = image.recent_kills.into_iter().map(|(s, e, f, t)| (s, e, f, Timestamp(t))).collect();
        self.transitions = image
            .transitions
            .into_iter()
            .filter_map(|t| {
                Some(TransitionView {
                    at: Timestamp(t.at),
                    rule: t.rule,
                    flag: t.flag,
                    slice: Slice(t.slice.into_iter().map(|(d, v)| (d, v.into())).collect()),
                    from: label(&t.from)?,
                    to: label(&t.to)?,
                })
            })
            .collect();
        Ok(restored)
    }
}
