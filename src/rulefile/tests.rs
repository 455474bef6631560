use super::*;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rules")
}

fn actuators() -> BTreeSet<String> {
    ["flagserver".to_owned()].into()
}

/// Every fixture: good ones load, bad_ and typo_ ones fail with the expected messages, which are
/// listed in the fixture's first comment lines (`# expect: …`).
#[test]
fn fixtures_load_or_fail_as_documented() {
    let mut checked = 0;
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let source = std::fs::read_to_string(&path).unwrap();
        let expected: Vec<&str> = source.lines().filter_map(|l| l.strip_prefix("# expect: ")).collect();
        let result = load_files(std::slice::from_ref(&path), &actuators());
        if name.starts_with("good") {
            let set = result.unwrap_or_else(|e| panic!("{name} must load: {e:?}"));
            assert!(!set.rules.is_empty(), "{name}");
        } else {
            let errors = result.expect_err(&name);
            let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            assert!(!expected.is_empty(), "{name} lacks # expect: lines");
            assert_eq!(text.len(), expected.len(), "{name}: got {text:#?}");
            for (got, want) in text.iter().zip(&expected) {
                assert!(got.ends_with(want), "{name}:\n got  {got}\n want …{want}");
            }
        }
        checked += 1;
    }
    assert!(checked >= 4, "fixtures missing");
}

#[test]
fn names_must_be_unique_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let rule = "rules:\n  - name: same\n    flag: f\n    treatment: on\n    when: [ { error_rate: { above: 0.1 } } ]\n    window: 1m\n";
    std::fs::write(dir.path().join("a.yaml"), rule).unwrap();
    std::fs::write(dir.path().join("b.yml"), rule).unwrap();
    std::fs::write(dir.path().join("ignored.txt"), "not yaml").unwrap();
    let errors = load_dir(dir.path(), &actuators()).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert!(errors[0].to_string().contains("used twice"));
}

#[test]
fn missing_dir_is_an_empty_set() {
    let set = load_dir(Path::new("/nonexistent/flagguard/rules"), &actuators()).unwrap();
    assert!(set.rules.is_empty());
}

#[test]
fn shipped_examples_are_valid() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rules");
    let set = load_dir(&dir, &BTreeSet::new()).unwrap_or_else(|e| panic!("{e:#?}"));
    assert!(!set.rules.is_empty());
}

/// Review finding 10: a `/` in a rule name made cooldown keys of different rules collide.
#[test]
fn rule_names_have_no_slash() {
    let dir = tempfile::tempdir().unwrap();
    let rule = "rules:\n  - name: team/checkout\n    flag: f\n    treatment: on\n    when: [ { error_rate: { above: 0.1 } } ]\n    window: 1m\n";
    std::fs::write(dir.path().join("a.yaml"), rule).unwrap();
    let errors = load_dir(dir.path(), &actuators()).unwrap_err();
    assert!(errors[0].to_string().contains("without '/'"), "{errors:?}");
    assert!(errors[0].to_string().contains("name"), "{errors:?}");
}

#[test]
fn environment_pipelines_name_existing_plans_without_loops_and_checks_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let plan = |name: &str, env: &str, after: &str, extra: &str| {
        format!("  - name: {name}\n    flag: f\n    actuator: flagserver\n    environment: {env}\n    treatment: \"on\"\n    steps: [100]\n{after}{extra}")
    };
    let write = |text: String| {
        let path = dir.path().join("p.yaml");
        std::fs::write(&path, format!("rollouts:\n{text}")).unwrap();
        load_files(&[path], &actuators())
    };
    let ok = write(
        plan("staging", "staging", "", "")
            + &plan(
                "production",
                "production",
                "    after: { plan: staging, healthy_for: 30m }\n",
                "    checks:\n      - http: { url: \"http://127.0.0.1:9/healthz\" }\n      - command: [\"./smoke.sh\"]\n        timeout: 30s\n",
            ),
    )
    .unwrap();
    let production = ok.rollouts.iter().find(|p| p.name == "production").unwrap();
    assert_eq!(production.after.as_ref().map(|a| (a.plan.as_str(), a.healthy_for.as_secs())), Some(("staging", 1800)));
    assert_eq!(production.checks.iter().map(|c| c.describe()).collect::<Vec<_>>(), ["GET http://127.0.0.1:9/healthz → 200", "command ./smoke.sh"]);
    let missing = write(plan("production", "production", "    after: { plan: stagin }\n", "")).unwrap_err();
    assert!(missing[0].to_string().contains("waits for plan \"stagin\", which no rule file declares"), "{}", missing[0]);
    let looped = write(plan("a", "x", "    after: { plan: b }\n", "") + &plan("b", "y", "    after: { plan: a }\n", "")).unwrap_err();
    assert!(looped[0].to_string().contains("in a loop: a → b → a"), "{}", looped[0]);
    let bad = write(plan("p", "x", "", "    checks:\n      - { http: { url: \"http://h/\" }, command: [\"x\"] }\n      - command: []\n")).unwrap_err();
    let text: Vec<String> = bad.iter().map(|e| e.to_string()).collect();
    assert!(text.iter().any(|t| t.contains("rollouts[0].checks[0]: give exactly one of http or command")), "{text:?}");
    assert!(text.iter().any(|t| t.contains("rollouts[0].checks[1].command: name the program")), "{text:?}");
}
