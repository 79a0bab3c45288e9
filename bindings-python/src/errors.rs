//! The one place errors become Python exceptions.
//!
//! Every exception is an `EdgewardError` with the core's stable `.code` string; each error
//! family has its own subclass so callers can catch what they can handle (a policy that
//! does not compile at start-up, a response without usage at settlement). The classes are
//! made once per interpreter with `type(...)`, so the argument family can also be a
//! `ValueError` and the not-found family a `LookupError`, as Python code expects.

use pyo3::exceptions::{PyException, PyLookupError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

use edgeward::limits::StoreError;
use edgeward::{BundleError, CompileError, RewriteError, UsageError};

/// The code of arguments the binding refuses (an IP address that is not one, a finished
/// usage tracker, a usage dict with a negative count).
pub(crate) const ARGUMENT: &str = "python.argument";
/// The code of a part a decision does not have (usage of a route that serves no known
/// format).
pub(crate) const NOT_FOUND: &str = "python.not_found";

/// An exception family: its class name, extra base class, and docstring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    Policy,
    Bundle,
    Usage,
    Store,
    Rewrite,
    Argument,
    NotFound,
}

impl Family {
    const ALL: [Family; 7] = [
        Family::Policy,
        Family::Bundle,
        Family::Usage,
        Family::Store,
        Family::Rewrite,
        Family::Argument,
        Family::NotFound,
    ];

    fn name(self) -> &'static str {
        match self {
            Family::Policy => "PolicyError",
            Family::Bundle => "BundleError",
            Family::Usage => "UsageError",
            Family::Store => "StoreError",
            Family::Rewrite => "RewriteError",
            Family::Argument => "ArgumentError",
            Family::NotFound => "NotFoundError",
        }
    }

    fn doc(self) -> &'static str {
        match self {
            Family::Policy => {
                "A policy or rule did not compile (codes `policy.*`, `rule.*`); `.file`, \
                 `.line`, `.column`, `.path` and `.rule_id` say where."
            }
            Family::Bundle => "A compiled bundle could not be loaded (codes `bundle.*`).",
            Family::Usage => "A response body holds no readable usage (codes `usage.*`).",
            Family::Store => "The limit store failed while settling (codes `store.*`).",
            Family::Rewrite => {
                "The request body cannot carry the decision's parameter changes (codes \
                 `rewrite.*`): refuse the request rather than forward it unchanged."
            }
            Family::Argument => "An argument was malformed (code `python.argument`).",
            Family::NotFound => {
                "The decision has no such part, e.g. no usage format on its route (code \
                 `python.not_found`)."
            }
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

static BASE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static CLASSES: [PyOnceLock<Py<PyType>>; 7] = [
    PyOnceLock::new(),
    PyOnceLock::new(),
    PyOnceLock::new(),
    PyOnceLock::new(),
    PyOnceLock::new(),
    PyOnceLock::new(),
    PyOnceLock::new(),
];

fn make_type<'py>(
    py: Python<'py>,
    name: &str,
    bases: Bound<'py, PyTuple>,
    doc: &str,
    code: &str,
) -> PyResult<Py<PyType>> {
    let ns = PyDict::new(py);
    ns.set_item("__doc__", doc)?;
    ns.set_item("__module__", "edgeward")?;
    // The class attribute is the fallback for instances made by hand; raised ones carry
    // their own code.
    ns.set_item("code", code)?;
    let t = py.get_type::<PyType>().call1((name, bases, ns))?;
    Ok(t.cast_into::<PyType>()?.unbind())
}

fn base(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    BASE.get_or_try_init(py, || {
        make_type(
            py,
            "EdgewardError",
            PyTuple::new(py, [py.get_type::<PyException>()])?,
            "Base of every edgeward error; `.code` is the stable code string.",
            "edgeward.error",
        )
    })
    .map(|t| t.bind(py))
}

fn class(py: Python<'_>, f: Family) -> PyResult<&Bound<'_, PyType>> {
    CLASSES[f.index()]
        .get_or_try_init(py, || {
            let base = base(py)?.clone();
            let bases = match f {
                Family::Argument => PyTuple::new(
                    py,
                    [base.into_any(), py.get_type::<PyValueError>().into_any()],
                )?,
                Family::NotFound => PyTuple::new(
                    py,
                    [base.into_any(), py.get_type::<PyLookupError>().into_any()],
                )?,
                _ => PyTuple::new(py, [base])?,
            };
            let code = match f {
                Family::Argument => ARGUMENT,
                Family::NotFound => NOT_FOUND,
                _ => "edgeward.error",
            };
            make_type(py, f.name(), bases, f.doc(), code)
        })
        .map(|t| t.bind(py))
}

/// Adds the exception classes to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("EdgewardError", base(py)?)?;
    for f in Family::ALL {
        m.add(f.name(), class(py, f)?)?;
    }
    Ok(())
}

/// An error on its way to Python: its family, stable code, message, and for policy
/// errors where it was found.
#[derive(Debug)]
pub(crate) struct Fail {
    family: Family,
    code: &'static str,
    message: String,
    location: Option<(edgeward::SourceLocation, Option<u32>)>,
}

impl Fail {
    pub(crate) fn new(family: Family, code: &'static str, message: impl Into<String>) -> Fail {
        Fail {
            family,
            code,
            message: message.into(),
            location: None,
        }
    }

    pub(crate) fn argument(message: impl Into<String>) -> Fail {
        Fail::new(Family::Argument, ARGUMENT, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Fail {
        Fail::new(Family::NotFound, NOT_FOUND, message)
    }

    fn into_pyerr(self, py: Python<'_>) -> PyResult<PyErr> {
        let cls = class(py, self.family)?;
        let e = cls.call1((self.message,))?;
        e.setattr("code", self.code)?;
        if let Some((loc, rule)) = self.location {
            e.setattr("file", loc.file)?;
            e.setattr("line", loc.line)?;
            e.setattr("column", loc.column)?;
            e.setattr("path", loc.path)?;
            e.setattr("rule_id", rule)?;
        }
        Ok(PyErr::from_value(e))
    }
}

impl From<Fail> for PyErr {
    fn from(f: Fail) -> PyErr {
        Python::attach(|py| f.into_pyerr(py).unwrap_or_else(|e| e))
    }
}

impl From<CompileError> for Fail {
    fn from(e: CompileError) -> Fail {
        Fail {
            family: Family::Policy,
            code: e.code(),
            message: e.to_string(),
            location: Some((e.location().clone(), e.rule_id())),
        }
    }
}

impl From<BundleError> for Fail {
    fn from(e: BundleError) -> Fail {
        Fail::new(Family::Bundle, e.code(), e.to_string())
    }
}

impl From<UsageError> for Fail {
    fn from(e: UsageError) -> Fail {
        Fail::new(Family::Usage, e.code(), e.to_string())
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Fail {
        Fail::new(Family::Store, e.code(), e.to_string())
    }
}

impl From<RewriteError> for Fail {
    fn from(e: RewriteError) -> Fail {
        Fail::new(Family::Rewrite, e.code(), e.to_string())
    }
}

/// Every code an `EdgewardError` can carry: the core's and the binding's own.
pub(crate) fn all_codes() -> Vec<&'static str> {
    let mut codes = edgeward::error::all_error_codes();
    codes.extend([ARGUMENT, NOT_FOUND]);
    codes
}

/// The class a code is raised with, by its prefix (for tests that check every code has
/// one).
pub(crate) fn class_name_of(code: &str) -> &'static str {
    let family = match code.split('.').next().unwrap_or("") {
        "policy" | "rule" => Family::Policy,
        "bundle" => Family::Bundle,
        "usage" => Family::Usage,
        "store" => Family::Store,
        "rewrite" => Family::Rewrite,
        _ if code == NOT_FOUND => Family::NotFound,
        _ => Family::Argument,
    };
    family.name()
}
