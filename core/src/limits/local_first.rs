//! Local-first limits for very high rates: decide in process, share through Redis in batches.
//!
//! Every decision is made by an in-process [`MemoryStore`] (tens of nanoseconds, no network
//! on the request path). What each replica charged or refunded per key is summed locally,
//! and every `interval` a background thread adds the sums to the shared state in Redis (one
//! script call per 1,000 keys, the same keys a [`RedisStore`] uses, so both kinds of store
//! can share a limit) and folds the shared state back into the local one.
//!
//! # Overshoot
//!
//! A replica does not see what the others admitted since its last sync. With `R` replicas
//! syncing every `T` (plus a round trip `RTT`), a limit can admit up to what `R - 1`
//! replicas admit locally before their charges reach the others: at any moment at most
//! `(R - 1) x (burst + rate x (T + RTT))` more than the limit allows, the burst term coming
//! from each replica starting a fresh key with a full bucket. The excess is borrowed, not
//! lost: the shared state carries it as debt, so that over longer windows the admitted total
//! converges to the limit. Budgets overshoot the same way, by what `R - 1` replicas charge
//! in one interval. `benches/RESULTS.md` records both measured with two replicas; use the
//! plain [`RedisStore`] where a limit must hold exactly at every moment.
//!
//! Keys stay synced for a while after their last charge (`keep_rounds` intervals), so a
//! replica learns what others charge on a key it used recently even before it charges again.
//!
//! # Concurrency and failures
//!
//! Concurrency limits are local to each replica (a slot in flight is not worth a round
//! trip; divide `max` by the number of replicas in the policy). When Redis cannot be
//! reached, replicas keep deciding locally, the deltas are kept for the next sync (nothing
//! is lost), and [`LocalFirstStore::stats`] reports the failures: the store itself never
//! returns a store error for a Redis outage.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use super::redis::RedisStore;
use super::window::{pack, Budget};
use super::{
    Charge, Clock, LimitKind, LimitState, LimitStore, MemoryStore, MemoryStoreConfig, Outcome,
    ReservationId, Settled, StoreError, SystemClock,
};

/// How a [`LocalFirstStore`] syncs.
#[derive(Debug, Clone)]
pub struct LocalFirstConfig {
    /// Time between syncs; `None` syncs only when [`LocalFirstStore::sync_now`] is called
    /// (tests, or a host that drives syncs itself).
    pub interval: Option<Duration>,
    /// Syncs a key stays in the sync set after its last charge.
    pub keep_rounds: u32,
    /// The in-process store that decides.
    pub local: MemoryStoreConfig,
    /// Where the background thread reads the time.
    pub clock: Arc<dyn Clock>,
}

impl Default for LocalFirstConfig {
    fn default() -> LocalFirstConfig {
        LocalFirstConfig {
            interval: Some(Duration::from_millis(20)),
            keep_rounds: 50,
            local: MemoryStoreConfig::default(),
            clock: Arc::new(SystemClock),
        }
    }
}

/// Counters of a [`LocalFirstStore`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalFirstStats {
    /// Syncs that reached Redis.
    pub syncs: u64,
    /// Syncs that failed (their deltas wait for the next).
    pub failed_syncs: u64,
    /// The last failure, if the last sync failed.
    pub last_error: Option<StoreError>,
    /// Keys in the sync set.
    pub synced_keys: usize,
    /// Charges kept local only because the sync set was full (as many keys as the local
    /// store holds).
    pub unsynced_charges: u64,
}

#[derive(Debug)]
struct Pending {
    kind: LimitKind,
    /// The budget window the units count for (0 for rates). When a budget's window moves
    /// on, the units of the old one are dropped: they could only matter to a window that is
    /// over.
    window: i64,
    /// Units charged (positive) or refunded (negative) since the last sync.
    units: i128,
    /// Syncs since the last change.
    idle: u32,
}

/// A charge of an unsettled reservation, for the difference settle makes.
#[derive(Debug)]
struct Tracked {
    index: usize,
    key: Arc<str>,
    kind: LimitKind,
    reserved: u64,
    window: i64,
}

type TrackedMap = HashMap<u128, (u64, Vec<Tracked>), foldhash::fast::FixedState>;
type PendingMap = HashMap<Arc<str>, Pending, foldhash::fast::FixedState>;

const SHARDS: usize = 16;

struct Inner {
    local: MemoryStore,
    remote: RedisStore,
    pending: Box<[Mutex<PendingMap>]>,
    /// Unsettled reservations: id to (lease end, charges).
    tracked: Box<[Mutex<TrackedMap>]>,
    max_tracked_per_shard: usize,
    hasher: foldhash::fast::FixedState,
    keep_rounds: u32,
    max_pending_per_shard: usize,
    /// Charges not recorded for syncing because the sync set was full.
    unsynced: AtomicU64,
    syncs: AtomicU64,
    failed_syncs: AtomicU64,
    last_error: Mutex<Option<StoreError>>,
    /// Set to stop the background thread.
    stop: Mutex<bool>,
    wake: Condvar,
}

/// A [`LimitStore`] that decides locally and syncs to Redis in batches (see the module).
pub struct LocalFirstStore {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for LocalFirstStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalFirstStore")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The most keys sent in one sync script call.
const SYNC_CHUNK: usize = 1_000;

impl LocalFirstStore {
    /// Decide locally, sync through `remote` every `config.interval`.
    pub fn new(remote: RedisStore, config: LocalFirstConfig) -> LocalFirstStore {
        let inner = Arc::new(Inner {
            max_tracked_per_shard: config.local.max_reservations.div_ceil(SHARDS).max(1),
            local: MemoryStore::new(config.local),
            remote,
            pending: (0..SHARDS).map(|_| Mutex::default()).collect(),
            tracked: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: foldhash::fast::FixedState::default(),
            keep_rounds: config.keep_rounds,
            max_pending_per_shard: config.local.max_keys.div_ceil(SHARDS).max(1),
            unsynced: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            failed_syncs: AtomicU64::new(0),
            last_error: Mutex::new(None),
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        let clock = config.clock;
        let thread = config.interval.map(|every| {
            let inner = Arc::clone(&inner);
            let clock = Arc::clone(&clock);
            std::thread::Builder::new()
                .name("edgeward-sync".into())
                .spawn(move || loop {
                    let stop = lock(&inner.stop);
                    let (stop, _) = inner
                        .wake
                        .wait_timeout_while(stop, every, |s| !*s)
                        .unwrap_or_else(PoisonError::into_inner);
                    if *stop {
                        return;
                    }
                    drop(stop);
                    // A failure is counted in the stats and its deltas wait for the next.
                    let _ = inner.sync(clock.now_ns());
                })
                .expect("spawn the sync thread")
        });
        LocalFirstStore {
            inner,
            thread,
            clock,
        }
    }

    /// Sync now: send the deltas since the last sync, fold the shared state in. Returns the
    /// failure, if Redis could not be reached (the deltas are kept for the next sync).
    pub fn sync_now(&self, now_ns: u64) -> Result<(), StoreError> {
        self.inner.sync(now_ns)
    }

    /// Sync counters and the last failure.
    pub fn stats(&self) -> LocalFirstStats {
        LocalFirstStats {
            syncs: self.inner.syncs.load(Ordering::Relaxed),
            failed_syncs: self.inner.failed_syncs.load(Ordering::Relaxed),
            last_error: lock(&self.inner.last_error).clone(),
            synced_keys: self.inner.pending.iter().map(|s| lock(s).len()).sum(),
            unsynced_charges: self.inner.unsynced.load(Ordering::Relaxed),
        }
    }
}

impl Drop for LocalFirstStore {
    fn drop(&mut self) {
        *lock(&self.inner.stop) = true;
        self.inner.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
            // What was charged since the last sync still reaches the other replicas.
            let _ = self.inner.sync(self.clock.now_ns());
        }
    }
}

fn window_of(kind: &LimitKind, now: u64) -> i64 {
    match kind {
        LimitKind::Budget(b) => b.calendar().window_index(now),
        _ => 0,
    }
}

impl Inner {
    fn shard_of<K: Hash + ?Sized>(&self, k: &K) -> usize {
        (self.hasher.hash_one(k) >> 32) as usize % SHARDS
    }

    fn add(&self, key: &Arc<str>, kind: LimitKind, window: i64, units: i128) {
        let mut shard = lock(&self.pending[self.shard_of(&**key)]);
        // Borrowed lookup first: the common case (a key charged before) clones nothing.
        if let Some(p) = shard.get_mut(&**key) {
            if p.window != window {
                if window < p.window {
                    return;
                }
                p.window = window;
                p.units = 0;
            }
            p.units += units;
            p.idle = 0;
            return;
        }
        // Bounded like the local store (a Redis outage keeps every charged key here): past
        // the bound a new key's charges stay local, counted in the stats.
        if shard.len() >= self.max_pending_per_shard {
            self.unsynced.fetch_add(1, Ordering::Relaxed);
            return;
        }
        shard.insert(
            Arc::clone(key),
            Pending {
                kind,
                window,
                units,
                idle: 0,
            },
        );
    }

    fn sync(&self, now: u64) -> Result<(), StoreError> {
        // Take every delta (resetting it), drop keys idle for too long.
        let mut batch: Vec<(Arc<str>, LimitKind, i64, i128)> = Vec::new();
        for shard in self.pending.iter() {
            let mut shard = lock(shard);
            let keep = self.keep_rounds;
            shard.retain(|key, p| {
                if p.units == 0 && p.idle > keep {
                    return false;
                }
                batch.push((Arc::clone(key), p.kind, p.window, p.units));
                p.units = 0;
                p.idle += 1;
                true
            });
        }
        let mut result = Ok(());
        for chunk in batch.chunks(SYNC_CHUNK) {
            match self.remote.sync(chunk, now) {
                Ok(shared) => {
                    for ((key, kind, window, _), state) in chunk.iter().zip(shared) {
                        self.fold(key, kind, *window, state, now);
                    }
                }
                Err(f) => {
                    // Deltas that did not reach Redis go back for the next sync. When the
                    // call may have run (a timeout, a connection lost while waiting), only
                    // the charges go back: counting a charge twice errs on the strict side,
                    // a refund applied twice would let replicas over-admit.
                    for (key, kind, window, units) in chunk {
                        if *units > 0 || (*units < 0 && !f.sent) {
                            self.add(key, *kind, *window, *units);
                        }
                    }
                    result = Err(f.err);
                }
            }
        }
        match &result {
            Ok(()) => {
                self.syncs.fetch_add(1, Ordering::Relaxed);
                *lock(&self.last_error) = None;
            }
            Err(e) => {
                self.failed_syncs.fetch_add(1, Ordering::Relaxed);
                *lock(&self.last_error) = Some(e.clone());
            }
        }
        result
    }

    /// Fold the shared state of a key into the local one: the larger of the two, with what
    /// was charged locally since this sync started added to the shared side.
    fn fold(&self, key: &Arc<str>, kind: &LimitKind, window: i64, shared: u64, now: u64) {
        let shard = lock(&self.pending[self.shard_of(&**key)]);
        let since = shard
            .get(&**key)
            .filter(|p| p.window == window)
            .map_or(0, |p| p.units)
            .max(0) as u64;
        let charge = Charge::new(Arc::clone(key), *kind, 0);
        // A key the local store cannot hold (full of busy keys) is decided without the
        // shared state until it can.
        let _ = match kind {
            LimitKind::Rate(g) => {
                let shared_ns = shared.saturating_mul(1_000);
                let floor = if since > 0 {
                    shared_ns.max(now).saturating_add(g.ticks(since))
                } else {
                    shared_ns
                };
                self.local.merge(&charge, now, |tat| tat.max(floor))
            }
            LimitKind::Budget(b) => {
                if b.calendar().window_index(now) != window {
                    return;
                }
                let floor = shared.saturating_add(since);
                self.local.merge(&charge, now, |state| {
                    let (w, used) = Budget::current(state, window);
                    let used = if w == window { used } else { 0 };
                    pack(window, used.max(floor))
                })
            }
            LimitKind::Concurrency { .. } => Ok(()),
        };
        drop(shard);
    }

    fn track(&self, id: ReservationId, expires: u64, list: Vec<Tracked>, now: u64) {
        let mut shard = lock(&self.tracked[self.shard_of(&id.0)]);
        if shard.len() >= self.max_tracked_per_shard {
            shard.retain(|_, (exp, _)| *exp >= now);
        }
        // Past the bound the settle difference of this reservation is not synced (its
        // estimate stands shared); the local store still settles it.
        if shard.len() < self.max_tracked_per_shard {
            shard.insert(id.0, (expires, list));
        }
    }
}

impl LimitStore for LocalFirstStore {
    fn acquire(
        &self,
        id: ReservationId,
        charges: &[Charge],
        now_ns: u64,
        lease_ns: u64,
        states: &mut Vec<LimitState>,
    ) -> Result<Outcome, StoreError> {
        let out = self
            .inner
            .local
            .acquire(id, charges, now_ns, lease_ns, states)?;
        if !out.is_admitted() {
            return Ok(out);
        }
        let mut list = Vec::new();
        for (i, (c, s)) in charges.iter().zip(states.iter()).enumerate() {
            if !s.charged || matches!(c.kind, LimitKind::Concurrency { .. }) {
                continue;
            }
            let window = window_of(&c.kind, now_ns);
            self.inner.add(&c.key, c.kind, window, i128::from(c.amount));
            if lease_ns > 0 {
                list.push(Tracked {
                    index: i,
                    key: Arc::clone(&c.key),
                    kind: c.kind,
                    reserved: c.amount,
                    window,
                });
            }
        }
        if !list.is_empty() {
            self.inner
                .track(id, now_ns.saturating_add(lease_ns), list, now_ns);
        }
        Ok(out)
    }

    fn settle(
        &self,
        id: ReservationId,
        actual: &[u64],
        now_ns: u64,
    ) -> Result<Settled, StoreError> {
        let tracked = lock(&self.inner.tracked[self.inner.shard_of(&id.0)]).remove(&id.0);
        let r = self.inner.local.settle(id, actual, now_ns)?;
        if let (Settled::Settled, Some((_, list))) = (r, tracked) {
            for t in list {
                let act = actual.get(t.index).copied().unwrap_or(t.reserved);
                if act == t.reserved || window_of(&t.kind, now_ns) != t.window {
                    continue;
                }
                let diff = i128::from(act) - i128::from(t.reserved);
                self.inner.add(&t.key, t.kind, t.window, diff);
            }
        }
        Ok(r)
    }

    fn peek(
        &self,
        charges: &[Charge],
        now_ns: u64,
        states: &mut Vec<LimitState>,
    ) -> Result<(), StoreError> {
        self.inner.local.peek(charges, now_ns, states)
    }
}
