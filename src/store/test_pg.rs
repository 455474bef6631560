//! Tests' PostgreSQL: the run's server (`FLAGGUARD_TEST_PG_URL`, set by `scripts/test.sh`, or
//! started through `scripts/setup-postgres.sh`), and a fresh database per test in it.

use std::sync::OnceLock;

use super::PgOptions;
use super::postgres::PgConn;

/// The maintenance URL of the test server, starting it if needed.
fn server() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| match std::env::var("FLAGGUARD_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/setup-postgres.sh");
            let out = std::process::Command::new(script).args(["start", "main"]).output().expect("scripts/setup-postgres.sh runs");
            assert!(out.status.success(), "setup-postgres.sh start failed:\n{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .find_map(|l| l.strip_prefix("FLAGGUARD_TEST_PG_URL="))
                .expect("setup-postgres.sh prints the URL")
                .to_owned()
        }
    })
}

/// A new, empty database of its own.
pub fn database(what: &str) -> PgOptions {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("fg_{what}_{}_{n}", std::process::id());
    let admin = PgOptions { url: server().to_owned(), op_timeout: std::time::Duration::from_secs(30) };
    let mut conn = PgConn::connect(&admin).expect("the test PostgreSQL answers");
    conn.batch(&format!("DROP DATABASE IF EXISTS {name}")).unwrap();
    conn.batch(&format!("CREATE DATABASE {name}")).unwrap();
    let (base, _) = admin.url.rsplit_once('/').expect("a URL with a database");
    PgOptions { url: format!("{base}/{name}"), op_timeout: std::time::Duration::from_secs(10) }
}
