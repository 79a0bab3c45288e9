//! The Node binding of edgeward: the native addon behind the `edgeward` npm package
//! (see `lib/`, which adds the connect/Express and `node:http` middleware).
//!
//! Thin by design: each method converts its arguments, calls one core function and
//! converts the result. Policy parsing, defaults and validation all live in the core;
//! errors become JS exceptions in one place (`errors.rs`). `inspectAsync` and
//! `settleAsync` run the core on the libuv thread pool (napi `AsyncTask`), taking their
//! scratch buffers from the engine's pool, so one engine serves every request.

#![deny(clippy::all)]

use napi_derive::napi;

mod decision;
mod engine;
mod errors;
mod flat;
mod usage;

pub use decision::{
    Cost, Decision, LimitOutcome, Match, Principal, Reservation, Rewrite, StoreFailure,
};
pub use engine::{CompactTask, Engine, InspectRequest, InspectTask, OwnedRequest, SettleTask};
pub use flat::Flat;
pub use usage::{Usage, UsageInput, UsageTracker};

/// Every stable error code an error thrown by this module can carry.
#[napi]
pub fn error_codes() -> Vec<&'static str> {
    errors::all_codes()
}

/// How many common-decision templates the addon holds (for the tests).
#[napi(js_name = "_templates", skip_typescript)]
pub fn templates() -> u32 {
    flat::templates()
}

/// The addon's version (the workspace's).
#[napi]
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Whether the addon is a debug build (`bench.mjs` refuses to time one).
#[napi]
pub const DEBUG_BUILD: bool = cfg!(debug_assertions);
