//! flagguard's binary: flags → logging → `Config::load` → `App::build` → run until a signal →
//! ordered shutdown → exit code.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use flagguard::app::App;
use flagguard::config::{Config, ConfigError};
use flagguard::time::SystemClock;

#[derive(Parser)]
#[command(name = "flagguard", version, about = "Kills a feature flag's bad cohort within a second of the evidence, from OpenTelemetry traces")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the daemon (OTLP gRPC 4317, OTLP HTTP 4318, API 8080 by default).
    Serve {
        /// Configuration file (TOML). Without it, defaults plus FLAGGUARD_* variables.
        #[arg(long, short, env = "FLAGGUARD_CONFIG")]
        config: Option<PathBuf>,
        /// How long shutdown may take before in-flight work is left to the outbox.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        grace: Duration,
        /// Record accepted OTLP requests with their arrival times into this directory (for replay).
        #[arg(long)]
        record: Option<PathBuf>,
    },
    /// Replays recorded OTLP through the rules (dry-run) and prints a deterministic timeline.
    Replay {
        /// Rules directory.
        #[arg(long)]
        rules: PathBuf,
        /// Configuration whose correlation, window and guard settings are used (default: defaults).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// When the incident started (RFC 3339 or epoch ms): detection delays are printed.
        #[arg(long)]
        incident_start: Option<String>,
        /// Recording files (`*.otlprec`), in order.
        #[arg(required = true)]
        recordings: Vec<PathBuf>,
    },
    /// Validates the configuration and the rule files (exit 0 valid, 1 invalid rules, 64 bad config).
    Check {
        #[arg(long, short, env = "FLAGGUARD_CONFIG")]
        config: Option<PathBuf>,
        /// Rules directory (default: the configuration's rules_dir).
        rules: Option<PathBuf>,
        /// Also validate the flag manifests in this directory.
        #[arg(long)]
        manifests: Option<PathBuf>,
    },
    /// Promotion gate for CI: exit 0 promote, 1 breached (roll back), 2 not enough data, 3 error.
    Gate {
        /// Flag key.
        flag: String,
        #[arg(long)]
        environment: Option<String>,
        #[arg(long)]
        region: Option<String>,
        /// Only rules whose treatment includes this variant.
        #[arg(long)]
        variant: Option<String>,
        /// Every guarding slice must have been healthy this long, e.g. `5m`.
        #[arg(long)]
        min_healthy: Option<String>,
        /// Keep asking while the answer is "not enough data", up to this long (e.g. `10m`).
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        wait: Duration,
        /// The daemon's API.
        #[arg(long, default_value = "http://127.0.0.1:8080", env = "FLAGGUARD_SERVER")]
        server: String,
        /// Bearer token for the API.
        #[arg(long, env = "FLAGGUARD_TOKEN")]
        token: Option<String>,
        /// Print the daemon's JSON answer instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Copies the store (audit log, outbox, state) to OUT while the daemon runs: a consistent
    /// online backup (SQLite `VACUUM INTO`). Exit 0 done, 1 failed, 64 bad configuration.
    Backup {
        #[arg(long, short, env = "FLAGGUARD_CONFIG")]
        config: Option<PathBuf>,
        /// The backup file to create (must not exist).
        out: PathBuf,
    },
    /// Cluster mode: `cluster status` shows the members, the leader, its epoch and lease.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// The store: `store migrate` copies an embedded data directory into PostgreSQL.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Flags for pipelines and hygiene: `flags get`, `flags set-rollout` (compare-and-set),
    /// `flags stale` (removal candidates).
    Flags {
        #[command(subcommand)]
        command: FlagsCommand,
    },
    /// Flag manifests against the flag systems: exit 0 in sync, 1 drifted (a flagguard kill
    /// included, reported as such), 2 cannot tell, 3 error.
    Drift {
        /// The manifests directory (`*.yaml`).
        manifests: PathBuf,
        /// Only this environment.
        #[arg(long = "env", alias = "environment")]
        environment: Option<String>,
        /// Read the flag systems directly with this configuration's actuators (no daemon; its
        /// kills are then unknown).
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long, default_value = "http://127.0.0.1:8080", env = "FLAGGUARD_SERVER")]
        server: String,
        #[arg(long, env = "FLAGGUARD_TOKEN")]
        token: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Reconciles rollout percentages with the manifests through the daemon (compare-and-set,
    /// audited, in promotion order, never undoing a kill): exit 0 in sync, 1 something left
    /// drifted, 2 cannot tell, 3 error.
    Apply {
        manifests: PathBuf,
        #[arg(long = "env", alias = "environment")]
        environment: Option<String>,
        /// How long to wait for each change's outcome.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        wait: Duration,
        #[arg(long, default_value = "http://127.0.0.1:8080", env = "FLAGGUARD_SERVER")]
        server: String,
        #[arg(long, env = "FLAGGUARD_TOKEN")]
        token: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Proposals in regulated environments: `approvals list`, `approve ID`, `reject ID` (exit 0
    /// done, 1 refused, 3 error).
    Approvals {
        #[command(subcommand)]
        command: ApprovalsCommand,
    },
    /// Simulates rollouts through the real rule engine and prints the statistics table.
    Simulate {
        /// Rollouts per scenario.
        #[arg(long, default_value_t = 1000)]
        runs: u64,
        /// First random seed (each rollout adds its index).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// How long each A/A rollout is watched.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        horizon: Duration,
        /// Slices guarded at once in the family-wise scenario.
        #[arg(long, default_value_t = 100)]
        family_series: usize,
        /// Rollouts of the family-wise scenario.
        #[arg(long, default_value_t = 50)]
        family_runs: u64,
    },
    /// Runs a whole rollback on embedded defaults: traffic, a regression, the rule, the kill.
    Demo {
        /// Keep the demo's working directory (flag file, rules, database) and print its path.
        #[arg(long)]
        keep: bool,
        /// After the kill, keep the daemon (and its dashboard) running this long, e.g. `5m`.
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        hold: Duration,
    },
}

#[derive(clap::Subcommand)]
enum ClusterCommand {
    /// Members, leader, epoch and lease expiry as a replica sees them (exit 0 a leader holds
    /// the lease, 1 none does, 3 error).
    Status {
        #[arg(long, default_value = "http://127.0.0.1:8080", env = "FLAGGUARD_SERVER")]
        server: String,
        #[arg(long, env = "FLAGGUARD_TOKEN")]
        token: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

/// The daemon's API.
#[derive(clap::Args)]
struct ServerArgs {
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "FLAGGUARD_SERVER")]
    server: String,
    #[arg(long, env = "FLAGGUARD_TOKEN")]
    token: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Subcommand)]
enum ApprovalsCommand {
    /// Pending proposals (`--all`: every state).
    List {
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Approves a proposal: its change is carried out, with both actors audited.
    Approve {
        id: i64,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Rejects (or, for the proposer, withdraws) a proposal.
    Reject {
        id: i64,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(clap::Subcommand)]
enum StoreCommand {
    /// Copies an embedded SQLite data directory (stopped daemon) into an empty PostgreSQL
    /// database for cluster mode, ids kept, in one transaction (exit 0 done, 1 failed).
    Migrate {
        /// The embedded data directory (holding flagguard.db).
        #[arg(long)]
        from: PathBuf,
        /// PostgreSQL URL of the cluster's database.
        #[arg(long, env = "FLAGGUARD_PG_URL")]
        to: String,
    },
}

/// A flag in one environment (and region).
#[derive(clap::Args)]
struct FlagArgs {
    /// Flag key.
    flag: String,
    /// Environment (telemetry name; the actuator maps it to the flag system's).
    #[arg(long = "env", alias = "environment")]
    environment: String,
    #[arg(long)]
    region: Option<String>,
    /// Default: the only configured actuator.
    #[arg(long)]
    actuator: Option<String>,
}

impl FlagArgs {
    fn target(self) -> flagguard::cli::flags::FlagTarget {
        flagguard::cli::flags::FlagTarget { flag: self.flag, environment: self.environment, region: self.region, actuator: self.actuator }
    }
}

#[derive(clap::Subcommand)]
enum FlagsCommand {
    /// The compliance report: flags without an owner, past their expiry, changed without
    /// approval in a regulated environment, drifted, or in rollout too long (exit 0 none, 1
    /// findings, 3 error).
    Report {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// The flag's state in the flag system (enabled, rollout, variants), whether flagguard
    /// holds it killed, and its pending actions (exit 0; 3 when it cannot be read).
    Get {
        #[command(flatten)]
        target: FlagArgs,
        /// Read the flag system directly with this configuration's actuator (read-only; no
        /// daemon needed, so what flagguard holds is not shown).
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long, default_value = "http://127.0.0.1:8080", env = "FLAGGUARD_SERVER")]
        server: String,
        #[arg(long, env = "FLAGGUARD_TOKEN")]
        token: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Sets the rollout percentage through the daemon (audited), waiting for the outcome: exit
    /// 0 changed, 1 refused (not at --expect, another action pending, killed), 2 still pending
    /// after --wait, 3 error.
    SetRollout {
        #[command(flatten)]
        target: FlagArgs,
        /// The new percentage (0–100).
        #[arg(long, required_unless_present = "by", conflicts_with = "by")]
        percent: Option<f64>,
        /// Compare-and-set: change only if the flag is at this percentage now.
        #[arg(long, conflicts_with = "by")]
        expect: Option<f64>,
        /// Widen (or narrow, negative) by this many points from the percentage read now, as a
        /// compare-and-set from it; capped to 0–100.
        #[arg(long, allow_hyphen_values = true)]
        by: Option<f64>,
        /// The same key again changes the flag once (a retried pipeline step).
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Recorded in the audit log (default: the change itself).
        #[arg(long)]
        reason: Option<String>,
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        wait: Duration,
        #[arg(long, default_value = "http://127.0.0.1:8080", env = "FLAGGUARD_SERVER")]
        server: String,
        #[arg(long, env = "FLAGGUARD_TOKEN")]
        token: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Flags that served one variant to all traffic for `--single-variant-for`, or were not
    /// evaluated for `--unused-for` (exit 0; 3 on a usage or connection error).
    Stale {
        #[arg(long, default_value = "7d")]
        single_variant_for: String,
        #[arg(long, default_value = "30d")]
        unused_for: String,
        #[arg(long, default_value = "http://127.0.0.1:8080", env = "FLAGGUARD_SERVER")]
        server: String,
        #[arg(long, env = "FLAGGUARD_TOKEN")]
        token: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

/// mimalloc instead of glibc's malloc: under load the decoder's and the correlator's many small
/// allocations spent 40 % of flagguard's CPU in glibc's `_int_malloc` / `malloc_consolidate`
/// (perf, README "Performance").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A command-line usage error: clap's own exit code 2 would read as "hold" (`gate`) or "cannot
/// tell" (`drift`), so every command exits 3 for it, as documented.
const USAGE: i32 = 3;

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion) => e.exit(),
        Err(e) => {
            let _ = e.print();
            std::process::exit(USAGE);
        }
    };
    let code = match cli.command {
        Command::Check { config, rules, manifests } => flagguard::cli::check::run(config.as_deref(), rules, manifests.as_deref()),
        Command::Gate { flag, environment, region, variant, min_healthy, wait, server, token, json } => runtime()
            .block_on(flagguard::cli::gate::run(flagguard::cli::gate::GateArgs { flag, environment, region, variant, min_healthy, wait, server, token, json })),
        Command::Flags { command: FlagsCommand::Report { server: a } } => {
            runtime().block_on(flagguard::cli::flags::report(&a.server, a.token.as_deref(), a.json))
        }
        Command::Flags { command: FlagsCommand::Get { target, config, server, token, json } } => {
            let source = match config {
                Some(path) => flagguard::cli::flags::Source::Config(path),
                None => flagguard::cli::flags::Source::Daemon { server, token },
            };
            runtime().block_on(flagguard::cli::flags::get(&target.target(), &source, json))
        }
        Command::Flags { command: FlagsCommand::SetRollout { target, percent, expect, by, idempotency_key, reason, wait, server, token, json } } => {
            use flagguard::cli::flags::Change;
            let change = match (by, percent) {
                (Some(step), _) => Change::By(step),
                (None, percent) => Change::To { percent: percent.unwrap_or_default(), expect },
            };
            let args = flagguard::cli::flags::SetRollout { target: target.target(), change, idempotency_key, reason, wait };
            runtime().block_on(flagguard::cli::flags::set_rollout(&args, &server, token.as_deref(), json))
        }
        Command::Flags { command: FlagsCommand::Stale { single_variant_for, unused_for, server, token, json } } => {
            runtime().block_on(flagguard::cli::flags::stale(&server, token.as_deref(), &single_variant_for, &unused_for, json))
        }
        Command::Drift { manifests, environment, config, server, token, json } => {
            let source = match config {
                Some(path) => flagguard::cli::flags::Source::Config(path),
                None => flagguard::cli::flags::Source::Daemon { server, token },
            };
            runtime().block_on(flagguard::cli::manifests::drift(&manifests, environment.as_deref(), &source, json))
        }
        Command::Apply { manifests, environment, wait, server, token, json } => {
            runtime().block_on(flagguard::cli::manifests::apply(&manifests, environment.as_deref(), &server, token.as_deref(), wait, json))
        }
        Command::Approvals { command } => runtime().block_on(async {
            use flagguard::cli::approvals;
            match command {
                ApprovalsCommand::List { all, server: a } => approvals::list(&a.server, a.token.as_deref(), all, a.json).await,
                ApprovalsCommand::Approve { id, reason, server: a } => {
                    approvals::decide(&a.server, a.token.as_deref(), id, "approve", reason.as_deref(), a.json).await
                }
                ApprovalsCommand::Reject { id, reason, server: a } => {
                    approvals::decide(&a.server, a.token.as_deref(), id, "reject", reason.as_deref(), a.json).await
                }
            }
        }),
        Command::Backup { config, out } => backup(config, &out),
        Command::Cluster { command: ClusterCommand::Status { server, token, json } } => {
            runtime().block_on(flagguard::cli::cluster::status(&server, token.as_deref(), json))
        }
        Command::Store { command: StoreCommand::Migrate { from, to } } => migrate(&from, &to),
        Command::Simulate { runs, seed, horizon, family_series, family_runs } => {
            print!("{}", flagguard::cli::simulate::report(runs, seed, horizon.as_secs(), family_series, family_runs));
            0
        }
        Command::Serve { config, grace, record } => serve(config, grace, record),
        Command::Replay { rules, config, incident_start, recordings } => replay(rules, config, incident_start, recordings),
        Command::Demo { keep, hold } => runtime().block_on(flagguard::cli::demo::run(keep, hold)),
    };
    std::process::exit(code);
}

fn runtime() -> tokio::runtime::Runtime {
    // Building a multi-thread runtime only fails when the OS refuses threads: nothing to do then.
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("the OS must allow creating the runtime's threads")
}

fn replay(rules: PathBuf, config_path: Option<PathBuf>, incident_start: Option<String>, recordings: Vec<PathBuf>) -> i32 {
    let config = match Config::load(config_path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return 64;
        }
    };
    let incident_start = match incident_start.as_deref().map(flagguard::cli::replay::parse_time).transpose() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("--incident-start: {e}");
            return 64;
        }
    };
    match flagguard::cli::replay::replay(&config.file, &rules, &recordings, incident_start) {
        Ok(timeline) => {
            print!("{timeline}");
            0
        }
        Err(e) => {
            eprintln!("replay: {e}");
            1
        }
    }
}

fn migrate(from: &std::path::Path, to: &str) -> i32 {
    if !from.join("flagguard.db").exists() {
        eprintln!("store migrate: no store at {} (give the data directory)", from.join("flagguard.db").display());
        return 1;
    }
    let target = flagguard::store::PgOptions { url: to.to_owned(), op_timeout: Duration::from_secs(60) };
    let copied = flagguard::store::Store::open(from).and_then(|source| source.copy_into(&flagguard::store::Store::open_postgres(&target)?));
    match copied {
        Ok(copied) => {
            for (table, rows) in copied {
                println!("{table}: {rows} rows");
            }
            println!("migrated {} into PostgreSQL; start the replicas with [cluster]", from.display());
            0
        }
        Err(e) => {
            eprintln!("store migrate: {e}");
            1
        }
    }
}

fn backup(config_path: Option<PathBuf>, out: &std::path::Path) -> i32 {
    let config = match Config::load(config_path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return 64;
        }
    };
    let db = config.file.data_dir.join("flagguard.db");
    if !db.exists() {
        eprintln!("backup: no store at {} (check data_dir)", db.display());
        return 1;
    }
    if out.exists() {
        eprintln!("backup: {} exists; give a new file", out.display());
        return 1;
    }
    match flagguard::store::Store::open(&config.file.data_dir).and_then(|store| store.backup(out)) {
        Ok(()) => {
            println!("backed up {} to {}", config.file.data_dir.join("flagguard.db").display(), out.display());
            0
        }
        Err(e) => {
            eprintln!("backup: {e}");
            1
        }
    }
}

fn serve(config_path: Option<PathBuf>, grace: Duration, record: Option<PathBuf>) -> i32 {
    let config = match Config::load(config_path.as_deref()) {
        Ok(c) => c,
        Err(e @ (ConfigError::Load(_) | ConfigError::Invalid(_))) => {
            eprintln!("{e}");
            return 64;
        }
    };
    let mut config = config;
    if record.is_some() {
        config.file.record.dir = record;
    }
    runtime().block_on(async move {
        // Built inside the runtime: the OTLP/gRPC exporters need it.
        let exporters = flagguard::otel::exporters().unwrap_or_else(|e| {
            eprintln!("flagguard: its own telemetry is off: {e}");
            flagguard::otel::Exporters::default()
        });
        flagguard::otel::init_logging(config.file.log.format, &config.file.log.level, &exporters);
        let app = match App::build(config, Arc::new(SystemClock)).await {
            Ok(app) => app,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                eprintln!("flagguard: {e}");
                return match e {
                    flagguard::app::AppError::Rules(_) => 64,
                    _ => 70,
                };
            }
        };
        let addrs = app.addrs();
        if let Err(e) = flagguard::otel::check(&[addrs.grpc, addrs.http]) {
            tracing::error!(error = %e, "cannot start");
            eprintln!("flagguard: {e}");
            return 64;
        }
        exporters.observe(&app.metrics());
        if exporters.active() {
            tracing::info!("exporting flagguard's own traces and metrics over OTLP");
        }
        let shutdown = CancellationToken::new();
        let signal = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            signal.cancel();
        });
        app.run(shutdown, grace).await;
        exporters.shutdown();
        0
    })
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
