//! Commands other than `serve`: `check` (validate config and rules, like promtool) and `demo`
//! (a whole rollback on embedded defaults), plus the synthetic traffic the demo drives.

pub mod api;
pub mod approvals;
pub mod check;
pub mod cluster;
pub mod demo;
pub mod flags;
pub mod gate;
pub mod manifests;
pub mod replay;
pub mod simulate;
pub mod traffic;
