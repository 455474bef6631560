//! The cluster tests' PostgreSQL: the shared server of the run (`FLAGGUARD_TEST_PG_URL`, set by
//! `scripts/test.sh`, or started here through `scripts/setup-postgres.sh`), servers of a test's
//! own for faults that take the whole server down, a fresh database per test, and the rows the
//! checkers read back (`audit`, `outbox`) straight from the replicas' store.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// A running PostgreSQL server: its maintenance URL (`…/postgres`) and the script's name for it.
#[derive(Clone, Debug)]
pub struct Postgres {
    pub url: String,
    name: String,
}

static SHARED: OnceLock<Result<String, String>> = OnceLock::new();

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/setup-postgres.sh")
}

/// Runs `scripts/setup-postgres.sh COMMAND NAME` and returns the URL it printed, if any.
fn run_script(command: &str, name: &str) -> Result<Option<String>, String> {
    let out = std::process::Command::new("bash").arg(script()).args([command, name]).output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("setup-postgres.sh {command} {name} failed:\n{}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().find_map(|l| l.strip_prefix("FLAGGUARD_TEST_PG_URL=")).map(str::to_owned))
}

async fn script_async(command: &'static str, name: String) -> Option<String> {
    tokio::task::spawn_blocking(move || run_script(command, &name)).await.unwrap().unwrap_or_else(|e| panic!("{e}"))
}

impl Postgres {
    /// The server shared by every cluster test of this run.
    pub async fn shared() -> Postgres {
        let url = tokio::task::spawn_blocking(|| {
            SHARED
                .get_or_init(|| match std::env::var("FLAGGUARD_TEST_PG_URL") {
                    Ok(url) if !url.is_empty() => Ok(url),
                    _ => run_script("start", "main")?.ok_or_else(|| "setup-postgres.sh printed no URL".to_owned()),
                })
                .clone()
        })
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
        Postgres { url, name: "main".into() }
    }

    /// A server of this test's own (`NAME` distinct per test), for faults that take it down.
    pub async fn own(name: &str) -> Postgres {
        let url = script_async("start", name.to_owned()).await.expect("setup-postgres.sh start prints the URL");
        Postgres { url, name: name.to_owned() }
    }

    /// `pg_ctl restart -m immediate`: every connection is cut, crash recovery, same port.
    pub async fn restart_immediate(&self) {
        script_async("restart-immediate", self.name.clone()).await;
    }

    /// `pg_ctl stop -m immediate`, keeping the port for [`Postgres::start_again`].
    pub async fn stop_immediate(&self) {
        script_async("stop-immediate", self.name.clone()).await;
    }

    /// Starts a server stopped by [`Postgres::stop_immediate`] on its port again.
    pub async fn start_again(&self) {
        let url = script_async("start", self.name.clone()).await;
        assert_eq!(url.as_deref(), Some(self.url.as_str()), "the server came back on its port");
    }

    /// Stops and deletes a server of a test's own.
    pub async fn remove(self) {
        assert_ne!(self.name, "main", "the shared server is stopped by scripts/test.sh");
        script_async("stop", self.name.clone()).await;
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        let authority = self.url.split('@').nth(1).and_then(|rest| rest.split('/').next()).expect("URL has a host");
        authority.rsplit(':').next().unwrap().parse().expect("URL has a port")
    }

    /// Creates an empty database named after `test` (unique in this run) for one test.
    pub async fn fresh_database(&self, test: &str) -> Database {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!("fg_{}_{}_{}", test.replace(|c: char| !c.is_ascii_alphanumeric(), "_"), std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst));
        let admin = connect(&self.url).await.expect("the test PostgreSQL answers");
        // Two statements: a multi-statement batch is one transaction, which these refuse.
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.unwrap();
        admin.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
        Database { url: self.url_of(&name), name }
    }

    /// This server's URL for database `name`.
    pub fn url_of(&self, name: &str) -> String {
        let (server, _) = self.url.rsplit_once('/').expect("URL ends in /DATABASE");
        format!("{server}/{name}")
    }
}

/// One test's database.
#[derive(Clone, Debug)]
pub struct Database {
    pub url: String,
    pub name: String,
}

/// An audit record, the columns the checkers read (same schema as SQLite's).
#[derive(Clone, Debug)]
pub struct AuditRow {
    pub kind: String,
    pub actor: String,
    pub target: Option<String>,
    pub action_id: Option<i64>,
    pub after: Option<serde_json::Value>,
}

/// An outbox row (one action).
#[derive(Clone, Debug)]
pub struct OutboxRow {
    pub target: String,
    pub kind: String,
    pub state: String,
    pub idempotency_key: String,
}

pub async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// A missing table reads as empty (the replicas create the schema when they start).
fn empty_if_missing<T>(result: Result<Vec<T>, tokio_postgres::Error>) -> Result<Vec<T>, tokio_postgres::Error> {
    match result {
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Ok(Vec::new()),
        other => other,
    }
}

fn json(text: Option<String>) -> Option<serde_json::Value> {
    text.map(|t| serde_json::from_str(&t).unwrap_or(serde_json::Value::String(t)))
}

impl Database {
    /// Every audit record in id order (`Err` while the server is unreachable).
    pub async fn try_audit(&self) -> Result<Vec<AuditRow>, tokio_postgres::Error> {
        let client = connect(&self.url).await?;
        // Casts: whatever integer and text/JSON types the store chose, read them one way.
        let rows = client.query("SELECT kind::text, actor::text, target::text, action_id::bigint, after::text FROM audit ORDER BY id", &[]).await;
        empty_if_missing(rows.map(|rows| {
            rows.iter().map(|r| AuditRow { kind: r.get(0), actor: r.get(1), target: r.get(2), action_id: r.get(3), after: json(r.get(4)) }).collect()
        }))
    }

    /// Every outbox row in id order (`Err` while the server is unreachable).
    pub async fn try_outbox(&self) -> Result<Vec<OutboxRow>, tokio_postgres::Error> {
        let client = connect(&self.url).await?;
        let rows = client.query("SELECT target::text, kind::text, state::text, idempotency_key::text FROM outbox ORDER BY id", &[]).await;
        empty_if_missing(
            rows.map(|rows| rows.iter().map(|r| OutboxRow { target: r.get(0), kind: r.get(1), state: r.get(2), idempotency_key: r.get(3) }).collect()),
        )
    }

    pub async fn audit(&self) -> Vec<AuditRow> {
        self.try_audit().await.unwrap_or_else(|e| panic!("reading the audit table of {}: {e}", self.name))
    }

    pub async fn outbox(&self) -> Vec<OutboxRow> {
        self.try_outbox().await.unwrap_or_else(|e| panic!("reading the outbox table of {}: {e}", self.name))
    }
}
