//! The sync `inspect`'s lane between `lib/decision.js` and the addon, where each N-API call
//! costs about as much as the rest of the binding together.
//!
//! In: the method, the URI and every header name and value as one string (`text`) with
//! the length of each part in a Float64Array (`io`) that `lib/decision.js` allocates once
//! and reuses, so reading node's `rawHeaders` is one N-API call instead of one or two per
//! string. Out: the common allowed decision's numbers in the same `io`, its strings as one
//! string (or none when they equal the previous call's), and an integer id for the core
//! decision, kept here in [`keep`] until the JS handle that carries the id is garbage
//! collected (a `FinalizationRegistry` in `lib/decision.js` calls [`release`]). The
//! per-decision N-API external this replaces cost a payload-registry entry, a finalizer
//! and a reference in Node's tracker on every call.

use std::cell::RefCell;
use std::sync::{Mutex, PoisonError};

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
    pub(super) const ID: usize = 13;
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
    (v >= 0.0 && v.fract() == 0.0 && v <= f64::from(u32::MAX)).then_some(v as usize)
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
    let mut lens = Vec::with_capacity(parts);
    let mut total = 0usize;
    for &l in &io[LENS..LENS + parts] {
        let l = whole(l).ok_or_else(bad)?;
        total = total.checked_add(l).ok_or_else(bad)?;
        lens.push(l);
    }
    let raw = text.value();
    // Room for one unit more than expected (and napi's terminator): a longer string
    // fills it, so a truncated copy is never taken for the whole.
    let mut units: Vec<u16> = Vec::with_capacity(total + 2);
    let mut got = 0usize;
    // SAFETY: `raw` is a live value of the current call; napi writes at most `total + 2`
    // units (the vector's capacity), its terminator included, and the count into `got`.
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
    let mut ends = Vec::with_capacity(parts);
    // The common case, every character a byte, as two loops the compiler vectorizes.
    if units.iter().fold(0, |m, &u| m | u) <= 0xff {
        let bytes = units.iter().map(|&u| u as u8).collect();
        let mut end = 0;
        for l in lens {
            end += l;
            ends.push(end);
        }
        return Ok(Text { bytes, ends });
    }
    let mut bytes = Vec::with_capacity(total);
    let mut at = 0;
    for l in lens {
        let part = &units[at..at + l];
        at += l;
        if part.iter().all(|&u| u <= 0xff) {
            bytes.extend(part.iter().map(|&u| u as u8));
        } else {
            bytes.extend_from_slice(String::from_utf16_lossy(part).as_bytes());
        }
        ends.push(bytes.len());
    }
    Ok(Text { bytes, ends })
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

thread_local! {
    /// The strings last sent to JS on this thread, with the token of the module instance
    /// that received them.
    static LAST: RefCell<(f64, String)> = const { RefCell::new((f64::NAN, String::new())) };
}

/// Writes a common decision's numbers into `out` and returns its strings, or `None` when
/// they are those this thread last sent to the same module instance.
pub(crate) fn write(out: &mut [f64], d: &edgeward::Decision, id: f64) -> Option<String> {
    let token = out[TOKEN];
    out[out::MONITOR] = f64::from(u8::from(matches!(d.mode, edgeward::Mode::Monitor)));
    out[out::SCORE] = f64::from(d.score);
    out[out::THRESHOLD] = f64::from(d.threshold);
    out[out::INSPECT_NS] = d.inspect_ns.0 as f64;
    out[out::ID] = id;
    let stage = d.stage.as_str();
    let model = d.cost.as_ref().and_then(|c| c.model.as_deref());
    let provider = d
        .cost
        .as_ref()
        .and_then(|c| c.provider)
        .map(edgeward::cost::usage::Provider::as_str);
    match &d.cost {
        None => out[out::HAS_COST] = 0.0,
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
    out[out::STRINGS] = js_len(stage);
    out[out::STRINGS + 1] = js_len(&d.route);
    out[out::STRINGS + 2] = model.map_or(-1.0, js_len);
    out[out::STRINGS + 3] = provider.map_or(-1.0, js_len);
    let mut s = String::with_capacity(64);
    s.push_str(stage);
    s.push_str(&d.route);
    s.push_str(model.unwrap_or_default());
    s.push_str(provider.unwrap_or_default());
    LAST.with_borrow_mut(|last| {
        // The lengths tell the parts apart, so equal strings mean equal parts.
        if last.0 == token && last.1 == s {
            None
        } else {
            last.0 = token;
            last.1.clone_from(&s);
            Some(s)
        }
    })
}

/// Core decisions that JS holds by id: a slab, so keeping and finding one is an index
/// (a hash map's hashing and growth cost more than the rest of `keep`).
///
/// An id is the slot's index plus its generation times 2^32, so an id whose slot was
/// freed and reused finds nothing. A live handle's slot is never freed (it is released
/// only after its handle is collected), so ids reach the addon only for kept decisions;
/// the generation guards against ids built by hand through the private methods.
struct Slab {
    slots: Vec<Slot>,
    free: Vec<u32>,
    len: u32,
}

struct Slot {
    generation: u32,
    held: Option<Held>,
}

/// Generations wrap below 2^21, so every id stays an exact JS number (below 2^53).
const GENERATIONS: u32 = 1 << 21;
const INDEX: f64 = 4_294_967_296.0;

/// One for the process, so a decision from one engine is still taken back by another (as
/// an external handle is).
static SLAB: Mutex<Slab> = Mutex::new(Slab {
    slots: Vec::new(),
    free: Vec::new(),
    len: 0,
});

fn with_slab<T>(f: impl FnOnce(&mut Slab) -> T) -> T {
    // Nothing panics while holding the lock; a poisoned one still holds a consistent slab.
    f(&mut SLAB.lock().unwrap_or_else(PoisonError::into_inner))
}

/// An id's slot index and generation, if it is one.
fn split(id: f64) -> Option<(usize, u32)> {
    if !(0.0..INDEX * f64::from(GENERATIONS)).contains(&id) || id.fract() != 0.0 {
        return None;
    }
    let generation = (id / INDEX).floor();
    Some(((id - generation * INDEX) as usize, generation as u32))
}

/// Keeps a decision for JS; returns its id.
pub(crate) fn keep(d: Held) -> f64 {
    with_slab(|s| {
        s.len += 1;
        let index = match s.free.pop() {
            Some(i) => {
                let slot = &mut s.slots[i as usize];
                slot.generation = (slot.generation + 1) % GENERATIONS;
                slot.held = Some(d);
                i
            }
            None => {
                s.slots.push(Slot {
                    generation: 0,
                    held: Some(d),
                });
                (s.slots.len() - 1) as u32
            }
        };
        f64::from(s.slots[index as usize].generation) * INDEX + f64::from(index)
    })
}

/// The decision kept under `id`, if it is still kept.
pub(crate) fn find(id: f64) -> Option<Held> {
    let (index, generation) = split(id)?;
    with_slab(|s| {
        let slot = s.slots.get(index)?;
        (slot.generation == generation)
            .then(|| slot.held.clone())
            .flatten()
    })
}

/// Forgets the decisions under `ids` (unknown and already released ids are ignored).
pub(crate) fn release(ids: &[f64]) {
    // Dropped after the lock is let go: freeing a decision is the costly part.
    let mut dropped = Vec::with_capacity(ids.len());
    with_slab(|s| {
        for &id in ids {
            let Some((index, generation)) = split(id) else {
                continue;
            };
            if let Some(slot) = s.slots.get_mut(index) {
                if slot.generation == generation {
                    if let Some(d) = slot.held.take() {
                        dropped.push(d);
                        s.free.push(index as u32);
                        s.len -= 1;
                    }
                }
            }
        }
    });
    drop(dropped);
}

/// How many decisions are kept (for the tests that check handles are released).
pub(crate) fn kept() -> u32 {
    with_slab(|s| s.len)
}

/// What `_inspectFlat` answers: the strings of a common decision (its numbers are in
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
