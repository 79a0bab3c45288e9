//! What a request will cost before inference starts, in tokens and money.
//!
//! LLM jacking does not break anything: it floods an endpoint with valid, expensive requests.
//! A guard can only refuse those if it knows, before any GPU time is spent, how many prompt
//! tokens a request carries and how many output tokens it may ask for. [`tokens`] answers the
//! first question cheaply (a byte-class estimate with a measured error interval) and exactly
//! when it matters (tiktoken-rs behind the `tiktoken` feature), and prices the parts of a chat
//! request that are not text (per-message overhead, images).

pub mod tokens;
