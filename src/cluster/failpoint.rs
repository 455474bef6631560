//! Failpoints for the fault-injection tests: `FLAGGUARD_FAILPOINTS=after_decision,before_call`
//! makes the process abort (no cleanup, like `kill -9`) the first time it reaches a named
//! point of a kill. Compiled into debug builds only: a release binary ignores the variable.

/// The points of a kill where a test may crash the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// Right after a kill's decision was committed.
    AfterDecision,
    /// Right before the flag-system call (after the claim).
    BeforeCall,
    /// After the flag system answered 2xx, before the outcome is written.
    AfterCall,
}

impl Point {
    pub fn name(self) -> &'static str {
        match self {
            Point::AfterDecision => "after_decision",
            Point::BeforeCall => "before_call",
            Point::AfterCall => "after_call",
        }
    }
}

/// Aborts the process if `point` is armed (debug builds).
pub fn hit(point: Point) {
    if cfg!(debug_assertions) && armed(point) {
        eprintln!("{{\"level\":\"ERROR\",\"message\":\"failpoint reached: aborting\",\"failpoint\":\"{}\"}}", point.name());
        std::process::abort();
    }
}

fn armed(point: Point) -> bool {
    static ARMED: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    ARMED
        .get_or_init(|| std::env::var("FLAGGUARD_FAILPOINTS").map(|v| v.split(',').map(|s| s.trim().to_owned()).collect()).unwrap_or_default())
        .iter()
        .any(|n| n == point.name())
}
