//! `Engine`: build from a policy or bundle, inspect (on the JS thread or the libuv pool),
//! answer, rewrite and settle.

use std::net::IpAddr;
use std::sync::Arc;

use napi::bindgen_prelude::*;
use napi::{JsValue, ValueType};
use napi_derive::napi;

use crate::decision::{Compact, Decision, Held};
use crate::errors::{wrong_type, Fail, Res};
use crate::flat::{self, Flat};
use crate::usage::{usage_from_object, Usage, UsageTracker};

/// The compiled policy. Immutable and shareable: build one at start-up and use it for
/// every request; `inspectAsync` and `settleAsync` run it on the libuv thread pool.
#[napi]
pub struct Engine {
    engine: edgeward::Engine,
}

/// Bytes borrowed from a Buffer or Uint8Array for the length of a call on the JS thread
/// (no JS runs meanwhile, so nothing can change or free them), or owned (encoded from a
/// string).
pub(crate) enum Bytes<'env> {
    Buffer(BufferSlice<'env>),
    Array(Uint8ArraySlice<'env>),
    Owned(Vec<u8>),
}

impl Bytes<'_> {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Bytes::Buffer(b) => b,
            Bytes::Array(a) => a,
            Bytes::Owned(v) => v,
        }
    }
}

/// A string's bytes. Node's HTTP parser turns each header and URL byte into one
/// character (latin1), so `latin1` strings whose characters all fit in a byte give back
/// exactly the bytes that came over the wire; other strings (and every body) are UTF-8.
fn string_bytes(s: String, latin1: bool) -> Vec<u8> {
    if !latin1 || s.is_ascii() || s.chars().any(|c| u32::from(c) > 0xff) {
        return s.into_bytes();
    }
    s.chars().map(|c| c as u8).collect()
}

/// A string's UTF-8, in one N-API call when it fits a first guess (napi-rs always asks for
/// the length first, then copies: two calls per header name and value).
fn utf8_of(v: &Unknown<'_>) -> Result<String> {
    const GUESS: usize = 256;
    let raw = v.value();
    let read = |buf: &mut Vec<u8>| -> Result<usize> {
        let mut len = 0;
        // SAFETY: `raw` is a live value of the current call; napi writes at most
        // `buf.capacity()` bytes, its terminator included, and the length into `len`.
        check_status!(unsafe {
            napi::sys::napi_get_value_string_utf8(
                raw.env,
                raw.value,
                buf.as_mut_ptr().cast(),
                buf.capacity(),
                &mut len,
            )
        })?;
        Ok(len)
    };
    let mut buf = Vec::with_capacity(GUESS);
    let mut len = read(&mut buf)?;
    // Node truncates at a character boundary, so a truncated copy leaves fewer than 4
    // bytes (the longest UTF-8 character) of the buffer unused.
    if len + 4 >= buf.capacity() {
        // SAFETY: a null buffer of size 0 asks napi for the length only.
        check_status!(unsafe {
            napi::sys::napi_get_value_string_utf8(
                raw.env,
                raw.value,
                std::ptr::null_mut(),
                0,
                &mut len,
            )
        })?;
        buf = Vec::with_capacity(len + 1);
        len = read(&mut buf)?;
    }
    // SAFETY: napi wrote `len` bytes.
    unsafe { buf.set_len(len) };
    String::from_utf8(buf).map_err(|_| Error::from_reason("a string that is not UTF-8"))
}

/// A Buffer, Uint8Array or string argument as bytes.
pub(crate) fn bytes_of<'env>(v: Unknown<'env>, what: &str, latin1: bool) -> Res<Bytes<'env>> {
    let expected = "a Buffer, Uint8Array or string";
    match v.get_type().map_err(wrong_type(what, expected))? {
        ValueType::String => {
            let s = utf8_of(&v).map_err(wrong_type(what, expected))?;
            Ok(Bytes::Owned(string_bytes(s, latin1)))
        }
        ValueType::Object if v.is_buffer().unwrap_or(false) => BufferSlice::from_unknown(v)
            .map(Bytes::Buffer)
            .map_err(wrong_type(what, expected)),
        ValueType::Object if v.is_typedarray().unwrap_or(false) => Uint8ArraySlice::from_unknown(v)
            .map(Bytes::Array)
            .map_err(wrong_type(what, expected)),
        _ => Err(Fail::type_error(format!("{what} must be {expected}"))),
    }
}

/// An optional string argument.
fn opt_string(v: Option<Unknown<'_>>, key: &str) -> Res<Option<String>> {
    match v {
        None => Ok(None),
        Some(v) => String::from_unknown(v)
            .map(Some)
            .map_err(wrong_type(key, "a string")),
    }
}

fn ip(v: Option<Unknown<'_>>, key: &str) -> Res<Option<IpAddr>> {
    match opt_string(v, key)? {
        None => Ok(None),
        Some(s) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| Fail::argument(format!("{key} {s:?} is not an IP address"))),
    }
}

/// A value, or `None` for undefined and null.
fn present(v: Unknown<'_>) -> Option<Unknown<'_>> {
    match v.get_type() {
        Ok(ValueType::Undefined | ValueType::Null) => None,
        _ => Some(v),
    }
}

/// The request's fields, read from its object or given one by one.
pub(crate) struct Fields<'env> {
    method: Option<Unknown<'env>>,
    uri: Option<Unknown<'env>>,
    /// `uri` under node's name for it, read when `uri` is absent.
    url: Option<Unknown<'env>>,
    headers: Option<Unknown<'env>>,
    body: Option<Unknown<'env>>,
    peer: Option<Unknown<'env>>,
    client_ip: Option<Unknown<'env>>,
    identity: Option<Unknown<'env>>,
}

/// The request's parts as the core wants them, borrowed where JS allows it.
struct Parts<'env> {
    method: Bytes<'env>,
    uri: Bytes<'env>,
    headers: Vec<(Bytes<'env>, Bytes<'env>)>,
    body: Option<Bytes<'env>>,
    peer: Option<IpAddr>,
    client_ip: Option<IpAddr>,
    identity: Option<String>,
}

/// Element `i` of a JS array.
fn item<'env>(a: &Array<'env>, i: u32, what: &str) -> Res<Unknown<'env>> {
    a.get(i)
        .ok()
        .flatten()
        .ok_or_else(|| Fail::type_error(format!("{what} missing")))
}

/// A header's name and value as bytes.
fn header<'env>(name: Unknown<'env>, value: Unknown<'env>) -> Res<(Bytes<'env>, Bytes<'env>)> {
    Ok((
        bytes_of(name, "a header name", true)?,
        bytes_of(value, "a header value", true)?,
    ))
}

/// Headers: node's `req.headers` (an object whose values are strings or arrays of
/// them), `req.rawHeaders` (a flat `[name, value, ...]` array), or `[name, value]`
/// pairs; names and values strings or Buffers.
fn headers_of<'env>(v: Unknown<'env>) -> Res<Vec<(Bytes<'env>, Bytes<'env>)>> {
    let shape = "an object, an array of [name, value] pairs or a flat [name, value, ...] array";
    let mut out = Vec::new();
    match v.get_type().map_err(wrong_type("headers", shape))? {
        ValueType::Undefined | ValueType::Null => {}
        ValueType::Object if v.is_array().unwrap_or(false) => {
            let a = Array::from_unknown(v).map_err(wrong_type("headers", shape))?;
            let n = a.len();
            if n == 0 {
                return Ok(out);
            }
            if item(&a, 0, "a header")?.is_array().unwrap_or(false) {
                let pair = "each header must be a [name, value] pair";
                for i in 0..n {
                    let p = Array::from_unknown(item(&a, i, "a header")?)
                        .map_err(|_| Fail::type_error(pair))?;
                    if p.len() != 2 {
                        return Err(Fail::type_error(pair));
                    }
                    out.push(header(
                        item(&p, 0, "a header name")?,
                        item(&p, 1, "a header value")?,
                    )?);
                }
            } else {
                if n % 2 != 0 {
                    return Err(Fail::type_error(
                        "a flat header array must have an even length",
                    ));
                }
                for i in (0..n).step_by(2) {
                    out.push(header(
                        item(&a, i, "a header name")?,
                        item(&a, i + 1, "a header value")?,
                    )?);
                }
            }
        }
        ValueType::Object if !v.is_buffer().unwrap_or(false) => {
            let o = Object::from_unknown(v).map_err(wrong_type("headers", shape))?;
            for k in Object::keys(&o).map_err(wrong_type("headers", shape))? {
                let Some(value) = o.get::<Unknown>(&k).map_err(wrong_type("headers", shape))?
                else {
                    continue;
                };
                let name = || Bytes::Owned(string_bytes(k.clone(), true));
                if value.is_array().unwrap_or(false) {
                    // Repeated headers (`set-cookie`): one pair per value, in order.
                    let a = Array::from_unknown(value).map_err(wrong_type("headers", shape))?;
                    for i in 0..a.len() {
                        out.push((
                            name(),
                            bytes_of(item(&a, i, "a header value")?, "a header value", true)?,
                        ));
                    }
                } else {
                    out.push((name(), bytes_of(value, "a header value", true)?));
                }
            }
        }
        _ => return Err(Fail::type_error(format!("headers must be {shape}"))),
    }
    Ok(out)
}

fn parts_of<'env>(req: Unknown<'env>) -> Res<Parts<'env>> {
    let shape = "an object {method, uri, headers, body, peer, clientIp, identity}";
    if req.get_type().ok() != Some(ValueType::Object) {
        return Err(Fail::type_error(format!("the request must be {shape}")));
    }
    let o = Object::from_unknown(req).map_err(wrong_type("the request", shape))?;
    let field = |k: &str| -> Res<Option<Unknown<'env>>> {
        match o.get::<Unknown>(k).map_err(wrong_type(k, "readable"))? {
            Some(v) => Ok(present(v)),
            None => Ok(None),
        }
    };
    let uri = field("uri")?;
    parts_from(Fields {
        method: field("method")?,
        url: if uri.is_none() { field("url")? } else { None },
        uri,
        headers: field("headers")?,
        body: field("body")?,
        peer: field("peer")?,
        client_ip: field("clientIp")?,
        identity: field("identity")?,
    })
}

fn parts_from(f: Fields<'_>) -> Res<Parts<'_>> {
    let method = match f.method {
        Some(m) => bytes_of(m, "method", true)?,
        None => Bytes::Owned(b"GET".to_vec()),
    };
    let uri = match (f.uri, f.url) {
        (Some(u), _) => bytes_of(u, "uri", true)?,
        (None, Some(u)) => bytes_of(u, "url", true)?,
        (None, None) => return Err(Fail::type_error("the request needs a uri (path and query)")),
    };
    let headers = match f.headers {
        Some(h) => headers_of(h)?,
        None => Vec::new(),
    };
    let body = match f.body {
        Some(b) => Some(bytes_of(b, "body", false)?),
        None => None,
    };
    Ok(Parts {
        method,
        uri,
        headers,
        body,
        peer: ip(f.peer, "peer")?,
        client_ip: ip(f.client_ip, "clientIp")?,
        identity: opt_string(f.identity, "identity")?,
    })
}

/// The core request over borrowed parts.
/// A request's parts as the core reads them, borrowed from a request read in place
/// ([`Parts`]) or copied for the thread pool ([`OwnedRequest`]).
struct View<'a> {
    method: &'a [u8],
    uri: &'a [u8],
    headers: Vec<(&'a [u8], &'a [u8])>,
    body: Option<&'a [u8]>,
    peer: Option<IpAddr>,
    client_ip: Option<IpAddr>,
    identity: Option<&'a str>,
}

impl View<'_> {
    fn inspect(&self, engine: &edgeward::Engine) -> edgeward::Decision {
        // The optional parts are plain fields: set them as given.
        let mut req = edgeward::Request::new(self.method, self.uri).with_headers(&self.headers);
        req.body = self.body.unwrap_or_default();
        req.peer = self.peer;
        req.client = self.client_ip;
        req.identity = self.identity;
        engine.inspect(&req)
    }
}

/// The request `inspect` reads (for the type definitions: the binding reads the object
/// field by field, borrowing what it can).
#[napi(object, object_to_js = false)]
pub struct InspectRequest {
    /// The method; `GET` when absent.
    pub method: Option<String>,
    /// The path and raw query.
    pub uri: Option<String>,
    /// `uri` under node's name for it, read when `uri` is absent.
    pub url: Option<String>,
    /// Node's `req.headers`, `req.rawHeaders`, or `[name, value]` pairs.
    #[napi(
        ts_type = "Record<string, string | string[] | undefined> | Array<[string | Buffer, string | Buffer]> | Array<string | Buffer> | null"
    )]
    pub headers: Option<serde_json::Value>,
    /// The body (a Buffer is read in place by `inspect`).
    #[napi(ts_type = "Buffer | Uint8Array | string | null")]
    pub body: Option<serde_json::Value>,
    /// The socket's IP address.
    pub peer: Option<String>,
    /// The end client's address your proxy resolved.
    pub client_ip: Option<String>,
    /// A caller your host has already verified (mTLS, a session).
    pub identity: Option<String>,
}

/// A request copied out of JS for the thread pool.
///
/// The body is copied, not referenced: napi's `Buffer` can keep a reference across
/// threads, but JS may write to the bytes or detach (transfer) their ArrayBuffer while
/// the pool thread reads them, which is a data race (napi-rs marks its own `Send` impl
/// for `Buffer` as undefined behaviour). A copy of a body the host already bounds costs
/// a few hundred nanoseconds against the tens of microseconds of inspection.
pub struct OwnedRequest {
    method: Vec<u8>,
    uri: Vec<u8>,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    body: Option<Vec<u8>>,
    peer: Option<IpAddr>,
    client_ip: Option<IpAddr>,
    identity: Option<String>,
}

/// `inspectAsync`'s work on the libuv pool.
pub struct InspectTask {
    engine: edgeward::Engine,
    req: OwnedRequest,
}

impl Task for InspectTask {
    type Output = edgeward::Decision;
    type JsValue = Decision;

    fn compute(&mut self) -> Result<Self::Output> {
        let r = &self.req;
        Ok(View {
            method: &r.method,
            uri: &r.uri,
            headers: r
                .headers
                .iter()
                .map(|(n, v)| (n.as_slice(), v.as_slice()))
                .collect(),
            body: r.body.as_deref(),
            peer: r.peer,
            client_ip: r.client_ip,
            identity: r.identity.as_deref(),
        }
        .inspect(&self.engine))
    }

    fn resolve(&mut self, _env: Env, d: Self::Output) -> Result<Self::JsValue> {
        Ok(Decision::from_core(d))
    }
}

/// What a settle call was given as usage.
enum UsageArg {
    Usage(edgeward::Usage),
    Body(Vec<u8>),
}

/// `settleAsync`'s work on the libuv pool (a Redis store's round trip happens there).
pub struct SettleTask {
    engine: edgeward::Engine,
    decision: Held,
    usage: Option<UsageArg>,
}

fn usage_of(d: &edgeward::Decision, u: UsageArg) -> Res<edgeward::Usage> {
    match u {
        UsageArg::Usage(u) => Ok(u),
        UsageArg::Body(b) => {
            let p = d.cost.as_ref().and_then(|c| c.provider).ok_or_else(|| {
                Fail::not_found("the decision's route serves no known usage format")
            })?;
            Ok(edgeward::cost::usage::usage_from_body(p, &b)?)
        }
    }
}

fn settle_now(engine: &edgeward::Engine, d: &edgeward::Decision, u: UsageArg) -> Res<bool> {
    let usage = usage_of(d, u)?;
    let settled = engine.settle_decision(d, &usage)?;
    Ok(settled == edgeward::limits::Settled::Settled)
}

impl Task for SettleTask {
    type Output = Res<bool>;
    type JsValue = bool;

    fn compute(&mut self) -> Result<Self::Output> {
        let u = self
            .usage
            .take()
            .unwrap_or(UsageArg::Usage(edgeward::Usage::default()));
        Ok(settle_now(&self.engine, &self.decision, u))
    }

    fn resolve(&mut self, env: Env, out: Self::Output) -> Result<Self::JsValue> {
        out.map_err(|f| f.into_js(&env))
    }
}

/// The core decision behind a JS decision or reservation (its `handle`), or behind the
/// numbers `lib/decision.js` passes for a common decision's handle (see `flat.rs`).
fn held(v: Unknown<'_>) -> Res<Held> {
    let what = "a Decision or Reservation from this module";
    if v.get_type().ok() != Some(ValueType::Object) {
        return Err(Fail::type_error(format!("expected {what}")));
    }
    if v.is_typedarray().unwrap_or(false) {
        let h = Float64ArraySlice::from_unknown(v).map_err(wrong_type("the decision", what))?;
        return flat::rebuild(&h);
    }
    let o = Object::from_unknown(v).map_err(wrong_type("the decision", what))?;
    let h: Option<&External<Held>> = o.get("handle").map_err(wrong_type("the decision", what))?;
    h.map(|h| Arc::clone(h))
        .ok_or_else(|| Fail::type_error(format!("expected {what}")))
}

/// A settle call's usage: a usage object, or a response body (Buffer or string).
fn usage_arg(v: Unknown<'_>) -> Res<UsageArg> {
    let expected = "a usage object or a response body (Buffer or string)";
    match v.get_type().map_err(wrong_type("usage", expected))? {
        ValueType::String => Ok(UsageArg::Body(
            bytes_of(v, "usage", false)?.bytes().to_vec(),
        )),
        ValueType::Object
            if v.is_buffer().unwrap_or(false) || v.is_typedarray().unwrap_or(false) =>
        {
            Ok(UsageArg::Body(
                bytes_of(v, "usage", false)?.bytes().to_vec(),
            ))
        }
        ValueType::Object if !v.is_array().unwrap_or(false) => {
            let o = Object::from_unknown(v).map_err(wrong_type("usage", expected))?;
            Ok(UsageArg::Usage(usage_from_object(&o)?))
        }
        _ => Err(Fail::type_error(format!("usage must be {expected}"))),
    }
}

/// Where a policy comes from: a path to a file, or its text.
fn policy_of(path_or_text: Unknown<'_>) -> Res<edgeward::Policy> {
    let s = String::from_unknown(path_or_text).map_err(wrong_type(
        "fromPolicy's argument",
        "a path or policy text (string)",
    ))?;
    // Policy text has newlines and keys no file name has; one line without a key is a
    // path, so a missing file says so (`policy.io`) rather than fail to parse.
    if !s.contains('\n') && (std::path::Path::new(&s).is_file() || !s.contains(':')) {
        Ok(edgeward::Policy::from_file(&s)?)
    } else {
        Ok(edgeward::Policy::from_text(&s)?)
    }
}

/// The flat lane's work (see `flat.rs`): read the request, inspect it, answer.
fn flat(
    engine: &edgeward::Engine,
    text: Unknown<'_>,
    body: Unknown<'_>,
    peer: Unknown<'_>,
    client_ip: Unknown<'_>,
    identity: Unknown<'_>,
    io: Unknown<'_>,
) -> Res<Flat> {
    let mut io = Float64ArraySlice::from_unknown(io).map_err(wrong_type("io", "a Float64Array"))?;
    let text = flat::read_text(&text, &io)?;
    let d = {
        let body = match present(body) {
            Some(b) => Some(bytes_of(b, "body", false)?),
            None => None,
        };
        // Checked in the general path's order, so a request with two bad fields
        // names the same one either way.
        let peer = ip(present(peer), "peer")?;
        let client_ip = ip(present(client_ip), "clientIp")?;
        let identity = opt_string(present(identity), "identity")?;
        View {
            method: text.part(0),
            uri: text.part(1),
            headers: text.headers(),
            body: body.as_ref().map(Bytes::bytes),
            peer,
            client_ip,
            identity: identity.as_deref(),
        }
        .inspect(engine)
    };
    let Some(template) = Compact::common(&d).then(|| flat::template_of(&d)).flatten() else {
        return Ok(Flat::Full(Box::new(Decision::from_core(d))));
    };
    // SAFETY: this runs on the JS thread inside a sync call, so no JS reads or writes
    // `io` meanwhile, and nothing else borrowed from JS (the body may share its
    // ArrayBuffer) is alive any more.
    let out = unsafe { io.as_mut() };
    Ok(match flat::write(out, &d, template) {
        Some(s) => Flat::Strings(s),
        None => Flat::Same,
    })
}

/// A function bound to `engine` that runs [`flat`]: the engine (a clone, which shares the
/// compiled policy) is the function's N-API data, freed by the finalizer of a wrap on the
/// function (`napi_add_finalizer` would need N-API 5) once the function is collected.
fn bound_flat(env: &Env, engine: edgeward::Engine) -> Result<Unknown<'_>> {
    let data = Box::into_raw(Box::new(engine));
    let mut f = std::ptr::null_mut();
    let name = c"inspectFlat";
    // SAFETY: `env` is the current call's; `name` is a NUL-terminated string that napi
    // copies; `data` stays valid until the finalizer below frees it.
    let made = check_status!(unsafe {
        napi::sys::napi_create_function(
            env.raw(),
            name.as_ptr(),
            name.count_bytes() as isize,
            Some(flat_callback),
            data.cast(),
            &mut f,
        )
    })
    .and_then(|()| {
        // SAFETY: `f` was just created in `env` (and is wrapped by nothing else); the
        // finalizer runs once, after `f` is collected, so no call of `f` sees `data` freed.
        check_status!(unsafe {
            napi::sys::napi_wrap(
                env.raw(),
                f,
                data.cast(),
                Some(drop_engine),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        })
    });
    if let Err(e) = made {
        // SAFETY: no finalizer owns `data` (adding it failed, or the function was never
        // made), so this is its only owner.
        drop(unsafe { Box::from_raw(data) });
        return Err(e);
    }
    // SAFETY: `f` is a live value of the current call.
    Ok(unsafe { Unknown::from_raw_unchecked(env.raw(), f) })
}

/// Frees the engine a function made by [`bound_flat`] was bound to.
unsafe extern "C" fn drop_engine(
    _env: napi::sys::napi_env,
    data: *mut std::ffi::c_void,
    _hint: *mut std::ffi::c_void,
) {
    // SAFETY: `data` is the box `bound_flat` leaked for this function, and napi calls
    // this finalizer once.
    drop(unsafe { Box::from_raw(data.cast::<edgeward::Engine>()) });
}

/// The raw N-API callback of a function made by [`bound_flat`].
unsafe extern "C" fn flat_callback(
    env: napi::sys::napi_env,
    info: napi::sys::napi_callback_info,
) -> napi::sys::napi_value {
    let mut argc = 6;
    let mut argv = [std::ptr::null_mut(); 6];
    let mut data = std::ptr::null_mut();
    // SAFETY: `env` and `info` are this callback's; `argv` has room for `argc` values
    // (napi fills those not passed with undefined).
    let status = unsafe {
        napi::sys::napi_get_cb_info(
            env,
            info,
            &mut argc,
            argv.as_mut_ptr(),
            std::ptr::null_mut(),
            &mut data,
        )
    };
    if status != napi::sys::Status::napi_ok {
        return std::ptr::null_mut();
    }
    // SAFETY: `data` is the engine `bound_flat` gave this function, freed only after the
    // function is collected, and it is alive: it is being called.
    let engine = unsafe { &*data.cast::<edgeward::Engine>() };
    // SAFETY: the arguments are live values of this call.
    let [text, body, peer, client_ip, identity, io] =
        argv.map(|v| unsafe { Unknown::from_raw_unchecked(env, v) });
    let answer = flat(engine, text, body, peer, client_ip, identity, io)
        .map_err(|f| f.into_js(&Env::from_raw(env)))
        // SAFETY: `env` is this callback's.
        .and_then(|a| unsafe { Flat::to_napi_value(env, a) });
    match answer {
        Ok(v) => v,
        Err(e) => {
            // SAFETY: `env` is this callback's; napi throws when the callback returns.
            unsafe { napi::JsError::from(e).throw_into(env) };
            std::ptr::null_mut()
        }
    }
}

impl Engine {
    /// The core's decision on a request read from JS, on the calling thread.
    fn inspect_here(&self, p: Res<Parts<'_>>) -> Res<edgeward::Decision> {
        let p = p?;
        Ok(View {
            method: p.method.bytes(),
            uri: p.uri.bytes(),
            headers: p
                .headers
                .iter()
                .map(|(n, v)| (n.bytes(), v.bytes()))
                .collect(),
            body: p.body.as_ref().map(Bytes::bytes),
            peer: p.peer,
            client_ip: p.client_ip,
            identity: p.identity.as_deref(),
        }
        .inspect(&self.engine))
    }
}

/// A request copied out of JS for the thread pool.
fn owned_request(req: Unknown<'_>) -> Res<OwnedRequest> {
    let p = parts_of(req)?;
    let owned = |b: Bytes<'_>| match b {
        Bytes::Owned(v) => v,
        other => other.bytes().to_vec(),
    };
    Ok(OwnedRequest {
        method: owned(p.method),
        uri: owned(p.uri),
        headers: p
            .headers
            .into_iter()
            .map(|(n, v)| (owned(n), owned(v)))
            .collect(),
        body: p.body.map(owned),
        peer: p.peer,
        client_ip: p.client_ip,
        identity: p.identity,
    })
}

/// `_inspectAsync`'s work: `inspectAsync`'s, resolved in the compact form.
pub struct CompactTask(InspectTask);

impl Task for CompactTask {
    type Output = edgeward::Decision;
    type JsValue = Compact;

    fn compute(&mut self) -> Result<Self::Output> {
        self.0.compute()
    }

    fn resolve(&mut self, _env: Env, d: Self::Output) -> Result<Self::JsValue> {
        Ok(Compact::new(d))
    }
}

#[napi]
impl Engine {
    /// An engine from a policy: a path to a YAML or JSON file (rule and key files it names
    /// are read relative to it), or the policy text itself.
    #[napi(factory, ts_args_type = "pathOrText: string")]
    pub fn from_policy(env: Env, path_or_text: Unknown<'_>) -> Result<Engine> {
        let r = if path_or_text.get_type().ok() == Some(ValueType::String) {
            policy_of(path_or_text).and_then(|p| edgeward::Engine::new(&p).map_err(Fail::from))
        } else {
            Err(Fail::type_error(
                "fromPolicy takes a path or policy text (string)",
            ))
        };
        r.map(|engine| Engine { engine })
            .map_err(|f| f.into_js(&env))
    }

    /// An engine from a compiled bundle (`edgeward compile -o BUNDLE`); the bytes are
    /// checked, so untrusted bundles are safe to load.
    #[napi(factory, ts_args_type = "bundle: Buffer | Uint8Array")]
    pub fn from_bundle(env: Env, bundle: Unknown<'_>) -> Result<Engine> {
        let r = match v_is_bytes(&bundle) {
            true => bytes_of(bundle, "the bundle", false)
                .and_then(|b| edgeward::Engine::from_bundle(b.bytes()).map_err(Fail::from)),
            false => Err(Fail::type_error("fromBundle takes a Buffer or Uint8Array")),
        };
        r.map(|engine| Engine { engine })
            .map_err(|f| f.into_js(&env))
    }

    /// The engine of the embedded default policy (built-in rules, no keys or limits).
    #[napi(factory, js_name = "default")]
    pub fn default_engine(env: Env) -> Result<Engine> {
        edgeward::Engine::new(&edgeward::Policy::default_policy())
            .map(|engine| Engine { engine })
            .map_err(|e| Fail::from(e).into_js(&env))
    }

    /// The engine as a bundle, for `Engine.fromBundle`.
    #[napi]
    pub fn to_bundle(&self) -> Buffer {
        self.engine.to_bundle().into()
    }

    /// Inspects a request on the calling thread: `{method, uri (or url), headers, body,
    /// peer, clientIp, identity}`. `headers` is node's `req.headers`, `req.rawHeaders`
    /// or `[name, value]` pairs; `body` a Buffer (read in place, not copied),
    /// Uint8Array or string; `peer` the socket's IP address; `clientIp` the end client's
    /// address your proxy resolved; `identity` a caller your host has already verified.
    /// Never throws on request content: malformed bodies are findings in the decision.
    #[napi(ts_args_type = "req: InspectRequest")]
    pub fn inspect(&self, env: Env, req: Unknown<'_>) -> Result<Decision> {
        self.inspect_here(parts_of(req))
            .map(Decision::from_core)
            .map_err(|f| f.into_js(&env))
    }

    /// `inspect` for `lib/decision.js`, which reads the request's fields in JS (a
    /// property read by name through N-API costs more than the JS call) and builds the
    /// same decision in JS.
    #[napi(js_name = "_inspect", skip_typescript)]
    #[allow(clippy::too_many_arguments)]
    pub fn inspect_compact<'env>(
        &self,
        env: Env,
        method: Unknown<'env>,
        uri: Unknown<'env>,
        url: Unknown<'env>,
        headers: Unknown<'env>,
        body: Unknown<'env>,
        peer: Unknown<'env>,
        client_ip: Unknown<'env>,
        identity: Unknown<'env>,
    ) -> Result<Compact> {
        let fields = Fields {
            method: present(method),
            uri: present(uri),
            url: present(url),
            headers: present(headers),
            body: present(body),
            peer: present(peer),
            client_ip: present(client_ip),
            identity: present(identity),
        };
        self.inspect_here(parts_from(fields))
            .map(Compact::new)
            .map_err(|f| f.into_js(&env))
    }

    /// `inspect` for `lib/decision.js` when the method, URI and headers are strings: a
    /// function bound to this engine, `(text, body, peer, clientIp, identity, io)`, that
    /// takes them as one string with their lengths in `io` (see `flat.rs`) and answers the
    /// common allowed decision through `io`. A raw N-API function, not a method: napi-rs's
    /// bookkeeping for a method's `&self` (a borrow registered in a global map and a scope
    /// allocated per call) cost a third of what the binding adds to a call.
    #[napi(js_name = "_flat", skip_typescript)]
    pub fn flat_entry<'env>(&self, env: &'env Env) -> Result<Unknown<'env>> {
        bound_flat(env, self.engine.clone())
    }

    /// `inspectAsync` for `lib/decision.js`.
    #[napi(js_name = "_inspectAsync", skip_typescript)]
    pub fn inspect_async_compact(
        &self,
        env: Env,
        req: Unknown<'_>,
    ) -> Result<AsyncTask<CompactTask>> {
        let req = owned_request(req).map_err(|f| f.into_js(&env))?;
        Ok(AsyncTask::new(CompactTask(InspectTask {
            engine: self.engine.clone(),
            req,
        })))
    }

    /// `inspect` off the JS thread: the request is copied out of JS (see why in the
    /// README) and inspected on the libuv thread pool; the promise resolves to the
    /// decision.
    #[napi(
        ts_args_type = "req: InspectRequest",
        ts_return_type = "Promise<Decision>"
    )]
    pub fn inspect_async(&self, env: Env, req: Unknown<'_>) -> Result<AsyncTask<InspectTask>> {
        let req = owned_request(req).map_err(|f| f.into_js(&env))?;
        Ok(AsyncTask::new(InspectTask {
            engine: self.engine.clone(),
            req,
        }))
    }

    /// The body to answer a refused request with (by default the OpenAI error shape,
    /// `{"error": {"message", "type", "code"}}`); null when the request is allowed.
    /// `requestId` fills the policy template's `{request_id}`.
    #[napi(ts_args_type = "decision: Decision, requestId?: string | undefined | null")]
    pub fn refusal_body(
        &self,
        env: Env,
        decision: Unknown<'_>,
        request_id: Option<String>,
    ) -> Result<Option<String>> {
        let d = held(decision).map_err(|f| f.into_js(&env))?;
        Ok(self.engine.refusal_body(&d, request_id.as_deref()))
    }

    /// The content type of `refusalBody`.
    #[napi(getter)]
    pub fn refusal_content_type(&self) -> String {
        self.engine.refusal_content_type().to_string()
    }

    /// The request body to forward for an allowed decision: null to forward the original
    /// bytes, or the body with the decision's rewrites (clamped `max_tokens`, stripped
    /// parameters) applied. Throws (code `rewrite.*`) when the body cannot carry them:
    /// refuse the request then rather than forward it unchanged.
    #[napi(ts_args_type = "decision: Decision, body: Buffer | Uint8Array | string")]
    pub fn rewrite_body(
        &self,
        env: Env,
        decision: Unknown<'_>,
        body: Unknown<'_>,
    ) -> Result<Option<Buffer>> {
        let r = held(decision).and_then(|d| {
            let b = bytes_of(body, "body", false)?;
            Ok(self.engine.rewrite_body(&d, b.bytes())?)
        });
        r.map(|o| o.map(Buffer::from)).map_err(|f| f.into_js(&env))
    }

    /// The usage reported in a (non-streamed) JSON response body. Throws `usage.*` when
    /// the body has none, `node.not_found` when the route serves no known format.
    #[napi(ts_args_type = "decision: Decision, body: Buffer | Uint8Array | string")]
    pub fn usage_from_body(
        &self,
        env: Env,
        decision: Unknown<'_>,
        body: Unknown<'_>,
    ) -> Result<Usage> {
        let r = held(decision).and_then(|d| {
            let b = bytes_of(body, "body", false)?;
            match self.engine.usage_from_body(&d, b.bytes()) {
                None => Err(Fail::not_found(
                    "the decision's route serves no known usage format",
                )),
                Some(u) => Ok(Usage::from(u?)),
            }
        });
        r.map_err(|f| f.into_js(&env))
    }

    /// A tracker for the streamed response to the decided request; null when the route
    /// serves no known stream format.
    #[napi(ts_args_type = "decision: Decision")]
    pub fn usage_tracker(&self, env: Env, decision: Unknown<'_>) -> Result<Option<UsageTracker>> {
        let d = held(decision).map_err(|f| f.into_js(&env))?;
        Ok(self
            .engine
            .usage_tracker(&d)
            .map(|t| UsageTracker { t: Some(t) }))
    }

    /// Settles what a request reserved with what its response used, on the calling
    /// thread: `usage` is a usage object (`{promptTokens, outputTokens, ...}`) or the
    /// JSON response body to read it from. Token and cost limits are refunded or topped
    /// up, concurrency released, the usage counted in the metrics. Returns true when
    /// settled now, false when there was nothing to settle (no reservation, already
    /// settled, or expired). With a Redis store this waits for Redis: event-loop hosts
    /// use `settleAsync`.
    #[napi(
        ts_args_type = "decisionOrReservation: Decision | Reservation, usage: UsageInput | Buffer | Uint8Array | string"
    )]
    pub fn settle(
        &self,
        env: Env,
        decision_or_reservation: Unknown<'_>,
        usage: Unknown<'_>,
    ) -> Result<bool> {
        let r = held(decision_or_reservation)
            .and_then(|d| settle_now(&self.engine, &d, usage_arg(usage)?));
        r.map_err(|f| f.into_js(&env))
    }

    /// `settle` on the libuv thread pool: the promise resolves to whether it settled now.
    #[napi(
        ts_args_type = "decisionOrReservation: Decision | Reservation, usage: UsageInput | Buffer | Uint8Array | string",
        ts_return_type = "Promise<boolean>"
    )]
    pub fn settle_async(
        &self,
        env: Env,
        decision_or_reservation: Unknown<'_>,
        usage: Unknown<'_>,
    ) -> Result<AsyncTask<SettleTask>> {
        let r = held(decision_or_reservation).and_then(|d| Ok((d, usage_arg(usage)?)));
        let (decision, usage) = r.map_err(|f| f.into_js(&env))?;
        Ok(AsyncTask::new(SettleTask {
            engine: self.engine.clone(),
            decision,
            usage: Some(usage),
        }))
    }

    /// The decision in its stable JSON form, for audit logs.
    #[napi(ts_args_type = "decision: Decision")]
    pub fn decision_json(&self, env: Env, decision: Unknown<'_>) -> Result<String> {
        held(decision)
            .map(|d| d.to_json())
            .map_err(|f| f.into_js(&env))
    }

    /// The decision as one JSON event line for logs (time, route, principal, action,
    /// rules, cost, limits; never credentials).
    #[napi(ts_args_type = "decision: Decision")]
    pub fn event_json(&self, env: Env, decision: Unknown<'_>) -> Result<String> {
        held(decision)
            .map(|d| self.engine.event_json(&d, None))
            .map_err(|f| f.into_js(&env))
    }

    /// The engine's metrics in the Prometheus text format, for a `/metrics` endpoint.
    #[napi]
    pub fn metrics_text(&self) -> String {
        self.engine.metrics_text()
    }
}

fn v_is_bytes(v: &Unknown<'_>) -> bool {
    v.get_type().ok() == Some(ValueType::Object)
        && (v.is_buffer().unwrap_or(false) || v.is_typedarray().unwrap_or(false))
}
