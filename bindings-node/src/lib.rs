//! The Node binding of edgeward: the native addon behind the `edgeward` npm package
//! (see `lib/`, which adds the connect/Express and `node:http` middleware).
//!
//! Thin by design: each method converts its arguments, calls one core function and
//! converts the result. Policy parsing, defaults and validation all live in the core;
//! errors become JS exceptions in one place (`errors.rs`). `inspectAsync` and
//! `settleAsync` run the core on the libuv thread pool (napi `AsyncTask`), taking their
//! scratch buffers from the engine's pool, so one engine serves every request.

#![deny(clippy::all)]

use napi::bindgen_prelude::*;
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

/// Forgets the decisions `lib/decision.js` held by these ids (their handles were
/// garbage collected).
#[napi(js_name = "_release", skip_typescript)]
pub fn release(env: Env, ids: Unknown<'_>) -> Result<()> {
    Float64ArraySlice::from_unknown(ids)
        .map(|ids| flat::release(&ids))
        .map_err(|e| errors::wrong_type("ids", "a Float64Array")(e).into_js(&env))
}

/// How many decisions are held by id (for the tests).
#[napi(js_name = "_kept", skip_typescript)]
pub fn kept() -> u32 {
    flat::kept()
}

/// The addon's version (the workspace's).
#[napi]
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Whether the addon is a debug build (`bench.mjs` refuses to time one).
#[napi]
pub const DEBUG_BUILD: bool = cfg!(debug_assertions);
