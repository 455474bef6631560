//! `flagguard check` and `serve`'s refusal of bad input, through the real binary.

use std::process::Command;

fn flagguard() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flagguard"))
}

#[test]
fn check_reports_every_rule_error_with_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("flagguard.toml");
    std::fs::write(&config, "[actuators.flagserver]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/v1/flags/{flag}\"\n").unwrap();
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rules");
    let out = flagguard().args(["check", "--config", config.to_str().unwrap(), fixtures]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("bad_values.yaml:11: rules[0].action.kill: enforce rule names actuator \"unleash-prod\", which is not configured"), "{stderr}");
    assert!(stderr.contains("typo_field.yaml:9: rules[0].when[0].error_rate: unknown field `abov`, expected one of"), "{stderr}");
    assert!(stderr.contains("12 error(s)"), "{stderr}");
}

#[test]
fn check_accepts_the_shipped_rules() {
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/rules");
    let out = flagguard().args(["check", rules]).env_remove("FLAGGUARD_CONFIG").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
}

#[test]
fn check_validates_flag_manifests_with_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("flagguard.toml");
    std::fs::write(&config, "[actuators.unleash]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/v1/flags/{flag}\"\n").unwrap();
    let manifests = dir.path().join("flags");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(manifests.join("good.yaml"), "flags:\n  - key: a\n    lifecycle: ops\n    environments: [ { name: production, enabled: true } ]\n").unwrap();
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/rules");
    let check = || flagguard().args(["check", "--config", config.to_str().unwrap(), rules, "--manifests", manifests.to_str().unwrap()]).output().unwrap();
    let out = check();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 flag manifest(s) in 1 file(s) OK"));
    std::fs::write(manifests.join("bad.yaml"), "flags:\n  - key: b\n    actuator: launchdarkly\n    lifecycle: sometimes\n    environments: []\n").unwrap();
    let out = check();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("bad.yaml:4:") && stderr.contains("unknown variant `sometimes`"), "{stderr}");
}

#[test]
fn bad_config_exits_64_with_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("flagguard.toml");
    std::fs::write(&config, "[otlp]\ngrpc_listen = \"nope\"\n[api]\nlisten = \"also-nope\"\n").unwrap();
    for command in ["check", "serve"] {
        let out = flagguard().args([command, "--config", config.to_str().unwrap()]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{command}: {stderr}");
        assert!(stderr.contains("otlp.grpc_listen") && stderr.contains("api.listen"), "{stderr}");
    }
}

#[test]
fn serve_refuses_an_enforce_rule_without_its_actuator() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(rules.join("r.yaml"), "rules:\n  - name: r\n    flag: f\n    treatment: \"on\"\n    when: [ { error_rate: { above: 0.1 } } ]\n    window: 1m\n    action: { kill: unleash-prod }\n    mode: enforce\n").unwrap();
    let out = flagguard()
        .args(["serve"])
        .env("FLAGGUARD_RULES_DIR", &rules)
        .env("FLAGGUARD_DATA_DIR", dir.path().join("data"))
        .env("FLAGGUARD_OTLP__GRPC_LISTEN", "127.0.0.1:0")
        .env("FLAGGUARD_OTLP__HTTP_LISTEN", "127.0.0.1:0")
        .env("FLAGGUARD_API__LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("not configured"), "{stderr}");
}
