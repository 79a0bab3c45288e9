//! A few long byte strings remembered by hash and full compare, for results that are a
//! pure function of those bytes (the rules' clean long fields, the token estimate's byte
//! classes). A hash collision costs a recomputation, never a wrong answer.

/// Up to `slots` byte strings of up to `max` bytes, each with a key that must also match
/// and a value. Every slot reserves `max` bytes up front, so remembering never allocates.
#[derive(Debug, Clone, Default)]
pub(crate) struct SeenBytes<K, V> {
    /// Per slot: hash, key and value of the bytes held; `None` when empty.
    heads: Vec<Option<(u64, K, V)>>,
    bytes: Vec<Vec<u8>>,
    max: usize,
    /// The slot the next insertion replaces when none is empty (round robin: one-off
    /// strings pass through without pinning anything).
    next: usize,
}

impl<K: Copy + PartialEq, V: Copy> SeenBytes<K, V> {
    /// A memo of `slots` strings of up to `max` bytes; 0 slots turns it off.
    pub(crate) fn new(slots: usize, max: usize) -> Self {
        SeenBytes {
            heads: vec![None; slots],
            bytes: (0..slots).map(|_| Vec::with_capacity(max)).collect(),
            max,
            next: 0,
        }
    }

    /// Whether a string of `len` bytes can be remembered.
    pub(crate) fn takes(&self, len: usize) -> bool {
        !self.heads.is_empty() && len <= self.max
    }

    /// The value remembered for the concatenation of `parts` under `hash` and `key`.
    pub(crate) fn get(&self, hash: u64, key: K, parts: &[&[u8]]) -> Option<V> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.heads.iter().zip(&self.bytes).find_map(|(h, b)| {
            let &(hh, k, v) = h.as_ref()?;
            let mut rest = b.as_slice();
            let same = hh == hash
                && k == key
                && b.len() == len
                && parts.iter().all(|p| {
                    let (head, tail) = rest.split_at(p.len());
                    rest = tail;
                    head == *p
                });
            same.then_some(v)
        })
    }

    /// Remembers `value` for the concatenation of `parts` (which [`SeenBytes::takes`]).
    pub(crate) fn insert(&mut self, hash: u64, key: K, parts: &[&[u8]], value: V) {
        let slot = match self.heads.iter().position(Option::is_none) {
            Some(s) => s,
            None => {
                let s = self.next;
                self.next = (s + 1) % self.heads.len();
                s
            }
        };
        let b = &mut self.bytes[slot];
        b.clear();
        for p in parts {
            b.extend_from_slice(p);
        }
        self.heads[slot] = Some((hash, key, value));
    }
}

/// A field value's hash for the memos, computed on first use and then shared: a long
/// prompt is looked up in the rules' memo and in the byte-class memo, and hashing its
/// bytes once for each was a tenth of what recognising a seen 4 KiB prompt cost. Any
/// hash will do for either memo (both compare the full bytes).
#[derive(Debug)]
pub(crate) struct ValueHash<'a> {
    hasher: &'a foldhash::fast::RandomState,
    value: &'a [u8],
    hash: Option<u64>,
}

impl<'a> ValueHash<'a> {
    /// The (not yet computed) hash of `value` under `hasher`.
    pub(crate) fn new(hasher: &'a foldhash::fast::RandomState, value: &'a [u8]) -> Self {
        ValueHash {
            hasher,
            value,
            hash: None,
        }
    }

    /// The value's hash.
    pub(crate) fn get(&mut self) -> u64 {
        let (hasher, value) = (self.hasher, self.value);
        *self
            .hash
            .get_or_insert_with(|| std::hash::BuildHasher::hash_one(hasher, value))
    }

    /// The value hashed.
    pub(crate) fn value(&self) -> &'a [u8] {
        self.value
    }
}
