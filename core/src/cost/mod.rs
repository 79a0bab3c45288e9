//! What a request costs: the tokens it will use before inference, and the tokens it did use
//! after the response.
//!
//! LLM jacking does not break anything: it floods an endpoint with valid, expensive requests.
//! A guard can only refuse those if it knows, before any GPU time is spent, how many prompt
//! tokens a request carries and how many output tokens it may ask for. [`tokens`] answers the
//! first question cheaply (a byte-class estimate with a measured error interval) and exactly
//! when it matters (tiktoken-rs behind the `tiktoken` feature), and prices the parts of a chat
//! request that are not text (per-message overhead, images). [`params`] holds the parameter
//! policy and the model table. After the response, [`usage`] reads what the server actually
//! spent (from a JSON body or a server-sent-events stream) so a reservation can be settled
//! against real numbers instead of the estimate.

pub mod params;
pub mod rewrite;
pub(crate) mod stage;
pub mod tokens;
pub mod usage;
