//! The one place errors become JavaScript exceptions.
//!
//! Every error the addon throws is a JS `Error` (a `TypeError` for arguments of the wrong
//! type) with the core's stable `code` string, so hosts match on `err.code` and never on
//! messages. Policy errors also carry where they were found (`file`, `line`, `column`,
//! `path`, `ruleId`).

use napi::bindgen_prelude::*;

use edgeward::limits::StoreError;
use edgeward::{BundleError, CompileError, RewriteError, UsageError};

/// The code of arguments the binding refuses: a value of the wrong type, an IP address
/// that is not one, a finished usage tracker, a negative usage count.
pub(crate) const ARGUMENT: &str = "node.argument";
/// The code of a part a decision does not have (usage of a route that serves no known
/// format).
pub(crate) const NOT_FOUND: &str = "node.not_found";

/// The code of a decision handle the addon never issued (numbers that name no template
/// of a common decision, which only the private entry points can be given).
pub(crate) const RELEASED: &str = "node.released";

/// A binding result: `napi::Result` is for errors already in their JS form.
pub(crate) type Res<T> = std::result::Result<T, Fail>;

/// An error on its way to JavaScript: its code, message, whether it is a `TypeError`,
/// and for policy errors where it was found.
#[derive(Debug)]
pub struct Fail {
    code: &'static str,
    message: String,
    type_error: bool,
    location: Option<(edgeward::SourceLocation, Option<u32>)>,
}

impl Fail {
    fn new(code: &'static str, message: impl Into<String>) -> Fail {
        Fail {
            code,
            message: message.into(),
            type_error: false,
            location: None,
        }
    }

    /// An argument of the wrong JavaScript type: a `TypeError` with code `node.argument`.
    pub(crate) fn type_error(message: impl Into<String>) -> Fail {
        Fail {
            type_error: true,
            ..Fail::new(ARGUMENT, message)
        }
    }

    /// An argument of the right type with a value the binding refuses.
    pub(crate) fn argument(message: impl Into<String>) -> Fail {
        Fail::new(ARGUMENT, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Fail {
        Fail::new(NOT_FOUND, message)
    }

    pub(crate) fn released(message: impl Into<String>) -> Fail {
        Fail::new(RELEASED, message)
    }

    /// The JS error object, built on the JS thread.
    pub(crate) fn into_js(self, env: &Env) -> Error {
        match self.build(env) {
            Ok(e) => e,
            // Creating the object failed (out of memory, a pending exception): napi still
            // throws a plain error with the code.
            Err(e) => e,
        }
    }

    fn build(self, env: &Env) -> Result<Error> {
        let e = Error::new(self.code.to_string(), self.message);
        let value = if self.type_error {
            JsTypeError::from(e).into_unknown(*env)
        } else {
            JsError::from(e).into_unknown(*env)
        };
        if let Some((loc, rule)) = self.location {
            let mut obj = Object::from_raw(env.raw(), value.raw());
            obj.set("file", loc.file)?;
            obj.set("line", loc.line)?;
            obj.set("column", loc.column)?;
            obj.set("path", loc.path)?;
            obj.set("ruleId", rule)?;
        }
        Ok(Error::from(value))
    }
}

impl From<CompileError> for Fail {
    fn from(e: CompileError) -> Fail {
        Fail {
            location: Some((e.location().clone(), e.rule_id())),
            ..Fail::new(e.code(), e.to_string())
        }
    }
}

impl From<BundleError> for Fail {
    fn from(e: BundleError) -> Fail {
        Fail::new(e.code(), e.to_string())
    }
}

impl From<UsageError> for Fail {
    fn from(e: UsageError) -> Fail {
        Fail::new(e.code(), e.to_string())
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Fail {
        Fail::new(e.code(), e.to_string())
    }
}

impl From<RewriteError> for Fail {
    fn from(e: RewriteError) -> Fail {
        Fail::new(e.code(), e.to_string())
    }
}

/// A conversion napi refused (a value of another type than the parameter's): a
/// `TypeError` with our code rather than napi's generic `InvalidArg`.
pub(crate) fn wrong_type<'a>(what: &'a str, expected: &'a str) -> impl FnOnce(Error) -> Fail + 'a {
    move |_| Fail::type_error(format!("{what} must be {expected}"))
}

/// Every code an error can carry: the core's and the binding's own.
pub(crate) fn all_codes() -> Vec<&'static str> {
    let mut codes = edgeward::error::all_error_codes();
    codes.extend([ARGUMENT, NOT_FOUND, RELEASED]);
    codes
}
