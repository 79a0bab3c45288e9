//! Edgeward: an in-process guard for AI inference endpoints.
#![forbid(unsafe_code)]

pub mod field;
pub mod parse;
pub mod transform;

pub use field::{
    Field, FieldFlags, FieldKind, FieldKindSet, FieldSink, Finding, ParseLimits, Role,
};
