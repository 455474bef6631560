//! Flag manifests: the intended state of flags, kept in Git (`flags/*.yaml`). Per flag: its
//! owner, lifecycle and expiry, and per environment — in promotion order — whether it is on, its
//! rollout percentage and variant split. [`load_dir`] validates a directory into a
//! [`ManifestSet`] with every error named by file, line and field; [`drift`] compares it with
//! what the flag systems say; [`watch`] is the daemon's chore that does so continuously.
//!
//! ```yaml
//! flags:
//!   - key: checkout-v2
//!     actuator: unleash
//!     owner: { team: payments, contact: "payments-oncall@example.com" }
//!     lifecycle: release
//!     expires: 2027-03-31
//!     environments:            # promotion order
//!       - { name: staging, enabled: true, rollout: 100 }
//!       - { name: production, enabled: true, rollout: 5 }
//! ```

pub mod compliance;
pub mod drift;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::act::VariantWeight;
use crate::rules::{Report, RuleError, locate};
use crate::time::Timestamp;

/// Why a flag exists, and so how long it may live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lifecycle {
    /// Ships a change; removed once at 100 %.
    Release,
    /// An A/B test; removed once decided.
    Experiment,
    /// An operational switch (a kill switch, a circuit breaker): long-lived.
    Ops,
    /// Part of the product (entitlements): never expires.
    Permanent,
}

/// Who answers for a flag.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Owner {
    pub team: String,
    /// How to reach them (an address, a chat channel, an on-call schedule).
    #[serde(default)]
    pub contact: Option<String>,
}

/// One environment's intended state.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Intended {
    pub environment: String,
    pub enabled: bool,
    /// The rollout percentage (0–100), when the manifest names one.
    pub rollout: Option<f64>,
    /// The variant split (percent per variant, summing to 100); empty: not declared.
    pub variants: Vec<VariantWeight>,
}

/// One flag's manifest.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FlagManifest {
    pub key: String,
    /// The actuator that reads (and applies) it; `None`: the only one configured.
    pub actuator: Option<String>,
    pub owner: Option<Owner>,
    pub lifecycle: Lifecycle,
    /// Expiry as written (`2027-03-31`).
    pub expires: Option<String>,
    /// That day's start (UTC).
    #[serde(skip)]
    pub expires_at: Option<Timestamp>,
    /// In promotion order.
    pub environments: Vec<Intended>,
    pub file: PathBuf,
    pub line: Option<usize>,
}

/// Every manifest of a directory.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ManifestSet {
    pub flags: Vec<FlagManifest>,
    pub files: Vec<PathBuf>,
}

impl ManifestSet {
    /// The owners by flag key.
    pub fn owners(&self) -> HashMap<String, Owner> {
        self.flags.iter().filter_map(|f| Some((f.key.clone(), f.owner.clone()?))).collect()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    #[serde(default)]
    flags: Vec<FlagShape>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlagShape {
    key: String,
    #[serde(default)]
    actuator: Option<String>,
    #[serde(default)]
    owner: Option<Owner>,
    lifecycle: Lifecycle,
    #[serde(default)]
    expires: Option<String>,
    environments: Vec<EnvShape>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvShape {
    name: String,
    enabled: bool,
    #[serde(default)]
    rollout: Option<f64>,
    #[serde(default)]
    variants: BTreeMap<String, f64>,
}

/// Loads every `*.yaml` / `*.yml` of `dir` (sorted). `actuators`: the configured ones, which a
/// manifest's `actuator` must name (and one of which it must name when there are several);
/// `None` when they are not known here (the daemon checks them).
pub fn load_dir(dir: &Path, actuators: Option<&BTreeSet<String>>) -> Result<ManifestSet, Vec<RuleError>> {
    let error = |message: String| vec![RuleError { file: dir.into(), line: None, field: String::new(), message }];
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| error(format!("cannot read the manifests directory: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    paths.sort();
    let mut set = ManifestSet::default();
    let mut errors = Vec::new();
    let mut seen: HashMap<(Option<String>, String), PathBuf> = HashMap::new();
    for path in paths {
        let source = match std::fs::read_to_string(&path) {
            Ok(s) => s,
            Err(e) => {
                errors.push(RuleError { file: path.clone(), line: None, field: String::new(), message: e.to_string() });
                continue;
            }
        };
        match parse(&path, &source, actuators) {
            Ok(flags) => {
                for flag in flags {
                    if let Some(first) = seen.insert((flag.actuator.clone(), flag.key.clone()), path.clone()) {
                        errors.push(RuleError {
                            file: path.clone(),
                            line: flag.line,
                            field: "key".into(),
                            message: format!("flag {:?} is declared twice (also in {})", flag.key, first.display()),
                        });
                    }
                    set.flags.push(flag);
                }
            }
            Err(e) => errors.extend(e),
        }
        set.files.push(path);
    }
    if errors.is_empty() { Ok(set) } else { Err(errors) }
}

/// Parses and validates one file.
pub fn parse(path: &Path, source: &str, actuators: Option<&BTreeSet<String>>) -> Result<Vec<FlagManifest>, Vec<RuleError>> {
    let shape: FileShape = serde_yaml::from_str(source).map_err(|e| {
        let message = e.to_string();
        let message = message.split(" at line ").next().unwrap_or(&message).to_owned();
        vec![RuleError { file: path.into(), line: e.location().map(|l| l.line()), field: String::new(), message }]
    })?;
    let lines = locate::lines(source);
    let mut errors = Vec::new();
    let mut flags = Vec::new();
    for (i, flag) in shape.flags.into_iter().enumerate() {
        let mut r = Report { file: path, lines: &lines, prefix: format!("flags[{i}]"), errors: &mut errors, failed: false };
        if let Some(flag) = validate(flag, &mut r, actuators) {
            flags.push(FlagManifest { file: path.into(), line: locate::line_of(&lines, &format!("flags[{i}]")), ..flag });
        }
    }
    if errors.is_empty() { Ok(flags) } else { Err(errors) }
}

fn validate(shape: FlagShape, r: &mut Report<'_>, actuators: Option<&BTreeSet<String>>) -> Option<FlagManifest> {
    if shape.key.trim().is_empty() {
        r.fail("key", "must not be empty".into());
    }
    match (&shape.actuator, actuators) {
        (Some(a), Some(known)) if !known.contains(a) => r.fail("actuator", format!("actuator {a:?} is not configured (configured: {known:?})")),
        (None, Some(known)) if known.len() > 1 => r.fail("actuator", format!("several actuators are configured ({known:?}): say which reads this flag")),
        _ => {}
    }
    if let Some(owner) = &shape.owner
        && owner.team.trim().is_empty()
    {
        r.fail("owner.team", "must not be empty".into());
    }
    let expires_at = shape.expires.as_ref().and_then(|day| match parse_day(day) {
        Some(at) => Some(at),
        None => {
            r.fail("expires", format!("{day:?} is not a date (YYYY-MM-DD)"));
            None
        }
    });
    if shape.lifecycle == Lifecycle::Permanent && shape.expires.is_some() {
        r.fail("expires", "a permanent flag does not expire".into());
    }
    if shape.environments.is_empty() {
        r.fail("environments", "name at least one environment".into());
    }
    let mut names = BTreeSet::new();
    let mut environments = Vec::new();
    for (j, env) in shape.environments.into_iter().enumerate() {
        let field = |f: &str| format!("environments[{j}].{f}");
        if env.name.trim().is_empty() {
            r.fail(&field("name"), "must not be empty".into());
        } else if !names.insert(env.name.clone()) {
            r.fail(&field("name"), format!("environment {:?} is listed twice", env.name));
        }
        if let Some(p) = env.rollout
            && !(0.0..=100.0).contains(&p)
        {
            r.fail(&field("rollout"), format!("{p} is not a percentage in 0–100"));
        }
        if !env.variants.is_empty() {
            let total: f64 = env.variants.values().sum();
            if let Some((name, p)) = env.variants.iter().find(|(_, p)| !(0.0..=100.0).contains(*p)) {
                r.fail(&field(&format!("variants.{name}")), format!("{p} is not a percentage in 0–100"));
            } else if (total - 100.0).abs() > 0.01 {
                r.fail(&field("variants"), format!("the split sums to {total} %, not 100 %"));
            }
        }
        let variants = env.variants.into_iter().map(|(name, percent)| VariantWeight { name, percent }).collect();
        environments.push(Intended { environment: env.name, enabled: env.enabled, rollout: env.rollout, variants });
    }
    if r.failed {
        return None;
    }
    Some(FlagManifest {
        key: shape.key,
        actuator: shape.actuator,
        owner: shape.owner,
        lifecycle: shape.lifecycle,
        expires: shape.expires,
        expires_at,
        environments,
        file: PathBuf::new(),
        line: None,
    })
}

/// `abc1234 by Jane Doe`: the last commit of `dir` when it is in a Git work tree (recorded
/// with reloads and changes made from it); `None` otherwise or without `git`.
pub fn git_head(dir: &Path) -> Option<String> {
    let out =
        std::process::Command::new("git").arg("-C").arg(dir).args(["log", "-1", "--format=%h by %an"]).stderr(std::process::Stdio::null()).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// `2027-03-31` → that day's start (UTC).
fn parse_day(day: &str) -> Option<Timestamp> {
    let bytes = day.as_bytes();
    if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return None;
    }
    let t = humantime::parse_rfc3339(&format!("{day}T00:00:00Z")).ok()?;
    Some(Timestamp(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actuators() -> Option<&'static BTreeSet<String>> {
        static ONE: std::sync::OnceLock<BTreeSet<String>> = std::sync::OnceLock::new();
        Some(ONE.get_or_init(|| BTreeSet::from(["unleash".to_owned()])))
    }

    #[test]
    fn a_valid_manifest_keeps_the_promotion_order_and_the_owner() {
        let text = "flags:\n  - key: checkout-v2\n    owner: { team: payments, contact: pay@example.com }\n    lifecycle: release\n    expires: 2027-03-31\n    environments:\n      - { name: staging, enabled: true, rollout: 100 }\n      - { name: production, enabled: true, rollout: 5, variants: { blue: 50, green: 50 } }\n";
        let flags = parse(Path::new("f.yaml"), text, actuators()).unwrap();
        assert_eq!(flags[0].environments.iter().map(|e| e.environment.as_str()).collect::<Vec<_>>(), ["staging", "production"]);
        assert_eq!(flags[0].owner.as_ref().unwrap().team, "payments");
        assert_eq!(flags[0].expires_at, Some(Timestamp(1_806_451_200_000)));
        assert_eq!(flags[0].environments[1].variants.len(), 2);
        assert_eq!(flags[0].line, Some(2));
    }

    #[test]
    fn every_error_names_file_line_and_field() {
        let text = "flags:\n  - key: checkout-v2\n    actuator: flags\n    lifecycle: permanent\n    expires: next-week\n    environments:\n      - { name: production, enabled: true, rollout: 150 }\n      - name: production\n        enabled: true\n        variants: { a: 60, b: 30 }\n";
        let errors = parse(Path::new("f.yaml"), text, actuators()).unwrap_err();
        let shown: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        for expected in [
            "f.yaml:3: flags[0].actuator: actuator \"flags\" is not configured",
            "f.yaml:5: flags[0].expires: \"next-week\" is not a date",
            "f.yaml:7: flags[0].environments[0].rollout: 150 is not a percentage",
            "f.yaml:8: flags[0].environments[1].name: environment \"production\" is listed twice",
            "f.yaml:10: flags[0].environments[1].variants: the split sums to 90 %",
        ] {
            assert!(shown.iter().any(|s| s.starts_with(expected)), "{expected:?} not in {shown:#?}");
        }
        let unknown = parse(Path::new("f.yaml"), "flags:\n  - key: a\n    lifecycle: forever\n    environments: []\n", actuators()).unwrap_err();
        assert_eq!(unknown[0].line, Some(3), "{}", unknown[0]);
    }

    #[test]
    fn a_flag_declared_twice_is_refused_with_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let flag = "flags:\n  - key: a\n    lifecycle: ops\n    environments: [ { name: production, enabled: true } ]\n";
        std::fs::write(dir.path().join("one.yaml"), flag).unwrap();
        std::fs::write(dir.path().join("two.yaml"), flag).unwrap();
        let errors = load_dir(dir.path(), actuators()).unwrap_err();
        assert!(errors[0].to_string().contains("declared twice (also in") && errors[0].to_string().contains("one.yaml"), "{}", errors[0]);
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("flags");
        let set = load_dir(&dir, Some(&BTreeSet::from(["flags".to_owned()]))).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(set.owners()["checkout-v2"].team, "payments");
    }
}
