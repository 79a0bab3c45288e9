//! Target `c_abi`: the C entry points, called as C calls them.
//!
//! The input is a [`Framed`] request; it is inspected through `ew_inspect` (with a scratch
//! and with the pooled one), every accessor of the decision is read, the body is offered
//! for rewriting and settlement, the same bytes are streamed through a usage tracker, and
//! the input is also tried as policy text and as a bundle. Each status must be one of the
//! enum's, each string valid UTF-8 of the length given, and nothing may unwind.

use std::mem::MaybeUninit;
use std::ptr;
use std::sync::OnceLock;

use edgeward_ffi::ew_status::{self, EW_ERR_NOT_FOUND, EW_OK};
use edgeward_ffi::*;

use crate::Framed;

fn b(s: &[u8]) -> ew_bytes {
    ew_bytes {
        ptr: s.as_ptr(),
        len: s.len(),
    }
}

/// The text of an `ew_str`, checked to be UTF-8.
fn text(s: ew_str) -> String {
    assert!(!s.ptr.is_null(), "an ew_str with a NULL pointer");
    // SAFETY: the C ABI hands out `ew_str` pointing at `len` bytes that live as long as
    // the decision or engine they came from, which outlive this call.
    let bytes = unsafe { std::slice::from_raw_parts(s.ptr.cast::<u8>(), s.len) };
    String::from_utf8(bytes.to_vec()).expect("an ew_str that is not UTF-8")
}

/// Takes the text of an owned string and frees it.
fn take(s: ew_string) -> String {
    assert!(!s.ptr.is_null(), "an ew_string with a NULL pointer");
    // SAFETY: an `ew_string` from a successful call points at `len` bytes and a NUL.
    let bytes = unsafe { std::slice::from_raw_parts(s.ptr.cast::<u8>(), s.len) };
    let t = String::from_utf8(bytes.to_vec()).expect("an ew_string that is not UTF-8");
    // SAFETY: freed once, as the header says.
    unsafe { ew_string_free(s) };
    t
}

fn status_ok(s: ew_status) -> bool {
    // The enum is `repr(C)` with values 0..=10; a value outside would be undefined
    // behaviour already, so checking the discriminant catches a corrupted return.
    assert!((s as u32) <= 10, "status {} outside the enum", s as u32);
    if s != EW_OK {
        assert!(
            !ew_last_error_code().is_null(),
            "a failure without an error code"
        );
    }
    s == EW_OK
}

struct EnginePtr(*mut ew_engine);
// SAFETY: engines are thread-safe and reference counted (the header's contract).
unsafe impl Send for EnginePtr {}
// SAFETY: as above.
unsafe impl Sync for EnginePtr {}

fn default_engine() -> *const ew_engine {
    static E: OnceLock<EnginePtr> = OnceLock::new();
    E.get_or_init(|| {
        let mut e = ptr::null_mut();
        // SAFETY: a valid out-pointer; the engine is kept for the process.
        let s = unsafe { ew_engine_default(&mut e) };
        assert!(status_ok(s) && !e.is_null());
        EnginePtr(e)
    })
    .0
}

/// Reads every accessor of `d`, offers `body` for rewriting and settlement, and streams
/// `stream` through a usage tracker.
///
/// # Safety
/// `e` and `d` are live handles from the C ABI.
unsafe fn exercise(e: *const ew_engine, d: *mut ew_decision, body: &[u8], stream: &[u8]) {
    // SAFETY (whole function): `e` and `d` are live; every out-pointer is a local.
    unsafe {
        let allowed = ew_decision_allowed(d);
        let status = ew_decision_status(d);
        assert_eq!(allowed, status == 0, "allowed iff no status");
        text(ew_decision_reason_code(d));
        text(ew_decision_reason(d));
        text(ew_decision_stage(d));
        ew_decision_retry_after(d);
        for i in 0..=ew_decision_header_count(d) {
            let (mut n, mut v) = (MaybeUninit::uninit(), MaybeUninit::uninit());
            if status_ok(ew_decision_header(d, i, n.as_mut_ptr(), v.as_mut_ptr())) {
                text(n.assume_init());
                text(v.assume_init());
            }
        }
        for i in 0..=ew_decision_match_count(d) {
            let mut m = MaybeUninit::<ew_match>::uninit();
            if status_ok(ew_decision_match(d, i, m.as_mut_ptr())) {
                let m = m.assume_init();
                text(m.name);
                text(m.category);
                text(m.location);
            }
        }
        let mut cost = MaybeUninit::<ew_cost>::uninit();
        if status_ok(ew_decision_cost(d, cost.as_mut_ptr())) {
            text(cost.assume_init().model);
        }
        for i in 0..=ew_decision_rewrite_count(d) {
            let mut r = MaybeUninit::<ew_rewrite>::uninit();
            if status_ok(ew_decision_rewrite(d, i, r.as_mut_ptr())) {
                text(r.assume_init().param);
            }
        }
        let mut id = MaybeUninit::uninit();
        if status_ok(ew_decision_reservation(d, id.as_mut_ptr())) {
            text(id.assume_init());
        }
        let json = text(ew_decision_json(d));
        assert!(serde_json::from_str::<serde_json::Value>(&json).is_ok());
        let mut ev = MaybeUninit::uninit();
        if status_ok(ew_decision_event_json(e, d, ev.as_mut_ptr())) {
            let ev = text(ev.assume_init());
            assert!(serde_json::from_str::<serde_json::Value>(&ev).is_ok());
        }
        let (mut rb, mut ct) = (MaybeUninit::uninit(), MaybeUninit::uninit());
        let s = ew_decision_refusal(e, d, b(b"req-1"), rb.as_mut_ptr(), ct.as_mut_ptr());
        assert_eq!(status_ok(s), !allowed, "a refusal body iff refused");
        if s == EW_OK {
            text(rb.assume_init());
            text(ct.assume_init());
        }
        let mut out = MaybeUninit::uninit();
        if status_ok(ew_decision_rewrite_body(
            e,
            d,
            body.as_ptr(),
            body.len(),
            out.as_mut_ptr(),
        )) {
            take(out.assume_init());
        }
        let mut t = ptr::null_mut();
        if status_ok(ew_usage_tracker_new(e, d, &mut t)) {
            for chunk in stream.chunks(7) {
                assert!(status_ok(ew_usage_tracker_feed(
                    t,
                    chunk.as_ptr(),
                    chunk.len()
                )));
            }
            let mut u = MaybeUninit::uninit();
            assert!(status_ok(ew_usage_tracker_usage(t, u.as_mut_ptr())));
            assert!(status_ok(ew_usage_tracker_finish(t, u.as_mut_ptr())));
            // A finished tracker refuses more.
            assert!(!status_ok(ew_usage_tracker_feed(t, ptr::null(), 0)));
            ew_usage_tracker_free(t);
        }
        let mut settled = MaybeUninit::uninit();
        let s = ew_settle_body(e, d, body.as_ptr(), body.len(), settled.as_mut_ptr());
        status_ok(s);
        if s != EW_OK && s != EW_ERR_NOT_FOUND {
            // A body without usage: settle with nothing used, as a host would.
            let zero = ew_usage {
                prompt_tokens: 0,
                cached_prompt_tokens: 0,
                cache_creation_tokens: 0,
                output_tokens: 0,
                reasoning_tokens: 0,
                source: 0,
            };
            status_ok(ew_settle_usage(e, d, &zero, ptr::null_mut()));
        }
    }
}

/// The target; see the module documentation.
pub fn c_abi(data: &[u8]) {
    let f = Framed::parse(data);
    let e = default_engine();
    let headers: Vec<ew_header> = f
        .headers
        .iter()
        .map(|(n, v)| ew_header {
            name: b(n),
            value: b(v),
        })
        .collect();
    let req = ew_request {
        method: b(f.method),
        uri: b(f.uri),
        headers: if headers.is_empty() {
            ptr::null()
        } else {
            headers.as_ptr()
        },
        headers_len: headers.len(),
        body: b(f.body),
        peer: b(f.peer.unwrap_or_default()),
        identity: b(f.identity.unwrap_or_default()),
    };
    // SAFETY: `e` is live for the process; `req` and everything it points at live until
    // the end of this function; handles are freed once.
    unsafe {
        let mut scratch = ptr::null_mut();
        assert!(status_ok(ew_scratch_new(e, &mut scratch)));
        let mut d = ptr::null_mut();
        let with_scratch = status_ok(ew_inspect(e, scratch, &req, &mut d));
        let mut pooled = ptr::null_mut();
        let s = ew_inspect(e, ptr::null_mut(), &req, &mut pooled);
        assert_eq!(status_ok(s), with_scratch, "scratch changes the status");
        if with_scratch {
            assert_eq!(
                text(ew_decision_json(d)),
                text(ew_decision_json(pooled)),
                "scratch changes the decision"
            );
            exercise(e, d, f.body, data);
            ew_decision_free(d);
            ew_decision_free(pooled);
        } else {
            // Only a peer that is not an IP address (or an identity that is not UTF-8)
            // may be refused.
            assert!(f.peer.is_some() || f.identity.is_some(), "inspect failed");
            assert!(
                d.is_null() && pooled.is_null(),
                "an out-parameter written on failure"
            );
        }
        ew_scratch_free(scratch);

        // Policy text that names a Redis store would have the fuzzer open connections to
        // addresses it made up.
        let mut pe = ptr::null_mut();
        if !data.windows(5).any(|w| w.eq_ignore_ascii_case(b"redis"))
            && status_ok(ew_engine_from_policy(data.as_ptr(), data.len(), &mut pe))
        {
            ew_engine_free(pe);
        }
        let mut be = ptr::null_mut();
        if status_ok(ew_engine_from_bundle(data.as_ptr(), data.len(), &mut be)) {
            ew_engine_free(be);
        }
    }
}
