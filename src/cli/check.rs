//! `flagguard check`: validates the configuration, the rule files and (with `--manifests`) the
//! flag manifests, printing every error as `file:line: field: message`. Exit 0 when valid, 1
//! when rules or manifests are invalid, 64 for bad config.

use std::path::{Path, PathBuf};

use crate::config::Config;

/// Runs the check, printing to stdout/stderr; returns the exit code.
pub fn run(config_path: Option<&Path>, rules_dir: Option<PathBuf>, manifests: Option<&Path>) -> i32 {
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", config_path.map_or("configuration".into(), |p| p.display().to_string()));
            return 64;
        }
    };
    let dir = rules_dir.unwrap_or_else(|| config.file.rules_dir.clone());
    let rules = rules(&config, &dir);
    let manifests = manifests.map_or(0, |m| self::manifests(&config, m));
    rules.max(manifests)
}

fn manifests(config: &Config, dir: &Path) -> i32 {
    match crate::manifest::load_dir(dir, Some(&config.actuator_names())) {
        Ok(set) => {
            println!("{}: {} flag manifest(s) in {} file(s) OK", dir.display(), set.flags.len(), set.files.len());
            0
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!("{} error(s)", errors.len());
            1
        }
    }
}

fn rules(config: &Config, dir: &Path) -> i32 {
    match crate::rulefile::load_dir(dir, &config.actuator_names()) {
        Ok(set) => {
            println!("{}: {} rule(s) in {} file(s) OK", dir.display(), set.rules.len(), set.files.len());
            for rule in &set.rules {
                let action = rule.kill.as_deref().map_or("observe only".to_owned(), |a| format!("kill via {a}"));
                println!(
                    "  {} ({}): flag {} treatment {} — {}, {}",
                    rule.name,
                    rule.mode.as_str(),
                    rule.flag_pattern,
                    rule.treatment.join("|"),
                    action,
                    rule.when.iter().map(|c| c.describe()).collect::<Vec<_>>().join(" or ")
                );
            }
            if config.file.actuators.is_empty() {
                println!("note: no actuators configured: every action is dry-run");
            }
            0
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!("{} error(s)", errors.len());
            1
        }
    }
}
