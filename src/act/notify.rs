//! Notifications and their routes. Each notification is a [`Note`]: its text and evidence, a
//! [`Severity`], the flag it is about and — for pages — the [`Incident`] it opens or resolves.
//! [`Routing`] picks the routes that take it: the default route (`act.notify_url`, everything)
//! and `[[act.routes]]` filtered by minimum severity, by flag (globs) and by the team that owns
//! the flag (flag manifests). Each route's copy is its own outbox entry, so it survives
//! restarts and is retried alone; a failed notification is only audited. The executor
//! delivers them here (a notification changes no flag, so it is not an actuator), to a
//! Slack-compatible webhook, PagerDuty Events API v2 or Opsgenie's Alert API — with one dedup
//! key per incident (flag × environment), so one incident stays one page, and a resolve once
//! a kill of that flag is finally confirmed.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{ActError, ActionRequest, Applied};
use crate::manifest::Owner;

/// How urgent: a route takes notes at or above its minimum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Changes and their outcomes (a rollout step, a drained cohort, a drift).
    #[default]
    Info,
    /// flagguard acted, or someone acted against it (a kill, a human's override).
    Warning,
    /// A human must act now: a kill that failed or did not drain.
    Page,
}

/// The incident a page belongs to: one per flag × environment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub key: String,
    /// The kill is confirmed at last: close the page.
    pub resolve: bool,
}

impl Incident {
    pub fn of(flag: &str, environment: Option<&str>) -> String {
        format!("flagguard/{flag}/{}", environment.unwrap_or("*"))
    }
}

/// What a notification carries besides its text and evidence (stored with the request).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    pub severity: Severity,
    #[serde(default)]
    pub incident: Option<Incident>,
}

/// One notification to route.
#[derive(Clone, Debug)]
pub struct Note<'a> {
    pub text: &'a str,
    pub evidence: &'a Value,
    pub severity: Severity,
    /// The flag it is about (routes by flag and owning team).
    pub flag: Option<&'a str>,
    pub incident: Option<Incident>,
}

impl<'a> Note<'a> {
    pub fn new(severity: Severity, text: &'a str, evidence: &'a Value, flag: Option<&'a str>) -> Note<'a> {
        Note { text, evidence, severity, flag, incident: None }
    }

    pub fn incident(self, incident: Incident) -> Note<'a> {
        Note { incident: Some(incident), ..self }
    }
}

/// `[[act.routes]]`: one notification route.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    /// `chat` (a Slack-compatible webhook), `pagerduty` (Events API v2) or `opsgenie`.
    #[serde(rename = "type")]
    pub kind: SinkKind,
    /// The minimum severity it takes (`info`, `warning`, `page`). Default `info`.
    #[serde(default)]
    pub severity: Severity,
    /// Only flags owned by these teams (flag manifests); empty: every team.
    #[serde(default)]
    pub teams: Vec<String>,
    /// Only these flags (globs); empty: every flag.
    #[serde(default)]
    pub flags: Vec<String>,
    /// `chat`: the webhook. `pagerduty`, `opsgenie`: the API base (default their public one).
    #[serde(default)]
    pub url: Option<String>,
    /// `pagerduty`: the integration's routing key, as `${VAR}`.
    #[serde(default)]
    pub routing_key: Option<String>,
    /// `opsgenie`: the API key, as `${VAR}`.
    #[serde(default)]
    pub api_key: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    Chat,
    Pagerduty,
    Opsgenie,
}

impl RouteConfig {
    /// Every problem, as `field: message`.
    pub fn validate(&self, field: &str, errors: &mut Vec<String>) {
        if self.name.is_empty() || self.name == crate::action::NOTIFIER {
            errors.push(format!("{field}.name: must be set and not {:?} (the act.notify_url route)", crate::action::NOTIFIER));
        }
        let secret = |value: &Option<String>, key: &str, errors: &mut Vec<String>| match value {
            Some(v) if v.contains("${") => {}
            Some(_) => errors.push(format!("{field}.{key}: give it as ${{VAR}} (read from the environment), not literally")),
            None => errors.push(format!("{field}.{key}: required for type {:?}", self.kind)),
        };
        match self.kind {
            SinkKind::Chat if self.url.is_none() => errors.push(format!("{field}.url: required for type chat")),
            SinkKind::Chat => {}
            SinkKind::Pagerduty => secret(&self.routing_key, "routing_key", errors),
            SinkKind::Opsgenie => secret(&self.api_key, "api_key", errors),
        }
        if let Some(url) = &self.url
            && reqwest::Url::parse(url).is_err()
        {
            errors.push(format!("{field}.url: {url:?} is not a URL"));
        }
        if let Some(bad) = self.flags.iter().find(|g| globset::Glob::new(g).is_err()) {
            errors.push(format!("{field}.flags: {bad:?} is not a glob"));
        }
    }
}

/// Where a route delivers, secrets resolved.
enum Sink {
    Chat { url: String },
    PagerDuty { url: String, routing_key: String },
    Opsgenie { url: String, api_key: String },
}

struct Route {
    name: String,
    severity: Severity,
    teams: Vec<String>,
    flags: Vec<globset::GlobMatcher>,
    sink: Sink,
}

/// Every route, and the owners of flags (kept current by the drift watch).
pub struct Routing {
    routes: Vec<Route>,
    owners: RwLock<BTreeMap<String, Owner>>,
    /// None when there are no routes (nothing is ever sent).
    client: Option<reqwest::Client>,
}

/// PagerDuty's and Opsgenie's public APIs.
const PAGERDUTY: &str = "https://events.pagerduty.com";
const OPSGENIE: &str = "https://api.opsgenie.com";

impl Routing {
    /// No notifications at all.
    pub fn none() -> Arc<Routing> {
        Arc::new(Routing { routes: Vec::new(), owners: RwLock::default(), client: None })
    }

    /// The default route (`act.notify_url`, every severity) and the configured ones.
    pub fn build(notify_url: Option<&str>, routes: &[RouteConfig], client: reqwest::Client) -> Result<Arc<Routing>, String> {
        let mut built = Vec::new();
        if let Some(url) = notify_url {
            built.push(Route {
                name: crate::action::NOTIFIER.into(),
                severity: Severity::Info,
                teams: vec![],
                flags: vec![],
                sink: Sink::Chat { url: url.into() },
            });
        }
        for r in routes {
            let secret = |v: &Option<String>| super::http::token(v.as_deref().unwrap_or_default()).map_err(|e| format!("route {}: {e}", r.name));
            let sink = match r.kind {
                SinkKind::Chat => Sink::Chat { url: r.url.clone().unwrap_or_default() },
                SinkKind::Pagerduty => Sink::PagerDuty { url: r.url.clone().unwrap_or_else(|| PAGERDUTY.into()), routing_key: secret(&r.routing_key)? },
                SinkKind::Opsgenie => Sink::Opsgenie { url: r.url.clone().unwrap_or_else(|| OPSGENIE.into()), api_key: secret(&r.api_key)? },
            };
            let flags = r
                .flags
                .iter()
                .map(|g| globset::Glob::new(g).map(|g| g.compile_matcher()).map_err(|e| format!("route {}: {e}", r.name)))
                .collect::<Result<_, _>>()?;
            built.push(Route { name: r.name.clone(), severity: r.severity, teams: r.teams.clone(), flags, sink });
        }
        Ok(Arc::new(Routing { routes: built, owners: RwLock::default(), client: Some(client) }))
    }

    /// The flag manifests' owners (the drift watch keeps them current).
    pub fn set_owners(&self, owners: BTreeMap<String, Owner>) {
        if let Ok(mut current) = self.owners.write() {
            *current = owners;
        }
    }

    pub fn owner(&self, flag: &str) -> Option<Owner> {
        self.owners.read().ok()?.get(flag).cloned()
    }

    /// The routes that take `note`.
    pub fn routes_for(&self, note: &Note<'_>) -> Vec<String> {
        let team = note.flag.and_then(|f| self.owner(f)).map(|o| o.team);
        self.routes
            .iter()
            .filter(|r| note.severity >= r.severity)
            .filter(|r| r.flags.is_empty() || note.flag.is_some_and(|f| r.flags.iter().any(|g| g.is_match(f))))
            .filter(|r| r.teams.is_empty() || team.as_ref().is_some_and(|t| r.teams.contains(t)))
            .map(|r| r.name.clone())
            .collect()
    }

    /// Delivers one stored notification (`request.actuator` names its route), idempotently.
    pub async fn send(&self, request: &ActionRequest, idempotency_key: &str) -> Result<Applied, ActError> {
        let (Some(route), Some(client)) = (self.routes.iter().find(|r| r.name == request.actuator), &self.client) else {
            return Err(ActError::Permanent(format!("notification route {:?} is not configured", request.actuator)));
        };
        let text = request.text.clone().unwrap_or_default();
        let notice = request.notice.clone().unwrap_or_default();
        let dedup = notice.incident.as_ref().map_or(idempotency_key.to_owned(), |i| i.key.clone());
        let resolve = notice.incident.as_ref().is_some_and(|i| i.resolve);
        let (url, call) = match &route.sink {
            Sink::Chat { url } => (url.clone(), client.post(url).json(&json!({ "text": text, "severity": notice.severity, "flagguard": request.evidence }))),
            Sink::PagerDuty { url, routing_key } => {
                let url = format!("{}/v2/enqueue", url.trim_end_matches('/'));
                let body = if resolve {
                    json!({ "routing_key": routing_key, "event_action": "resolve", "dedup_key": dedup })
                } else {
                    let severity = match notice.severity {
                        Severity::Page => "critical",
                        Severity::Warning => "warning",
                        Severity::Info => "info",
                    };
                    json!({
                        "routing_key": routing_key,
                        "event_action": "trigger",
                        "dedup_key": dedup,
                        "payload": { "summary": truncate(&text, 1024), "source": "flagguard", "severity": severity, "component": request.flag, "custom_details": request.evidence },
                    })
                };
                (url.clone(), client.post(url).json(&body))
            }
            Sink::Opsgenie { url, api_key } => {
                let base = url.trim_end_matches('/');
                let auth = format!("GenieKey {api_key}");
                if resolve {
                    let url = format!("{base}/v2/alerts/{}/close?identifierType=alias", super::http::segment(&dedup));
                    (url.clone(), client.post(url).header("authorization", auth).json(&json!({ "source": "flagguard", "note": text })))
                } else {
                    let priority = match notice.severity {
                        Severity::Page => "P1",
                        Severity::Warning => "P3",
                        Severity::Info => "P5",
                    };
                    let body = json!({ "message": truncate(&text, 130), "alias": truncate(&dedup, 512), "description": truncate(&text, 15000), "priority": priority, "source": "flagguard", "tags": ["flagguard"], "entity": request.flag });
                    let url = format!("{base}/v2/alerts");
                    (url.clone(), client.post(url).header("authorization", auth).json(&body))
                }
            }
        };
        let response = call.header("Idempotency-Key", idempotency_key).send().await.map_err(super::http::transport_error)?;
        let status = response.status();
        let answer = response.text().await.unwrap_or_default();
        super::http::classify(status, None, &answer).map_err(|e| match e {
            ActError::Permanent(m) => ActError::Permanent(format!("{} {url}: {m}", route.name)),
            other => other,
        })?;
        Ok(Applied { before: None, after: Some(json!({ "status": status.as_u16(), "route": route.name, "dedup_key": dedup, "resolve": resolve })) })
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, severity: Severity, teams: &[&str], flags: &[&str]) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            kind: SinkKind::Chat,
            severity,
            teams: teams.iter().map(|t| (*t).to_owned()).collect(),
            flags: flags.iter().map(|t| (*t).to_owned()).collect(),
            url: Some("http://127.0.0.1:9/hook".into()),
            routing_key: None,
            api_key: None,
        }
    }

    #[test]
    fn routes_take_notes_by_severity_flag_and_owning_team() {
        let routes = [route("payments-pager", Severity::Page, &["payments"], &[]), route("search-chat", Severity::Info, &[], &["search-*"])];
        let routing =
            Routing::build(Some("http://127.0.0.1:9/all"), &routes, crate::app::http_client(std::time::Duration::from_secs(1), None).unwrap()).unwrap();
        routing.set_owners(BTreeMap::from([("checkout-v2".to_owned(), Owner { team: "payments".into(), contact: None })]));
        let evidence = json!({});
        let note = |severity, flag| Note::new(severity, "x", &evidence, flag);
        assert_eq!(routing.routes_for(&note(Severity::Page, Some("checkout-v2"))), ["notify", "payments-pager"]);
        assert_eq!(routing.routes_for(&note(Severity::Warning, Some("checkout-v2"))), ["notify"], "below the pager's severity");
        assert_eq!(routing.routes_for(&note(Severity::Page, Some("other"))), ["notify"], "another team's flag");
        assert_eq!(routing.routes_for(&note(Severity::Info, Some("search-v3"))), ["notify", "search-chat"]);
        assert_eq!(routing.routes_for(&note(Severity::Info, None)), ["notify"]);
    }

    #[test]
    fn a_route_is_checked() {
        let mut errors = Vec::new();
        RouteConfig { kind: SinkKind::Pagerduty, routing_key: Some("literal".into()), url: None, ..route("notify", Severity::Page, &[], &["[x"]) }
            .validate("act.routes[0]", &mut errors);
        let joined = errors.join("\n");
        for expected in ["act.routes[0].name", "act.routes[0].routing_key: give it as ${VAR}", "act.routes[0].flags"] {
            assert!(joined.contains(expected), "{expected} not in {joined}");
        }
    }
}
