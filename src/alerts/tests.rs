//! Every fixture parsed to the same target; every signature case of the fixtures' README.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};

use super::auth::{SourceAuth, verify};
use super::mapping::{self, AlertMapping, KillShape, Target};
use super::*;
use crate::rules::Mode;
use crate::time::Timestamp;

const SECRET: &str = "test-webhook-secret";
/// 2026-11-25T11:42:10Z, the fixtures' signed timestamp.
const TS: u64 = 1_795_606_930;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/webhooks/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

fn at(seconds: u64) -> Timestamp {
    Timestamp(seconds * 1000)
}

fn hmac_auth() -> SourceAuth {
    SourceAuth { hmac_secrets: vec![SECRET.into()], replay_window: Duration::from_secs(300), ..SourceAuth::default() }
}

/// The target every fixture names: checkout-v2 / production / beta-users.
fn mapped(source: Source, file: &str, mappings: &[AlertMapping]) -> Vec<Result<Target, mapping::Unmapped>> {
    let alerts = sources::parse(source, &fixture(file)).unwrap();
    let direct = mapping::direct("flags", Mode::Enforce);
    alerts.iter().filter(|a| a.status == AlertStatus::Firing).map(|a| mapping::map(a, mappings, Some(&direct))).collect()
}

fn expected() -> Target {
    Target {
        mapping: "direct".into(),
        actuator: "flags".into(),
        flag: "checkout-v2".into(),
        environment: Some("production".into()),
        scope: vec![("cohort".into(), "beta-users".into())],
        variant: None,
        mode: Mode::Enforce,
    }
}

#[test]
fn every_fixture_names_the_same_target() {
    for (source, file) in [
        (Source::Alertmanager, "alertmanager-v4.json"),
        (Source::Grafana, "grafana-unified-alerting.json"),
        (Source::Datadog, "datadog-custom-with-tags.json"),
        (Source::Newrelic, "newrelic-workflow-with-tags.json"),
        (Source::Dynatrace, "dynatrace-problem.json"),
        (Source::Generic, "generic-v1.json"),
    ] {
        let targets = mapped(source, file, &[]);
        assert_eq!(targets.len(), 1, "{file}: one firing alert");
        assert_eq!(targets[0].as_ref().unwrap(), &expected(), "{file}");
    }
}

#[test]
fn sources_without_labels_map_by_configured_ids() {
    // PagerDuty names no flag: map its incident key (or service id).
    let by_incident_key = AlertMapping {
        name: "pd-checkout".into(),
        source: Some(Source::Pagerduty),
        matches: BTreeMap::from([("incident_key".into(), "checkout-v2/production/beta-users".into())]),
        kill: KillShape {
            flag: "checkout-v2".into(),
            via: "flags".into(),
            environment: Some("production".into()),
            cohort: Some("beta-users".into()),
            region: None,
            variant: None,
        },
        mode: Mode::Enforce,
    };
    let targets = mapped(Source::Pagerduty, "pagerduty-v3-incident-triggered.json", std::slice::from_ref(&by_incident_key));
    assert_eq!(targets[0].as_ref().unwrap(), &Target { mapping: "pd-checkout".into(), ..expected() });
    // Without a mapping, the default Datadog and New Relic payloads name nothing.
    for (source, file) in [
        (Source::Datadog, "datadog-default.json"),
        (Source::Newrelic, "newrelic-workflow-default.json"),
        (Source::Pagerduty, "pagerduty-v3-incident-triggered.json"),
    ] {
        let alerts = sources::parse(source, &fixture(file)).unwrap();
        assert_eq!(mapping::map(&alerts[0], &[], Some(&mapping::direct("flags", Mode::Enforce))), Err(mapping::Unmapped::NoMapping), "{file}");
    }
    // New Relic by condition family id, with $label references.
    let by_condition = AlertMapping {
        name: "nr".into(),
        source: None,
        matches: BTreeMap::from([("condition_family_id".into(), "48213".into())]),
        kill: KillShape {
            flag: "$feature_flag".into(),
            via: "flags".into(),
            environment: Some("$flag_environment".into()),
            cohort: Some("$cohort".into()),
            region: None,
            variant: None,
        },
        mode: Mode::Enforce,
    };
    let alerts = sources::parse(Source::Newrelic, &fixture("newrelic-workflow-with-tags.json")).unwrap();
    assert_eq!(mapping::map(&alerts[0], &[by_condition], None).unwrap(), Target { mapping: "nr".into(), ..expected() });
}

#[test]
fn a_mixed_group_is_handled_per_alert() {
    let alerts = sources::parse(Source::Alertmanager, &fixture("alertmanager-v4.json")).unwrap();
    assert_eq!(alerts.len(), 2);
    assert_eq!(
        (alerts[0].status.label(), alerts[0].labels["cohort"].as_str(), alerts[0].dedup_key.as_str()),
        ("firing", "beta-users", "5d8a5b1c7e9f0a21@2026-11-25T11:42:07.123Z")
    );
    assert_eq!(
        (alerts[1].status.label(), alerts[1].labels["cohort"].as_str(), alerts[1].dedup_key.as_str()),
        ("resolved", "internal", "0c4e2f7a9b3d6e18@2026-11-25T11:30:07.123Z")
    );
}

#[test]
fn statuses_and_dedup_keys() {
    let dd = &sources::parse(Source::Datadog, &fixture("datadog-custom-with-tags.json")).unwrap()[0];
    assert_eq!((dd.status.label(), dd.dedup_key.as_str(), dd.labels["monitor_id"].as_str()), ("firing", "7890123456789000001", "98765432"));
    let dt = &sources::parse(Source::Dynatrace, &fixture("dynatrace-problem.json")).unwrap()[0];
    assert_eq!((dt.status.label(), dt.dedup_key.as_str()), ("firing", "-4187227316526743829_1795606920000V2"));
    let pd = &sources::parse(Source::Pagerduty, &fixture("pagerduty-v3-incident-triggered.json")).unwrap()[0];
    assert_eq!((pd.status.label(), pd.labels["service_id"].as_str()), ("firing", "PCHKV2S"));
    let resolved = String::from_utf8(fixture("dynatrace-problem.json")).unwrap().replace("\"State\": \"OPEN\"", "\"State\": \"RESOLVED\"");
    assert_eq!(sources::parse(Source::Dynatrace, resolved.as_bytes()).unwrap()[0].status, AlertStatus::Resolved);
}

#[test]
fn malformed_and_unknown_schema_are_refused() {
    assert!(matches!(sources::parse(Source::Alertmanager, b"{not json"), Err(AlertError::Malformed { .. })));
    assert!(matches!(sources::parse(Source::Alertmanager, b"[1]"), Err(AlertError::Malformed { .. })));
    let v2 = String::from_utf8(fixture("generic-v1.json")).unwrap().replace("flagguard.alert/v1", "flagguard.alert/v2");
    let Err(AlertError::Malformed { message, .. }) = sources::parse(Source::Generic, v2.as_bytes()) else { panic!() };
    assert!(message.contains("unknown schema"));
}

#[test]
fn grafana_signatures_with_and_without_timestamp() {
    let body = fixture("grafana-unified-alerting.json");
    let with_ts = "b4252316b5e7424f5da710b692e67b605c4c66265a22e66b9776218f36e9fd8d";
    let without_ts = "25ddf95c3f41b02f464a877cff89c752e51780dc7376cd7bba858aa5ecfdd2d8";
    let auth = hmac_auth();
    let ok = |h: &HeaderMap, now: u64| verify(Source::Grafana, &auth, h, &body, at(now)).is_ok();
    assert!(ok(&headers(&[("x-grafana-alerting-signature", without_ts)]), TS + 10_000), "no timestamp: no replay window");
    assert!(ok(&headers(&[("x-grafana-alerting-signature", with_ts), ("x-grafana-alerting-timestamp", "1795606930")]), TS + 5));
    assert!(!ok(&headers(&[("x-grafana-alerting-signature", with_ts), ("x-grafana-alerting-timestamp", "1795606930")]), TS + 301), "stale");
    assert!(!ok(&headers(&[("x-grafana-alerting-signature", without_ts), ("x-grafana-alerting-timestamp", "1795606930")]), TS), "mode mismatch");
    let mut tampered = body.clone();
    tampered[10] ^= 1;
    assert!(verify(Source::Grafana, &auth, &headers(&[("x-grafana-alerting-signature", without_ts)]), &tampered, at(TS)).is_err());
    let required = SourceAuth { timestamp_header: Some("x-grafana-alerting-timestamp".into()), ..hmac_auth() };
    assert!(verify(Source::Grafana, &required, &headers(&[("x-grafana-alerting-signature", without_ts)]), &body, at(TS)).is_err(), "timestamp required");
}

#[test]
fn pagerduty_signatures_and_rotation() {
    let body = fixture("pagerduty-v3-incident-triggered.json");
    let good = "v1=79adcbdaa9e2a5cffd1ac7b2f44294dafcb15be3cc1e59ecad99c48c5125f645";
    let old = "v1=777133a538b3ed01102d50d76fbff92c732f457068aef0f859362ca37dd9831f";
    let auth = hmac_auth();
    let check = |sig: &str, body: &[u8]| verify(Source::Pagerduty, &auth, &headers(&[("x-pagerduty-signature", sig)]), body, at(TS));
    assert!(check(good, &body).is_ok());
    assert!(check(old, &body).is_err(), "wrong secret");
    assert!(check(&format!("{old},{good}"), &body).is_ok(), "second of two rotation values");
    assert!(check(good, &body[..body.len() - 1]).is_err(), "re-serialised body (trailing newline dropped)");
    assert!(check("79adcbdaa9e2a5cffd1ac7b2f44294dafcb15be3cc1e59ecad99c48c5125f645", &body).is_err(), "missing v1= prefix");
    assert!(check("v1=zz", &body).is_err(), "non-hex");
    assert!(check("v1=79ad", &body).is_err(), "wrong length");
    assert_eq!(verify(Source::Pagerduty, &auth, &HeaderMap::new(), &body, at(TS)), Err(AlertError::Unauthorized("missing signature".into())));
}

#[test]
fn generic_signatures_timestamps_and_bearer_fallback() {
    let body = fixture("generic-v1.json");
    let good = "sha256=5521dcb8f49577c5c230b9ddb79a7500305bd70ea79096292be5caf19ff2937d";
    let auth = hmac_auth();
    let check = |ts: &str, sig: &str, now: u64| {
        verify(Source::Generic, &auth, &headers(&[("x-flagguard-timestamp", ts), ("x-flagguard-signature", sig)]), &body, at(now))
    };
    assert!(check("1795606930", good, TS + 60).is_ok());
    assert!(check("1795606930", good, TS + 301).is_err(), "stale");
    assert!(check("1795606931", good, TS).is_err(), "timestamp altered");
    assert!(check("1795606931", "sha256=272dfbd2c9ab306f3fc4e0cf6a0ecb454b74653cef841427890f7c4f65544d58", TS).is_ok(), "valid for that timestamp");
    assert!(check("1795606930", "sha256=bd96f75eddc2ecea4eb9f35833247ecf04591f1e70367132d77d775a6d0ab152", TS).is_err(), "timestamp not signed");
    assert!(check("1795606930", "5521dcb8f49577c5c230b9ddb79a7500305bd70ea79096292be5caf19ff2937d", TS).is_err(), "prefix missing");
    let both = SourceAuth { bearer_token: Some("tok".into()), ..hmac_auth() };
    assert!(verify(Source::Generic, &both, &headers(&[("authorization", "Bearer tok")]), &body, at(TS)).is_ok(), "senders that cannot sign");
    assert!(
        verify(
            Source::Generic,
            &both,
            &headers(&[("authorization", "Bearer tok"), ("x-flagguard-timestamp", "1795606930"), ("x-flagguard-signature", "sha256=00")]),
            &body,
            at(TS)
        )
        .is_err(),
        "a bad signature is not rescued by a token"
    );
}

#[test]
fn unsigned_sources_need_their_credentials() {
    let body = fixture("alertmanager-v4.json");
    let bearer = SourceAuth { bearer_token: Some("test-bearer-token".into()), ..SourceAuth::default() };
    let basic = SourceAuth { basic: Some(("am".into(), "pw".into())), ..SourceAuth::default() };
    let check = |auth: &SourceAuth, value: Option<&str>| {
        let h = value.map(|v| headers(&[("authorization", v)])).unwrap_or_default();
        verify(Source::Alertmanager, auth, &h, &body, at(TS)).is_ok()
    };
    assert!(check(&bearer, Some("Bearer test-bearer-token")));
    assert!(!check(&bearer, Some("Bearer test-bearer-tokeN")));
    assert!(!check(&bearer, None));
    assert!(check(&basic, Some("Basic YW06cHc=")));
    assert!(!check(&basic, Some("Basic YW06cHd4")));
}

#[test]
fn tags_split_on_the_first_colon() {
    let mut m = BTreeMap::new();
    parse_tags("feature_flag:checkout-v2, url:https://x:8080/a ,monitor, env:prod", &mut m);
    assert_eq!(m["feature_flag"], "checkout-v2");
    assert_eq!(m["url"], "https://x:8080/a");
    assert_eq!(m["monitor"], "");
    assert_eq!(m["env"], "prod");
}

/// Review finding 5: the variant an alert kill counts in its drain check comes from the
/// mapping's `variant` (or the alert's `variant` label); without one the kill names none.
#[test]
fn a_mapping_names_the_variant_to_drain() {
    let alerts = sources::parse(Source::Generic, &fixture("generic-v1.json")).unwrap();
    let mut mapping = AlertMapping {
        name: "m".into(),
        source: None,
        matches: BTreeMap::new(),
        kill: KillShape { flag: "checkout-v2".into(), via: "flags".into(), environment: None, cohort: None, region: None, variant: Some("on".into()) },
        mode: Mode::Enforce,
    };
    assert_eq!(mapping::map(&alerts[0], std::slice::from_ref(&mapping), None).unwrap().variant.as_deref(), Some("on"));
    mapping.kill.variant = None;
    let label = alerts[0].labels.get("variant").cloned();
    assert_eq!(mapping::map(&alerts[0], &[mapping], None).unwrap().variant, label);
}

/// Review finding 8: empty credentials never verify, whatever reached the route.
#[test]
fn empty_credentials_never_verify() {
    let empty_token = SourceAuth { bearer_token: Some(String::new()), ..SourceAuth::default() };
    assert!(verify(Source::Alertmanager, &empty_token, &headers(&[("authorization", "Bearer ")]), b"{}", at(TS)).is_err());
    let empty_basic = SourceAuth { basic: Some((String::new(), String::new())), ..SourceAuth::default() };
    assert!(verify(Source::Alertmanager, &empty_basic, &headers(&[("authorization", "Basic Og==")]), b"{}", at(TS)).is_err());
}
