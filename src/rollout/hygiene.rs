//! Flag hygiene: flags that are candidates for removal — one variant served to all traffic for
//! longer than `single_variant_for` (the rollout is over: delete the flag and the dead branch),
//! or no evaluation for `unused_for` (dead code or a dead flag). From when each flag variant
//! was first and last evaluated: kept live by the windows, persisted to the store every minute.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::time::Timestamp;

/// When one flag variant was first and last evaluated (ms).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub flag: String,
    pub variant: String,
    pub first_ms: u64,
    pub last_ms: u64,
}

/// A removal candidate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StaleFlag {
    pub flag: String,
    /// `single_variant` or `unused`.
    pub why: &'static str,
    /// The variant everyone gets (`single_variant`).
    pub variant: Option<String>,
    /// Since when only that variant was served (`single_variant`), RFC 3339.
    pub since: Option<String>,
    pub last_evaluated: String,
    /// From flag metadata when telemetry carries it (none of the SDKs here do).
    pub owner: Option<String>,
}

/// Merges usage rows of the same (flag, variant): earliest first, latest last.
pub fn merge(rows: impl IntoIterator<Item = Usage>) -> Vec<Usage> {
    let mut by: BTreeMap<(String, String), Usage> = BTreeMap::new();
    for u in rows {
        by.entry((u.flag.clone(), u.variant.clone()))
            .and_modify(|m| {
                m.first_ms = m.first_ms.min(u.first_ms);
                m.last_ms = m.last_ms.max(u.last_ms);
            })
            .or_insert(u);
    }
    by.into_values().collect()
}

/// The removal candidates among `usage` at `now`.
pub fn stale(usage: &[Usage], now: Timestamp, single_variant_for: Duration, unused_for: Duration) -> Vec<StaleFlag> {
    let mut by_flag: BTreeMap<&str, Vec<&Usage>> = BTreeMap::new();
    for u in usage {
        by_flag.entry(u.flag.as_str()).or_default().push(u);
    }
    let mut out = Vec::new();
    for (flag, variants) in by_flag {
        let last = variants.iter().map(|u| u.last_ms).max().unwrap_or(0);
        if now.since(Timestamp(last)) >= unused_for {
            out.push(StaleFlag { flag: flag.into(), why: "unused", variant: None, since: None, last_evaluated: Timestamp(last).rfc3339(), owner: None });
            continue;
        }
        // One variant served since the others were last seen (or since it first appeared).
        let Some(current) = variants.iter().max_by_key(|u| u.last_ms) else { continue };
        let others_last = variants.iter().filter(|u| u.variant != current.variant).map(|u| u.last_ms).max();
        let since = others_last.map_or(current.first_ms, |o| o.max(current.first_ms));
        if now.since(Timestamp(since)) >= single_variant_for && others_last.is_none_or(|o| o < current.last_ms) {
            out.push(StaleFlag {
                flag: flag.into(),
                why: "single_variant",
                variant: Some(current.variant.clone()),
                since: Some(Timestamp(since).rfc3339()),
                last_evaluated: Timestamp(last).rfc3339(),
                owner: None,
            });
        }
    }
    out
}

/// Each candidate's owner, from the flag manifests (`team (contact)`).
pub fn with_owners(flags: &mut [StaleFlag], owners: &std::collections::BTreeMap<String, crate::manifest::Owner>) {
    for flag in flags {
        flag.owner = owners.get(&flag.flag).map(|o| o.contact.as_ref().map_or(o.team.clone(), |c| format!("{} ({c})", o.team)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(flag: &str, variant: &str, first_s: u64, last_s: u64) -> Usage {
        Usage { flag: flag.into(), variant: variant.into(), first_ms: first_s * 1000, last_ms: last_s * 1000 }
    }

    #[test]
    fn single_variant_unused_and_live_flags() {
        let day = 86_400;
        let now = Timestamp(100 * day * 1000);
        let usage = vec![
            u("done", "on", 10 * day, 100 * day),
            u("done", "off", 10 * day, 80 * day), // off last served 20 days ago
            u("live", "on", 90 * day, 100 * day),
            u("live", "off", 90 * day, 100 * day),
            u("dead", "on", 10 * day, 40 * day),
            u("young", "on", 99 * day, 100 * day),
        ];
        let found = stale(&usage, now, Duration::from_secs(7 * day), Duration::from_secs(30 * day));
        let names: Vec<(&str, &str)> = found.iter().map(|s| (s.flag.as_str(), s.why)).collect();
        assert_eq!(names, vec![("dead", "unused"), ("done", "single_variant")]);
        assert_eq!(found[1].variant.as_deref(), Some("on"));
        assert_eq!(found[1].since.as_deref(), Some(Timestamp(80 * day * 1000).rfc3339().as_str()));
    }

    #[test]
    fn merging_keeps_the_widest_range() {
        let merged = merge(vec![u("f", "on", 5, 10), u("f", "on", 3, 8), u("f", "off", 1, 2)]);
        assert_eq!(merged, vec![u("f", "off", 1, 2), u("f", "on", 3, 10)]);
    }

    #[test]
    fn owners_come_from_the_manifests() {
        let day = 86_400;
        let now = Timestamp(100 * day * 1000);
        let mut flags = stale(&[u("old", "on", 1, 2), u("other", "on", 1, 2)], now, Duration::from_secs(7 * day), Duration::from_secs(30 * day));
        let owners =
            std::collections::BTreeMap::from([("old".to_owned(), crate::manifest::Owner { team: "payments".into(), contact: Some("pay@example.com".into()) })]);
        with_owners(&mut flags, &owners);
        let owner = |f: &str| flags.iter().find(|s| s.flag == f).unwrap().owner.clone();
        assert_eq!((owner("old").as_deref(), owner("other")), (Some("payments (pay@example.com)"), None));
    }
}
