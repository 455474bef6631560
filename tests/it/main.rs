//! flagguard's integration tests: one binary, one module per capability. Servers bind port 0;
//! tests wait by polling a condition under a deadline, never by fixed sleeps.

mod actions;
mod alerts;
mod api;
mod audit;
mod auth;
mod check_cli;
mod conditions;
mod contract;
mod dashboard;
mod deploy;
mod docs;
mod extraction;
mod fuzz_replay;
mod gates;
mod kill_path;
mod node_sdk;
mod otlp_errors;
mod own_telemetry;
mod python_sdk;
mod replay;
mod restart;
mod rollouts;
mod security;
mod support;
mod unleash;
mod webdriver;
