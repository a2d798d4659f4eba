//! The syncline sync engine: sans-IO, and generic over the app's data model.
//!
//! A plain struct with no threads, no async, no clock and no randomness of its own (a seeded generator is passed
//! in). Drivers — the browser runtime, the simulation, tests — translate real events into [`Input`]s and carry out
//! the [`Output`]s, in one loop shape (as in str0m):
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
//! Every policy of syncline lives here, each part in its own file: the query cache with freshness, deltas and
//! cascading invalidation (`queries`), the transport — socket, long-poll fallback, heartbeat, backoff — and its
//! streams (`transport`), the outbox with ordering and conflict policies (`outbox`), the other tabs and leadership
//! (`tabs`), the status shown to the user (`status`), scheduling functions (`policy`) and named timers (`timers`).
//! What the data *is* — queries, their data, writes, changes — the app tells through [`Model`].

mod cache;
pub mod collections;
pub mod config;
mod engine;
pub mod metrics;
mod model;
mod outbox;
mod policy;
mod queries;
mod status;
mod tabs;
mod timers;
mod transport;
pub mod types;

pub use config::{BackgroundMode, Endpoints, EngineConfig, InjectedBug, Preferences};
pub use engine::{Engine, SESSION_ENDED_CLOSE_CODE};
pub use metrics::{HISTORY_SPAN_MS, HISTORY_STEP_MS, Metrics, MetricsPoint};
pub use model::{Applied, Model, QueryOptions, fields_changed};
pub use timers::Timer;
pub use types::*;
