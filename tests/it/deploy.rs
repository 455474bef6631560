//! `scripts/check-deploy.sh` with the real binary: the shipped kit passes, a kit whose
//! configuration names Unleash, LaunchDarkly and Flagsmith actuators passes (the regex copy of
//! the schema the script once held refused them), and a configuration with a field flagguard does
//! not know fails — so the script's verdict is the daemon's own validation, not a copy of it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the script of the tree at `tree` with the test's binary.
fn check_deploy(tree: &Path) -> Output {
    Command::new(tree.join("scripts/check-deploy.sh")).env("FLAGGUARD_BIN", env!("CARGO_BIN_EXE_flagguard")).output().unwrap()
}

fn describe(out: &Output) -> String {
    format!("exit {:?}\n{}{}", out.status.code(), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A tree like the repository's whose `deploy/` is a copy (everything else is linked), so a
/// test can change the kit without touching the checkout.
fn tree_with_copied_deploy() -> tempfile::TempDir {
    let tree = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(root()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "deploy" || name == "target" {
            continue;
        }
        std::os::unix::fs::symlink(entry.path(), tree.path().join(&name)).unwrap();
    }
    copy_dir(&root().join("deploy"), &tree.path().join("deploy"));
    tree
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn append(path: &Path, text: &str) {
    let mut content = std::fs::read_to_string(path).unwrap();
    content.push_str(text);
    std::fs::write(path, content).unwrap();
}

const DOCKER_CONFIG_CHECKED: &str = "ok    flagguard check deploy/docker/flagguard.toml";

#[test]
fn the_shipped_deploy_kit_passes_check_deploy() {
    let out = check_deploy(&root());
    let all = describe(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains(DOCKER_CONFIG_CHECKED), "the binary's check must have run:\n{all}");
}

#[test]
fn provider_actuators_pass_and_unknown_fields_fail_check_deploy() {
    let tree = tree_with_copied_deploy();
    let docker = tree.path().join("deploy/docker/flagguard.toml");
    append(
        &docker,
        r#"
[actuators.unleash]
type                = "unleash"
url                 = "https://unleash.example.com"
token               = "${UNLEASH_ADMIN_TOKEN}"
default_environment = "production"
slices              = { region = "region" }
[actuators.unleash.verify]
drain_within = "1m"

[actuators.launchdarkly]
type    = "launchdarkly"
token   = "${LD_ACCESS_TOKEN}"
project = "shop"

[actuators.flagsmith]
type         = "flagsmith"
token        = "${FLAGSMITH_API_KEY}"
environments = { production = "ser.abc" }
api          = "versioned"
"#,
    );
    let out = check_deploy(tree.path());
    let all = describe(&out);
    assert_eq!(out.status.code(), Some(0), "valid provider actuators must pass:\n{all}");
    assert!(all.contains(DOCKER_CONFIG_CHECKED), "{all}");

    append(
        &docker,
        "\n[actuators.unleash-typo]\ntype = \"unleash\"\nurl = \"https://unleash.example.com\"\ntoken = \"${UNLEASH_ADMIN_TOKEN}\"\nprojekt = \"shop\"\n",
    );
    let out = check_deploy(tree.path());
    let all = describe(&out);
    assert_eq!(out.status.code(), Some(1), "an unknown field must fail:\n{all}");
    assert!(all.contains("FAIL  flagguard check deploy/docker/flagguard.toml") && all.contains("projekt"), "{all}");
}

#[test]
fn check_deploy_without_a_binary_is_a_missing_tool() {
    let out = Command::new(root().join("scripts/check-deploy.sh")).env("FLAGGUARD_BIN", "/nonexistent/flagguard").output().unwrap();
    let all = describe(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("no flagguard binary"), "{all}");
}
