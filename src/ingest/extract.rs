//! Attribute lookups across semantic-convention generations: which OTLP attribute names give a
//! flag evaluation's key, variant, provider, set id and error (reference:
//! `otel-feature-flags.md` §4). Pure functions over OTLP attribute lists.

use super::wire::{Attrs, Val};

pub use super::semconv::{EVENT_NEW, EVENT_OLD};

/// A flag evaluation as read from one attribute list (span event, log record or child span).
#[derive(Debug, Clone, PartialEq)]
pub struct RawEvaluation {
    pub key: String,
    pub set_id: Option<String>,
    pub variant: Option<String>,
    pub error_type: Option<String>,
    /// Hash of `feature_flag.context.id` (the id is not kept).
    pub context: Option<u64>,
}

/// Returns a string attribute (only string-typed values).
pub fn attr_str<'a>(attrs: Attrs<'a>, name: &str) -> Option<&'a str> {
    match attrs.get(name)? {
        Val::Str(s) => Some(s),
        _ => None,
    }
}

/// An integer value (int, or a string holding an int: some SDKs stringify).
pub fn as_int(value: Option<Val<'_>>) -> Option<i64> {
    match value? {
        Val::Int(i) => Some(i),
        Val::Str(s) => s.parse().ok(),
        Val::Double(d) => Some(d as i64),
        _ => None,
    }
}

/// Renders an attribute value as the variant string SDKs mean by it: strings as themselves
/// (with Python's JSON quoting removed), booleans and numbers in their usual text form.
pub fn stringify(value: Val<'_>) -> Option<String> {
    match value {
        Val::Str(s) => Some(unquote_json(s)),
        Val::Bool(b) => Some(b.to_string()),
        Val::Int(i) => Some(i.to_string()),
        Val::Double(d) => Some(d.to_string()),
        Val::Bytes(b) => Some(hex::encode(b)),
        Val::List(_) | Val::Other => None,
    }
}

/// Python's hook sends `json.dumps(value)`: `'"#c05543"'` → `#c05543`. Other strings pass.
fn unquote_json(s: &str) -> String {
    if s.len() >= 2
        && s.starts_with('"')
        && s.ends_with('"')
        && let Ok(serde_json::Value::String(inner)) = serde_json::from_str::<serde_json::Value>(s)
    {
        return inner;
    }
    s.to_owned()
}

/// The attributes a flag evaluation is read from, looked up in one pass.
const EVALUATION_ATTRIBUTES: [&str; 10] = [
    "feature_flag.key",
    "feature_flag.flag_key",
    "feature_flag.result.variant",
    "feature_flag.variant",
    "feature_flag.result.value",
    "feature_flag.result.reason",
    "feature_flag.evaluation.reason",
    "error.type",
    "feature_flag.set.id",
    "feature_flag.context.id",
];

/// A string value (only string-typed values).
pub fn as_str(value: Option<Val<'_>>) -> Option<&str> {
    match value? {
        Val::Str(s) => Some(s),
        _ => None,
    }
}

/// Reads a flag evaluation from an attribute list, with the documented lookup order.
/// `body` is a log record's body (v1.29–v1.33 emitters put `{"value": …}` there).
pub fn evaluation(attrs: Attrs<'_>, body: Option<Val<'_>>) -> Option<RawEvaluation> {
    let [key, flag_key, result_variant, old_variant, result_value, reason, old_reason, error_type, set_id, context] = attrs.lookup(EVALUATION_ATTRIBUTES);
    let key = as_str(key).or_else(|| as_str(flag_key))?;
    if !usable(key) {
        return None;
    }
    let variant = as_str(result_variant)
        .or_else(|| as_str(old_variant))
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .or_else(|| result_value.and_then(stringify))
        .or_else(|| body.and_then(body_value).and_then(stringify))
        .filter(|v| usable(v));
    let reason = as_str(reason).or_else(|| as_str(old_reason));
    let error_type = as_str(error_type).map(str::to_owned).or_else(|| reason.filter(|r| r.eq_ignore_ascii_case("error")).map(|_| "general".to_owned()));
    Some(RawEvaluation {
        key: key.to_owned(),
        // The set id becomes part of the flag's name and so of action targets: the same checks.
        set_id: as_str(set_id).filter(|s| usable(s)).map(str::to_owned),
        variant,
        error_type,
        context: as_str(context).filter(|c| !c.is_empty()).map(context_hash),
    })
}

/// Whether a flag key, variant or dimension value can become part of an action target and a
/// flag system's URL: 1–256 bytes, no control characters, no `|` (the target separator), not
/// `.` or `..` (a path segment that URL normalisation would resolve). Others are not used.
pub fn usable(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && s != "." && s != ".." && !s.chars().any(|c| c.is_control() || c == '|')
}

/// A stable 64-bit hash of a context id (FNV-1a): distinct-user counting needs only equality.
pub fn context_hash(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

fn body_value(body: Val<'_>) -> Option<Val<'_>> {
    match body {
        Val::List(list) => list.get("value"),
        _ => None,
    }
}

/// Reads evaluations expressed as span attributes under configured prefixes
/// (`app.flags.checkout-v2 = "on"` with prefix `app.flags.`).
pub fn prefixed_evaluations(attrs: Attrs<'_>, prefixes: &[String], out: &mut Vec<RawEvaluation>) {
    if prefixes.is_empty() {
        return;
    }
    attrs.for_each(|name, value| {
        for prefix in prefixes {
            if let Some(key) = name.strip_prefix(prefix.as_str()) {
                // The same checks as the semantic-convention attributes: these reach targets too.
                if !usable(key) {
                    continue;
                }
                let variant = value.and_then(stringify).filter(|v| usable(v));
                out.push(RawEvaluation { key: key.to_owned(), set_id: None, variant, error_type: None, context: None });
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};

    fn evaluation(attrs: &[KeyValue], body: Option<&AnyValue>) -> Option<RawEvaluation> {
        super::evaluation(Attrs::Prost(attrs), body.and_then(Val::from_prost))
    }

    pub fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
    }
    fn s(v: &str) -> Value {
        Value::StringValue(v.into())
    }

    #[test]
    fn lookup_order_across_generations() {
        struct Case {
            name: &'static str,
            attrs: Vec<KeyValue>,
            body: Option<AnyValue>,
            variant: Option<&'static str>,
            error: Option<&'static str>,
        }
        let body_value = AnyValue {
            value: Some(Value::KvlistValue(opentelemetry_proto::tonic::common::v1::KeyValueList { values: vec![kv("value", Value::BoolValue(true))] })),
        };
        let cases = vec![
            Case {
                name: "v1.34 result.variant wins",
                attrs: vec![
                    kv("feature_flag.key", s("f")),
                    kv("feature_flag.result.value", s("true")),
                    kv("feature_flag.result.variant", s("on")),
                    kv("feature_flag.variant", s("old")),
                ],
                body: None,
                variant: Some("on"),
                error: None,
            },
            Case {
                name: "pre-1.32 variant",
                attrs: vec![kv("feature_flag.key", s("f")), kv("feature_flag.variant", s("blue"))],
                body: None,
                variant: Some("blue"),
                error: None,
            },
            Case {
                name: "python json-quoted value",
                attrs: vec![kv("feature_flag.key", s("f")), kv("feature_flag.result.value", s("\"#c05543\""))],
                body: None,
                variant: Some("#c05543"),
                error: None,
            },
            Case {
                name: "python bool value as string",
                attrs: vec![kv("feature_flag.key", s("f")), kv("feature_flag.result.value", s("true"))],
                body: None,
                variant: Some("true"),
                error: None,
            },
            Case {
                name: "node native bool value",
                attrs: vec![kv("feature_flag.key", s("f")), kv("feature_flag.result.value", Value::BoolValue(false))],
                body: None,
                variant: Some("false"),
                error: None,
            },
            Case {
                name: "int value",
                attrs: vec![kv("feature_flag.key", s("f")), kv("feature_flag.result.value", Value::IntValue(5))],
                body: None,
                variant: Some("5"),
                error: None,
            },
            Case {
                name: "log body value (v1.29-1.33)",
                attrs: vec![kv("feature_flag.key", s("f"))],
                body: Some(body_value),
                variant: Some("true"),
                error: None,
            },
            Case {
                name: "evaluation error by error.type",
                attrs: vec![
                    kv("feature_flag.key", s("f")),
                    kv("feature_flag.result.value", Value::BoolValue(false)),
                    kv("feature_flag.result.reason", s("error")),
                    kv("error.type", s("flag_not_found")),
                ],
                body: None,
                variant: Some("false"),
                error: Some("flag_not_found"),
            },
            Case {
                name: "evaluation error by old reason",
                attrs: vec![kv("feature_flag.key", s("f")), kv("feature_flag.evaluation.reason", s("ERROR"))],
                body: None,
                variant: None,
                error: Some("general"),
            },
            Case {
                name: "old java key name",
                attrs: vec![kv("feature_flag.flag_key", s("f")), kv("feature_flag.variant", s("on"))],
                body: None,
                variant: Some("on"),
                error: None,
            },
        ];
        for case in cases {
            let got = evaluation(&case.attrs, case.body.as_ref()).unwrap_or_else(|| panic!("{}: no evaluation", case.name));
            assert_eq!(got.key, "f", "{}", case.name);
            assert_eq!(got.variant.as_deref(), case.variant, "{}", case.name);
            assert_eq!(got.error_type.as_deref(), case.error, "{}", case.name);
        }
    }

    #[test]
    fn no_key_is_no_evaluation() {
        assert_eq!(evaluation(&[kv("feature_flag.variant", s("on"))], None), None);
        assert_eq!(evaluation(&[kv("feature_flag.key", s(""))], None), None);
        assert_eq!(evaluation(&[kv("feature_flag.key", Value::IntValue(3))], None), None);
    }

    #[test]
    /// Review finding 15: a set id with `|` (the target separator), control characters or
    /// any length reached action targets.
    fn an_unusable_set_id_is_dropped() {
        for bad in ["a|b", "x|production|", "a\nb", &"s".repeat(257)] {
            let got = evaluation(&[kv("feature_flag.key", s("f")), kv("feature_flag.set.id", s(bad))], None).unwrap();
            assert_eq!(got.set_id, None, "{bad:?}");
        }
    }

    #[test]
    fn prefixed_keys_and_variants_must_be_usable() {
        let attrs = [kv("app.flags.a|b", s("on")), kv("app.flags.ok", s("x|y")), kv("app.flags.good", s("on"))];
        let mut out = Vec::new();
        prefixed_evaluations(Attrs::Prost(&attrs), &["app.flags.".to_owned()], &mut out);
        let got: Vec<(&str, Option<&str>)> = out.iter().map(|e| (e.key.as_str(), e.variant.as_deref())).collect();
        assert_eq!(got, vec![("ok", None), ("good", Some("on"))]);
    }

    #[test]
    fn set_id_namespaces() {
        let got = evaluation(&[kv("feature_flag.key", s("f")), kv("feature_flag.set.id", s("shop"))], None).unwrap();
        assert_eq!(got.set_id.as_deref(), Some("shop"));
    }

    #[test]
    fn prefixed_attributes() {
        let mut out = Vec::new();
        let attrs = vec![kv("app.flags.checkout-v2", s("on")), kv("app.flags.", s("x")), kv("other", s("y"))];
        prefixed_evaluations(Attrs::Prost(&attrs), &["app.flags.".to_owned()], &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].key, "checkout-v2");
        assert_eq!(out[0].variant.as_deref(), Some("on"));
    }
}

#[cfg(test)]
mod usable_tests {
    #[test]
    fn values_that_could_rewrite_a_url_or_a_target_are_not_used() {
        for bad in ["", ".", "..", "a|b", "line\nbreak", &"x".repeat(257)] {
            assert!(!super::usable(bad), "{bad:?}");
        }
        for good in ["checkout-v2", "eu-west-1", "new.flow", "on", &"x".repeat(256)] {
            assert!(super::usable(good), "{good:?}");
        }
    }
}
