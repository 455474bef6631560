//! The generic webhook actuator: any HTTP API, described by method, URL, headers (secrets from
//! the environment, expanded when the actuator is built, never audited) and a JSON body
//! template. A kill limited to a slice (`per: [region]`) needs the templates to use that
//! dimension's placeholder; otherwise it is refused as permanent (escalated), never widened.
//! It expresses the classic `POST …/v1/flags/checkout-v2 {"rollout_percentage": 0,
//! "enabled": false}` with a bearer token. Restore and rollout changes use their own body
//! templates (`restore_body`, `rollout_body`; `{action}` is `restore` / `rollout`, a string that
//! is exactly `"{percent}"` becomes the number); an optional `read_back` request checks the
//! result (a JSON pointer into its answer).

use super::verify::VerifyConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::retry::parse_retry_after;
use super::{ActError, ActionKind, ActionRequest, Actuator, Applied, FlagState};

/// A generic webhook. Placeholders `{flag}`, `{variant}`, `{control}`, `{rule}`, `{environment}`,
/// `{region}`, `{service}`, `{action}` are replaced in the URL (percent-encoded) and in the
/// body's strings; a body string that is exactly `"{evidence}"` becomes the decision record.
/// `${VAR}` in headers and URL is read from the environment at start (missing → config error).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// HTTP method. Default `POST`.
    #[serde(default = "default_method")]
    pub method: String,
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// JSON body template for a kill. Default (`act::webhook::DEFAULT_BODY`):
    /// `{"flag":"{flag}","variant":"{variant}","control":"{control}","enabled":false,"rule":"{rule}","environment":"{environment}","region":"{region}","evidence":"{evidence}"}`.
    #[serde(default)]
    pub body: Option<String>,
    /// Body template of a restore (`{action}` = `restore`). Default none: no restore.
    #[serde(default)]
    pub restore_body: Option<String>,
    /// Body template of a rollout change; `"{percent}"` becomes the number. Default none.
    #[serde(default)]
    pub rollout_body: Option<String>,
    /// Optional read-back: a request whose JSON answer says whether the flag is off.
    #[serde(default)]
    pub read_back: Option<ReadBackConfig>,
    #[serde(default)]
    pub verify: VerifyConfig,
}

impl WebhookConfig {
    /// Every problem of these settings, as `field.key: message`.
    pub fn validate(&self, field: &str, errors: &mut Vec<String>) {
        if reqwest::Method::from_bytes(self.method.as_bytes()).is_err() {
            errors.push(format!("{field}.method: {:?} is not an HTTP method", self.method));
        }
        // Secrets stay as `${VAR}` in the configuration (which is audited); the actuator
        // expands them when it is built.
        match crate::secrets::expand_env(&self.url) {
            Ok(url) => {
                if let Err(e) = reqwest::Url::parse(&url.replace(['{', '}'], "")) {
                    errors.push(format!("{field}.url: {:?} is not a URL ({e})", self.url));
                }
            }
            Err(var) => errors.push(format!("{field}.url: environment variable {var} is not set")),
        }
        for (header, value) in self.headers.iter() {
            if let Err(var) = crate::secrets::expand_env(value) {
                errors.push(format!("{field}.headers.{header}: environment variable {var} is not set"));
            }
            if reqwest::header::HeaderName::from_bytes(header.as_bytes()).is_err() {
                errors.push(format!("{field}.headers.{header}: not a valid header name"));
            }
        }
        if let Some(body) = &self.body
            && let Err(e) = serde_json::from_str::<serde_json::Value>(body)
        {
            errors.push(format!("{field}.body: not valid JSON ({e})"));
        }
    }
}

impl WebhookConfig {
    /// A `POST url` webhook with the default body and nothing else.
    pub fn to(url: &str) -> WebhookConfig {
        WebhookConfig {
            method: default_method(),
            url: url.into(),
            headers: BTreeMap::new(),
            body: None,
            restore_body: None,
            rollout_body: None,
            read_back: None,
            verify: VerifyConfig::default(),
        }
    }
}

/// A webhook's read-back: `GET url` (placeholders as in the kill), then the JSON value at
/// `pointer` (RFC 6901, e.g. `/enabled`) equals `killed_value` when the flag is off.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReadBackConfig {
    #[serde(default = "default_get")]
    pub method: String,
    pub url: String,
    pub pointer: String,
    #[serde(default = "default_killed_value")]
    pub killed_value: serde_json::Value,
    /// Pointer to the rollout percentage in the same answer (optional).
    #[serde(default)]
    pub rollout_pointer: Option<String>,
}

fn default_get() -> String {
    "GET".into()
}

fn default_killed_value() -> serde_json::Value {
    serde_json::Value::Bool(false)
}

fn default_method() -> String {
    "POST".into()
}

/// The default kill body when none is configured.
pub const DEFAULT_BODY: &str = r#"{"flag":"{flag}","variant":"{variant}","control":"{control}","enabled":false,"rule":"{rule}","environment":"{environment}","region":"{region}","evidence":"{evidence}"}"#;

pub struct Webhook {
    name: String,
    method: reqwest::Method,
    /// The URL template with `${VAR}` expanded (may hold secrets: never audited).
    url: String,
    /// The URL template as configured, `${VAR}` unexpanded (what the audit log shows).
    url_unexpanded: String,
    /// Placeholders the URL and body use: a kill scoped to a dimension the templates do not
    /// mention cannot be expressed.
    uses: Vec<&'static str>,
    headers: BTreeMap<String, String>,
    body: Value,
    restore_body: Option<Value>,
    rollout_body: Option<Value>,
    /// The read-back request, its URL with `${VAR}` expanded.
    read_back: Option<(reqwest::Method, String, ReadBackConfig)>,
    client: reqwest::Client,
}

impl Webhook {
    pub fn new(name: &str, config: &WebhookConfig, client: reqwest::Client) -> Result<Webhook, String> {
        let method = reqwest::Method::from_bytes(config.method.as_bytes()).map_err(|e| e.to_string())?;
        let body_text = config.body.as_deref().unwrap_or(DEFAULT_BODY);
        let body = serde_json::from_str(body_text).map_err(|e| e.to_string())?;
        let url = crate::secrets::expand_env(&config.url).map_err(|var| format!("environment variable {var} is not set"))?;
        let mut headers = BTreeMap::new();
        for (name, value) in &config.headers {
            headers.insert(name.clone(), crate::secrets::expand_env(value).map_err(|var| format!("environment variable {var} is not set"))?);
        }
        let uses = ["service", "environment", "region", "cohort"]
            .into_iter()
            .filter(|p| config.url.contains(&format!("{{{p}}}")) || body_text.contains(&format!("{{{p}}}")))
            .collect();
        let parse = |t: &Option<String>| t.as_deref().map(serde_json::from_str::<Value>).transpose().map_err(|e| e.to_string());
        let read_back = match &config.read_back {
            None => None,
            Some(rb) => {
                let method = reqwest::Method::from_bytes(rb.method.as_bytes()).map_err(|e| e.to_string())?;
                let url = crate::secrets::expand_env(&rb.url).map_err(|var| format!("environment variable {var} is not set"))?;
                Some((method, url, rb.clone()))
            }
        };
        Ok(Webhook {
            name: name.into(),
            method,
            url,
            url_unexpanded: config.url.clone(),
            uses,
            headers,
            body,
            restore_body: parse(&config.restore_body)?,
            rollout_body: parse(&config.rollout_body)?,
            read_back,
            client,
        })
    }

    /// Sends the request's call with `template` as the body.
    async fn send(&self, request: &ActionRequest, template: &Value, idempotency_key: &str) -> Result<Applied, ActError> {
        let values = placeholders(request);
        let url = substitute(&self.url, &values, true);
        let shown_url = substitute(&self.url_unexpanded, &values, true);
        let body = render(template, &values, &request.evidence);
        let mut call = self.client.request(self.method.clone(), &url).header("Idempotency-Key", idempotency_key).json(&body);
        if let Some(epoch) = crate::cluster::current_epoch() {
            call = call.header("X-Flagguard-Epoch", epoch);
        }
        for (name, value) in &self.headers {
            call = call.header(name, value);
        }
        let response = call.send().await.map_err(super::http::transport_error)?;
        let status = response.status();
        let retry_after = parse_retry_after(response.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()));
        let text = response.text().await.unwrap_or_default();
        super::http::classify(status, retry_after, &text)?;
        let reply = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text.chars().take(1000).collect()));
        Ok(Applied {
            before: Some(json!({ "serving": true })),
            after: Some(json!({ "actuator": self.name, "method": self.method.as_str(), "url": shown_url, "status": status.as_u16(), "response": reply })),
        })
    }
}

/// The placeholder values of a request.
pub fn placeholders(request: &ActionRequest) -> Vec<(&'static str, String)> {
    let action = match request.kind {
        ActionKind::Restore => "restore",
        ActionKind::Rollout => "rollout",
        _ => "kill",
    };
    vec![
        ("percent", request.percent.map(|p| p.to_string()).unwrap_or_default()),
        ("flag", request.flag.clone()),
        ("variant", request.treatment.join(",")),
        ("control", request.control.clone().unwrap_or_default()),
        ("rule", request.rule.clone()),
        ("environment", request.environment.clone().unwrap_or_default()),
        ("region", request.region.clone().unwrap_or_default()),
        ("service", request.service.clone().unwrap_or_default()),
        ("cohort", request.scope.iter().find(|(k, _)| k == "cohort").map(|(_, v)| v.clone()).unwrap_or_default()),
        ("action", action.into()),
    ]
}

fn substitute(template: &str, values: &[(&'static str, String)], encode: bool) -> String {
    let mut out = template.to_owned();
    for (name, value) in values {
        let value = if encode { percent_encode(value) } else { value.clone() };
        out = out.replace(&format!("{{{name}}}"), &value);
    }
    out
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Renders the body template: placeholders in strings, `"{evidence}"` → the decision record.
pub fn render(template: &Value, values: &[(&'static str, String)], evidence: &Value) -> Value {
    match template {
        Value::String(s) if s == "{evidence}" => evidence.clone(),
        Value::String(s) if s == "{percent}" => values
            .iter()
            .find(|(k, _)| *k == "percent")
            .and_then(|(_, v)| v.parse::<f64>().ok())
            .and_then(|p| serde_json::Number::from_f64(p).map(Value::Number))
            .unwrap_or(Value::Null),
        Value::String(s) => Value::String(substitute(s, values, false)),
        Value::Array(items) => Value::Array(items.iter().map(|v| render(v, values, evidence)).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), render(v, values, evidence))).collect()),
        other => other.clone(),
    }
}

#[async_trait::async_trait]
impl Actuator for Webhook {
    fn unexpressible(&self, scope: &[(String, String)]) -> Option<String> {
        scope.iter().find(|(dim, _)| !self.uses.contains(&dim.as_str())).map(|(dim, value)| {
            format!("webhook {} cannot express the slice {dim}={value}: its URL and body never use {{{dim}}}; a kill would hit every {dim}", self.name)
        })
    }

    async fn kill(&self, request: &ActionRequest, idempotency_key: &str) -> Result<Applied, ActError> {
        if let Some(why) = self.unexpressible(&request.scope) {
            return Err(ActError::Permanent(why));
        }
        self.send(request, &self.body, idempotency_key).await
    }

    async fn restore(&self, request: &ActionRequest, idempotency_key: &str) -> Result<Applied, ActError> {
        let template = self.restore_body.as_ref().ok_or_else(|| ActError::Permanent(format!("webhook {} has no restore_body; restore by hand", self.name)))?;
        self.send(request, template, idempotency_key).await
    }

    async fn set_rollout(&self, request: &ActionRequest, _percent: f64, idempotency_key: &str) -> Result<Applied, ActError> {
        let template = self.rollout_body.as_ref().ok_or_else(|| ActError::Permanent(format!("webhook {} has no rollout_body", self.name)))?;
        self.send(request, template, idempotency_key).await
    }

    async fn read(&self, request: &ActionRequest) -> Result<FlagState, ActError> {
        let Some((method, url, rb)) = &self.read_back else { return Ok(FlagState::unknown()) };
        let url = substitute(url, &placeholders(request), true);
        let mut call = self.client.request(method.clone(), &url);
        for (name, value) in &self.headers {
            call = call.header(name, value);
        }
        let response = call.send().await.map_err(super::http::transport_error)?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        super::http::classify(status, None, &text).map_err(|e| match e {
            ActError::Permanent(m) => ActError::Permanent(format!("read back: {m}")),
            other => other,
        })?;
        let answer: Value = serde_json::from_str(&text).map_err(|e| ActError::Permanent(format!("read back: the answer is not JSON ({e})")))?;
        let value = answer.pointer(&rb.pointer).ok_or_else(|| ActError::Permanent(format!("read back: the answer has nothing at {}", rb.pointer)))?;
        let rollout = rb.rollout_pointer.as_deref().and_then(|p| answer.pointer(p)).and_then(|v| v.as_f64().or_else(|| v.as_str()?.parse().ok()));
        Ok(FlagState { killed: Some(*value == rb.killed_value), rollout, variants: Vec::new(), detail: answer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::act::ActionKind;
    use std::time::Duration;

    fn request() -> ActionRequest {
        ActionRequest {
            treatment: vec!["on".into()],
            control: Some("off".into()),
            rule: "r".into(),
            service: Some("payments".into()),
            environment: Some("production".into()),
            evidence: json!({"verdict": "breached"}),
            ..ActionRequest::new(ActionKind::Kill, "flags", "checkout v2")
        }
    }

    fn bare(url: &str) -> WebhookConfig {
        WebhookConfig::to(url)
    }

    #[test]
    fn percent_becomes_a_number() {
        let template: Value = serde_json::from_str(r#"{"rollout": "{percent}", "action": "{action}"}"#).unwrap();
        let r = ActionRequest { kind: ActionKind::Rollout, percent: Some(25.0), ..request() };
        assert_eq!(render(&template, &placeholders(&r), &json!({})), json!({"rollout": 25.0, "action": "rollout"}));
    }

    #[test]
    fn the_seed_call_is_expressible() {
        let template: Value = serde_json::from_str(r#"{"rollout_percentage": 0, "enabled": false}"#).unwrap();
        let body = render(&template, &placeholders(&request()), &json!({}));
        assert_eq!(body, json!({"rollout_percentage": 0, "enabled": false}));
        assert_eq!(substitute("http://h/v1/flags/{flag}", &placeholders(&request()), true), "http://h/v1/flags/checkout%20v2");
    }

    #[test]
    fn default_body_carries_the_evidence() {
        let template: Value = serde_json::from_str(DEFAULT_BODY).unwrap();
        let r = request();
        let body = render(&template, &placeholders(&r), &r.evidence);
        assert_eq!(body["flag"], "checkout v2");
        assert_eq!(body["control"], "off");
        assert_eq!(body["evidence"]["verdict"], "breached");
    }

    #[tokio::test]
    async fn a_slice_the_templates_cannot_express_is_refused_not_widened() {
        let config = |url: &str| WebhookConfig { url: url.into(), body: Some("{}".into()), ..bare("") };
        let mut scoped = request();
        scoped.scope = vec![("region".into(), "eu-west".into())];
        let whole = Webhook::new("w", &config("http://127.0.0.1:9/flags/{flag}"), crate::app::http_client(Duration::from_secs(1), None).unwrap()).unwrap();
        let Err(ActError::Permanent(message)) = whole.kill(&scoped, "k").await else { panic!("must refuse") };
        assert!(message.contains("region=eu-west"), "{message}");
        let regional =
            Webhook::new("w", &config("http://127.0.0.1:9/flags/{flag}/regions/{region}"), crate::app::http_client(Duration::from_secs(1), None).unwrap())
                .unwrap();
        assert!(regional.uses.contains(&"region"));
    }

    #[test]
    fn secrets_stay_out_of_what_is_audited() {
        // SAFETY: a variable no other test reads.
        unsafe { std::env::set_var("FG_TEST_WEBHOOK_SECRET", "s3cr3t") };
        let config = bare("http://h/hook/${FG_TEST_WEBHOOK_SECRET}/{flag}");
        let hook = Webhook::new("w", &config, crate::app::http_client(Duration::from_secs(1), None).unwrap()).unwrap();
        assert!(hook.url.contains("s3cr3t"));
        assert!(!hook.url_unexpanded.contains("s3cr3t"));
    }

    #[test]
    fn status_classes() {
        use reqwest::StatusCode as S;
        assert!(crate::act::http::classify(S::OK, None, "").is_ok());
        assert!(matches!(crate::act::http::classify(S::SERVICE_UNAVAILABLE, None, ""), Err(ActError::Transient { .. })));
        assert!(matches!(
            crate::act::http::classify(S::TOO_MANY_REQUESTS, Some(Duration::from_secs(2)), ""),
            Err(ActError::Transient { retry_after: Some(_), .. })
        ));
        assert!(matches!(crate::act::http::classify(S::UNAUTHORIZED, None, ""), Err(ActError::Permanent(_))));
        assert!(matches!(crate::act::http::classify(S::NOT_FOUND, None, ""), Err(ActError::Permanent(_))));
    }
}
