//! What the engine publishes about its slices: typed verdicts and verdict changes. The gate and
//! the dashboard read the typed values; they become text only when serialised at the API's
//! JSON edge (same field names and formats as ever: `slice: "region=eu"`, `verdict: "healthy"`,
//! `since` in RFC 3339).

use serde::Serialize;
use serde::ser::{SerializeStruct, Serializer};
use serde_json::Value;

use super::evaluate::Verdict;
use crate::model::{Mode, Slice};
use crate::time::Timestamp;

/// One rule slice's current verdict with its decision record.
#[derive(Clone, Debug)]
pub struct VerdictView {
    pub rule: String,
    pub flag: String,
    pub slice: Slice,
    pub verdict: Verdict,
    /// Since when the slice has had this verdict.
    pub since: Timestamp,
    pub mode: Mode,
    pub evidence: Value,
}

impl Serialize for VerdictView {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("VerdictView", 8)?;
        s.serialize_field("rule", &self.rule)?;
        s.serialize_field("flag", &self.flag)?;
        s.serialize_field("slice", &self.slice.to_string())?;
        s.serialize_field("verdict", self.verdict.label())?;
        s.serialize_field("reason", &self.verdict.reason())?;
        s.serialize_field("since", &self.since.rfc3339())?;
        s.serialize_field("mode", &self.mode)?;
        s.serialize_field("evidence", &self.evidence)?;
        s.end()
    }
}

/// A verdict change of one rule slice (markers on the dashboard's plots).
#[derive(Clone, Debug)]
pub struct TransitionView {
    pub at: Timestamp,
    pub rule: String,
    pub flag: String,
    pub slice: Slice,
    /// The verdicts' labels (`healthy`, …): a change is of kind, not of reason.
    pub from: &'static str,
    pub to: &'static str,
}

impl Serialize for TransitionView {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("TransitionView", 6)?;
        s.serialize_field("at", &self.at.as_millis())?;
        s.serialize_field("rule", &self.rule)?;
        s.serialize_field("flag", &self.flag)?;
        s.serialize_field("slice", &self.slice.to_string())?;
        s.serialize_field("from", self.from)?;
        s.serialize_field("to", self.to)?;
        s.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Dimension;

    fn slice() -> Slice {
        Slice(vec![(Dimension::Region, "eu-west".into()), (Dimension::Service, "payments".into())])
    }

    /// The API's JSON is what it was when verdicts were strings: same fields, order, formats.
    #[test]
    fn verdicts_serialise_as_the_api_always_showed_them() {
        let view = VerdictView {
            rule: "r".into(),
            flag: "shop/f".into(),
            slice: slice(),
            verdict: Verdict::Inconclusive("12 of 100 samples in the window".into()),
            since: Timestamp(1_700_000_000_123),
            mode: Mode::DryRun,
            evidence: serde_json::json!({ "min_samples": 100 }),
        };
        assert_eq!(
            serde_json::to_string(&view).unwrap(),
            r#"{"rule":"r","flag":"shop/f","slice":"region=eu-west,service=payments","verdict":"inconclusive","reason":"12 of 100 samples in the window","since":"2023-11-14T22:13:20.123Z","mode":"dry_run","evidence":{"min_samples":100}}"#
        );
        let healthy = VerdictView { verdict: Verdict::Healthy, slice: Slice::default(), mode: Mode::Enforce, ..view };
        let json = serde_json::to_value(&healthy).unwrap();
        assert_eq!((json["slice"].as_str(), json["reason"].is_null(), json["mode"].as_str()), (Some(""), true, Some("enforce")));
        let change = TransitionView { at: Timestamp(5), rule: "r".into(), flag: "f".into(), slice: slice(), from: "no_data", to: "healthy" };
        assert_eq!(
            serde_json::to_string(&change).unwrap(),
            r#"{"at":5,"rule":"r","flag":"f","slice":"region=eu-west,service=payments","from":"no_data","to":"healthy"}"#
        );
    }

    #[test]
    fn a_slice_is_read_by_dimension_not_by_splitting_text() {
        // A value with the separators in it stays one value.
        let odd = Slice(vec![(Dimension::Region, "eu,region=us".into())]);
        assert_eq!(odd.get(Dimension::Region), Some("eu,region=us"));
        assert_eq!(odd.get(Dimension::Service), None);
        assert_eq!(slice().get(Dimension::Service), Some("payments"));
    }
}
