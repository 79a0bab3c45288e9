//! The Python binding of edgeward: the native module `edgeward._native`, re-exported by
//! the `edgeward` package (see `python/edgeward/`).
//!
//! Thin by design: each method converts its arguments, calls one core function and
//! converts the result. Policy parsing, defaults and validation all live in the core;
//! errors become exceptions in one place (`errors.rs`). Inspection releases the GIL and
//! takes its scratch buffers from the core's pool, so one `Engine` serves every thread.

use pyo3::prelude::*;

mod decision;
mod engine;
mod errors;
mod usage;

/// Every stable error code an `EdgewardError` can carry, with the name of the class it
/// is raised as.
#[pyfunction]
fn error_codes() -> Vec<(&'static str, &'static str)> {
    errors::all_codes()
        .into_iter()
        .map(|c| (c, errors::class_name_of(c)))
        .collect()
}

/// The native module.
#[pymodule(gil_used = false)]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // For bench.py, which refuses to time a debug build.
    m.setattr("_debug_build", cfg!(debug_assertions))?;
    m.add_class::<engine::PyEngine>()?;
    m.add_class::<decision::PyDecision>()?;
    m.add_class::<decision::PyMatch>()?;
    m.add_class::<decision::PyCost>()?;
    m.add_class::<decision::PyRewrite>()?;
    m.add_class::<decision::PyReservation>()?;
    m.add_class::<usage::PyUsage>()?;
    m.add_class::<usage::PyUsageTracker>()?;
    m.add_function(wrap_pyfunction!(error_codes, m)?)?;
    errors::register(m)?;
    Ok(())
}
