//! The daemon's drift watch (`[manifests] dir`): every `drift_interval` it re-reads the
//! manifests (an invalid edit keeps the last valid set and says why), reads every flag ×
//! environment from its flag system, compares, and publishes the result — for
//! `GET /v1/drift`, the `manifest_drift` metric and the owners other answers show. A change of
//! a pair's status is audited (`manifest_drift`); a pair that drifts — a human's edit, not
//! flagguard's kill — is notified with its owner. Only the lease holder writes (cluster mode).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::drift::{self, Report, Status};
use super::{ManifestSet, Owner};
use crate::act::Actuator;
use crate::act::outbox::Outbox;
use crate::store::AuditEntry;
use crate::telemetry::Metrics;
use crate::time::Clock;

/// What the last pass found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DriftState {
    /// When the last pass ended (RFC 3339); none before the first.
    pub checked_at: Option<String>,
    pub dir: Option<PathBuf>,
    pub flags: Vec<Report>,
    /// Owners by flag key, from the manifests.
    pub owners: BTreeMap<String, Owner>,
    /// Why the manifests on disk were not loaded (the last valid set is still used).
    pub errors: Vec<String>,
    /// The manifests watched (for the compliance report).
    #[serde(skip)]
    pub manifests: Vec<super::FlagManifest>,
    /// Manifest changes in regulated environments held until approved.
    pub held: Vec<HeldChange>,
}

/// A flag removed from the manifests or made permanent, in a regulated environment: the watch
/// keeps it as it was until a second person approves the proposal.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HeldChange {
    pub flag: String,
    /// `removed` or `permanent`.
    pub change: &'static str,
    pub proposal: i64,
    pub state: crate::store::proposals::ProposalState,
}

pub struct DriftWatch {
    pub dir: PathBuf,
    pub interval: Duration,
    pub actuators: HashMap<String, Arc<dyn Actuator>>,
    /// Audits and notifications; fenced in cluster mode.
    pub outbox: Outbox,
    pub fence: Option<Arc<crate::store::Fence>>,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    pub publish: watch::Sender<Arc<DriftState>>,
    /// `[governance]`: manifest changes there are proposals.
    pub regulated: Vec<String>,
    pub approval_expiry: Duration,
}

/// The statuses of the `manifest_drift` state set.
const STATUSES: [&str; 5] = ["in_sync", "drifted", "killed", "cannot_tell", "error"];

impl DriftWatch {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut set: Option<ManifestSet> = None;
        let mut last: HashMap<(String, String), &'static str> = HashMap::new();
        let mut gauged: HashSet<(String, String)> = HashSet::new();
        let mut held: HashMap<(String, &'static str), i64> = HashMap::new();
        loop {
            self.pass(&mut set, &mut last, &mut gauged, &mut held).await;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    async fn pass(
        &self,
        set: &mut Option<ManifestSet>,
        last: &mut HashMap<(String, String), &'static str>,
        gauged: &mut HashSet<(String, String)>,
        held: &mut HashMap<(String, &'static str), i64>,
    ) {
        let names: BTreeSet<String> = self.actuators.keys().cloned().collect();
        let dir = self.dir.clone();
        let errors = match tokio::task::spawn_blocking(move || super::load_dir(&dir, Some(&names))).await {
            Ok(Ok(loaded)) => {
                let accepted = match set.as_ref() {
                    Some(previous) => self.gate(previous, loaded, held).await,
                    // The first set after a start is taken as it is.
                    None => loaded,
                };
                if set.as_ref() != Some(&accepted) {
                    self.loaded(&accepted).await;
                }
                *set = Some(accepted);
                Vec::new()
            }
            Ok(Err(errors)) => {
                let shown: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
                tracing::warn!(errors = ?shown, "the flag manifests are invalid; the last valid set is still watched");
                shown
            }
            Err(e) => vec![format!("the manifest loader failed: {e}")],
        };
        let Some(current) = set.as_ref() else {
            self.publish.send_replace(Arc::new(DriftState { dir: Some(self.dir.clone()), errors, ..DriftState::default() }));
            return;
        };
        let mut reports = Vec::new();
        let mut targets = Vec::new();
        for flag in &current.flags {
            let name = match &flag.actuator {
                Some(name) => name.clone(),
                None => self.actuators.keys().next().cloned().unwrap_or_default(),
            };
            let Some(actuator) = self.actuators.get(&name).cloned() else { continue };
            for intended in &flag.environments {
                let (mut view, request) = crate::act::read::read(actuator.as_ref(), &name, &flag.key, Some(&intended.environment), None).await;
                let store = self.outbox.store().clone();
                let target = crate::act::outbox::target_of(&request).key();
                let status = match tokio::task::spawn_blocking(move || crate::act::read::held(&store, &mut view, &request).map(|()| view)).await {
                    Ok(Ok(view)) => drift::compare(intended, &view),
                    Ok(Err(e)) => Status::CannotTell { error: format!("the store: {e}") },
                    Err(e) => Status::CannotTell { error: e.to_string() },
                };
                targets.push(target);
                reports.push(Report { flag: flag.key.clone(), environment: intended.environment.clone(), status, view: None });
            }
        }
        let labels = |flag: &str, env: &str, status: &str| vec![("flag", flag.to_owned()), ("environment", env.to_owned()), ("status", status.to_owned())];
        let now_gauged: HashSet<(String, String)> = reports.iter().map(|r| (r.flag.clone(), r.environment.clone())).collect();
        // A pair gone from the manifests leaves the metric (an alert on it stops).
        for (flag, env) in gauged.difference(&now_gauged) {
            for status in STATUSES {
                self.metrics.manifest_drift.remove(&labels(flag, env, status));
            }
            last.remove(&(flag.clone(), env.clone()));
        }
        for report in &reports {
            for status in STATUSES {
                self.metrics.manifest_drift.get_or_create(&labels(&report.flag, &report.environment, status)).set(i64::from(report.status.as_str() == status));
            }
        }
        *gauged = now_gauged;
        let owners: BTreeMap<String, Owner> = current.owners().into_iter().collect();
        self.outbox.routing().set_owners(owners.clone());
        self.record(&reports, &targets, &owners, current, last).await;
        let state = DriftState {
            checked_at: Some(self.clock.now().rfc3339()),
            dir: Some(self.dir.clone()),
            flags: reports,
            owners,
            errors,
            manifests: current.flags.clone(),
            held: self.held_changes(held).await,
        };
        self.publish.send_replace(Arc::new(state));
    }

    /// `loaded` as the watch accepts it: a flag of a regulated environment removed or made
    /// permanent stays as it was in `previous` until a second person approves the proposal the
    /// watch makes for it (`ProposalKind::Manifest`). `held`: the open ones, (flag, change) →
    /// proposal. A rejected change stays held; an expired one is proposed again.
    async fn gate(&self, previous: &ManifestSet, loaded: ManifestSet, held: &mut HashMap<(String, &'static str), i64>) -> ManifestSet {
        use crate::store::proposals::{NewProposal, ProposalKind, ProposalState, regulated};
        let mut accepted = loaded.clone();
        let now = self.clock.now();
        let mut seen = HashSet::new();
        for old in &previous.flags {
            if !old.environments.iter().any(|e| regulated(&self.regulated, Some(&e.environment))) {
                continue;
            }
            let new = loaded.flags.iter().position(|f| f.key == old.key && f.actuator == old.actuator);
            let change = match new {
                None => "removed",
                Some(i) if loaded.flags[i].lifecycle == super::Lifecycle::Permanent && old.lifecycle != super::Lifecycle::Permanent => "permanent",
                Some(_) => continue,
            };
            let key = (old.key.clone(), change);
            seen.insert(key.clone());
            let state = match held.get(&key) {
                Some(id) => {
                    let (store, id) = (self.outbox.store().clone(), *id);
                    tokio::task::spawn_blocking(move || store.proposal(id, now)).await.ok().and_then(Result::ok).flatten().map(|p| p.state)
                }
                None => None,
            };
            match state {
                Some(ProposalState::Approved) => {
                    held.remove(&key);
                    continue;
                }
                Some(ProposalState::Pending | ProposalState::Rejected) => {}
                // Not proposed yet, expired or gone: propose (a standby does not).
                _ if self.fence.as_ref().is_some_and(|f| f.epoch().is_none()) => {}
                _ => {
                    let dir = self.dir.clone();
                    let git = tokio::task::spawn_blocking(move || super::git_head(&dir)).await.ok().flatten();
                    let proposer = git.as_ref().map_or("manifests".to_owned(), |g| format!("git:{g}"));
                    let request = json!({ "flag": old.key, "change": change, "file": old.file, "git": git });
                    let reason = match change {
                        "removed" => format!("{} was removed from the flag manifests", old.key),
                        _ => format!("{} was made permanent in the flag manifests", old.key),
                    };
                    let env = old.environments.iter().map(|e| e.environment.clone()).find(|e| regulated(&self.regulated, Some(e)));
                    let (store, flag) = (self.outbox.store().clone(), old.key.clone());
                    let expires = now.plus(self.approval_expiry);
                    let made = tokio::task::spawn_blocking(move || {
                        store.propose(&NewProposal {
                            kind: ProposalKind::Manifest,
                            flag: &flag,
                            environment: env.as_deref(),
                            request: &request,
                            proposer: &proposer,
                            reason: Some(&reason),
                            at: now,
                            expires,
                        })
                    })
                    .await;
                    if let Ok(Ok(id)) = made {
                        held.insert(key, id);
                    }
                }
            }
            // Held: the flag stays as it was.
            match new {
                Some(i) => accepted.flags[i] = old.clone(),
                None => accepted.flags.push(old.clone()),
            }
        }
        // A change taken back in Git (the flag restored) is no longer held.
        held.retain(|key, _| seen.contains(key));
        accepted
    }

    /// The held changes with their proposals' states.
    async fn held_changes(&self, held: &HashMap<(String, &'static str), i64>) -> Vec<HeldChange> {
        let mut out = Vec::new();
        let now = self.clock.now();
        for ((flag, change), id) in held {
            let (store, id) = (self.outbox.store().clone(), *id);
            if let Ok(Ok(Some(p))) = tokio::task::spawn_blocking(move || store.proposal(id, now)).await {
                out.push(HeldChange { flag: flag.clone(), change, proposal: id, state: p.state });
            }
        }
        out.sort_by(|a, b| (&a.flag, a.change).cmp(&(&b.flag, b.change)));
        out
    }

    /// Audits a new or changed manifest set (`manifests_loaded`), with who changed it: the
    /// directory's last Git commit when it is a work tree.
    async fn loaded(&self, set: &ManifestSet) {
        if self.fence.as_ref().is_some_and(|f| f.epoch().is_none()) {
            return;
        }
        let dir = self.dir.clone();
        let git = tokio::task::spawn_blocking(move || super::git_head(&dir)).await.ok().flatten();
        let entry = AuditEntry {
            at: self.clock.now(),
            actor: git.as_ref().map_or("system".to_owned(), |g| format!("git:{g}")),
            kind: "manifests_loaded".into(),
            after: Some(json!({ "dir": self.dir, "files": set.files, "flags": set.flags.iter().map(|f| &f.key).collect::<Vec<_>>(), "git": git })),
            ..AuditEntry::default()
        };
        let store = self.outbox.store().clone();
        if !matches!(tokio::task::spawn_blocking(move || store.audit(&entry)).await, Ok(Ok(_))) {
            tracing::warn!("cannot audit the loaded flag manifests");
        }
    }

    /// Audits each pair whose status changed, and notifies the ones that drifted.
    async fn record(
        &self,
        reports: &[Report],
        targets: &[String],
        owners: &BTreeMap<String, Owner>,
        set: &ManifestSet,
        last: &mut HashMap<(String, String), &'static str>,
    ) {
        // A standby watches and publishes; the leader writes.
        if self.fence.as_ref().is_some_and(|f| f.epoch().is_none()) {
            return;
        }
        let now = self.clock.now();
        for (report, target) in reports.iter().zip(targets) {
            let key = (report.flag.clone(), report.environment.clone());
            let status = report.status.as_str();
            let before = last.insert(key, status);
            // The first pass after a start records only what is not in sync.
            if before == Some(status) || (before.is_none() && status == "in_sync") {
                continue;
            }
            let owner = owners.get(&report.flag);
            let file = set.flags.iter().find(|f| f.key == report.flag).map(|f| f.file.display().to_string()).unwrap_or_default();
            let entry = AuditEntry {
                at: now,
                actor: "system".into(),
                kind: "manifest_drift".into(),
                target: Some(target.clone()),
                before: before.map(|b| json!({ "status": b })),
                after: Some(json!({ "status": report.status, "manifest": file, "owner": owner })),
                ..AuditEntry::default()
            };
            let outbox = self.outbox.clone();
            let text = matches!(report.status, Status::Drifted { .. }).then(|| {
                let owner =
                    owner.map(|o| format!(" (owner {}{})", o.team, o.contact.as_ref().map(|c| format!(", {c}")).unwrap_or_default())).unwrap_or_default();
                format!("drift: {} differs from {file}{owner}", report.describe().replace("\n    ", "; "))
            });
            let evidence = json!({ "drift": report, "owner": owner });
            let flag = report.flag.clone();
            let written = tokio::task::spawn_blocking(move || {
                outbox.store().audit(&entry)?;
                if let Some(text) = text {
                    outbox.notify(&crate::act::notify::Note::new(crate::act::notify::Severity::Warning, &text, &evidence, Some(&flag)), now)?;
                }
                Ok::<_, crate::store::StoreError>(())
            })
            .await;
            if !matches!(written, Ok(Ok(()))) {
                tracing::warn!(flag = %report.flag, environment = %report.environment, "cannot record the drift; trying again next pass");
                last.remove(&(report.flag.clone(), report.environment.clone()));
            }
        }
    }
}
