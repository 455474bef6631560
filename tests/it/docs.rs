//! The documentation holds to the code: README.md and docs/*.md are read as data.
//!
//! - Every flagguard configuration (```toml) and rule file (```yaml) shown passes the real
//!   `flagguard check`.
//! - Every `src/…` path they name exists, and the Layout in docs/architecture.md lists exactly
//!   what is in `src/`.
//! - Every relative link resolves, to a file and, for a `#anchor` into a page, to a heading.
//! - The defaults block of docs/configuration.md is what the real loader makes of an empty
//!   file, sets every key, and agrees with the `Default` column of the tables there.
//! - The metrics table of docs/api.md names every metric flagguard registers, with its type.
//!
//! A fenced block's info string says what it is. After `toml` or `yaml`:
//!
//! | words        | meaning | checked how |
//! |---|---|---|
//! | (none)       | a complete configuration / rule file | `check` exits 0 |
//! | `defaults`   | the configuration defaults (one, in docs/configuration.md) | as a configuration, and see [`the_configuration_defaults_are_the_code_s`] |
//! | `fragment`   | part of a configuration: it refers to actuators it does not show | the [`STANDARD_ACTUATORS`] it does not define itself are appended, then `check` exits 0 |
//! | `invalid`    | a rule file shown for its errors | `check` exits 1 and every error line names `x.yaml:LINE:`; a ```text check-output block right after lists lines that must be among them |
//! | `external`   | another tool's file (a Collector configuration, a CI pipeline) | not checked |
//!
//! Any other word fails the test, so a typo cannot silently turn a check off.
//!
//! Rule files are checked against a configuration holding the [`STANDARD_ACTUATORS`] (the
//! examples kill via `flags` or `unleash`). Configurations are checked as written with three
//! adjustments, so that an example may look like production: every `${VAR}` it names is set to a
//! placeholder; absolute paths under `/etc/` and `/var/` are moved into a temporary directory;
//! and the files it names for TLS (`cert`, `key`, `client_ca`, `ca_file`: one self-signed
//! certificate and its key) and `tokens_file` (one viewer token) are created there.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The actuators rule files and configuration fragments may name without defining them.
const STANDARD_ACTUATORS: &str = r#"
[actuators.flags]
type = "webhook"
url  = "https://flags.example.com/v1/flags/{flag}"

[actuators.unleash]
type  = "unleash"
url   = "https://unleash.example.com"
token = "${UNLEASH_ADMIN_TOKEN}"
"#;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every docs/*.md, in a stable order.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> =
        std::fs::read_dir(root().join("docs")).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "md")).collect();
    docs.sort();
    pages.extend(docs);
    pages
}

fn rel(path: &Path) -> String {
    path.strip_prefix(root()).unwrap_or(path).display().to_string()
}

/// One fenced code block.
struct Block {
    page: PathBuf,
    /// 1-based line of the opening fence.
    line: usize,
    lang: String,
    words: Vec<String>,
    text: String,
}

impl Block {
    fn at(&self) -> String {
        format!("{}:{} (```{} {})", rel(&self.page), self.line, self.lang, self.words.join(" "))
    }
}

fn blocks(page: &Path) -> Vec<Block> {
    let text = std::fs::read_to_string(page).unwrap();
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        match open.take() {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    let mut words = info.split_whitespace().map(str::to_owned);
                    let lang = words.next().unwrap_or_default();
                    open = Some(Block { page: page.to_owned(), line: i + 1, lang, words: words.collect(), text: String::new() });
                }
            }
            Some(mut block) => {
                if trimmed.starts_with("```") {
                    out.push(block);
                } else {
                    block.text.push_str(line);
                    block.text.push('\n');
                    open = Some(block);
                }
            }
        }
    }
    assert!(open.is_none(), "{}: a code block is never closed", rel(page));
    out
}

/// The page's text with fenced blocks blanked out (line numbers kept).
fn prose(page: &Path) -> String {
    let mut fenced = false;
    let mut out = String::new();
    for line in std::fs::read_to_string(page).unwrap().lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

fn vars(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else { break };
        out.insert(after[..end].to_owned());
        rest = &after[end..];
    }
    out
}

/// Runs `flagguard check --config CONFIG RULES` in `dir`, with every `${VAR}` of `texts` set.
fn check(dir: &Path, config: &str, rules: &Path, texts: &[&str]) -> std::process::Output {
    let config_path = dir.join("flagguard.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_flagguard"));
    command.env_clear().current_dir(dir).arg("check").arg("--config").arg(&config_path).arg(rules);
    for var in texts.iter().flat_map(|t| vars(t)) {
        command.env(&var, format!("docs-test-placeholder-{var}"));
    }
    command.output().unwrap()
}

/// Moves `/etc/…` and `/var/…` paths into `dir` and creates the TLS and token files named.
fn localise(config: &str, dir: &Path) -> String {
    let dir_text = dir.display().to_string();
    let text = config.replace("\"/etc/", &format!("\"{dir_text}/etc/")).replace("\"/var/", &format!("\"{dir_text}/var/"));
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else { continue };
        let key = key.trim();
        let Some(path) = value.trim().strip_prefix('"').and_then(|v| v.split('"').next()) else { continue };
        let content = match key {
            "cert" | "client_ca" | "ca_file" => certified.cert.pem(),
            "key" => certified.signing_key.serialize_pem(),
            "tokens_file" => "viewer docs-test docs-test-viewer-token-0123456789\n".to_owned(),
            _ => continue,
        };
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    text
}

/// The standard actuators a fragment does not define itself.
fn missing_actuators(fragment: &str) -> String {
    STANDARD_ACTUATORS
        .split("\n\n")
        .filter(|table| {
            let header = table.trim().lines().next().unwrap_or("");
            !fragment.lines().any(|l| l.trim() == header)
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

#[test]
fn every_example_config_and_rule_file_passes_check() {
    let mut failures = Vec::new();
    let mut checked = BTreeMap::<&str, usize>::new();
    let all: Vec<Block> = pages().iter().flat_map(|p| blocks(p)).collect();
    for (i, block) in all.iter().enumerate() {
        let allowed: &[&str] = match block.lang.as_str() {
            "toml" => &["defaults", "fragment", "external"],
            "yaml" => &["invalid", "external"],
            _ => continue,
        };
        if let Some(word) = block.words.iter().find(|w| !allowed.contains(&w.as_str())) {
            failures.push(format!("{}: unknown marker {word:?} (known: {allowed:?})", block.at()));
            continue;
        }
        let has = |w: &str| block.words.iter().any(|x| x == w);
        if has("external") {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("rules");
        std::fs::create_dir_all(&rules).unwrap();
        let out = if block.lang == "toml" {
            let mut config = localise(&block.text, dir.path());
            if has("fragment") {
                config.push_str(&missing_actuators(&block.text));
            }
            *checked.entry("toml").or_default() += 1;
            check(dir.path(), &config, &rules, &[&config])
        } else {
            std::fs::write(rules.join("x.yaml"), &block.text).unwrap();
            *checked.entry("yaml").or_default() += 1;
            check(dir.path(), STANDARD_ACTUATORS, &rules, &[STANDARD_ACTUATORS])
        };
        let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if !has("invalid") {
            if !out.status.success() {
                failures.push(format!("{}: flagguard check exited {:?}:\n{output}", block.at(), out.status.code()));
            }
            continue;
        }
        // An invalid rule file: exit 1, each error as `x.yaml:LINE: field: message`.
        let errors: Vec<&str> = output.lines().filter(|l| l.contains("x.yaml:")).collect();
        let located = errors.iter().all(|l| l.split("x.yaml:").nth(1).and_then(|r| r.split(':').next()).is_some_and(|n| n.parse::<usize>().is_ok()));
        if out.status.code() != Some(1) || errors.is_empty() || !located {
            failures.push(format!("{}: must fail with exit 1 and file:line errors, got {:?}:\n{output}", block.at(), out.status.code()));
        }
        if let Some(expected) = all.get(i + 1).filter(|b| b.page == block.page && b.lang == "text" && b.words.iter().any(|w| w == "check-output")) {
            for line in expected.text.lines().filter(|l| !l.trim().is_empty()) {
                if !errors.iter().any(|e| e.ends_with(line)) {
                    failures.push(format!("{}: the documented error {line:?} is not what check prints:\n{output}", expected.at()));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} documentation block(s) fail:\n\n{}", failures.len(), failures.join("\n\n"));
    // The docs show at least a configuration of every actuator kind and several rule files.
    assert!(checked.get("toml").copied().unwrap_or(0) >= 8 && checked.get("yaml").copied().unwrap_or(0) >= 4, "too few blocks checked: {checked:?}");
}

/// Every `src/…` path in the prose and the code blocks of README.md and docs/*.md.
#[test]
fn every_src_path_named_in_the_docs_exists() {
    let mut missing = Vec::new();
    let mut seen = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for (n, line) in text.lines().enumerate() {
            let mut rest = line;
            while let Some(start) = rest.find("src/") {
                let before = rest[..start].chars().last();
                let tail = &rest[start..];
                let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || "_-./".contains(c))).unwrap_or(tail.len());
                let path = tail[..end].trim_end_matches(['.', ',']);
                rest = &tail[end..];
                if before.is_some_and(|c| c.is_ascii_alphanumeric() || "_-./".contains(c)) {
                    continue; // part of another path, e.g. `fuzz/src/…`
                }
                seen += 1;
                if !root().join(path).exists() {
                    missing.push(format!("{}:{}: {path} does not exist (moved? update the docs)", rel(&page), n + 1));
                }
            }
        }
    }
    assert!(seen > 0, "no src/ path found at all");
    assert!(missing.is_empty(), "the docs name paths that are not in the tree:\n{}", missing.join("\n"));
}

/// The Layout block of docs/architecture.md (```text layout) against `src/`: every entry exists,
/// every file or directory named inside a directory's line exists in it, and every entry of
/// `src/` is listed.
#[test]
fn the_layout_lists_exactly_what_is_in_src() {
    let page = root().join("docs/architecture.md");
    let layout: Vec<Block> = blocks(&page).into_iter().filter(|b| b.lang == "text" && b.words.iter().any(|w| w == "layout")).collect();
    assert_eq!(layout.len(), 1, "docs/architecture.md needs exactly one ```text layout block");
    let mut problems = Vec::new();
    let mut listed = BTreeSet::new();
    let mut top = String::new();
    for line in layout[0].text.lines().filter(|l| !l.trim().is_empty()) {
        let indented = line.starts_with(' ');
        let (entry, description) = line.trim().split_once(char::is_whitespace).map_or((line.trim(), ""), |(e, d)| (e, d));
        if !indented {
            top = entry.to_owned();
            if !root().join(entry).exists() {
                problems.push(format!("{entry}: listed but not in the repository"));
            }
            continue;
        }
        let path = root().join(&top).join(entry);
        if top == "src/" {
            listed.insert(entry.trim_end_matches('/').to_owned());
        }
        if !path.exists() {
            problems.push(format!("{top}{entry}: listed but does not exist (moved or renamed? update docs/architecture.md)"));
            continue;
        }
        if !entry.ends_with('/') {
            continue;
        }
        // Names inside a directory's description: `webhook.rs`, `wire/`.
        for word in description.split(|c: char| c.is_whitespace() || "(),;:".contains(c)) {
            let named = word.ends_with(".rs") || (word.ends_with('/') && word.len() > 1);
            if named && word.chars().all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c)) && !path.join(word).exists() {
                problems.push(format!("{top}{entry}{word}: named in the layout but does not exist"));
            }
        }
    }
    for entry in std::fs::read_dir(root().join("src")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if !listed.contains(&name) {
            problems.push(format!("src/{name}: in the tree but not in the layout of docs/architecture.md"));
        }
    }
    assert!(problems.is_empty(), "the layout is stale:\n{}", problems.join("\n"));
}

/// GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, `-1`, `-2` for
/// repeats.
fn anchors(page: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut counts = BTreeMap::<String, usize>::new();
    for line in prose(page).lines() {
        let Some(heading) = line.strip_prefix('#').map(|h| h.trim_start_matches('#')).filter(|h| h.starts_with(' ')) else { continue };
        let slug: String = heading
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let n = counts.entry(slug.clone()).or_default();
        out.insert(if *n == 0 { slug.clone() } else { format!("{slug}-{n}") });
        *n += 1;
    }
    out
}

#[test]
fn every_relative_link_resolves() {
    let mut broken = Vec::new();
    let mut seen = 0;
    for page in pages() {
        for (n, line) in prose(&page).lines().enumerate() {
            let mut rest = line;
            while let Some(start) = rest.find("](") {
                let tail = &rest[start + 2..];
                let Some(end) = tail.find(')') else { break };
                let target = &tail[..end];
                rest = &tail[end..];
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                seen += 1;
                let (file, anchor) = target.split_once('#').map_or((target, None), |(f, a)| (f, Some(a)));
                let resolved = if file.is_empty() { page.clone() } else { page.parent().unwrap().join(file) };
                let at = format!("{}:{}: ({target})", rel(&page), n + 1);
                if !resolved.exists() {
                    broken.push(format!("{at}: {} does not exist", rel(&resolved)));
                } else if let Some(anchor) = anchor
                    && resolved.extension().is_some_and(|x| x == "md")
                    && !anchors(&resolved).contains(anchor)
                {
                    broken.push(format!("{at}: no heading #{anchor} in {}", rel(&resolved)));
                }
            }
        }
    }
    assert!(seen > 20, "only {seen} links found: is the parser broken?");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// `section → key → the value as written` of a TOML block of `key = value` lines under
/// `[section]` headers (the top level is `""`), comments dropped; plus each section's raw text,
/// comments included.
fn toml_lines(text: &str) -> (BTreeMap<String, BTreeMap<String, String>>, BTreeMap<String, String>) {
    let mut values = BTreeMap::<String, BTreeMap<String, String>>::new();
    let mut raw = BTreeMap::<String, String>::new();
    let mut section = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(name) = trimmed.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = name.to_owned();
        } else if !trimmed.starts_with('#')
            && let Some((key, value)) = trimmed.split_once('=')
        {
            let value = value.split(" #").next().unwrap_or("").trim();
            values.entry(section.clone()).or_default().insert(key.trim().to_owned(), value.to_owned());
        }
        let entry = raw.entry(section.clone()).or_default();
        entry.push_str(line);
        entry.push('\n');
    }
    (values, raw)
}

#[test]
fn the_configuration_defaults_are_the_code_s() {
    let page = root().join("docs/configuration.md");
    let defaults: Vec<Block> = blocks(&page).into_iter().filter(|b| b.lang == "toml" && b.words.iter().any(|w| w == "defaults")).collect();
    assert_eq!(defaults.len(), 1, "docs/configuration.md needs exactly one ```toml defaults block");
    let block = &defaults[0].text;

    // 1. The real loader makes the same configuration of the block as of an empty file.
    let dir = tempfile::tempdir().unwrap();
    let (documented_file, empty_file) = (dir.path().join("defaults.toml"), dir.path().join("empty.toml"));
    std::fs::write(&documented_file, block).unwrap();
    std::fs::write(&empty_file, "").unwrap();
    let documented = format!("{:#?}", flagguard::config::Config::load(Some(&documented_file)).unwrap());
    let code = format!("{:#?}", flagguard::config::Config::load(Some(&empty_file)).unwrap());
    let differences: Vec<String> =
        documented.lines().zip(code.lines()).filter(|(d, c)| d != c).map(|(d, c)| format!("  docs: {}\n  code: {}", d.trim(), c.trim())).collect();
    assert!(
        differences.is_empty() && documented.lines().count() == code.lines().count(),
        "docs/configuration.md's defaults are not the code's:\n{}",
        differences.join("\n")
    );

    // 2. It names every key: one with a value is set; one whose default is none is named in a
    //    comment of its section.
    let (values, raw) = toml_lines(block);
    let serde_json::Value::Object(tree) = serde_json::to_value(flagguard::config::ConfigFile::default()).unwrap() else {
        panic!("ConfigFile serialises to a table")
    };
    let mut unnamed = Vec::new();
    let mut leaf = |section: &str, key: &str, value: &serde_json::Value| {
        let none = value.is_null() || value.as_object().is_some_and(|o| o.is_empty());
        let set = values.get(section).is_some_and(|s| s.contains_key(key));
        let mentioned = raw.get(section).is_some_and(|r| r.contains(key)) || (section.is_empty() && block.contains(key));
        if !(set || (none && mentioned)) {
            unnamed.push(if section.is_empty() { key.to_owned() } else { format!("{section}.{key}") });
        }
    };
    for (key, value) in &tree {
        match value.as_object() {
            Some(table) if !table.is_empty() => table.iter().for_each(|(k, v)| leaf(key, k, v)),
            _ => leaf("", key, value),
        }
    }
    assert!(unnamed.is_empty(), "the defaults block of docs/configuration.md does not name: {}", unnamed.join(", "));

    // 3. The tables' `Default` column says what the block says.
    let mut section = None::<String>;
    let mut disagreements = Vec::new();
    let mut rows = 0;
    for line in prose(&page).lines() {
        if line.starts_with("## ") {
            section = None;
        } else if line.starts_with("**Top level**") {
            section = Some(String::new());
        } else if let Some(name) = line.strip_prefix("**`[").and_then(|s| s.split_once("]`**")).map(|(n, _)| n) {
            section = Some(name.to_owned());
        }
        let (Some(section), Some(row)) = (&section, line.strip_prefix("| `")) else { continue };
        let cells: Vec<&str> = row.split(" | ").collect();
        let (Some(key), Some(default)) = (cells.first().and_then(|k| k.strip_suffix('`')), cells.get(1)) else { continue };
        rows += 1;
        let written = values.get(section.as_str()).and_then(|s| s.get(key));
        let field = if section.is_empty() { key.to_owned() } else { format!("{section}.{key}") };
        match (default.strip_prefix('`').and_then(|d| d.split('`').next()), written) {
            (Some(table), Some(block)) if table == block => {}
            (None, None) => {}
            (table, block) => disagreements.push(format!("{field}: the table says {:?}, the defaults block {:?}", table.unwrap_or(default), block)),
        }
    }
    assert!(rows > 30, "only {rows} table rows found: is the parser broken?");
    assert!(disagreements.is_empty(), "docs/configuration.md disagrees with itself:\n{}", disagreements.join("\n"));
}

/// The metrics table of docs/api.md against what `/metrics` exports: the same names, the same
/// types (a counter is listed with its `_total` sample name).
#[test]
fn the_metrics_table_lists_every_metric_and_no_other() {
    let exported: BTreeMap<String, String> = flagguard::telemetry::Metrics::new()
        .encode()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE flagguard_"))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
        .collect();
    let page = root().join("docs/api.md");
    let text = prose(&page);
    let table = text.split("**Metrics**").nth(1).expect("docs/api.md has a **Metrics** table");
    let mut documented = BTreeMap::new();
    for row in table.lines().skip_while(|l| !l.starts_with('|')).take_while(|l| l.starts_with('|')).skip(2) {
        let cells: Vec<&str> = row.split(" | ").collect();
        let kind = cells.get(1).map(|k| k.trim()).unwrap_or_default();
        for name in cells[0].trim_start_matches("| ").split(", ") {
            let name = name.trim_matches('`');
            let base = if kind == "counter" { name.strip_suffix("_total").unwrap_or("counter without _total") } else { name };
            documented.insert(base.to_owned(), kind.to_owned());
        }
    }
    // A labelled family is exported only once it has a sample, so the names come from the
    // registrations; the types of those exported before any traffic are checked as exported.
    let source = std::fs::read_to_string(root().join("src/telemetry.rs")).expect("the metrics are registered in src/telemetry.rs");
    let registered: BTreeSet<String> = source.split(".register(\"").skip(1).filter_map(|s| s.split('"').next()).map(str::to_owned).collect();
    assert!(
        exported.len() > 10 && registered.len() >= exported.len(),
        "the exporter's TYPE lines or registrations were not found: {exported:?} {registered:?}"
    );
    let names: BTreeSet<String> = documented.keys().cloned().collect();
    assert_eq!(names, registered, "docs/api.md's metrics table (left) is not what src/telemetry.rs registers (right)");
    for (name, kind) in &exported {
        assert_eq!(documented.get(name), Some(kind), "flagguard_{name} is exported as a {kind}");
    }
}

/// docs/actions.md lists the action state machine; it must be the code's one table.
#[test]
fn the_documented_transitions_are_the_state_machine() {
    let text = std::fs::read_to_string(root().join("docs/actions.md")).unwrap();
    let block = text.split("```text transitions\n").nth(1).and_then(|rest| rest.split("```").next()).expect("a ```text transitions block in docs/actions.md");
    let documented: std::collections::BTreeSet<(String, String)> = block
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (from, to) = l.split_once(" → ").unwrap_or_else(|| panic!("docs/actions.md: {l:?} is not `from → to`"));
            (from.trim().to_owned(), to.trim().to_owned())
        })
        .collect();
    let code: std::collections::BTreeSet<(String, String)> =
        flagguard::action::TRANSITIONS.iter().map(|(from, to)| (from.as_str().to_owned(), to.as_str().to_owned())).collect();
    assert_eq!(documented, code, "docs/actions.md's transitions differ from src/action.rs TRANSITIONS");
}
