//! The syncline sync engine: sans-IO.
//!
//! A plain struct with no threads, no async, no clock and no randomness of its own (a seeded generator is
//! passed in). Drivers — the browser runtime, the simulation, tests — translate real events into [`Input`]s and
//! carry out the [`Output`]s, in one loop shape (as in str0m):
//!
//! ```text
//! engine.handle_input(now, input);          // or engine.handle_timeout(now) at the deadline
//! loop {
//!     match engine.poll_output() {
//!         Output::Timeout(deadline) => { wake me at deadline; break }
//!         other => carry it out,
//!     }
//! }
//! ```
//!
//! Every policy of syncline lives here: freshness and stale times (`Engine::freshness`), the polling schedule
//! and backoff (`policy`), the transport state machine (socket ↔ long-poll fallback, heartbeat, hidden grace),
//! ramp-up after recovery, deltas and cascade invalidation (`apply` + `Engine::apply_changes`), the outbox with
//! its ordering and conflict policies, and leader/follower roles between tabs.

pub mod apply;
pub mod config;
mod engine;
pub mod metrics;
pub mod policy;
pub mod types;

pub use config::{BackgroundMode, EngineConfig, InjectedBug, Preferences};
pub use engine::Engine;
pub use metrics::{HISTORY_SPAN_MS, HISTORY_STEP_MS, Metrics, MetricsPoint};
pub use types::*;
