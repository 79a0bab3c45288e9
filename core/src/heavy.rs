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

use std::collections::HashMap;
use std::sync::Arc;

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

    /// A skewed stream (Zipf-like: key i gets about 1/i of the weight, 10,000 keys) against
    /// an exact count with 256 counters: the top five agree in order, nine of the top ten
    /// are found, every key above `total / capacity` is kept, and every reported value
    /// brackets the true one.
    #[test]
    fn top_k_matches_an_exact_count_on_a_skewed_stream() {
        let mut ss = SpaceSaving::new(256, 1, u64::MAX);
        let mut exact: HashMap<String, u64> = HashMap::new();
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Inverse-transform sampling of 1/i over 10,000 keys.
            let u = (x % 1_000_000) as f64 / 1_000_000.0;
            let i = (10_000f64.powf(u)) as u64;
            let key = format!("p{i}");
            let w = 1 + x % 7;
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
