//! The sync `inspect`'s lane between `lib/decision.js` and the addon, where each N-API call
//! costs about as much as the rest of the binding together.
//!
//! In: the method, the URI and every header name and value as one string (`text`) with
//! the length of each part in a Float64Array (`io`) that `lib/decision.js` allocates once
//! and reuses, so reading node's `rawHeaders` is one N-API call instead of one or two per
//! string. Out: the common allowed decision's numbers in the same `io`, its strings as one
//! string (or none when JS has them already), and the index of its template: a common
//! decision is a template the addon keeps for good (one per route, model and mode) plus
//! numbers its JS handle carries, so the addon keeps nothing per decision (see
//! [`TEMPLATES`]).

use std::cell::{Cell, RefCell};
use std::sync::{Arc, Mutex, PoisonError};

use napi::bindgen_prelude::*;
use napi::JsValue;

use crate::decision::Held;
use crate::errors::{Fail, Res};

/// `io[TOKEN]`: a number `lib/decision.js` draws once per module instance, so a string cache
/// never answers "same as before" to another instance loaded on the same thread.
pub(crate) const TOKEN: usize = 0;
/// `io[PARTS]`: how many parts `text` has (the method, the URI, then names and values).
pub(crate) const PARTS: usize = 1;
/// `io[LENS..LENS + parts]`: each part's length in UTF-16 code units.
pub(crate) const LENS: usize = 20;

/// Output slots, mirrored in `lib/decision.js`.
mod out {
    pub(super) const MONITOR: usize = 2;
    pub(super) const SCORE: usize = 3;
    pub(super) const THRESHOLD: usize = 4;
    pub(super) const INSPECT_NS: usize = 5;
    pub(super) const HAS_COST: usize = 6;
    /// Prompt tokens, low, high, output reserved, micro-dollars, exact: six slots.
    pub(super) const COST: usize = 7;
    /// The template's index.
    pub(super) const TEMPLATE: usize = 13;
    /// Lengths of stage, route, model and provider in the strings (-1 when absent).
    pub(super) const STRINGS: usize = 14;
}

/// The request's text parts as bytes, in one buffer.
pub(crate) struct Text {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Text {
    /// Part `i` (0 the method, 1 the URI, then names and values).
    pub(crate) fn part(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[start..self.ends[i]]
    }

    /// The header (name, value) pairs.
    pub(crate) fn headers(&self) -> Vec<(&[u8], &[u8])> {
        (2..self.ends.len())
            .step_by(2)
            .map(|i| (self.part(i), self.part(i + 1)))
            .collect()
    }
}

/// A length or count in `io`: a whole number that fits.
fn whole(v: f64) -> Option<usize> {
    // The round trip through an integer, not `fract()`: that is a call into libm, once per
    // header name and value.
    ((0.0..=f64::from(u32::MAX)).contains(&v) && f64::from(v as u32) == v).then_some(v as usize)
}

/// Reads `text` and its parts' lengths. Each part's bytes follow the rule of
/// `bytes_of(.., latin1 = true)`: a part whose characters all fit in a byte gives those
/// bytes (node's parser made one character of each wire byte), any other part its UTF-8
/// (a lone surrogate as U+FFFD, as V8 encodes it).
pub(crate) fn read_text(text: &Unknown<'_>, io: &[f64]) -> Res<Text> {
    let bad = || Fail::type_error("the request's text does not match its parts");
    let parts = io
        .get(PARTS)
        .copied()
        .and_then(whole)
        .filter(|&n| n >= 2 && n % 2 == 0 && LENS + n <= io.len())
        .ok_or_else(bad)?;
    // Where each part ends, in UTF-16 units (and in bytes, when every unit is a byte).
    let mut ends = Vec::with_capacity(parts);
    let mut total = 0usize;
    for &l in &io[LENS..LENS + parts] {
        total = total
            .checked_add(whole(l).ok_or_else(bad)?)
            .ok_or_else(bad)?;
        ends.push(total);
    }
    let raw = text.value();
    UNITS.with_borrow_mut(|units| {
        units.clear();
        // Room for one unit more than expected (and napi's terminator): a longer string
        // fills it, so a truncated copy is never taken for the whole.
        units.reserve(total + 2);
        let mut got = 0usize;
        // SAFETY: `raw` is a live value of the current call; napi writes at most
        // `total + 2` units (within the capacity), its terminator included, and the count
        // into `got`. No JS runs meanwhile, so nothing else borrows `UNITS`.
        check_status!(unsafe {
            napi::sys::napi_get_value_string_utf16(
                raw.env,
                raw.value,
                units.as_mut_ptr(),
                total + 2,
                &mut got,
            )
        })
        .map_err(|_| Fail::type_error("the request's text must be a string"))?;
        if got != total {
            return Err(bad());
        }
        // SAFETY: napi wrote `got` units (and a terminator after them, within the capacity).
        unsafe { units.set_len(got) };
        let text = text_of(units, ends);
        // One long request must not pin its buffer for the life of the thread.
        if units.capacity() > 1 << 16 {
            *units = Vec::new();
        }
        Ok(text)
    })
}

/// The bytes of `units`, whose parts end at `ends` (rewritten to end in bytes).
fn text_of(units: &[u16], mut ends: Vec<usize>) -> Text {
    // The common case, every character a byte, as a loop the compiler vectorizes.
    if units.iter().fold(0, |m, &u| m | u) <= 0xff {
        let bytes = units.iter().map(|&u| u as u8).collect();
        return Text { bytes, ends };
    }
    let mut bytes = Vec::with_capacity(units.len());
    let mut at = 0;
    for end in &mut ends {
        let part = &units[at..*end];
        at = *end;
        if part.iter().all(|&u| u <= 0xff) {
            bytes.extend(part.iter().map(|&u| u as u8));
        } else {
            bytes.extend_from_slice(String::from_utf16_lossy(part).as_bytes());
        }
        *end = bytes.len();
    }
    Text { bytes, ends }
}

/// A string's length in UTF-16 code units (what JS's `slice` counts).
fn js_len(s: &str) -> f64 {
    let n = if s.is_ascii() {
        s.len()
    } else {
        s.encode_utf16().count()
    };
    n as f64
}

/// What a common decision shares with every other of its route and model: all but its
/// numbers. A common decision is its template (an index into [`TEMPLATES`]) plus the
/// numbers of [`HANDLE`], which the JS handle carries itself, so the addon keeps nothing
/// per decision: a decision kept until the garbage collector reported its handle gone
/// (a `FinalizationRegistry`) made every handle outlive the young generation and the
/// addon's heap grow by a decision per call until the next full collection.
static TEMPLATES: Mutex<Vec<Held>> = Mutex::new(Vec::new());

/// Templates are never removed (a handle may come back at any time), so their number is
/// bounded; a decision with no room for its template goes back as the full object. Each
/// is a route, model and mode of some policy, so a process reaches this only by building
/// engines from thousands of different policies.
const MAX_TEMPLATES: usize = 4096;

/// A common handle's numbers, in the order `lib/decision.js` keeps and passes them: the
/// template, the score, the inspection's nanoseconds, then the cost's prompt tokens, low,
/// high, output reserved, micro-dollars and exact (0 or 1; all 0 without a cost).
pub(crate) const HANDLE: usize = 9;

thread_local! {
    /// The request text's UTF-16 units, read anew by every call on this thread.
    static UNITS: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
    /// The template this thread used last: consecutive requests mostly share one.
    static LAST: RefCell<Option<(u32, Held)>> = const { RefCell::new(None) };
    /// The template whose strings this thread last sent, with the token of the module
    /// instance that received them.
    static SENT: Cell<(f64, u32)> = const { Cell::new((f64::NAN, u32::MAX)) };
}

/// Whether `d` is `t` but for the numbers a handle carries (both common decisions).
fn same_shape(t: &edgeward::Decision, d: &edgeward::Decision) -> bool {
    t.stage == d.stage
        && t.mode == d.mode
        && t.threshold == d.threshold
        && t.route == d.route
        && match (&t.cost, &d.cost) {
            (None, None) => true,
            (Some(a), Some(b)) => a.model == b.model && a.provider == b.provider,
            _ => false,
        }
}

/// The template of a common decision, or `None` when there is no room for a new one.
pub(crate) fn template_of(d: &edgeward::Decision) -> Option<u32> {
    LAST.with_borrow_mut(|last| {
        if let Some((i, t)) = last {
            if same_shape(t, d) {
                return Some(*i);
            }
        }
        let found = {
            let mut all = TEMPLATES.lock().unwrap_or_else(PoisonError::into_inner);
            match all.iter().position(|t| same_shape(t, d)) {
                Some(i) => Some((i, Arc::clone(&all[i]))),
                None if all.len() < MAX_TEMPLATES => {
                    all.push(Arc::new(d.clone()));
                    Some((all.len() - 1, Arc::clone(&all[all.len() - 1])))
                }
                None => None,
            }
        };
        let (i, t) = found?;
        let i = i as u32;
        *last = Some((i, t));
        Some(i)
    })
}

/// How many templates there are (for the tests that check they do not grow per call).
pub(crate) fn templates() -> u32 {
    TEMPLATES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .len() as u32
}

/// The common decision a handle's numbers describe.
pub(crate) fn rebuild(h: &[f64]) -> Res<Held> {
    let bad = || Fail::type_error("not a decision handle of this module");
    let count = |v: f64| -> Res<u64> {
        ((0.0..=9_007_199_254_740_992.0).contains(&v) && (v as u64) as f64 == v)
            .then_some(v as u64)
            .ok_or_else(bad)
    };
    if h.len() != HANDLE {
        return Err(bad());
    }
    let n = h.iter().map(|&v| count(v)).collect::<Res<Vec<u64>>>()?;
    let template = {
        let all = TEMPLATES.lock().unwrap_or_else(PoisonError::into_inner);
        usize::try_from(n[0])
            .ok()
            .and_then(|i| all.get(i))
            .map(Arc::clone)
    }
    .ok_or_else(|| Fail::released("the decision's handle was never issued by this module"))?;
    let mut d = (*template).clone();
    d.score = u32::try_from(n[1]).map_err(|_| bad())?;
    d.inspect_ns = edgeward::decision::Elapsed(n[2]);
    if let Some(c) = &mut d.cost {
        if n[8] > 1 {
            return Err(bad());
        }
        c.prompt_tokens = n[3];
        c.prompt_tokens_low = n[4];
        c.prompt_tokens_high = n[5];
        c.output_tokens_reserved = n[6];
        c.micro_usd = n[7];
        c.exact = n[8] == 1;
    }
    Ok(Arc::new(d))
}

/// Writes a common decision's numbers into `out` and returns its strings, or `None` when
/// they are those this thread last sent to the same module instance.
pub(crate) fn write(out: &mut [f64], d: &edgeward::Decision, template: u32) -> Option<String> {
    let token = out[TOKEN];
    out[out::MONITOR] = f64::from(u8::from(matches!(d.mode, edgeward::Mode::Monitor)));
    out[out::SCORE] = f64::from(d.score);
    out[out::THRESHOLD] = f64::from(d.threshold);
    out[out::INSPECT_NS] = d.inspect_ns.0 as f64;
    out[out::TEMPLATE] = f64::from(template);
    match &d.cost {
        // The cost's slots are a handle's numbers too (0 without a cost).
        None => {
            out[out::HAS_COST] = 0.0;
            out[out::COST..out::COST + 6].fill(0.0);
        }
        Some(c) => {
            out[out::HAS_COST] = 1.0;
            out[out::COST..out::COST + 6].copy_from_slice(&[
                c.prompt_tokens as f64,
                c.prompt_tokens_low as f64,
                c.prompt_tokens_high as f64,
                c.output_tokens_reserved as f64,
                c.micro_usd as f64,
                f64::from(u8::from(c.exact)),
            ]);
        }
    }
    // The strings are the template's, so JS still has them when the template is the one
    // it was last sent (the lengths go with them).
    if SENT.get() == (token, template) {
        return None;
    }
    SENT.set((token, template));
    let stage = d.stage.as_str();
    let model = d.cost.as_ref().and_then(|c| c.model.as_deref());
    let provider = d
        .cost
        .as_ref()
        .and_then(|c| c.provider)
        .map(edgeward::cost::usage::Provider::as_str);
    out[out::STRINGS] = js_len(stage);
    out[out::STRINGS + 1] = js_len(&d.route);
    out[out::STRINGS + 2] = model.map_or(-1.0, js_len);
    out[out::STRINGS + 3] = provider.map_or(-1.0, js_len);
    let mut s = String::with_capacity(64);
    s.push_str(stage);
    s.push_str(&d.route);
    s.push_str(model.unwrap_or_default());
    s.push_str(provider.unwrap_or_default());
    Some(s)
}

/// What the flat lane (`_flat`) answers: the strings of a common decision (its numbers are in
/// `io`), nothing when the strings are the previous call's, or the full decision object.
pub enum Flat {
    /// The numbers are in `io` and the strings are the previous call's.
    Same,
    /// The numbers are in `io`; its strings, one after the other.
    Strings(String),
    /// A decision with more in it than `io` carries.
    Full(Box<crate::decision::Decision>),
}

impl ToNapiValue for Flat {
    unsafe fn to_napi_value(env: napi::sys::napi_env, val: Self) -> Result<napi::sys::napi_value> {
        // SAFETY: `env` is the environment napi-rs called this conversion with.
        match val {
            Flat::Same => unsafe { <()>::to_napi_value(env, ()) },
            Flat::Strings(s) => unsafe { String::to_napi_value(env, s) },
            Flat::Full(d) => unsafe { crate::decision::Decision::to_napi_value(env, *d) },
        }
    }
}

impl TypeName for Flat {
    fn type_name() -> &'static str {
        "string | Decision | undefined"
    }

    fn value_type() -> ValueType {
        ValueType::Unknown
    }
}
