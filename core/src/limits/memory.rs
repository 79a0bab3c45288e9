//! The in-process store: sharded maps of per-key atomics updated by compare-and-swap.
//!
//! Each key's whole state is one `AtomicU64` (a GCRA TAT, a packed budget window and usage,
//! or a concurrency count), so a check is a load, the pure math and one CAS; contention on
//! one key retries the CAS instead of blocking. The maps themselves are only locked to find
//! or insert a key: a read lock per lookup, a write lock to insert (and evict).
//!
//! A request with several charges applies them one by one and undoes the applied ones
//! (compensating updates) when a later one refuses, so the result is all-or-nothing and no
//! limit is ever exceeded, since every update checks its own limit. The cost of not locking
//! all keys at once: between an apply and its undo another request can see the transient
//! charge and be refused although it would have fitted. That errs on the safe side and only
//! happens to requests racing a refusal on the same keys.
//!
//! Reservations live in a second sharded map: id to the entries charged, the amounts and
//! budget windows (the first charge inline, so one-charge requests allocate nothing). A
//! lease of 0 makes a reservation final at once and it is not kept at all. Expired leases
//! release their concurrency lazily (when a concurrency charge refuses once a lease can have
//! run out, when a reservation shard is full, at settle) and on [`MemoryStore::sweep`].
//!
//! Measured on the bench machine (2 shared cores, under load): the one-charge final acquire
//! is about 300 instructions and 37-55 ns; with a reservation kept and settled later, the
//! pair is about 800 instructions and 100-150 ns, most of it the reservation map.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use super::gcra::Snapshot;
use super::{
    Charge, LimitKind, LimitState, LimitStore, Outcome, ReservationId, Settled, StoreError,
    StoreErrorKind, Verdict,
};

/// Sizes of a [`MemoryStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryStoreConfig {
    /// Number of key shards, rounded up to a power of two. More shards mean less contention
    /// on the map locks (not on the keys themselves).
    pub shards: usize,
    /// The most keys held at once. When a shard is full, idle keys (a full bucket, a past
    /// window, nothing in flight) are evicted; if none is idle, acquire fails with
    /// `store.capacity` and the policy's `on_store_error` decides.
    pub max_keys: usize,
    /// The most reservations held at once (unsettled and unexpired), with the same
    /// failure mode.
    pub max_reservations: usize,
}

impl Default for MemoryStoreConfig {
    fn default() -> MemoryStoreConfig {
        MemoryStoreConfig {
            shards: 64,
            max_keys: 1 << 20,
            max_reservations: 1 << 20,
        }
    }
}

struct Entry {
    state: AtomicU64,
    /// The kind the key was created for, so eviction can tell whether it is idle.
    kind: LimitKind,
}

/// A key with its hash, computed once per lookup and used for both the shard and the map.
struct MapKey {
    hash: u64,
    key: Arc<str>,
}

/// What a map lookup compares: a stored [`MapKey`] or a borrowed probe. Looking up through
/// a trait object lets the probe borrow the charge's key instead of cloning its `Arc`.
trait KeyRef {
    fn hash64(&self) -> u64;
    fn text(&self) -> &str;
}

impl KeyRef for MapKey {
    fn hash64(&self) -> u64 {
        self.hash
    }
    fn text(&self) -> &str {
        &self.key
    }
}

struct Probe<'a> {
    hash: u64,
    key: &'a str,
}

impl KeyRef for Probe<'_> {
    fn hash64(&self) -> u64 {
        self.hash
    }
    fn text(&self) -> &str {
        self.key
    }
}

impl<'a> std::borrow::Borrow<dyn KeyRef + 'a> for MapKey {
    fn borrow(&self) -> &(dyn KeyRef + 'a) {
        self
    }
}

impl std::hash::Hash for dyn KeyRef + '_ {
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u64(self.hash64());
    }
}

impl PartialEq for dyn KeyRef + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.hash64() == other.hash64() && self.text() == other.text()
    }
}

impl Eq for dyn KeyRef + '_ {}

impl std::hash::Hash for MapKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        (self as &dyn KeyRef).hash(h);
    }
}

impl PartialEq for MapKey {
    fn eq(&self, other: &Self) -> bool {
        (self as &dyn KeyRef) == (other as &dyn KeyRef)
    }
}

impl Eq for MapKey {}

type KeyMap = HashMap<MapKey, Arc<Entry>, BuildHasherDefault<FastHasher>>;

/// Aligned to two cache lines (what adjacent-line prefetching pairs up): every lookup writes
/// its shard's lock word, and neighbouring shards must not share that line across threads.
#[repr(align(128))]
struct KeyShard {
    map: RwLock<KeyMap>,
    /// After an eviction scan found nothing idle: no new scan before this instant.
    no_scan_until: AtomicU64,
}

/// One charge held by a reservation: what settle needs to undo or adjust it.
struct Held {
    entry: Arc<Entry>,
    kind: LimitKind,
    /// The charge's index in the acquire call, to find its actual amount at settle.
    index: usize,
    reserved: u64,
    /// The budget window the amount was charged in.
    window: i64,
}

/// The charges of a reservation. The first is inline: most requests carry one charge (or
/// one per unit), and a `Vec` would cost an allocation per request.
#[derive(Default)]
struct HeldList {
    first: Option<Held>,
    rest: Vec<Held>,
}

impl HeldList {
    fn push(&mut self, h: Held) {
        if self.first.is_none() {
            self.first = Some(h);
        } else {
            self.rest.push(h);
        }
    }

    fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn iter(&self) -> impl Iterator<Item = &Held> {
        self.first.iter().chain(self.rest.iter())
    }
}

struct Reservation {
    expires: u64,
    held: HeldList,
}

/// The maps' hasher: key maps pass the precomputed foldhash through (`write_u64`);
/// reservation ids are random, so a multiply of their two halves spreads them (`write_u128`).
/// SipHash would only add time.
#[derive(Default)]
struct FastHasher(u64);

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = i;
    }
    fn write_u128(&mut self, i: u128) {
        self.0 = ((i as u64) ^ ((i >> 64) as u64)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type ResMap = HashMap<u128, Reservation, BuildHasherDefault<FastHasher>>;

#[derive(Default)]
#[repr(align(128))]
struct ResShard {
    map: ResMap,
    /// When the shard was full and nothing had expired: the earliest expiry then. A full
    /// shard is not scanned again before it, so it costs one scan per expiry, not one per
    /// acquire.
    no_sweep_until: u64,
}

/// An in-process [`LimitStore`]: sharded, lock-free per key, bounded in memory.
pub struct MemoryStore {
    shards: Box<[KeyShard]>,
    shard_mask: u64,
    hasher: foldhash::fast::FixedState,
    max_keys_per_shard: usize,
    reservations: Box<[Mutex<ResShard>]>,
    max_reservations_per_shard: usize,
    /// The earliest expiry of a reservation holding concurrency (u64::MAX if none): a
    /// refused concurrency charge sweeps expired leases only once one can have expired.
    next_lease_expiry: AtomicU64,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("shards", &self.shards.len())
            .field("keys", &self.key_count())
            .field("reservations", &self.reservation_count())
            .finish()
    }
}

impl Default for MemoryStore {
    fn default() -> MemoryStore {
        MemoryStore::new(MemoryStoreConfig::default())
    }
}

/// The outcome of trying one charge.
enum Tried {
    Charged {
        reserved: u64,
        window: i64,
        stored: u64,
    },
    Refused(Verdict),
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

fn lock<T>(l: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    l.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Apply `f` to the state by CAS until it succeeds or `f` refuses.
#[inline]
fn update<E>(a: &AtomicU64, mut f: impl FnMut(u64) -> Result<u64, E>) -> Result<u64, E> {
    let mut cur = a.load(Ordering::Acquire);
    loop {
        let next = f(cur)?;
        match a.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Ok(next),
            Err(actual) => cur = actual,
        }
    }
}

fn update_always(a: &AtomicU64, mut f: impl FnMut(u64) -> u64) {
    let _ = update::<()>(a, |s| Ok(f(s)));
}

/// Whether this limit alone admits `amount` on a stored state (no update).
pub(super) fn verdict(kind: &LimitKind, stored: u64, now: u64, amount: u64) -> Verdict {
    let r = match kind {
        LimitKind::Rate(g) => g.check_n(stored, now, amount).map(drop),
        LimitKind::Budget(b) => b
            .check_n(stored, now, b.calendar().window_index(now), amount)
            .map(drop),
        LimitKind::Concurrency { max } => return concurrency_verdict(*max, stored, amount),
    };
    match r {
        Ok(()) => Verdict::Allowed,
        Err(r) => r.into(),
    }
}

pub(super) fn concurrency_verdict(max: u64, count: u64, amount: u64) -> Verdict {
    if amount > max {
        Verdict::ExceedsCapacity
    } else if count.saturating_add(amount) <= max {
        Verdict::Allowed
    } else {
        // Free when a request in flight finishes: no time to give.
        Verdict::RetryAfter(0)
    }
}

fn snapshot(kind: &LimitKind, stored: u64, now: u64) -> Snapshot {
    match kind {
        LimitKind::Rate(g) => g.snapshot(stored, now),
        LimitKind::Budget(b) => b.snapshot(stored, now),
        LimitKind::Concurrency { max } => Snapshot {
            remaining: max.saturating_sub(stored),
            reset_after: 0,
        },
    }
}

pub(super) fn state(
    kind: &LimitKind,
    stored: u64,
    now: u64,
    verdict: Verdict,
    charged: bool,
) -> LimitState {
    let s = snapshot(kind, stored, now);
    LimitState {
        limit: kind.limit(),
        remaining: s.remaining,
        reset_after_ns: s.reset_after,
        verdict,
        charged,
    }
}

fn is_idle(e: &Entry, now: u64) -> bool {
    let s = e.state.load(Ordering::Acquire);
    match &e.kind {
        LimitKind::Rate(_) => s <= now,
        LimitKind::Budget(b) => b.is_idle(s, now),
        LimitKind::Concurrency { .. } => s == 0,
    }
}

/// When an entry will be idle, if that can be known (a count in flight or a key held by a
/// reservation cannot).
fn idle_at(e: &Arc<Entry>, now: u64) -> Option<u64> {
    if Arc::strong_count(e) > 1 {
        return None;
    }
    let s = e.state.load(Ordering::Acquire);
    match &e.kind {
        LimitKind::Rate(_) => Some(s),
        LimitKind::Budget(b) => Some(b.calendar().window_end(now)),
        LimitKind::Concurrency { .. } => None,
    }
}

/// Try to charge one amount on an entry.
#[inline]
fn try_charge(entry: &Entry, kind: &LimitKind, now: u64, amount: u64) -> Tried {
    let (r, window) = match kind {
        LimitKind::Rate(g) => {
            let Some(inc) = g.increment(amount) else {
                return Tried::Refused(Verdict::ExceedsCapacity);
            };
            let r = update(&entry.state, |tat| g.apply(tat, now, inc)).map_err(Verdict::RetryAfter);
            (r, 0)
        }
        LimitKind::Budget(b) => {
            let w = b.calendar().window_index(now);
            let r = update(&entry.state, |s| b.check_n(s, now, w, amount)).map_err(Verdict::from);
            // The window charged: `w`, or the next one if another caller already is there.
            let charged = r.map_or(w, |s| super::window::Budget::current(s, w).0);
            (r, charged)
        }
        LimitKind::Concurrency { max } => {
            let max = *max;
            let r = update(&entry.state, |c| {
                match concurrency_verdict(max, c, amount) {
                    Verdict::Allowed => Ok(c + amount),
                    v => Err(v),
                }
            });
            (r, 0)
        }
    };
    match r {
        Ok(stored) => Tried::Charged {
            reserved: amount,
            window,
            stored,
        },
        Err(v) => Tried::Refused(v),
    }
}

/// Take back a charge exactly (a rollback, or releasing concurrency).
fn undo(h: &Held) {
    match &h.kind {
        LimitKind::Rate(g) => {
            // The apply added increment(reserved) to max(tat, now); taking it off again
            // leaves at worst now, which is equivalent to any earlier TAT.
            let inc = g.increment(h.reserved).unwrap_or(0);
            update_always(&h.entry.state, |tat| tat.saturating_sub(inc));
        }
        LimitKind::Budget(_) => {
            update_always(&h.entry.state, |s| {
                super::window::Budget::settle(s, h.window, h.window, h.reserved, 0)
            });
        }
        LimitKind::Concurrency { .. } => {
            update_always(&h.entry.state, |c| c.saturating_sub(h.reserved));
        }
    }
}

impl MemoryStore {
    /// A store with these sizes.
    pub fn new(config: MemoryStoreConfig) -> MemoryStore {
        let n = config.shards.clamp(1, 1 << 16).next_power_of_two();
        let shards = (0..n)
            .map(|_| KeyShard {
                map: RwLock::new(KeyMap::default()),
                no_scan_until: AtomicU64::new(0),
            })
            .collect();
        let reservations = (0..n).map(|_| Mutex::new(ResShard::default())).collect();
        MemoryStore {
            shards,
            shard_mask: n as u64 - 1,
            // Fixed rather than random: keys come from the policy and the host's principals,
            // and the shard of a key must not change between acquire and settle.
            hasher: foldhash::fast::FixedState::with_seed(0x5eed_ed9e_ad11_17e5),
            max_keys_per_shard: config.max_keys.div_ceil(n).max(1),
            reservations,
            max_reservations_per_shard: config.max_reservations.div_ceil(n).max(1),
            next_lease_expiry: AtomicU64::new(u64::MAX),
        }
    }

    /// Keys currently held.
    pub fn key_count(&self) -> usize {
        self.shards.iter().map(|s| read(&s.map).len()).sum()
    }

    /// Reservations currently held (unsettled, possibly expired but not yet swept).
    pub fn reservation_count(&self) -> usize {
        self.reservations.iter().map(|s| lock(s).map.len()).sum()
    }

    fn probe<'k>(&self, key: &'k str) -> (&KeyShard, Probe<'k>) {
        let hash = self.hasher.hash_one(key);
        // The map uses the low bits and the top seven: shard by bits in between.
        let shard = &self.shards[((hash >> 40) & self.shard_mask) as usize];
        (shard, Probe { hash, key })
    }

    fn res_shard(&self, id: ReservationId) -> &Mutex<ResShard> {
        let h = ((id.0 as u64) ^ ((id.0 >> 64) as u64)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        &self.reservations[((h >> 40) & self.shard_mask) as usize]
    }

    fn find(&self, key: &str) -> Option<Arc<Entry>> {
        let (shard, probe) = self.probe(key);
        read(&shard.map).get(&probe as &dyn KeyRef).cloned()
    }

    /// Find or create the entry of a charge's key, evicting idle keys when the shard is full.
    fn entry(&self, charge: &Charge, now: u64) -> Result<Arc<Entry>, StoreError> {
        let (shard, probe) = self.probe(&charge.key);
        if let Some(e) = read(&shard.map).get(&probe as &dyn KeyRef) {
            return Ok(Arc::clone(e));
        }
        let mut map = write(&shard.map);
        if let Some(e) = map.get(&probe as &dyn KeyRef) {
            return Ok(Arc::clone(e));
        }
        if map.len() >= self.max_keys_per_shard {
            if now < shard.no_scan_until.load(Ordering::Relaxed) {
                return Err(full_keys());
            }
            evict_idle(&mut map, now);
            if map.len() >= self.max_keys_per_shard {
                // Nothing idle: no new scan until the first key can be idle, and at most
                // 100 ms, since counts in flight and keys held by reservations give no time.
                // A full shard thus costs one scan per interval, not one per new key.
                let next = map
                    .values()
                    .filter_map(|e| idle_at(e, now))
                    .min()
                    .unwrap_or(u64::MAX)
                    .min(now.saturating_add(100_000_000));
                shard.no_scan_until.store(next, Ordering::Relaxed);
                return Err(full_keys());
            }
        }
        let e = Arc::new(Entry {
            state: AtomicU64::new(0),
            kind: charge.kind,
        });
        let key = MapKey {
            hash: probe.hash,
            key: Arc::clone(&charge.key),
        };
        map.insert(key, Arc::clone(&e));
        Ok(e)
    }

    /// Replace the stored state of `charge`'s key (created empty if new) with `f(state)`:
    /// how the local-first store folds the shared state into the local one.
    #[cfg(feature = "redis")]
    pub(crate) fn merge(
        &self,
        charge: &Charge,
        now: u64,
        f: impl FnMut(u64) -> u64,
    ) -> Result<(), StoreError> {
        let e = self.entry(charge, now)?;
        update_always(&e.state, f);
        Ok(())
    }

    /// Expire reservations whose lease is over (releasing their concurrency; their token
    /// charges stand) and evict idle keys. The store also does this lazily when it is full or
    /// a concurrency limit refuses; hosts may call it periodically to return memory early.
    pub fn sweep(&self, now_ns: u64) {
        self.expire_leases(now_ns);
        for shard in self.shards.iter() {
            evict_idle(&mut write(&shard.map), now_ns);
        }
    }

    fn expire_leases(&self, now: u64) {
        // Reset first: a reservation inserted during the sweep lowers it again after.
        self.next_lease_expiry.store(u64::MAX, Ordering::Relaxed);
        let mut next = u64::MAX;
        for shard in self.reservations.iter() {
            let mut shard = lock(shard);
            shard.map.retain(|_, r| {
                if r.expires < now {
                    release_concurrency(&r.held);
                    false
                } else {
                    if r.held
                        .iter()
                        .any(|h| matches!(h.kind, LimitKind::Concurrency { .. }))
                    {
                        next = next.min(r.expires);
                    }
                    true
                }
            });
        }
        self.next_lease_expiry.fetch_min(next, Ordering::Relaxed);
    }

    /// The common case: one rate or budget charge on a known key. The CAS runs under the
    /// shard's read lock (the only lock held, so no lock order to keep); a final reservation
    /// (lease 0) then needs neither the entry's `Arc` nor a record. `None` when the general
    /// path is needed.
    #[inline]
    fn acquire_one(
        &self,
        id: ReservationId,
        c: &Charge,
        now: u64,
        lease: u64,
        states: &mut Vec<LimitState>,
    ) -> Option<Result<Outcome, StoreError>> {
        if matches!(c.kind, LimitKind::Concurrency { .. }) {
            return None;
        }
        let (shard, probe) = self.probe(&c.key);
        let map = read(&shard.map);
        let entry = map.get(&probe as &dyn KeyRef)?;
        states.clear();
        let out = match try_charge(entry, &c.kind, now, c.amount) {
            Tried::Charged {
                reserved,
                window,
                stored,
            } => {
                states.push(state(&c.kind, stored, now, Verdict::Allowed, true));
                if lease == 0 {
                    return Some(Ok(Outcome::Admitted));
                }
                let held = Held {
                    entry: Arc::clone(entry),
                    kind: c.kind,
                    index: 0,
                    reserved,
                    window,
                };
                drop(map);
                let held = HeldList {
                    first: Some(held),
                    rest: Vec::new(),
                };
                return Some(self.remember(id, held, now, lease));
            }
            Tried::Refused(v) => {
                let stored = entry.state.load(Ordering::Acquire);
                states.push(state(&c.kind, stored, now, v, false));
                if c.shadow {
                    Outcome::Admitted
                } else {
                    Outcome::Refused {
                        charge: 0,
                        retry_after_ns: v.into_retry(),
                    }
                }
            }
        };
        Some(Ok(out))
    }

    /// Keep a reservation for settle and for its lease; on failure every charge is undone.
    fn remember(
        &self,
        id: ReservationId,
        held: HeldList,
        now: u64,
        lease: u64,
    ) -> Result<Outcome, StoreError> {
        let rollback = |held: &HeldList| held.iter().for_each(undo);
        let expires = now.saturating_add(lease);
        let holds_concurrency = held
            .iter()
            .any(|h| matches!(h.kind, LimitKind::Concurrency { .. }));
        let shard = self.res_shard(id);
        let mut guard = lock(shard);
        let shard = &mut *guard;
        if shard.map.len() >= self.max_reservations_per_shard && now >= shard.no_sweep_until {
            let mut first_expiry = u64::MAX;
            shard.map.retain(|_, r| {
                let keep = r.expires >= now;
                if keep {
                    first_expiry = first_expiry.min(r.expires);
                } else {
                    release_concurrency(&r.held);
                }
                keep
            });
            // Expired means `expires < now`: nothing goes before `first_expiry + 1`.
            shard.no_sweep_until = first_expiry.saturating_add(1);
        }
        let err = if shard.map.len() >= self.max_reservations_per_shard {
            StoreError::new(
                StoreErrorKind::Capacity,
                "memory store: too many reservations in flight",
            )
        } else {
            match shard.map.entry(id.0) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(Reservation { expires, held });
                    // A shorter lease than those seen at the last scan expires sooner.
                    shard.no_sweep_until = shard.no_sweep_until.min(expires.saturating_add(1));
                    drop(guard);
                    if holds_concurrency {
                        self.next_lease_expiry.fetch_min(expires, Ordering::Relaxed);
                    }
                    return Ok(Outcome::Admitted);
                }
                std::collections::hash_map::Entry::Occupied(_) => {
                    StoreError::new(StoreErrorKind::Protocol, "reservation id already in use")
                }
            }
        };
        drop(guard);
        rollback(&held);
        Err(err)
    }

    fn refused(
        &self,
        charges: &[Charge],
        now: u64,
        first: (usize, Verdict),
        states: &mut Vec<LimitState>,
    ) -> Outcome {
        states.clear();
        for (i, c) in charges.iter().enumerate() {
            let stored = self
                .find(&c.key)
                .map_or(0, |e| e.state.load(Ordering::Acquire));
            // The refusal seen while charging stands even if a race freed capacity since.
            let v = if i == first.0 {
                first.1
            } else {
                verdict(&c.kind, stored, now, c.amount)
            };
            states.push(state(&c.kind, stored, now, v, false));
        }
        let (charge, retry_after_ns) =
            super::worst_refusal(charges, states).unwrap_or((first.0, first.1.into_retry()));
        Outcome::Refused {
            charge,
            retry_after_ns,
        }
    }
}

trait IntoRetry {
    fn into_retry(self) -> Option<u64>;
}

impl IntoRetry for Verdict {
    fn into_retry(self) -> Option<u64> {
        match self {
            Verdict::RetryAfter(d) => Some(d),
            _ => None,
        }
    }
}

fn full_keys() -> StoreError {
    StoreError::new(
        StoreErrorKind::Capacity,
        "memory store: key shard full and no key is idle",
    )
}

fn release_concurrency(held: &HeldList) {
    for h in held.iter() {
        if matches!(h.kind, LimitKind::Concurrency { .. }) {
            undo(h);
        }
    }
}

fn evict_idle(map: &mut KeyMap, now: u64) {
    // A key still referenced by a reservation (or a request in progress) stays, so a later
    // settle never adjusts an entry that is no longer in the map.
    map.retain(|_, e| Arc::strong_count(e) > 1 || !is_idle(e, now));
}

impl LimitStore for MemoryStore {
    fn acquire(
        &self,
        id: ReservationId,
        charges: &[Charge],
        now_ns: u64,
        lease_ns: u64,
        states: &mut Vec<LimitState>,
    ) -> Result<Outcome, StoreError> {
        let now = now_ns;
        if let [c] = charges {
            if let Some(out) = self.acquire_one(id, c, now, lease_ns, states) {
                return out;
            }
        }
        states.clear();
        states.resize(
            charges.len(),
            LimitState {
                limit: 0,
                remaining: 0,
                reset_after_ns: 0,
                verdict: Verdict::Allowed,
                charged: false,
            },
        );
        let mut held = HeldList::default();
        let rollback = |held: &HeldList| held.iter().for_each(undo);
        // Enforced charges first, all-or-nothing; then shadow charges, each on its own.
        for pass_shadow in [false, true] {
            for (i, c) in charges
                .iter()
                .enumerate()
                .filter(|(_, c)| c.shadow == pass_shadow)
            {
                let entry = match self.entry(c, now) {
                    Ok(e) => e,
                    Err(e) => {
                        rollback(&held);
                        return Err(e);
                    }
                };
                let mut tried = try_charge(&entry, &c.kind, now, c.amount);
                if let (Tried::Refused(Verdict::RetryAfter(_)), LimitKind::Concurrency { .. }) =
                    (&tried, &c.kind)
                {
                    // Lazily expire leases, once one can have run out.
                    if now > self.next_lease_expiry.load(Ordering::Relaxed) {
                        self.expire_leases(now);
                        tried = try_charge(&entry, &c.kind, now, c.amount);
                    }
                }
                match tried {
                    Tried::Charged {
                        reserved,
                        window,
                        stored,
                    } => {
                        states[i] = state(&c.kind, stored, now, Verdict::Allowed, true);
                        held.push(Held {
                            entry,
                            kind: c.kind,
                            index: i,
                            reserved,
                            window,
                        });
                    }
                    Tried::Refused(v) if pass_shadow => {
                        let stored = entry.state.load(Ordering::Acquire);
                        states[i] = state(&c.kind, stored, now, v, false);
                    }
                    Tried::Refused(v) => {
                        rollback(&held);
                        drop(held);
                        drop(entry);
                        return Ok(self.refused(charges, now, (i, v), states));
                    }
                }
            }
        }
        if lease_ns == 0 {
            // Final at once: the estimates stand, a slot in flight is free again, and there
            // is nothing to remember.
            release_concurrency(&held);
            return Ok(Outcome::Admitted);
        }
        if held.is_empty() {
            return Ok(Outcome::Admitted);
        }
        self.remember(id, held, now, lease_ns)
    }

    fn settle(
        &self,
        id: ReservationId,
        actual: &[u64],
        now_ns: u64,
    ) -> Result<Settled, StoreError> {
        let Some(r) = lock(self.res_shard(id)).map.remove(&id.0) else {
            return Ok(Settled::Unknown);
        };
        if r.expires < now_ns {
            // Expired before it was settled: the estimate stands, the lease ends.
            release_concurrency(&r.held);
            return Ok(Settled::Unknown);
        }
        for h in r.held.iter() {
            let act = actual.get(h.index).copied().unwrap_or(h.reserved);
            match &h.kind {
                LimitKind::Rate(g) => {
                    update_always(&h.entry.state, |tat| g.settle(tat, now_ns, h.reserved, act));
                }
                LimitKind::Budget(b) => {
                    let current = b.calendar().window_index(now_ns);
                    update_always(&h.entry.state, |s| {
                        super::window::Budget::settle(s, current, h.window, h.reserved, act)
                    });
                }
                LimitKind::Concurrency { .. } => undo(h),
            }
        }
        Ok(Settled::Settled)
    }

    fn peek(
        &self,
        charges: &[Charge],
        now_ns: u64,
        states: &mut Vec<LimitState>,
    ) -> Result<(), StoreError> {
        states.clear();
        for c in charges {
            let stored = self
                .find(&c.key)
                .map_or(0, |e| e.state.load(Ordering::Acquire));
            let v = verdict(&c.kind, stored, now_ns, c.amount);
            states.push(state(&c.kind, stored, now_ns, v, false));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::conformance;

    fn small(max_keys: usize, max_reservations: usize) -> MemoryStore {
        MemoryStore::new(MemoryStoreConfig {
            shards: 1,
            max_keys,
            max_reservations,
        })
    }

    #[test]
    fn conformance_suite() {
        conformance::run_all(&|| Box::new(MemoryStore::default()));
        conformance::run_all(&|| {
            Box::new(MemoryStore::new(MemoryStoreConfig {
                shards: 1,
                ..MemoryStoreConfig::default()
            }))
        });
    }

    #[test]
    fn idle_keys_are_evicted_when_full() {
        let s = small(2, 100);
        let rate = LimitKind::rate(10, 1_000, 10).unwrap();
        let mut st = Vec::new();
        let now = 1_000_000;
        for (n, k) in ["a", "b"].iter().enumerate() {
            let c = [Charge::new(*k, rate, 1)];
            let out = s.acquire(ReservationId(n as u128), &c, now, 10, &mut st);
            assert_eq!(out, Ok(Outcome::Admitted));
            s.settle(ReservationId(n as u128), &[1], now).unwrap();
        }
        // Both keys have a TAT in the future: nothing idle, the third key fails.
        let c = [Charge::new("c", rate, 1)];
        let e = s
            .acquire(ReservationId(9), &c, now, 10, &mut st)
            .unwrap_err();
        assert_eq!(e.code(), "store.capacity");
        // No rescan before the first key can be idle...
        assert_eq!(
            s.acquire(ReservationId(9), &c, now + 50, 10, &mut st)
                .unwrap_err()
                .kind(),
            StoreErrorKind::Capacity
        );
        // ...and once the buckets are full again the old keys go.
        assert_eq!(
            s.acquire(ReservationId(9), &c, now + 1_000, 10, &mut st),
            Ok(Outcome::Admitted)
        );
        assert_eq!(s.key_count(), 1);
        assert!(format!("{s:?}").contains("keys: 1"));
    }

    #[test]
    fn keys_held_by_reservations_are_not_evicted() {
        let s = small(1, 100);
        let rate = LimitKind::rate(10, 1_000, 10).unwrap();
        let mut st = Vec::new();
        let now = 1_000_000;
        s.acquire(
            ReservationId(1),
            &[Charge::new("a", rate, 1)],
            now,
            1 << 40,
            &mut st,
        )
        .unwrap();
        // "a" is idle by its TAT later on, but its reservation is still open.
        let later = now + 10_000;
        let e = s.acquire(
            ReservationId(2),
            &[Charge::new("b", rate, 1)],
            later,
            10,
            &mut st,
        );
        assert_eq!(e.unwrap_err().code(), "store.capacity");
        assert_eq!(
            s.settle(ReservationId(1), &[5], later),
            Ok(Settled::Settled)
        );
        // "a" is idle now, but a held key gave no time: the next scan waits 100 ms.
        let c = [Charge::new("b", rate, 1)];
        let e = s.acquire(ReservationId(3), &c, later + 1_000, 10, &mut st);
        assert_eq!(e.unwrap_err().code(), "store.capacity");
        let at = later + 100_000_000;
        assert_eq!(
            s.acquire(ReservationId(3), &c, at, 10, &mut st),
            Ok(Outcome::Admitted)
        );
        s.sweep(at + (1 << 40));
        assert_eq!(s.key_count(), 0);
        assert_eq!(s.reservation_count(), 0);
    }

    #[test]
    fn reservations_are_bounded_and_expire() {
        let s = small(100, 1);
        let rate = LimitKind::rate(1_000, 1_000_000, 1_000).unwrap();
        let mut st = Vec::new();
        let c = [Charge::new("a", rate, 1)];
        s.acquire(ReservationId(1), &c, 1_000, 100, &mut st)
            .unwrap();
        let e = s
            .acquire(ReservationId(2), &c, 1_050, 100, &mut st)
            .unwrap_err();
        assert_eq!(e.code(), "store.capacity");
        let e = s.acquire(ReservationId(2), &c, 1_100, 100, &mut st);
        assert_eq!(e.unwrap_err().code(), "store.capacity");
        // The failed acquires charged nothing.
        s.peek(&c, 1_050, &mut st).unwrap();
        assert_eq!(st[0].remaining, 999);
        // Once the first lease is over, it makes room.
        assert_eq!(
            s.acquire(ReservationId(2), &c, 1_101, 100, &mut st),
            Ok(Outcome::Admitted)
        );
        assert_eq!(s.reservation_count(), 1);
        assert_eq!(
            s.settle(ReservationId(1), &[0], 1_101),
            Ok(Settled::Unknown)
        );
    }

    #[test]
    fn reused_id_is_an_error_and_charges_nothing() {
        let s = MemoryStore::default();
        let rate = LimitKind::rate(10, 1_000, 10).unwrap();
        let mut st = Vec::new();
        let c = [Charge::new("a", rate, 1)];
        s.acquire(ReservationId(7), &c, 1_000, 100, &mut st)
            .unwrap();
        let e = s
            .acquire(ReservationId(7), &c, 1_000, 100, &mut st)
            .unwrap_err();
        assert_eq!(e.code(), "store.protocol");
        s.peek(&c, 1_000, &mut st).unwrap();
        assert_eq!(st[0].remaining, 9);
    }

    #[test]
    fn fast_hasher_spreads_and_passes_through() {
        let mut h = FastHasher::default();
        h.write(b"ab");
        let a = h.finish();
        assert_ne!(a, 0);
        h.write_u128(1);
        assert_ne!(a, h.finish());
        h.write_u64(42);
        assert_eq!(h.finish(), 42);
        // Stored keys and probes agree on hash and equality.
        let k = MapKey {
            hash: 7,
            key: Arc::from("a"),
        };
        let mut h1 = FastHasher::default();
        std::hash::Hash::hash(&k, &mut h1);
        assert_eq!(h1.finish(), 7);
        let same = MapKey {
            hash: 7,
            key: Arc::from("a"),
        };
        let other = MapKey {
            hash: 7,
            key: Arc::from("b"),
        };
        assert!(k == same && k != other);
        assert_eq!(Probe { hash: 7, key: "a" }.text(), "a");
    }

    #[test]
    fn threads_never_exceed_limits() {
        conformance::concurrent_never_exceeds(&|| Box::new(MemoryStore::default()));
        conformance::concurrent_never_exceeds(&|| {
            Box::new(MemoryStore::new(MemoryStoreConfig {
                shards: 2,
                ..MemoryStoreConfig::default()
            }))
        });
    }
}

/// The memory store against a naive oracle: check every charge first, then apply, with the
/// pure functions and a plain map (single-threaded, so CAS and rollback must be invisible).
#[cfg(test)]
mod oracle {
    use super::*;
    use crate::limits::{Budget, Calendar, Period};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const S: u64 = 1_000_000_000;

    fn kinds() -> [LimitKind; 4] {
        [
            LimitKind::rate(10, S, 15).unwrap(),
            LimitKind::rate(3, S, 3).unwrap(),
            LimitKind::budget(50, Calendar::utc(Period::Seconds(1))).unwrap(),
            LimitKind::Concurrency { max: 2 },
        ]
    }

    #[derive(Default)]
    struct Model {
        states: [u64; 4],
        /// id -> (key index, charge index, reserved, window)
        res: BTreeMap<u128, Vec<(usize, usize, u64, i64)>>,
    }

    impl Model {
        fn verdict(&self, k: usize, now: u64, amount: u64) -> Verdict {
            verdict(&kinds()[k], self.states[k], now, amount)
        }

        fn state(&self, k: usize, now: u64, v: Verdict, charged: bool) -> LimitState {
            state(&kinds()[k], self.states[k], now, v, charged)
        }

        fn acquire(
            &mut self,
            id: u128,
            req: &[(usize, u64, bool)],
            now: u64,
        ) -> (Outcome, Vec<LimitState>) {
            let kinds = kinds();
            let verdicts: Vec<Verdict> = req
                .iter()
                .map(|&(k, a, _)| self.verdict(k, now, a))
                .collect();
            let mut worst: Option<(usize, Option<u64>)> = None;
            for (i, (&(_, _, shadow), v)) in req.iter().zip(&verdicts).enumerate() {
                let wait = match (shadow, v) {
                    (true, _) | (_, Verdict::Allowed) => continue,
                    (_, Verdict::RetryAfter(d)) => Some(*d),
                    (_, Verdict::ExceedsCapacity) => None,
                };
                worst = match worst {
                    None => Some((i, wait)),
                    Some((_, None)) => worst,
                    Some((j, Some(w))) => match wait {
                        None => Some((i, None)),
                        Some(d) if d > w => Some((i, Some(d))),
                        _ => Some((j, Some(w))),
                    },
                };
            }
            if let Some((charge, retry_after_ns)) = worst {
                let st = req
                    .iter()
                    .zip(&verdicts)
                    .map(|(&(k, _, _), &v)| self.state(k, now, v, false))
                    .collect();
                return (
                    Outcome::Refused {
                        charge,
                        retry_after_ns,
                    },
                    st,
                );
            }
            let mut st = vec![None; req.len()];
            let mut held = vec![];
            // Enforced first, then shadow, as the store does (keys are distinct per request).
            for pass_shadow in [false, true] {
                for (i, &(k, a, shadow)) in req.iter().enumerate() {
                    if shadow != pass_shadow {
                        continue;
                    }
                    let v = self.verdict(k, now, a);
                    if v != Verdict::Allowed {
                        st[i] = Some(self.state(k, now, v, false));
                        continue;
                    }
                    let mut window = 0;
                    self.states[k] = match &kinds[k] {
                        LimitKind::Rate(g) => g.check_n(self.states[k], now, a).unwrap(),
                        LimitKind::Budget(b) => {
                            window = b.calendar().window_index(now);
                            b.check_n(self.states[k], now, window, a).unwrap()
                        }
                        LimitKind::Concurrency { .. } => self.states[k] + a,
                    };
                    st[i] = Some(self.state(k, now, Verdict::Allowed, true));
                    held.push((k, i, a, window));
                }
            }
            if !held.is_empty() {
                self.res.insert(id, held);
            }
            (
                Outcome::Admitted,
                st.into_iter().map(Option::unwrap).collect(),
            )
        }

        fn settle(&mut self, id: u128, actual: &[u64], now: u64) -> Settled {
            let Some(held) = self.res.remove(&id) else {
                return Settled::Unknown;
            };
            for (k, i, reserved, window) in held {
                let act = actual.get(i).copied().unwrap_or(reserved);
                let s = self.states[k];
                self.states[k] = match &kinds()[k] {
                    LimitKind::Rate(g) => g.settle(s, now, reserved, act),
                    LimitKind::Budget(b) => {
                        Budget::settle(s, b.calendar().window_index(now), window, reserved, act)
                    }
                    LimitKind::Concurrency { .. } => s - reserved,
                };
            }
            Settled::Settled
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Acquire(Vec<(usize, u64, bool)>),
        Settle(usize, Vec<u64>),
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => proptest::sample::subsequence(vec![0usize, 1, 2, 3], 1..=4)
                .prop_flat_map(|keys| {
                    let n = keys.len();
                    (Just(keys), proptest::collection::vec((1u64..20, proptest::bool::weighted(0.2)), n))
                })
                .prop_map(|(keys, xs)| {
                    Op::Acquire(keys.into_iter().zip(xs).map(|(k, (a, sh))| (k, a, sh)).collect())
                }),
            2 => (0usize..64, proptest::collection::vec(0u64..30, 0..4)).prop_map(|(i, a)| Op::Settle(i, a)),
            2 => (0u64..400_000_000).prop_map(Op::Advance),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn memory_store_matches_the_oracle(ops in proptest::collection::vec(op(), 1..80)) {
            let store = MemoryStore::new(MemoryStoreConfig { shards: 2, ..Default::default() });
            let mut model = Model::default();
            let mut now = 1_764_000_000 * S;
            let mut ids = vec![];
            let mut st = vec![];
            for (n, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Acquire(req) => {
                        let id = n as u128;
                        let charges: Vec<Charge> = req
                            .iter()
                            .map(|&(k, a, shadow)| Charge {
                                key: Arc::from(format!("k{k}")),
                                kind: kinds()[k],
                                amount: if k == 3 { 1 } else { a },
                                shadow,
                            })
                            .collect();
                        let req: Vec<_> = charges.iter().zip(&req).map(|(c, &(k, _, sh))| (k, c.amount, sh)).collect();
                        let got = store.acquire(ReservationId(id), &charges, now, 1 << 60, &mut st).unwrap();
                        let (want, want_st) = model.acquire(id, &req, now);
                        prop_assert_eq!(got, want);
                        prop_assert_eq!(&st, &want_st);
                        ids.push(id);
                    }
                    Op::Settle(i, actual) => {
                        let id = ids.get(i).copied().unwrap_or(999_999);
                        let got = store.settle(ReservationId(id), &actual, now).unwrap();
                        prop_assert_eq!(got, model.settle(id, &actual, now));
                    }
                    Op::Advance(dt) => now += dt,
                }
                let probe: Vec<Charge> = (0..4).map(|k| Charge::new(format!("k{k}"), kinds()[k], 1)).collect();
                store.peek(&probe, now, &mut st).unwrap();
                let want: Vec<_> = (0..4).map(|k| model.state(k, now, model.verdict(k, now, 1), false)).collect();
                prop_assert_eq!(&st, &want);
            }
        }
    }
}
