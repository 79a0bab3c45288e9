//! Heavy hitters: who costs the most over a sliding window, in fixed memory.
//!
//! Each tracker runs the weighted Space-Saving algorithm (Metwally, Agrawal, El Abbadi,
//! 2005) per time slice: at most `capacity` counters; a key that is not counted takes over
//! the smallest counter, inheriting its value as its possible overcount (`error`). Every
//! key whose true total exceeds `total / capacity` is guaranteed a counter, and each
//! reported value overestimates the true one by at most its `error` (itself at most
//! `total / capacity`). A window is a ring of slices; a query merges the slices that are
//! still inside it, so old traffic ages out slice by slice.
//!
//! Memory is `slices x capacity` counters per tracker whatever the number of keys.
//!
//! [`HeavyHitters`] partitions keys over locked shards by a hash of the key, each shard a
//! summary of its own keys: inspecting threads rarely wait on each other, and since no key
//! is in two shards the union of the shards' lists is the merged list.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The `heavyHitters` section of a policy: how much the top-K trackers remember.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeavySettings {
    /// Counters per time slice (8 to 1,024; default 128), split over eight shards by a
    /// hash of the key. A key is sure to be counted when it has more than
    /// `8 / capacity` of its shard's total; with keys spread evenly that is about
    /// `1 / capacity` of the slice's total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 8, max = 1_024))]
    pub capacity: Option<u32>,
    /// The sliding window the lists cover (default `1h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// Slices the window ages out by (1 to 12; default 6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 12))]
    pub slices: Option<u32>,
}

/// Shards of a [`HeavyHitters`].
const SHARDS: usize = 8;

/// Top-K trackers of one kind of key (principals, client addresses), by several weights
/// at once (micro-dollars, tokens): `N` summaries per shard, one per weight.
#[derive(Debug)]
pub struct HeavyHitters<const N: usize> {
    shards: Box<[Mutex<[SpaceSaving; N]>]>,
}

impl<const N: usize> HeavyHitters<N> {
    /// Trackers of `capacity` counters in all (split over the shards) per slice, over a
    /// window of `slices` slices of `slice_ns`.
    pub fn new(capacity: usize, slices: usize, slice_ns: u64) -> HeavyHitters<N> {
        let per_shard = capacity.div_ceil(SHARDS).max(4);
        HeavyHitters {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(std::array::from_fn(|_| {
                        SpaceSaving::new(per_shard, slices, slice_ns)
                    }))
                })
                .collect(),
        }
    }

    /// The settings of a policy's `heavyHitters` section; `Err` names the bad field.
    pub fn from_settings(s: &HeavySettings) -> Result<HeavyHitters<N>, String> {
        let capacity = s.capacity.unwrap_or(128);
        // Bounded so an update (a scan of a shard's counters when a new key takes over
        // the smallest) and a query (which holds a shard's lock) stay cheap.
        if !(8..=1_024).contains(&capacity) {
            return Err("capacity: must be 8 to 1024".into());
        }
        let slices = s.slices.unwrap_or(6);
        if !(1..=12).contains(&slices) {
            return Err("slices: must be 1 to 12".into());
        }
        let window = match &s.window {
            None => 3_600_000_000_000,
            Some(w) => crate::limits::stage::parse_duration(w)
                .ok_or_else(|| format!("window: {w:?} is not a duration (`10m`, `1h`)"))?,
        };
        Ok(HeavyHitters::new(
            capacity as usize,
            slices as usize,
            (window / u64::from(slices)).max(1),
        ))
    }

    fn shard(&self, key: &str) -> &Mutex<[SpaceSaving; N]> {
        // A fixed-seed foldhash, as the limit stores pick their shards: a skewed shard
        // only costs accuracy, not correctness.
        use std::hash::BuildHasher as _;
        let h = foldhash::fast::FixedState::with_seed(0x4ea7_4b17_7e55_1a3d).hash_one(key);
        &self.shards[(h % SHARDS as u64) as usize]
    }

    /// Add `weights[i]` to `key` in summary `i`.
    pub fn add(&self, key: &str, weights: [u64; N], now_ns: u64) {
        let mut s = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (ss, w) in s.iter_mut().zip(weights) {
            ss.add(key, w, now_ns);
        }
    }

    /// The `k` largest keys by weight `by` over the window ending at `now_ns`.
    pub fn top(&self, by: usize, k: usize, now_ns: u64) -> Vec<HeavyHitter> {
        let mut all: Vec<HeavyHitter> = self
            .shards
            .iter()
            .flat_map(|s| {
                let s = s.lock().unwrap_or_else(PoisonError::into_inner);
                s.get(by).map_or_else(Vec::new, |ss| ss.top(k, now_ns))
            })
            .collect();
        all.sort_by(|a, b| b.value.cmp(&a.value).then_with(|| a.key.cmp(&b.key)));
        all.truncate(k);
        all
    }
}

/// One key's standing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeavyHitter {
    /// The principal id or client address.
    pub key: Arc<str>,
    /// Its total over the window, possibly overestimated by at most `error`.
    pub value: u64,
    /// How much of `value` may belong to other keys.
    pub error: u64,
}

#[derive(Debug, Clone, Default)]
struct Slice {
    /// The slice's index (time / slice length); counters of another index are stale.
    index: u64,
    counters: HashMap<Arc<str>, (u64, u64)>,
}

/// A Space-Saving summary over a sliding window of `slices` slices of `slice_ns` each.
#[derive(Debug, Clone)]
pub struct SpaceSaving {
    capacity: usize,
    slice_ns: u64,
    slices: Vec<Slice>,
}

impl SpaceSaving {
    /// At most `capacity` counters per slice; a window of `slices` slices of `slice_ns`.
    pub fn new(capacity: usize, slices: usize, slice_ns: u64) -> SpaceSaving {
        SpaceSaving {
            capacity: capacity.max(1),
            slice_ns: slice_ns.max(1),
            slices: vec![Slice::default(); slices.max(1)],
        }
    }

    /// Add `weight` to `key` at `now_ns`.
    pub fn add(&mut self, key: &str, weight: u64, now_ns: u64) {
        if weight == 0 {
            return;
        }
        let index = now_ns / self.slice_ns;
        let n = self.slices.len();
        let slice = &mut self.slices[(index % n as u64) as usize];
        if slice.index != index {
            slice.index = index;
            slice.counters.clear();
        }
        if let Some(c) = slice.counters.get_mut(key) {
            c.0 = c.0.saturating_add(weight);
            return;
        }
        if slice.counters.len() < self.capacity {
            slice.counters.insert(Arc::from(key), (weight, 0));
            return;
        }
        // Take over the smallest counter: its value becomes this key's possible overcount.
        let (min_key, min) = slice
            .counters
            .iter()
            .min_by_key(|(_, (v, _))| *v)
            .map(|(k, (v, _))| (Arc::clone(k), *v))
            .expect("a full summary has counters");
        slice.counters.remove(&min_key);
        slice
            .counters
            .insert(Arc::from(key), (min.saturating_add(weight), min));
    }

    /// The `k` largest keys of the window ending at `now_ns`, largest first.
    pub fn top(&self, k: usize, now_ns: u64) -> Vec<HeavyHitter> {
        let index = now_ns / self.slice_ns;
        let oldest = index.saturating_sub(self.slices.len() as u64 - 1);
        let live: Vec<&Slice> = self
            .slices
            .iter()
            .filter(|s| s.index >= oldest && s.index <= index && !s.counters.is_empty())
            .collect();
        // A key missing from a full slice may have had up to that slice's smallest counter
        // there (the merge rule of mergeable summaries): counted in value and error.
        let floors: Vec<u64> = live
            .iter()
            .map(|s| {
                if s.counters.len() >= self.capacity {
                    s.counters.values().map(|c| c.0).min().unwrap_or(0)
                } else {
                    0
                }
            })
            .collect();
        let mut merged: HashMap<&Arc<str>, (u64, u64)> = HashMap::new();
        for s in &live {
            for key in s.counters.keys() {
                merged.entry(key).or_insert((0, 0));
            }
        }
        for (key, m) in merged.iter_mut() {
            for (s, floor) in live.iter().zip(&floors) {
                let (v, e) = s.counters.get(*key).copied().unwrap_or((*floor, *floor));
                m.0 = m.0.saturating_add(v);
                m.1 = m.1.saturating_add(e);
            }
        }
        let mut out: Vec<HeavyHitter> = merged
            .into_iter()
            .map(|(key, (value, error))| HeavyHitter {
                key: Arc::clone(key),
                value,
                error,
            })
            .collect();
        out.sort_by(|a, b| b.value.cmp(&a.value).then_with(|| a.key.cmp(&b.key)));
        out.truncate(k);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 200,000 weighted keys, Zipf-like: key `p<i>` gets about 1/i of the weight (10,000
    /// keys, weights 1 to 7), from an xorshift generator seeded with `seed`.
    fn skewed(seed: u64) -> impl Iterator<Item = (String, u64)> {
        let mut x = seed;
        (0..200_000).map(move |_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Inverse-transform sampling of 1/i.
            let u = (x % 1_000_000) as f64 / 1_000_000.0;
            (format!("p{}", 10_000f64.powf(u) as u64), 1 + x % 7)
        })
    }

    /// A skewed stream (Zipf-like: key i gets about 1/i of the weight, 10,000 keys) against
    /// an exact count with 256 counters: the top five agree in order, nine of the top ten
    /// are found, every key above `total / capacity` is kept, and every reported value
    /// brackets the true one.
    #[test]
    fn top_k_matches_an_exact_count_on_a_skewed_stream() {
        let mut ss = SpaceSaving::new(256, 1, u64::MAX);
        let mut exact: HashMap<String, u64> = HashMap::new();
        for (key, w) in skewed(0x2545_F491_4F6C_DD1D) {
            ss.add(&key, w, 0);
            *exact.entry(key).or_default() += w;
        }
        let mut truth: Vec<(String, u64)> = exact.into_iter().collect();
        truth.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let total: u64 = truth.iter().map(|(_, v)| v).sum();
        let top = ss.top(10, 0);
        let want: Vec<&str> = truth[..10].iter().map(|(k, _)| k.as_str()).collect();
        let got: Vec<&str> = top.iter().map(|h| &*h.key).collect();
        assert_eq!(got[..5], want[..5]);
        let found = want.iter().filter(|k| got.contains(k)).count();
        assert!(found >= 9, "{got:?} vs {want:?}");
        let all = ss.top(usize::MAX, 0);
        for (k, v) in &truth {
            if *v > total / 256 {
                assert!(all.iter().any(|h| *h.key == **k), "{k} ({v}) kept");
            }
        }
        let truth: HashMap<String, u64> = truth.into_iter().collect();
        for h in &all {
            let t = truth[&*h.key];
            assert!(h.value >= t && h.value - h.error <= t, "{h:?} vs {t}");
        }
    }

    /// The sharded trackers on the same skewed stream: the top ten as an exact count has
    /// them, with values bracketing the truth.
    #[test]
    fn sharded_top_k_matches_an_exact_count() {
        let hh: HeavyHitters<2> = HeavyHitters::new(256, 1, u64::MAX);
        let mut exact: HashMap<String, u64> = HashMap::new();
        for (key, w) in skewed(0x9E37_79B9_7F4A_7C15) {
            hh.add(&key, [w, 1], 0);
            *exact.entry(key).or_default() += w;
        }
        let mut truth: Vec<(String, u64)> = exact.clone().into_iter().collect();
        truth.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let top = hh.top(0, 10, 0);
        let got: Vec<&str> = top.iter().map(|h| &*h.key).collect();
        let want: Vec<&str> = truth[..10].iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(got[..5], want[..5]);
        assert!(want.iter().filter(|k| got.contains(k)).count() >= 9);
        for h in &top {
            let t = exact[&*h.key];
            assert!(h.value >= t && h.value - h.error <= t, "{h:?} vs {t}");
        }
        // The second summary counted requests.
        assert_eq!(&*hh.top(1, 1, 0)[0].key, "p1");
    }

    #[test]
    fn settings_are_checked() {
        let bad = |s: HeavySettings| HeavyHitters::<1>::from_settings(&s).unwrap_err();
        assert!(bad(HeavySettings {
            capacity: Some(2),
            ..HeavySettings::default()
        })
        .starts_with("capacity"));
        assert!(bad(HeavySettings {
            slices: Some(0),
            ..HeavySettings::default()
        })
        .starts_with("slices"));
        assert!(bad(HeavySettings {
            window: Some("soon".into()),
            ..HeavySettings::default()
        })
        .starts_with("window"));
    }

    #[test]
    fn old_slices_age_out_of_the_window() {
        const MIN: u64 = 60_000_000_000;
        let mut ss = SpaceSaving::new(8, 3, MIN);
        ss.add("early", 100, 0);
        ss.add("late", 10, 2 * MIN);
        assert_eq!(&*ss.top(1, 2 * MIN)[0].key, "early");
        // Three minutes later the first slice is out of the window.
        let top = ss.top(5, 3 * MIN);
        assert_eq!(top.len(), 1);
        assert_eq!((&*top[0].key, top[0].value), ("late", 10));
        // And its ring position is reused for the new minute.
        ss.add("new", 1, 3 * MIN);
        assert_eq!(ss.top(5, 3 * MIN).len(), 2);
    }

    #[test]
    fn memory_is_bounded_by_the_capacity() {
        let mut ss = SpaceSaving::new(16, 2, 1_000);
        for i in 0..10_000u64 {
            ss.add(&format!("k{i}"), 1, i % 2_000);
        }
        assert!(ss.slices.iter().all(|s| s.counters.len() <= 16));
    }
}
