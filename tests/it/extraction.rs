//! Golden extraction tests: OTLP/JSON payloads in the exact shapes real SDKs emit
//! (`tests/fixtures/otlp/`), each with the evaluations it must yield.

use flagguard::ingest::otlp::{ExtractOptions, convert_logs, convert_traces};

#[test]
fn every_sdk_shape_yields_its_evaluations() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/otlp");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let fixture: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let request = fixture["request"].to_string();
        let converted = match fixture["signal"].as_str().unwrap() {
            "traces" => convert_traces(&serde_json::from_str(&request).unwrap(), &ExtractOptions::default()),
            _ => convert_logs(&serde_json::from_str(&request).unwrap()),
        };
        let got: Vec<(String, Option<String>, Option<String>)> = converted
            .batch
            .evaluations
            .iter()
            .map(|e| (e.flag.to_string(), e.variant.as_ref().map(|v| v.to_string()), e.error_type.as_ref().map(|t| t.to_string())))
            .collect();
        let want: Vec<(String, Option<String>, Option<String>)> = serde_json::from_value(fixture["expect"].clone()).unwrap();
        assert_eq!(got, want, "{}", path.display());
        assert_eq!(converted.batch.outcomes.len() as u64, fixture["outcomes"].as_u64().unwrap(), "{}", path.display());
        assert_eq!(converted.rejected, 0, "{}", path.display());
        checked += 1;
    }
    assert!(checked >= 5);
}
