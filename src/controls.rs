//! Operator controls over automatic actions: a global pause, per-flag allow/deny lists and
//! rule silences. They live in the store (they survive restarts), change only through the API
//! (operator role, each change audited with before and after), and are read where an automatic
//! action is decided — a rule's kill, an alert's kill, a rollout plan's step or rollback, an
//! auto-restore. A held decision is audited (`kill_held`) and notified, never queued.
//!
//! Manual actions through the API are never held: a human asked for them. A kill already in
//! the outbox is never held either: a decided kill is finished, including its fallback.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// Every control in force (or expired but not yet removed: expiry is checked on use).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Controls {
    /// All automatic actions held, until `until_ms` if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<Control>,
    /// Per flag: on the allow list or the deny list.
    #[serde(default)]
    pub flags: BTreeMap<String, FlagControl>,
    /// Per rule name: silenced until `until_ms`.
    #[serde(default)]
    pub silences: BTreeMap<String, Control>,
}

/// Who set a control, when, why, and until when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Control {
    pub actor: String,
    pub reason: String,
    pub since_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
}

impl Control {
    fn active(&self, now: Timestamp) -> bool {
        self.until_ms.is_none_or(|until| now.as_millis() < until)
    }

    fn describe(&self) -> String {
        let until = self.until_ms.map(|u| format!(" until {}", Timestamp(u).rfc3339())).unwrap_or_default();
        format!("by {} since {}{until}: {}", self.actor, Timestamp(self.since_ms).rfc3339(), self.reason)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum List {
    /// Once any flag is allowed, only allowed flags are acted on automatically.
    Allow,
    /// Never acted on automatically.
    Deny,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlagControl {
    pub list: List,
    #[serde(flatten)]
    pub set: Control,
}

impl Controls {
    /// Why an automatic action on `flag` decided by `rule` must be held now, if it must.
    pub fn hold(&self, flag: &str, rule: Option<&str>, now: Timestamp) -> Option<String> {
        if let Some(pause) = self.pause.as_ref().filter(|p| p.active(now)) {
            return Some(format!("automatic actions are paused {}", pause.describe()));
        }
        if let Some(silence) = rule.and_then(|r| self.silences.get(r)).filter(|s| s.active(now)) {
            return Some(format!("rule {} is silenced {}", rule.unwrap_or_default(), silence.describe()));
        }
        match self.flags.get(flag).filter(|c| c.set.active(now)) {
            Some(FlagControl { list: List::Deny, set }) => Some(format!("flag {flag} is on the deny list {}", set.describe())),
            Some(FlagControl { list: List::Allow, .. }) => None,
            None if self.flags.values().any(|c| c.list == List::Allow && c.set.active(now)) => Some(format!("flag {flag} is not on the allow list")),
            None => None,
        }
    }

    /// Whether anything holds automatic actions at all (for `/metrics` and the dashboard).
    pub fn paused(&self, now: Timestamp) -> bool {
        self.pause.as_ref().is_some_and(|p| p.active(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(until_ms: Option<u64>) -> Control {
        Control { actor: "token:alice".into(), reason: "maintenance".into(), since_ms: 1_000, until_ms }
    }

    #[test]
    fn pause_holds_everything_until_it_expires() {
        let c = Controls { pause: Some(set(Some(5_000))), ..Controls::default() };
        let why = c.hold("checkout", Some("r"), Timestamp(4_999)).expect("held while paused");
        assert!(why.contains("paused by token:alice") && why.contains("maintenance"), "{why}");
        assert_eq!(c.hold("checkout", Some("r"), Timestamp(5_000)), None, "expired");
        assert!(!c.paused(Timestamp(5_000)));
    }

    #[test]
    fn silence_holds_only_its_rule() {
        let c = Controls { silences: BTreeMap::from([("noisy".into(), set(Some(9_000)))]), ..Controls::default() };
        assert!(c.hold("f", Some("noisy"), Timestamp(2_000)).is_some());
        assert_eq!(c.hold("f", Some("other"), Timestamp(2_000)), None);
        assert_eq!(c.hold("f", None, Timestamp(2_000)), None);
    }

    #[test]
    fn deny_list_holds_its_flag_and_an_allow_list_holds_every_other() {
        let deny = Controls { flags: BTreeMap::from([("billing".into(), FlagControl { list: List::Deny, set: set(None) })]), ..Controls::default() };
        assert!(deny.hold("billing", None, Timestamp(2_000)).is_some_and(|w| w.contains("deny list")));
        assert_eq!(deny.hold("checkout", None, Timestamp(2_000)), None, "a deny list alone allows the rest");
        let allow = Controls { flags: BTreeMap::from([("checkout".into(), FlagControl { list: List::Allow, set: set(None) })]), ..Controls::default() };
        assert_eq!(allow.hold("checkout", None, Timestamp(2_000)), None);
        assert!(allow.hold("search", None, Timestamp(2_000)).is_some_and(|w| w.contains("not on the allow list")));
    }

    #[test]
    fn list_entries_expire_too() {
        let deny = Controls { flags: BTreeMap::from([("billing".into(), FlagControl { list: List::Deny, set: set(Some(5_000)) })]), ..Controls::default() };
        assert!(deny.hold("billing", None, Timestamp(4_000)).is_some());
        assert_eq!(deny.hold("billing", None, Timestamp(5_000)), None);
        let allow = Controls { flags: BTreeMap::from([("checkout".into(), FlagControl { list: List::Allow, set: set(Some(5_000)) })]), ..Controls::default() };
        assert!(allow.hold("search", None, Timestamp(4_000)).is_some());
        assert_eq!(allow.hold("search", None, Timestamp(5_000)), None, "an expired allow entry no longer narrows");
    }

    #[test]
    fn serialises_round_trip() {
        let c = Controls {
            pause: Some(set(None)),
            flags: BTreeMap::from([("x".into(), FlagControl { list: List::Allow, set: set(None) })]),
            silences: BTreeMap::from([("r".into(), set(Some(3)))]),
        };
        let back: Controls = serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
}
