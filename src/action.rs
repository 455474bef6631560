//! The vocabulary of actions, shared by the outbox door (`act::outbox`), the executor and the
//! store: what an action targets ([`Target`], [`Slice`]), what kind it is ([`ActionKind`]) and
//! the state machine it moves through ([`ActionState`], whose allowed moves are one table,
//! [`TRANSITIONS`]). Pure types: strings only at the SQLite and API edges (`as_str`, `key`).
//!
//! Invariants:
//! - a target's [`Target::key`] is canonical: the environment only in its field (`*` for none),
//!   the other dimensions sorted and deduplicated, so two requests for the same flag-system
//!   object always have the same key — the key of "one open action per target", of
//!   supersession and of the kill/rollout guards;
//! - a state moves only along [`TRANSITIONS`]; the store refuses any other move.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The actuator name notifications use in the outbox (reserved: no actuator may take it).
pub const NOTIFIER: &str = "notify";

/// What kind of action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    Kill,
    /// Undo a kill: return the flag to the state saved when it was killed.
    Restore,
    /// Set the rollout percentage.
    Rollout,
    /// A message to the on-call (not a flag system call).
    Notify,
}

impl ActionKind {
    /// The audit records' prefix (`kill_decided`, `notification_queued`).
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Kill => "kill",
            ActionKind::Restore => "restore",
            ActionKind::Rollout => "rollout",
            ActionKind::Notify => "notification",
        }
    }

    /// The outbox's `kind` column.
    pub fn column(self) -> &'static str {
        match self {
            ActionKind::Notify => "notify",
            other => other.as_str(),
        }
    }
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.column())
    }
}

impl PartialEq<&str> for ActionKind {
    fn eq(&self, other: &&str) -> bool {
        self.column() == *other
    }
}

/// Where an action is in its life. Stored as [`ActionState::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionState {
    /// In the outbox, being tried.
    Pending,
    /// The call succeeded; the flag system cannot be read back.
    Sent,
    /// The call succeeded and was read back.
    Confirmed,
    /// The killed cohort's traffic is gone.
    Drained,
    /// Drained, and the slice's error rate is back near its baseline.
    Recovered,
    /// Drained, but the error rate did not recover: the kill did not fix it.
    Failed,
    /// No traffic to watch: the drain cannot be proven.
    Unverified,
    /// The call failed for good, or the cohort never drained.
    Escalated,
    /// A human re-enabled the flag: drift, never fought.
    Overridden,
    /// A restore undid the kill (or an operator acknowledged the drift).
    Restored,
    /// A rollout change or restore overtaken by a kill of its target.
    Superseded,
    /// A compare-and-set rollout change found the flag not at the expected percentage:
    /// nothing was changed (an answer, not an escalation).
    Refused,
}

use ActionState::*;

/// Every allowed move, and only those. A call's outcome: `Pending` (or `Superseded` while its
/// call was in flight) → `Sent` / `Confirmed` / `Escalated`. Verification: `Sent` /
/// `Confirmed` → `Drained` / `Escalated` / `Unverified`, `Drained` → `Recovered` / `Failed`.
/// Drift: `Confirmed` / `Drained` / `Recovered` → `Overridden`. A compare-and-set rollout
/// whose flag is not at the expected percentage: `Pending` → `Refused`. A restore ends every state
/// that still holds the flag off ([`HOLDING`]). A kill supersedes a pending rollout or restore.
pub const TRANSITIONS: &[(ActionState, ActionState)] = &[
    (Pending, Sent),
    (Pending, Confirmed),
    (Pending, Escalated),
    (Pending, Superseded),
    (Pending, ActionState::Refused),
    (Superseded, Sent),
    (Superseded, Confirmed),
    (Superseded, Escalated),
    (Sent, Drained),
    (Sent, Escalated),
    (Sent, Unverified),
    (Confirmed, Drained),
    (Confirmed, Escalated),
    (Confirmed, Unverified),
    (Confirmed, Overridden),
    (Drained, Recovered),
    (Drained, Failed),
    (Drained, Overridden),
    (Recovered, Overridden),
    (Sent, Restored),
    (Confirmed, Restored),
    (Drained, Restored),
    (Recovered, Restored),
    (Failed, Restored),
    (Unverified, Restored),
    (Escalated, Restored),
    (Overridden, Restored),
];

/// Kill states that still hold the flag off (a restore of the target ends them).
pub const HOLDING: &[ActionState] = &[Sent, Confirmed, Drained, Recovered, Failed, Unverified, Escalated, Overridden];

/// Every state, for parsing and tests.
pub const ALL: &[ActionState] =
    &[Pending, Sent, Confirmed, Drained, Recovered, Failed, Unverified, Escalated, Overridden, Restored, Superseded, ActionState::Refused];

impl ActionState {
    pub fn as_str(self) -> &'static str {
        match self {
            Pending => "pending",
            Sent => "sent",
            Confirmed => "confirmed",
            Drained => "drained",
            Recovered => "recovered",
            Failed => "failed",
            Unverified => "unverified",
            Escalated => "escalated",
            Overridden => "overridden",
            Restored => "restored",
            Superseded => "superseded",
            ActionState::Refused => "refused",
        }
    }

    pub fn parse(s: &str) -> Option<ActionState> {
        ALL.iter().copied().find(|state| state.as_str() == s)
    }

    /// Whether [`TRANSITIONS`] allows `self` → `to`.
    pub fn may_become(self, to: ActionState) -> bool {
        TRANSITIONS.contains(&(self, to))
    }

    /// No move leaves it.
    pub fn is_terminal(self) -> bool {
        !TRANSITIONS.iter().any(|(from, _)| *from == self)
    }

    /// A kill in this state still holds its flag off.
    pub fn holds(self) -> bool {
        HOLDING.contains(&self)
    }

    /// `'a', 'b'` for an SQL `IN (…)` list (the SQLite edge).
    pub fn sql_list(states: &[ActionState]) -> String {
        states.iter().map(|s| format!("'{}'", s.as_str())).collect::<Vec<_>>().join(", ")
    }
}

impl fmt::Display for ActionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for ActionState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<str> for ActionState {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

/// Why an operator's or a plan's action was not queued (answered as 409 by the API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Another action is pending for the target: one at a time.
    Pending { id: i64, kind: ActionKind },
    /// A kill holds the flag off: a rollout change waits for its restore.
    Killed { id: i64 },
    /// What was asked cannot be restored (not a kill, never reached the flag system…).
    NotRestorable(String),
    /// The caller's idempotency key already made this action (for the same change): the
    /// change is made once; the caller follows that action.
    SameKey { id: i64 },
    /// The caller's idempotency key already made an action for another change.
    KeyReused { id: i64 },
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Pending { id, kind } => write!(f, "action {id} ({kind}) is still pending for this target"),
            Refused::Killed { id } => write!(f, "the flag is killed (action {id}); restore it before changing its rollout"),
            Refused::NotRestorable(why) => f.write_str(why),
            Refused::SameKey { id } => write!(f, "this idempotency key already made action {id}"),
            Refused::KeyReused { id } => write!(f, "this idempotency key already made action {id} for another change (another target or kind); use a new key"),
        }
    }
}

/// The dimensions a kill is limited to besides the environment (`region=eu`, `service=api`),
/// sorted and deduplicated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slice(Vec<(String, String)>);

impl Slice {
    /// From a request's scope: the environment dropped (it has its own field), the rest sorted.
    pub fn of(scope: &[(String, String)]) -> Slice {
        let mut dims: Vec<(String, String)> = scope.iter().filter(|(k, _)| k != "environment").cloned().collect();
        dims.sort();
        dims.dedup();
        Slice(dims)
    }

    pub fn is_whole(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, dim: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == dim).map(|(_, v)| v.as_str())
    }

    pub fn dims(&self) -> &[(String, String)] {
        &self.0
    }

    /// `region=eu,service=api` (the key's last part).
    fn parse(s: &str) -> Slice {
        Slice::of(&s.split(',').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect::<Vec<_>>())
    }
}

impl fmt::Display for Slice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        f.write_str(&parts.join(","))
    }
}

/// The flag-system object an action changes: one open action per target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub actuator: String,
    pub flag: String,
    /// `None`: every environment (or the actuator's default).
    pub environment: Option<String>,
    pub slice: Slice,
}

impl Target {
    /// The environment from its field, else from the scope; the rest of the scope as the slice.
    pub fn new(actuator: &str, flag: &str, environment: Option<&str>, scope: &[(String, String)]) -> Target {
        let environment = environment.or_else(|| scope.iter().find(|(k, _)| k == "environment").map(|(_, v)| v.as_str()));
        Target { actuator: actuator.into(), flag: flag.into(), environment: environment.map(str::to_owned), slice: Slice::of(scope) }
    }

    /// The canonical key `actuator|flag|environment|slice` (the outbox's `target` column).
    pub fn key(&self) -> String {
        format!("{}|{}|{}|{}", self.actuator, self.flag, self.environment.as_deref().unwrap_or("*"), self.slice)
    }

    /// Reads a stored key back (one written by [`Target::key`]).
    pub fn parse(key: &str) -> Target {
        let mut parts = key.splitn(4, '|');
        let mut next = || parts.next().unwrap_or("");
        let (actuator, flag, env, slice) = (next(), next(), next(), next());
        Target {
            actuator: actuator.into(),
            flag: flag.into(),
            environment: (env != "*" && !env.is_empty()).then(|| env.to_owned()),
            slice: Slice::parse(slice),
        }
    }

    /// Whether a kill of `self` covers `other`: the same flag; the same environment or either
    /// for every environment; the kill's slice the whole flag, or the same slice.
    pub fn covers(&self, other: &Target) -> bool {
        self.flag == other.flag
            && (self.environment == other.environment || self.environment.is_none() || other.environment.is_none())
            && (self.slice.is_whole() || self.slice == other.slice)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(k: &str, v: &str) -> (String, String) {
        (k.into(), v.into())
    }

    #[test]
    fn a_key_is_canonical_and_reads_back() {
        let a = Target::new("flags", "shop/checkout", None, &[s("region", "eu"), s("environment", "prod"), s("service", "api")]);
        let b = Target::new("flags", "shop/checkout", Some("prod"), &[s("service", "api"), s("region", "eu")]);
        assert_eq!(a.key(), "flags|shop/checkout|prod|region=eu,service=api");
        assert_eq!(a, b);
        assert_eq!(Target::parse(&a.key()), a);
        let whole = Target::new("flags", "f", None, &[]);
        assert_eq!(whole.key(), "flags|f|*|");
        assert_eq!(Target::parse(&whole.key()), whole);
    }

    #[test]
    fn a_whole_kill_covers_its_slices_and_a_slice_only_itself() {
        let whole = Target::new("a", "f", Some("prod"), &[]);
        let eu = Target::new("a", "f", Some("prod"), &[s("region", "eu")]);
        let us = Target::new("a", "f", Some("prod"), &[s("region", "us")]);
        let everywhere = Target::new("a", "f", None, &[]);
        assert!(whole.covers(&eu) && eu.covers(&eu) && !eu.covers(&us) && !eu.covers(&whole));
        assert!(everywhere.covers(&us) && !Target::new("a", "g", None, &[]).covers(&us));
    }

    #[test]
    fn every_state_reads_back_and_the_table_has_no_move_out_of_a_terminal_state() {
        for state in ALL {
            assert_eq!(ActionState::parse(state.as_str()), Some(*state));
        }
        assert!(Restored.is_terminal());
        assert!(!Superseded.is_terminal(), "a superseded call in flight still finishes");
        assert!(TRANSITIONS.iter().all(|(from, to)| from != to), "no self-moves");
        // Every holding state can be restored, nothing else can.
        for state in ALL {
            assert_eq!(state.may_become(Restored), state.holds(), "{state}");
        }
    }
}
