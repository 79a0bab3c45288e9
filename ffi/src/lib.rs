//! The C ABI of edgeward (`include/edgeward.h`): build an engine from a policy or bundle,
//! inspect requests given as borrowed byte slices, read the decision, and settle usage
//! from a response body or a streamed response.
//!
//! This is the only crate of the workspace with `unsafe`: each use dereferences a pointer
//! the caller passed, under the contract written in the header's top comment (and in
//! README.md), and says why that is sound in a `// SAFETY:` comment. Every entry point runs
//! inside a panic boundary, so a bug becomes [`ew_status::EW_ERR_PANIC`] rather than an
//! unwind into C, and checks its pointers and lengths before use. Out-parameters are
//! written only on success. The last error of each thread is kept for
//! [`ew_last_error`] and [`ew_last_error_code`].
//!
//! Errors map to statuses in one place: `Fail` and its `From` impls.

#![allow(non_camel_case_types)]

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use edgeward::limits::{Settled, StoreError};
use edgeward::{
    BundleError, CompileError, Decision, Engine, Policy, Request, RewriteAction, Scratch, Usage,
    UsageError, UsageSource, UsageTracker,
};

/// What a call did. Stable numbers: new ones are only ever added.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ew_status {
    /// Success; out-parameters were written.
    EW_OK = 0,
    /// A required pointer was NULL (or NULL with a non-zero length).
    EW_ERR_NULL = 1,
    /// An argument was out of range or malformed (an index, an IP address, a finished
    /// tracker).
    EW_ERR_ARGUMENT = 2,
    /// Text that must be UTF-8 was not.
    EW_ERR_UTF8 = 3,
    /// The policy did not compile (`ew_last_error_code`: `policy.*`, `rule.*`, `io.*`).
    EW_ERR_POLICY = 4,
    /// The bundle could not be loaded (`bundle.*`).
    EW_ERR_BUNDLE = 5,
    /// The limit store failed while settling (`store.*`).
    EW_ERR_STORE = 6,
    /// A response body held no readable usage (`usage.*`).
    EW_ERR_USAGE = 7,
    /// The decision has no such part (no cost, no reservation, not an inference route).
    EW_ERR_NOT_FOUND = 8,
    /// A bug inside edgeward was caught at the boundary; the message says where.
    EW_ERR_PANIC = 9,
    /// The request body cannot carry the decision's parameter changes (`rewrite.*`):
    /// refuse the request rather than forward it unchanged.
    EW_ERR_REWRITE = 10,
}

use ew_status::*;

/// Borrowed input bytes: `ptr` may be NULL only when `len` is 0.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ew_bytes {
    /// The first byte.
    pub ptr: *const u8,
    /// How many bytes.
    pub len: usize,
}

/// Borrowed output text, UTF-8, *not* NUL-terminated; valid as long as the object it came
/// from (engine, decision) is alive and unchanged.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ew_str {
    /// The first byte (never NULL; a dangling but non-NULL pointer when `len` is 0).
    pub ptr: *const c_char,
    /// How many bytes.
    pub len: usize,
}

impl ew_str {
    fn of(s: &str) -> ew_str {
        ew_str {
            ptr: s.as_ptr().cast(),
            len: s.len(),
        }
    }
}

/// One request header.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ew_header {
    /// The name, as received.
    pub name: ew_bytes,
    /// The value, as received.
    pub value: ew_bytes,
}

/// A request to inspect. Everything is borrowed for the duration of the call only.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ew_request {
    /// The method (`POST`).
    pub method: ew_bytes,
    /// The raw request target: path and query, percent-encoding kept.
    pub uri: ew_bytes,
    /// The headers, in order; may be NULL when `headers_len` is 0.
    pub headers: *const ew_header,
    /// How many headers.
    pub headers_len: usize,
    /// The body (possibly empty).
    pub body: ew_bytes,
    /// The peer address as text (`203.0.113.7`, `2001:db8::1`); empty for none.
    pub peer: ew_bytes,
    /// A caller identity the host has already verified (mTLS, a session), used as the
    /// principal when the policy trusts host identities; empty for none. UTF-8.
    pub identity: ew_bytes,
}

/// A rule match.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ew_match {
    /// The rule's id.
    pub rule_id: u32,
    /// Its anomaly score.
    pub score: u32,
    /// The rule's name.
    pub name: ew_str,
    /// Its category (`sql_injection`, `prompt_injection`, ...).
    pub category: ew_str,
    /// Where it matched (`json:/messages/0/content`, `query:id`, ...).
    pub location: ew_str,
}

/// The cost estimate of an inference request.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ew_cost {
    /// Prompt tokens (estimated or exact).
    pub prompt_tokens: u64,
    /// Output tokens reserved (maximum output times `n`).
    pub output_tokens_reserved: u64,
    /// The estimate in micro-dollars.
    pub micro_usd: u64,
    /// Whether `prompt_tokens` was counted exactly.
    pub exact: bool,
    /// The model-table row that priced it; empty when none did.
    pub model: ew_str,
}

/// What to do with a parameter before forwarding.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ew_rewrite_action {
    /// Set it to `value` (a clamped output limit).
    EW_REWRITE_SET = 0,
    /// Set it to `false`.
    EW_REWRITE_SET_FALSE = 1,
    /// Set it to `true`.
    EW_REWRITE_SET_TRUE = 2,
    /// Remove it.
    EW_REWRITE_REMOVE = 3,
}

/// A parameter change the host must apply to the body it forwards.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ew_rewrite {
    /// The parameter's name in the API (`max_tokens`, `logprobs`, ...).
    pub param: ew_str,
    /// What to do.
    pub action: ew_rewrite_action,
    /// The value, for `EW_REWRITE_SET`.
    pub value: u64,
}

/// Where usage numbers came from.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ew_usage_source {
    /// The server reported them.
    EW_USAGE_REPORTED = 0,
    /// Counted from the streamed text.
    EW_USAGE_COUNTED = 1,
    /// What was seen of an incomplete stream (a lower bound).
    EW_USAGE_PARTIAL = 2,
}

/// What a response used.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ew_usage {
    /// Prompt tokens, cached ones included.
    pub prompt_tokens: u64,
    /// Prompt tokens read from the provider's cache.
    pub cached_prompt_tokens: u64,
    /// Prompt tokens written to the provider's cache.
    pub cache_creation_tokens: u64,
    /// Output tokens, reasoning included.
    pub output_tokens: u64,
    /// Reasoning tokens.
    pub reasoning_tokens: u64,
    /// Where the numbers came from: an `ew_usage_source` value (an integer here, so a
    /// value C made up is an error, not undefined behaviour).
    pub source: u32,
}

/// The outcome of a settlement.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ew_settled {
    /// Settled now (or nothing needed settling and the usage was counted).
    EW_SETTLED = 0,
    /// Already settled, expired, or never made: nothing changed.
    EW_SETTLE_UNKNOWN = 1,
}

/// An engine: the compiled policy. Thread-safe; reference counted (`ew_engine_clone`).
pub struct ew_engine {
    engine: Engine,
}

// The header promises engines are shared between threads and decisions read from
// several: checked here, not assumed.
const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<ew_engine>();
    shared::<ew_decision>();
};

/// Per-thread buffers for `ew_inspect`. Not thread-safe: one per worker thread.
pub struct ew_scratch {
    scratch: Scratch,
}

/// A decision, owned by the caller until `ew_decision_free`.
pub struct ew_decision {
    d: Decision,
    reason: OnceLock<String>,
    json: OnceLock<String>,
    event: OnceLock<String>,
    reservation: OnceLock<String>,
    refusal: OnceLock<String>,
}

/// A streamed response's usage, fed chunk by chunk. Not thread-safe.
pub struct ew_usage_tracker {
    tracker: Option<UsageTracker>,
}

/// A string edgeward allocated (metrics text), freed with `ew_string_free`.
#[repr(C)]
#[derive(Debug)]
pub struct ew_string {
    /// UTF-8 text, NUL-terminated (the NUL is not counted in `len`).
    pub ptr: *mut c_char,
    /// Bytes before the NUL.
    pub len: usize,
}

// ---------------------------------------------------------------------------------------
// Errors: the one place statuses are made.

/// A failure on its way to C: the status and the message for `ew_last_error`.
struct Fail {
    status: ew_status,
    code: &'static str,
    message: String,
}

impl Fail {
    fn new(status: ew_status, code: &'static str, message: impl Into<String>) -> Fail {
        Fail {
            status,
            code,
            message: message.into(),
        }
    }

    fn null(what: &str) -> Fail {
        Fail::new(EW_ERR_NULL, "ffi.null", format!("{what} is NULL"))
    }

    fn argument(message: impl Into<String>) -> Fail {
        Fail::new(EW_ERR_ARGUMENT, "ffi.argument", message)
    }

    fn not_found(message: impl Into<String>) -> Fail {
        Fail::new(EW_ERR_NOT_FOUND, "ffi.not_found", message)
    }
}

impl From<CompileError> for Fail {
    fn from(e: CompileError) -> Fail {
        Fail::new(EW_ERR_POLICY, e.code(), e.to_string())
    }
}

impl From<BundleError> for Fail {
    fn from(e: BundleError) -> Fail {
        Fail::new(EW_ERR_BUNDLE, e.code(), e.to_string())
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Fail {
        Fail::new(EW_ERR_STORE, e.code(), e.to_string())
    }
}

impl From<edgeward::RewriteError> for Fail {
    fn from(e: edgeward::RewriteError) -> Fail {
        Fail::new(EW_ERR_REWRITE, e.code(), e.to_string())
    }
}

impl From<UsageError> for Fail {
    fn from(e: UsageError) -> Fail {
        Fail::new(EW_ERR_USAGE, e.code(), e.to_string())
    }
}

thread_local! {
    /// The calling thread's last error: code and message, NUL-terminated for C.
    static LAST: RefCell<(CString, CString)> = RefCell::new((CString::default(), CString::default()));
}

fn set_last(code: &str, message: &str) {
    // Interior NULs cannot be in a C string; they never occur in our messages, but a
    // policy path or rule text quoted in one could hold them.
    let clean = |s: &str| CString::new(s.replace('\0', "\\0")).unwrap_or_default();
    // `try_with`: during thread teardown the slot is gone; losing the message beats a
    // panic, which would abort inside an `extern "C"` function.
    let _ = LAST.try_with(|l| *l.borrow_mut() = (clean(code), clean(message)));
}

/// Runs an entry point: catches panics and records failures for `ew_last_error`.
fn boundary(f: impl FnOnce() -> Result<(), Fail>) -> ew_status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => EW_OK,
        Ok(Err(fail)) => {
            set_last(fail.code, &fail.message);
            fail.status
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into());
            set_last("ffi.panic", &format!("internal error (panic): {what}"));
            EW_ERR_PANIC
        }
    }
}

/// Runs an accessor that cannot fail: a panic gives `fallback`.
fn value<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(fallback)
}

// ---------------------------------------------------------------------------------------
// Pointer helpers. Each is the single place a kind of pointer is turned into a reference.

fn bytes<'a>(b: ew_bytes, what: &str) -> Result<&'a [u8], Fail> {
    if b.len == 0 {
        return Ok(&[]);
    }
    if b.ptr.is_null() {
        return Err(Fail::null(what));
    }
    if b.len > isize::MAX as usize {
        return Err(Fail::argument(format!(
            "{what}: length {} is too large",
            b.len
        )));
    }
    // SAFETY: the header's contract: a non-NULL `ptr` points to `len` readable bytes that
    // stay valid and unmodified for the duration of the call; the length fits `isize`.
    Ok(unsafe { std::slice::from_raw_parts(b.ptr, b.len) })
}

fn raw_bytes<'a>(ptr: *const u8, len: usize, what: &str) -> Result<&'a [u8], Fail> {
    bytes(ew_bytes { ptr, len }, what)
}

fn engine<'a>(e: *const ew_engine) -> Result<&'a ew_engine, Fail> {
    // SAFETY: a non-NULL engine pointer came from an `ew_engine_*` constructor and has not
    // been freed (the header's contract); engines are only read through shared references.
    unsafe { e.as_ref() }.ok_or_else(|| Fail::null("engine"))
}

fn decision<'a>(d: *const ew_decision) -> Result<&'a ew_decision, Fail> {
    // SAFETY: a non-NULL decision pointer came from `ew_inspect` and has not been freed;
    // decisions are only read through shared references.
    unsafe { d.as_ref() }.ok_or_else(|| Fail::null("decision"))
}

fn out<'a, T>(p: *mut T, what: &str) -> Result<&'a mut std::mem::MaybeUninit<T>, Fail> {
    if !p.is_null() && !p.is_aligned() {
        return Err(Fail::argument(format!("{what} is not aligned")));
    }
    // SAFETY: a non-NULL out-pointer points to writable memory for one `T` (the header's
    // contract); it is written through `MaybeUninit`, so it need not be initialised.
    unsafe { p.cast::<std::mem::MaybeUninit<T>>().as_mut() }.ok_or_else(|| Fail::null(what))
}

/// Item `index` of a decision's list (headers, matches, rewrites).
fn at<'a, T>(items: &'a [T], index: usize, what: &str) -> Result<&'a T, Fail> {
    items
        .get(index)
        .ok_or_else(|| Fail::argument(format!("{what} index {index} out of range")))
}

fn boxed<T>(v: T) -> *mut T {
    Box::into_raw(Box::new(v))
}

/// Frees what `boxed` made; NULL is a no-op.
fn unbox<T>(p: *mut T) {
    if !p.is_null() {
        // SAFETY: a non-NULL pointer passed to a `_free` function came from `boxed` for
        // this type and is freed once (the header's contract).
        drop(unsafe { Box::from_raw(p) });
    }
}

// ---------------------------------------------------------------------------------------
// Version and errors.

/// The library version (`0.1.0`), NUL-terminated, static.
#[no_mangle]
pub extern "C" fn ew_version() -> *const c_char {
    static VERSION: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(v) => v,
            Err(_) => c"unknown",
        };
    VERSION.as_ptr()
}

/// The calling thread's last error message, NUL-terminated; empty when no call on this
/// thread has failed. Valid until the next failing call on this thread.
#[no_mangle]
pub extern "C" fn ew_last_error() -> *const c_char {
    LAST.try_with(|l| l.borrow().1.as_ptr())
        .unwrap_or(c"".as_ptr())
}

/// The calling thread's last error code (`policy.invalid_value`, `store.timeout`,
/// `ffi.null`, ...), NUL-terminated; empty when none. Valid like `ew_last_error`.
#[no_mangle]
pub extern "C" fn ew_last_error_code() -> *const c_char {
    LAST.try_with(|l| l.borrow().0.as_ptr())
        .unwrap_or(c"".as_ptr())
}

// ---------------------------------------------------------------------------------------
// Engines.

fn new_engine(
    out_engine: *mut *mut ew_engine,
    make: impl FnOnce() -> Result<Engine, Fail>,
) -> ew_status {
    boundary(|| {
        let slot = out(out_engine, "out_engine")?;
        let engine = make()?;
        slot.write(boxed(ew_engine { engine }));
        Ok(())
    })
}

/// Builds an engine from a policy file (YAML or JSON; rule and key files it references are
/// read relative to it). `path` is NUL-terminated UTF-8.
///
/// # Safety
/// Pointers follow the rules of the header's top comment.
#[no_mangle]
pub unsafe extern "C" fn ew_engine_from_policy_file(
    path: *const c_char,
    out_engine: *mut *mut ew_engine,
) -> ew_status {
    // SAFETY: the same contract, passed on unchanged.
    unsafe { ew_engine_from_policy_file_with(path, 0, out_engine) }
}

/// [`ew_engine_from_policy_file_with`] flag: refuse a policy whose limits are counted in a
/// network store (`spec.store.redis`). Every store call is a blocking round trip, which an
/// event-loop host (nginx: one thread serving thousands of connections) must never make;
/// the policy is refused before any connection is opened, with status `EW_ERR_POLICY` and
/// code `ffi.blocking_store`.
pub const EW_ENGINE_NO_BLOCKING_STORE: u32 = 1;

/// [`ew_engine_from_policy_file`] with `flags` (a bitwise OR of `EW_ENGINE_*` constants; 0
/// for none). Unknown flags are refused (`EW_ERR_ARGUMENT`), so a host built against a newer
/// header never gets a check silently skipped.
///
/// # Safety
/// Pointers follow the rules of the header's top comment.
#[no_mangle]
pub unsafe extern "C" fn ew_engine_from_policy_file_with(
    path: *const c_char,
    flags: u32,
    out_engine: *mut *mut ew_engine,
) -> ew_status {
    new_engine(out_engine, || {
        if flags & !EW_ENGINE_NO_BLOCKING_STORE != 0 {
            return Err(Fail::argument(format!("unknown engine flags {flags:#x}")));
        }
        if path.is_null() {
            return Err(Fail::null("path"));
        }
        // SAFETY: a non-NULL `path` is a NUL-terminated string valid for the call.
        let path = unsafe { CStr::from_ptr(path) };
        let path = path
            .to_str()
            .map_err(|_| Fail::new(EW_ERR_UTF8, "ffi.utf8", "path is not UTF-8"))?;
        let policy = Policy::from_file(path)?;
        let redis = policy
            .document
            .spec
            .store
            .as_ref()
            .is_some_and(|s| s.redis.is_some());
        if flags & EW_ENGINE_NO_BLOCKING_STORE != 0 && redis {
            return Err(Fail::new(
                EW_ERR_POLICY,
                "ffi.blocking_store",
                "spec.store.redis: this host runs an event loop that a Redis round trip \
                 would block, so limits must be counted in process (remove spec.store)",
            ));
        }
        Ok(Engine::new(&policy)?)
    })
}

/// Builds an engine from policy text (YAML or JSON, UTF-8) that references no files.
///
/// # Safety
/// Pointers follow the rules of the header's top comment.
#[no_mangle]
pub unsafe extern "C" fn ew_engine_from_policy(
    text: *const u8,
    len: usize,
    out_engine: *mut *mut ew_engine,
) -> ew_status {
    new_engine(out_engine, || {
        let text = std::str::from_utf8(raw_bytes(text, len, "text")?)
            .map_err(|e| Fail::new(EW_ERR_UTF8, "ffi.utf8", format!("policy text: {e}")))?;
        Ok(Engine::new(&Policy::from_text(text)?)?)
    })
}

/// Builds an engine from a compiled bundle (`edgeward compile -o BUNDLE`).
///
/// # Safety
/// Pointers follow the rules of the header's top comment.
#[no_mangle]
pub unsafe extern "C" fn ew_engine_from_bundle(
    bundle: *const u8,
    len: usize,
    out_engine: *mut *mut ew_engine,
) -> ew_status {
    new_engine(out_engine, || {
        Ok(Engine::from_bundle(raw_bytes(bundle, len, "bundle")?)?)
    })
}

/// Builds an engine from the embedded default policy.
///
/// # Safety
/// Pointers follow the rules of the header's top comment.
#[no_mangle]
pub unsafe extern "C" fn ew_engine_default(out_engine: *mut *mut ew_engine) -> ew_status {
    new_engine(out_engine, || Ok(Engine::new(&Policy::default_policy())?))
}

/// Another reference to the same engine (compiled once, shared); free each with
/// `ew_engine_free`. NULL for NULL.
///
/// # Safety
/// Pointers follow the rules of the header's top comment.
#[no_mangle]
pub unsafe extern "C" fn ew_engine_clone(e: *const ew_engine) -> *mut ew_engine {
    value(std::ptr::null_mut(), || match engine(e) {
        Ok(e) => boxed(ew_engine {
            engine: e.engine.clone(),
        }),
        Err(_) => std::ptr::null_mut(),
    })
}

/// Releases a reference to an engine; the engine goes when its last reference and its
/// last scratch are gone. NULL is a no-op.
///
/// # Safety
/// Pointers follow the rules of the header's top comment.
#[no_mangle]
pub unsafe extern "C" fn ew_engine_free(e: *mut ew_engine) {
    value((), || unbox(e))
}

/// The engine's metrics in the Prometheus text format, for a `/metrics` endpoint. Free the
/// string with `ew_string_free`.
///
/// # Safety
/// Pointers follow the rules of the header's top comment.
#[no_mangle]
pub unsafe extern "C" fn ew_engine_metrics(
    e: *const ew_engine,
    out_text: *mut ew_string,
) -> ew_status {
    boundary(|| {
        let e = engine(e)?;
        let slot = out(out_text, "out_text")?;
        slot.write(owned(e.engine.metrics_text()));
        Ok(())
    })
}

fn owned(s: String) -> ew_string {
    let c = CString::new(s.replace('\0', "")).unwrap_or_default();
    let len = c.as_bytes().len();
    ew_string {
        ptr: c.into_raw(),
        len,
    }
}

/// Frees a string edgeward returned. A NULL `ptr` is a no-op.
///
/// # Safety
/// Pointers follow the rules of the header's top comment.
#[no_mangle]
pub unsafe extern "C" fn ew_string_free(s: ew_string) {
    value((), || {
        if !s.ptr.is_null() {
            // SAFETY: a non-NULL `ptr` came from `CString::into_raw` in `owned` and is freed
            // once (the header's contract).
            drop(unsafe { CString::from_raw(s.ptr) });
        }
    })
}

// ---------------------------------------------------------------------------------------
// Inspection.

/// Per-thread buffers for `ew_inspect` on `e` (the engine stays alive while the scratch
/// lives).
///
/// # Safety
/// Pointers follow the rules of the header's top comment.
#[no_mangle]
pub unsafe extern "C" fn ew_scratch_new(
    e: *const ew_engine,
    out_scratch: *mut *mut ew_scratch,
) -> ew_status {
    boundary(|| {
        let e = engine(e)?;
        let slot = out(out_scratch, "out_scratch")?;
        slot.write(boxed(ew_scratch {
            scratch: e.engine.new_scratch(),
        }));
        Ok(())
    })
}

/// Frees a scratch. NULL is a no-op.
///
/// # Safety
/// Pointers follow the rules of the header's top comment.
#[no_mangle]
pub unsafe extern "C" fn ew_scratch_free(s: *mut ew_scratch) {
    value((), || unbox(s))
}

/// Headers converted without copying their bytes; most requests fit on the stack.
const STACK_HEADERS: usize = 64;

/// Inspects a request. `scratch` may be NULL (a pooled one is used, at the cost of a
/// lock); with one, it must be used by one thread at a time. On success `*out_decision`
/// owns a decision to free with `ew_decision_free`. Inspection itself never fails on
/// request content: malformed bodies are findings in the decision.
///
/// # Safety
/// Pointers follow the rules of the header's top comment.
#[no_mangle]
pub unsafe extern "C" fn ew_inspect(
    e: *const ew_engine,
    scratch: *mut ew_scratch,
    req: *const ew_request,
    out_decision: *mut *mut ew_decision,
) -> ew_status {
    boundary(|| {
        let e = engine(e)?;
        // SAFETY: a non-NULL request pointer points to a readable `ew_request` for the call.
        let r = unsafe { req.as_ref() }.ok_or_else(|| Fail::null("request"))?;
        let slot = out(out_decision, "out_decision")?;
        // SAFETY: a non-NULL scratch came from `ew_scratch_new`, is not freed, and is used
        // by this thread only for the call (the header's contract).
        let scratch = unsafe { scratch.as_mut() };
        let method = bytes(r.method, "method")?;
        let uri = bytes(r.uri, "uri")?;
        let body = bytes(r.body, "body")?;
        let headers: &[ew_header] = if r.headers_len == 0 {
            &[]
        } else if r.headers.is_null() {
            return Err(Fail::null("headers"));
        } else {
            // SAFETY: a non-NULL `headers` points to `headers_len` readable `ew_header`
            // values for the call; the count was checked against `isize` by `from_raw_parts`'
            // contract below.
            if r.headers_len > isize::MAX as usize / std::mem::size_of::<ew_header>() {
                return Err(Fail::argument("headers_len is too large"));
            }
            unsafe { std::slice::from_raw_parts(r.headers, r.headers_len) }
        };
        let mut stack: [(&[u8], &[u8]); STACK_HEADERS] = [(&[], &[]); STACK_HEADERS];
        let mut heap = Vec::new();
        let pairs: &[(&[u8], &[u8])] = if headers.len() <= STACK_HEADERS {
            for (slot, h) in stack.iter_mut().zip(headers) {
                *slot = (
                    bytes(h.name, "header name")?,
                    bytes(h.value, "header value")?,
                );
            }
            &stack[..headers.len()]
        } else {
            for h in headers {
                heap.push((
                    bytes(h.name, "header name")?,
                    bytes(h.value, "header value")?,
                ));
            }
            &heap
        };
        let mut request = Request::new(method, uri)
            .with_headers(pairs)
            .with_body(body);
        let peer = bytes(r.peer, "peer")?;
        if !peer.is_empty() {
            let ip = std::str::from_utf8(peer)
                .ok()
                .and_then(|p| p.trim().parse().ok())
                .ok_or_else(|| Fail::argument("peer is not an IP address"))?;
            request = request.with_peer(ip);
        }
        let identity = bytes(r.identity, "identity")?;
        if !identity.is_empty() {
            let id = std::str::from_utf8(identity)
                .map_err(|_| Fail::new(EW_ERR_UTF8, "ffi.utf8", "identity is not UTF-8"))?;
            request = request.with_identity(id);
        }
        let d = match scratch {
            Some(s) => e.engine.inspect_with(&mut s.scratch, &request),
            None => e.engine.inspect(&request),
        };
        slot.write(boxed(ew_decision {
            d,
            reason: OnceLock::new(),
            json: OnceLock::new(),
            event: OnceLock::new(),
            reservation: OnceLock::new(),
            refusal: OnceLock::new(),
        }));
        Ok(())
    })
}

/// Frees a decision (its reservation, if unsettled, expires by itself). NULL is a no-op.
///
/// # Safety
/// Pointers follow the rules of the header's top comment.
#[no_mangle]
pub unsafe extern "C" fn ew_decision_free(d: *mut ew_decision) {
    value((), || unbox(d))
}

// ---------------------------------------------------------------------------------------
// Decision accessors. Strings borrow from the decision.

/// Whether the host should forward the request. False for NULL.
///
/// # Safety
/// Pointers follow the rules of the header's top comment.
#[no_mangle]
pub unsafe extern "C" fn ew_decision_allowed(d: *const ew_decision) -> bool {
    value(false, || decision(d).is_ok_and(|d| d.d.is_allowed()))
}

/// The HTTP status to answer a refusal with (401, 403, 413, 429, ...); 0 when allowed or
/// for NULL.
///
/// # Safety
/// Pointers follow the rules of the header's top comment.
#[no_mangle]
pub unsafe extern "C" fn ew_decision_status(d: *const ew_decision) -> u16 {
    value(0, || decision(d).map_or(0, |d| d.d.status().unwrap_or(0)))
}

/// The refusal's stable reason code (`anomaly_score`, `rate_limited`, ...); empty when
/// allowed.
///
/// # Safety
/// Pointers follow the rules of the header's top comment.
#[no_mangle]
pub unsafe extern "C" fn ew_decision_reason_code(d: *const ew_decision) -> ew_str {
    value(ew_str::of(""), || {
        ew_str::of(
            decision(d)
                .ok()
                .and_then(|d| d.d.reason())
                .map_or("", |r| r.code()),
        )
    })
}

/// The refusal's reason for people (`limit "rpm" reached; retry after 12 s`); empty when
/// allowed.
///
/// # Safety
/// Pointers follow the rules of the header's top comment.
#[no_mangle]
pub unsafe extern "C" fn ew_decision_reason(d: *const ew_decision) -> ew_str {
    value(ew_str::of(""), || match decision(d) {
        Ok(h) => ew_str::of(
            h.reason
                .get_or_init(|| h.d.reason().map(|r| r.to_string()).unwrap_or_default()),
        ),
        Err(_) => ew_str::of(""),
    })
}

/// The pipeline stage that decided (`inspect`, `limits`, `identity`, ...).
///
/// # Safety
/// Pointers follow the rules of the header's top comment.
#[no_mangle]
pub unsafe extern "C" fn ew_decision_stage(d: *const ew_decision) -> ew_str {
    value(ew_str::of(""), || {
        ew_str::of(decision(d).map_or("", |d| d.d.stage.as_str()))
    })
}

/// Seconds after which a refused request may be retried (the `Retry-After` value); -1
/// when the decision gives none.
///
/// # Safety
/// Pointers follow the rules of the header's top comment.
#[no_mangle]
pub unsafe extern "C" fn ew_decision_retry_after(d: *const ew_decision) -> i64 {
    value(-1, || {
        decision(d)
            .ok()
            .and_then(|d| {
                d.d.headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("retry-after"))
                    .and_then(|(_, v)| v.parse::<i64>().ok())
            })
            .unwrap_or(-1)
    })
}

/// How many response headers the host should add (`Retry-After`, `RateLimit`, ...).
///
/// # Safety
/// Pointers follow the rules of the header's top comment.
#[no_mangle]
pub unsafe extern "C" fn ew_decision_header_count(d: *const ew_decision) -> usize {
    value(0, || decision(d).map_or(0, |d| d.d.headers.len()))
}

/// Response header `index` (name in lowercase, value).
///
/// # Safety
/// Pointers follow the rules of the header's top comment.
#[no_mangle]
pub unsafe extern "C" fn ew_decision_header(
    d: *const ew_decision,
    index: usize,
    out_name: *mut ew_str,
    out_value: *mut ew_str,
) -> ew_status {
    boundary(|| {
        let d = decision(d)?;
        let (n, v) = at(&d.d.headers, index, "header")?;
        if std::ptr::eq(out_name, out_value) {
            return Err(Fail::argument(
                "out_name and out_value are the same pointer",
            ));
        }
        let name = out(out_name, "out_name")?;
        let value = out(out_value, "out_value")?;
        name.write(ew_str::of(n));
        value.write(ew_str::of(v));
        Ok(())
    })
}

/// How many rule matches the decision records.
///
/// # Safety
/// Pointers follow the rules of the header's top comment.
#[no_mangle]
pub unsafe extern "C" fn ew_decision_match_count(d: *const ew_decision) -> usize {
    value(0, || decision(d).map_or(0, |d| d.d.matches.len()))
}

/// Rule match `index`.
///
/// # Safety
/// Pointers follow the rules of the header's top comment.
#[no_mangle]
pub unsafe extern "C" fn ew_decision_match(
    d: *const ew_decision,
    index: usize,
    out_match: *mut ew_match,
) -> ew_status {
    boundary(|| {
        let d = decision(d)?;
        let m = at(&d.d.matches, index, "match")?;
        out(out_match, "out_match")?.write(ew_match {
            rule_id: m.rule_id,
            score: m.score,
            name: ew_str::of(&m.name),
            category: ew_str::of(m.category.as_str()),
            location: ew_str::of(&m.location),
        });
        Ok(())
    })
}

/// The cost estimate; `EW_ERR_NOT_FOUND` when the route is not an inference API.
///
/// # Safety
/// Pointers follow the rules of the header's top comment.
#[no_mangle]
pub unsafe extern "C" fn ew_decision_cost(
    d: *const ew_decision,
    out_cost: *mut ew_cost,
) -> ew_status {
    boundary(|| {
        let d = decision(d)?;
        let c =
            d.d.cost
                .as_ref()
                .ok_or_else(|| Fail::not_found("the decision has no cost"))?;
        out(out_cost, "out_cost")?.write(ew_cost {
            prompt_tokens: c.prompt_tokens,
            output_tokens_reserved: c.output_tokens_reserved,
            micro_usd: c.micro_usd,
            exact: c.exact,
            model: ew_str::of(c.model.as_deref().unwrap_or("")),
        });
        Ok(())
    })
}

/// How many parameter changes the host must apply before forwarding.
///
/// # Safety
/// Pointers follow the rules of the header's top comment.
#[no_mangle]
pub unsafe extern "C" fn ew_decision_rewrite_count(d: *const ew_decision) -> usize {
    value(0, || decision(d).map_or(0, |d| d.d.rewrites.len()))
}

/// Parameter change `index`.
///
/// # Safety
/// Pointers follow the rules of the header's top comment.
#[no_mangle]
pub unsafe extern "C" fn ew_decision_rewrite(
    d: *const ew_decision,
    index: usize,
    out_rewrite: *mut ew_rewrite,
) -> ew_status {
    boundary(|| {
        let d = decision(d)?;
        let r = at(&d.d.rewrites, index, "rewrite")?;
        let (action, v) = match r.action {
            RewriteAction::Set(v) => (ew_rewrite_action::EW_REWRITE_SET, v),
            RewriteAction::SetFalse => (ew_rewrite_action::EW_REWRITE_SET_FALSE, 0),
            RewriteAction::SetTrue => (ew_rewrite_action::EW_REWRITE_SET_TRUE, 0),
            RewriteAction::Remove => (ew_rewrite_action::EW_REWRITE_REMOVE, 0),
        };
        out(out_rewrite, "out_rewrite")?.write(ew_rewrite {
            param: ew_str::of(r.param),
            action,
            value: v,
        });
        Ok(())
    })
}

/// The id of the decision's reservation (32 hex digits); `EW_ERR_NOT_FOUND` when nothing
/// needs settling.
///
/// # Safety
/// Pointers follow the rules of the header's top comment.
#[no_mangle]
pub unsafe extern "C" fn ew_decision_reservation(
    d: *const ew_decision,
    out_id: *mut ew_str,
) -> ew_status {
    boundary(|| {
        let h = decision(d)?;
        let r =
            h.d.reservation
                .as_ref()
                .ok_or_else(|| Fail::not_found("the decision has no reservation"))?;
        let id = h.reservation.get_or_init(|| r.id().to_string());
        out(out_id, "out_id")?.write(ew_str::of(id));
        Ok(())
    })
}

/// The decision as JSON (the stable form `Decision::to_json` gives).
///
/// # Safety
/// Pointers follow the rules of the header's top comment.
#[no_mangle]
pub unsafe extern "C" fn ew_decision_json(d: *const ew_decision) -> ew_str {
    value(ew_str::of(""), || match decision(d) {
        Ok(h) => ew_str::of(h.json.get_or_init(|| h.d.to_json())),
        Err(_) => ew_str::of(""),
    })
}

/// The decision as one event line for logs (time, route, principal, action, rules, cost,
/// limits; never credentials), as the engine `e` that made it writes it.
///
/// # Safety
/// Pointers follow the rules of the header's top comment.
#[no_mangle]
pub unsafe extern "C" fn ew_decision_event_json(
    e: *const ew_engine,
    d: *const ew_decision,
    out_json: *mut ew_str,
) -> ew_status {
    boundary(|| {
        let e = engine(e)?;
        let h = decision(d)?;
        let line = h.event.get_or_init(|| e.engine.event_json(&h.d, None));
        out(out_json, "out_json")?.write(ew_str::of(line));
        Ok(())
    })
}

/// The response to send for a refused request: the body (by default the OpenAI error
/// shape, `{"error":{"message","type","code"}}`, from the policy's `response` template)
/// and its content type. `request_id` (may be empty) fills the template's `{request_id}`;
/// the body is made on the first call and later calls return the same one.
/// `EW_ERR_NOT_FOUND` when the request is allowed.
///
/// # Safety
/// Pointers follow the rules of the header's top comment.
#[no_mangle]
pub unsafe extern "C" fn ew_decision_refusal(
    e: *const ew_engine,
    d: *const ew_decision,
    request_id: ew_bytes,
    out_body: *mut ew_str,
    out_content_type: *mut ew_str,
) -> ew_status {
    boundary(|| {
        let e = engine(e)?;
        let h = decision(d)?;
        let id = std::str::from_utf8(bytes(request_id, "request_id")?)
            .map_err(|_| Fail::new(EW_ERR_UTF8, "ffi.utf8", "request_id is not UTF-8"))?;
        if h.d.is_allowed() {
            return Err(Fail::not_found("the request is allowed"));
        }
        if std::ptr::eq(out_body, out_content_type) {
            return Err(Fail::argument(
                "out_body and out_content_type are the same pointer",
            ));
        }
        let body_slot = out(out_body, "out_body")?;
        let type_slot = out(out_content_type, "out_content_type")?;
        let body = h.refusal.get_or_init(|| {
            e.engine
                .refusal_body(&h.d, (!id.is_empty()).then_some(id))
                .unwrap_or_default()
        });
        body_slot.write(ew_str::of(body));
        type_slot.write(ew_str::of(e.engine.refusal_content_type()));
        Ok(())
    })
}

/// The body to forward for an allowed decision with parameter changes
/// (`ew_decision_rewrite_count` > 0): the request body with each change applied, members
/// it does not touch kept byte for byte. Free it with `ew_string_free`.
/// `EW_ERR_NOT_FOUND`: nothing to change, forward the original body;
/// `EW_ERR_REWRITE`: the body is not a JSON object, refuse the request.
///
/// # Safety
/// Pointers follow the rules of the header's top comment.
#[no_mangle]
pub unsafe extern "C" fn ew_decision_rewrite_body(
    e: *const ew_engine,
    d: *const ew_decision,
    body: *const u8,
    len: usize,
    out_body: *mut ew_string,
) -> ew_status {
    boundary(|| {
        let e = engine(e)?;
        let h = decision(d)?;
        let body = raw_bytes(body, len, "body")?;
        let slot = out(out_body, "out_body")?;
        match e.engine.rewrite_body(&h.d, body)? {
            None => Err(Fail::not_found("the decision changes no parameter")),
            Some(b) => {
                slot.write(owned(String::from_utf8(b).unwrap_or_default()));
                Ok(())
            }
        }
    })
}

// ---------------------------------------------------------------------------------------
// Settlement.

fn usage_of(u: &ew_usage) -> Result<Usage, Fail> {
    Ok(Usage {
        prompt_tokens: u.prompt_tokens,
        cached_prompt_tokens: u.cached_prompt_tokens,
        cache_creation_tokens: u.cache_creation_tokens,
        output_tokens: u.output_tokens,
        reasoning_tokens: u.reasoning_tokens,
        source: match u.source {
            0 => UsageSource::Reported,
            1 => UsageSource::Counted,
            2 => UsageSource::Partial,
            other => return Err(Fail::argument(format!("usage source {other} is unknown"))),
        },
    })
}

fn to_c(u: &Usage) -> ew_usage {
    ew_usage {
        prompt_tokens: u.prompt_tokens,
        cached_prompt_tokens: u.cached_prompt_tokens,
        cache_creation_tokens: u.cache_creation_tokens,
        output_tokens: u.output_tokens,
        reasoning_tokens: u.reasoning_tokens,
        source: match u.source {
            UsageSource::Reported => ew_usage_source::EW_USAGE_REPORTED,
            UsageSource::Counted => ew_usage_source::EW_USAGE_COUNTED,
            _ => ew_usage_source::EW_USAGE_PARTIAL,
        } as u32,
    }
}

fn settle(
    e: &ew_engine,
    d: &ew_decision,
    usage: &Usage,
    out_settled: *mut ew_settled,
) -> Result<(), Fail> {
    let slot = if out_settled.is_null() {
        None
    } else {
        Some(out(out_settled, "out_settled")?)
    };
    let s = e.engine.settle_decision(&d.d, usage)?;
    if let Some(slot) = slot {
        slot.write(match s {
            Settled::Settled => ew_settled::EW_SETTLED,
            Settled::Unknown => ew_settled::EW_SETTLE_UNKNOWN,
        });
    }
    Ok(())
}

/// Settles the decision with the usage reported in a (non-streamed) JSON response body:
/// refunds or tops up token and cost limits, releases concurrency, counts the usage in
/// the metrics and sends the settlement event. `out_settled` may be NULL. A second
/// settlement of the same decision changes nothing (`EW_SETTLE_UNKNOWN`).
/// `EW_ERR_NOT_FOUND`: the route is not an inference API; `EW_ERR_USAGE`: the body has
/// no readable usage (settle with `ew_settle_usage` and an estimate instead).
///
/// # Safety
/// Pointers follow the rules of the header's top comment.
#[no_mangle]
pub unsafe extern "C" fn ew_settle_body(
    e: *const ew_engine,
    d: *const ew_decision,
    body: *const u8,
    len: usize,
    out_settled: *mut ew_settled,
) -> ew_status {
    boundary(|| {
        let e = engine(e)?;
        let h = decision(d)?;
        let body = raw_bytes(body, len, "body")?;
        let usage = e.engine.usage_from_body(&h.d, body).ok_or_else(|| {
            Fail::not_found("the decision's route serves no known usage format")
        })??;
        settle(e, h, &usage, out_settled)
    })
}

/// Settles the decision with usage the host measured (or all zero for a request that
/// never reached the model, which refunds its reservation). See `ew_settle_body`.
///
/// # Safety
/// Pointers follow the rules of the header's top comment.
#[no_mangle]
pub unsafe extern "C" fn ew_settle_usage(
    e: *const ew_engine,
    d: *const ew_decision,
    usage: *const ew_usage,
    out_settled: *mut ew_settled,
) -> ew_status {
    boundary(|| {
        let e = engine(e)?;
        let h = decision(d)?;
        // SAFETY: a non-NULL usage pointer points to a readable `ew_usage` for the call.
        let u = unsafe { usage.as_ref() }.ok_or_else(|| Fail::null("usage"))?;
        settle(e, h, &usage_of(u)?, out_settled)
    })
}

/// A tracker for the streamed (server-sent events) response to the decided request: feed
/// it every chunk as it passes (any boundaries), then finish it. `EW_ERR_NOT_FOUND` when
/// the route is not an inference API.
///
/// # Safety
/// Pointers follow the rules of the header's top comment.
#[no_mangle]
pub unsafe extern "C" fn ew_usage_tracker_new(
    e: *const ew_engine,
    d: *const ew_decision,
    out_tracker: *mut *mut ew_usage_tracker,
) -> ew_status {
    boundary(|| {
        let e = engine(e)?;
        let h = decision(d)?;
        let slot = out(out_tracker, "out_tracker")?;
        let t = e
            .engine
            .usage_tracker(&h.d)
            .ok_or_else(|| Fail::not_found("the decision's route serves no known stream format"))?;
        slot.write(boxed(ew_usage_tracker { tracker: Some(t) }));
        Ok(())
    })
}

/// The tracker inside a handle; `None` once finished.
fn tracker_slot<'a>(t: *mut ew_usage_tracker) -> Result<&'a mut Option<UsageTracker>, Fail> {
    // SAFETY: a non-NULL tracker came from `ew_usage_tracker_new`, is not freed, and is
    // used by one thread at a time (the header's contract).
    let t = unsafe { t.as_mut() }.ok_or_else(|| Fail::null("tracker"))?;
    Ok(&mut t.tracker)
}

fn finished() -> Fail {
    Fail::argument("the tracker was finished")
}

fn tracker<'a>(t: *mut ew_usage_tracker) -> Result<&'a mut UsageTracker, Fail> {
    tracker_slot(t)?.as_mut().ok_or_else(finished)
}

/// Feeds a chunk of the response stream (never buffered whole).
///
/// # Safety
/// Pointers follow the rules of the header's top comment.
#[no_mangle]
pub unsafe extern "C" fn ew_usage_tracker_feed(
    t: *mut ew_usage_tracker,
    chunk: *const u8,
    len: usize,
) -> ew_status {
    boundary(|| {
        let chunk = raw_bytes(chunk, len, "chunk")?;
        tracker(t)?.feed(chunk);
        Ok(())
    })
}

/// The usage seen so far (of an aborted stream: a lower bound).
///
/// # Safety
/// Pointers follow the rules of the header's top comment.
#[no_mangle]
pub unsafe extern "C" fn ew_usage_tracker_usage(
    t: *mut ew_usage_tracker,
    out_usage: *mut ew_usage,
) -> ew_status {
    boundary(|| {
        let u = tracker(t)?.usage_so_far();
        out(out_usage, "out_usage")?.write(to_c(&u));
        Ok(())
    })
}

/// Ends the stream and gives its usage; the tracker accepts nothing more (free it).
///
/// # Safety
/// Pointers follow the rules of the header's top comment.
#[no_mangle]
pub unsafe extern "C" fn ew_usage_tracker_finish(
    t: *mut ew_usage_tracker,
    out_usage: *mut ew_usage,
) -> ew_status {
    boundary(|| {
        let slot = out(out_usage, "out_usage")?;
        let u = tracker_slot(t)?.take().ok_or_else(finished)?.finish();
        slot.write(to_c(&u));
        Ok(())
    })
}

/// Frees a tracker. NULL is a no-op.
///
/// # Safety
/// Pointers follow the rules of the header's top comment.
#[no_mangle]
pub unsafe extern "C" fn ew_usage_tracker_free(t: *mut ew_usage_tracker) {
    value((), || unbox(t))
}
