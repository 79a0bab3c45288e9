//! A [`LimitStore`] over Redis (7 or later) or Valkey, shared by every replica of a gateway.
//!
//! One decision is one round trip: a Lua script gets every key of the request, checks every
//! enforced charge first and charges only when all of them fit, so the result is atomic and
//! all-or-nothing without compensating updates. Settlement is a second script, one round
//! trip per settle. The math is the memory store's ([`gcra`](super::gcra),
//! [`window`](super::window)); the scripts repeat only its atomic step.
//!
//! # Numbers
//!
//! Lua numbers are doubles, exact below 2^53. Rates therefore run in microseconds
//! (microseconds since 1970 stay below 2^53 until 2255): Rust computes every increment and
//! the burst tolerance with 128-bit arithmetic, the script does a max, an add and a compare,
//! and writes numbers back with `%.0f` (Redis would otherwise format them with 14 significant
//! digits and lose the low ones). Retry delays come back in nanoseconds, exact to the
//! microsecond grid: at `now + retry_after` the request fits, a microsecond earlier it does
//! not. Budgets keep one key per calendar window (`…:w<index>`) that expires a day after the
//! window ends; concurrency is a sorted set of reservation members scored by their lease's
//! end, so slots of a replica that died are freed when their lease runs out.
//!
//! # Keys and Redis Cluster
//!
//! Every key is `{<hash tag>}:<r|b|c>:<charge key>`: one hash tag (default `edgeward`) puts
//! all keys in one slot, which a script needs on Redis Cluster, and the kind letter keeps a
//! rate, a budget and a concurrency limit of the same name from meeting as different Redis
//! types. All limit state then lives on one cluster shard; deployments that outgrow one
//! shard run one store (and tag) per group of routes.
//!
//! # Reservations
//!
//! A reservation is settled by the process that made it (the engine's `Reservation` is an
//! in-process value), so the store keeps what it charged in a bounded local map until
//! settle or the lease ends. Redis itself holds only the shared state.
//!
//! # Connections
//!
//! A pool of synchronous connections, each used by one caller at a time: connect and command
//! timeouts bound every call, a connection that failed is dropped, a stale pooled one (Redis
//! restarted) is replaced once within the same call, and after a failed connect the store
//! answers `store.unavailable` at once for a short back-off instead of letting every request
//! wait for its own connect timeout.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::{RedisError, RedisResult, Script};

use super::gcra::Gcra;
use super::memory::{concurrency_verdict, state, verdict};
use super::window::pack;
use super::{
    worst_refusal, Charge, LimitKind, LimitState, LimitStore, Outcome, ReservationId, Settled,
    StoreError, StoreErrorKind, Verdict,
};

/// How a [`RedisStore`] reaches Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisStoreConfig {
    /// `redis://[user:password@]host:port[/db]` (or `unix:///path`).
    pub url: String,
    /// The hash tag every key carries (without braces).
    pub hash_tag: String,
    /// Connections kept open for reuse; more callers at once open more, closed after use.
    pub max_idle: usize,
    /// How long a new connection may take.
    pub connect_timeout: Duration,
    /// How long one command may take to be written and answered.
    pub command_timeout: Duration,
    /// After a failed connect, how long calls fail at once before the next attempt.
    pub retry_backoff: Duration,
    /// The most reservations kept for settle at once (unsettled, lease not over).
    pub max_reservations: usize,
}

impl RedisStoreConfig {
    /// Defaults for `url`: tag `edgeward`, 16 idle connections, 250 ms to connect, 100 ms
    /// per command, 250 ms back-off, a million reservations.
    pub fn new(url: impl Into<String>) -> RedisStoreConfig {
        RedisStoreConfig {
            url: url.into(),
            hash_tag: "edgeward".into(),
            max_idle: 16,
            connect_timeout: Duration::from_millis(250),
            command_timeout: Duration::from_millis(100),
            retry_backoff: Duration::from_millis(250),
            max_reservations: 1 << 20,
        }
    }
}

/// `ARGV`: now (µs), the lease's end (µs, 0 for a final reservation), the reservation's
/// member name, now rounded up (µs, what expires leases), the TTL slack (ms); then per
/// charge: type, a, b, c, shadow. Check every charge, then charge all (enforced and fitting shadow) or none. Returns
/// `{admitted, state_1, …, state_n}` with each state as it was before this call.
const ACQUIRE: &str = r#"
local now = tonumber(ARGV[1])
local lease_end = tonumber(ARGV[2])
local member = ARGV[3]
local slack = tonumber(ARGV[5])
local n = #KEYS
local out = {1}
local fits = {}
for i = 1, n do
  local o = 5 + 5 * (i - 1)
  local t, a, b = ARGV[o + 1], tonumber(ARGV[o + 2]), tonumber(ARGV[o + 3])
  local v, ok
  if t == 'r' then
    v = tonumber(redis.call('GET', KEYS[i]) or '0')
    ok = a >= 0 and math.max(v, now) + a - b <= now
  elseif t == 'b' then
    v = tonumber(redis.call('GET', KEYS[i]) or '0')
    ok = a <= b - math.min(v, b)
  else
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', '(' .. ARGV[4])
    v = redis.call('ZCARD', KEYS[i])
    ok = a <= b and v + a <= b
  end
  out[i + 1] = v
  fits[i] = ok
  if not ok and ARGV[o + 5] == '0' then out[1] = 0 end
end
if out[1] == 1 then
  for i = 1, n do
    if fits[i] then
      local o = 5 + 5 * (i - 1)
      local t, a = ARGV[o + 1], tonumber(ARGV[o + 2])
      if t == 'r' then
        local tat = math.max(out[i + 1], now) + a
        redis.call('SET', KEYS[i], string.format('%.0f', tat),
          'PX', string.format('%.0f', math.floor((tat - now) / 1000) + slack))
      elseif t == 'b' then
        redis.call('INCRBY', KEYS[i], ARGV[o + 2])
        redis.call('PEXPIRE', KEYS[i], ARGV[o + 4])
      elseif lease_end > 0 then
        for k = 1, a do
          redis.call('ZADD', KEYS[i], ARGV[2], member .. ':' .. k)
        end
        local ttl = math.floor((lease_end - now) / 1000) + slack
        if redis.call('PTTL', KEYS[i]) < ttl then
          redis.call('PEXPIRE', KEYS[i], ttl)
        end
      end
    end
  end
end
return out
"#;

/// `ARGV`: now (µs), the reservation's member name, the TTL slack (ms); then apply a
/// reservation's settlement, per key: `r` (a signed tick difference), `b` (reserved,
/// actual), `c` (members to remove).
const SETTLE: &str = r#"
local now = tonumber(ARGV[1])
local member = ARGV[2]
local slack = tonumber(ARGV[3])
for i = 1, #KEYS do
  local o = 3 + 3 * (i - 1)
  local t, a, b = ARGV[o + 1], tonumber(ARGV[o + 2]), tonumber(ARGV[o + 3])
  if t == 'r' then
    local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
    local new
    if a < 0 then
      new = math.max(tat + a, math.min(now, tat))
    else
      new = math.max(tat, now) + a
    end
    if new > now then
      redis.call('SET', KEYS[i], string.format('%.0f', new),
        'PX', string.format('%.0f', math.floor((new - now) / 1000) + slack))
    else
      redis.call('DEL', KEYS[i])
    end
  elseif t == 'b' then
    local used = redis.call('GET', KEYS[i])
    if used then
      local new = math.max(tonumber(used) - a, 0) + b
      redis.call('SET', KEYS[i], string.format('%.0f', new), 'KEEPTTL')
    end
  else
    for k = 1, a do
      redis.call('ZREM', KEYS[i], member .. ':' .. k)
    end
  end
end
return 1
"#;

/// The state of every key without changing any; `ARGV[1]` is now rounded up (µs).
const PEEK: &str = r#"
local out = {}
for i = 1, #KEYS do
  if ARGV[i + 1] == 'c' then
    out[i] = redis.call('ZCOUNT', KEYS[i], ARGV[1], '+inf')
  else
    out[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
  end
end
return out
"#;

/// Lua's doubles are exact below this.
const LUA_EXACT: u64 = 1 << 53;

/// Keys outlive the instant their state is equivalent to no key (a TAT in the past, the
/// last lease's end) by this much, for replicas whose clocks are a little apart (and for
/// tests on a fake clock, whose keys Redis still expires in real time).
const TTL_SLACK_MS: u64 = 60_000;

/// A budget window's key outlives the window by this much, so a settle shortly after the
/// boundary still finds it.
const BUDGET_GRACE_MS: u64 = 86_400_000;

/// One charge a reservation made, kept locally until settle.
#[derive(Debug)]
struct Held {
    key: String,
    kind: LimitKind,
    index: usize,
    reserved: u64,
    window: i64,
}

#[derive(Debug)]
struct Res {
    expires: u64,
    held: Vec<Held>,
}

const RES_SHARDS: usize = 16;

/// A [`LimitStore`] over Redis: one Lua script per decision, shared by every process that
/// uses the same Redis and hash tag.
pub struct RedisStore {
    pool: Pool,
    tag: String,
    acquire: Script,
    settle: Script,
    peek: Script,
    reservations: Box<[Mutex<HashMap<u128, Res>>]>,
    max_reservations_per_shard: usize,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("tag", &self.tag)
            .field("reservations", &self.reservation_count())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn rate_in_micros(g: &Gcra) -> Result<Gcra, StoreError> {
    let g = Gcra::new(g.limit(), (g.period() / 1_000).max(1), g.burst())
        .map_err(|e| StoreError::new(StoreErrorKind::Config, format!("rate: {e:?}")))?;
    if g.tau() >= LUA_EXACT {
        return Err(StoreError::new(
            StoreErrorKind::Config,
            "a rate's burst spans more time than Redis scripts count exactly (2^53 us)",
        ));
    }
    Ok(g)
}

fn member(id: ReservationId) -> String {
    format!("{:032x}", id.0)
}

fn protocol(what: &str) -> StoreError {
    StoreError::new(StoreErrorKind::Protocol, format!("redis: {what}"))
}

impl RedisStore {
    /// A store for `config`. Connects lazily: the first call opens the first connection
    /// (see [`check`](RedisStore::check) to fail early instead).
    pub fn new(config: RedisStoreConfig) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| StoreError::new(StoreErrorKind::Config, format!("redis url: {e}")))?;
        if config.hash_tag.is_empty() || config.hash_tag.contains(['{', '}']) {
            return Err(StoreError::new(
                StoreErrorKind::Config,
                "redis hash tag must be non-empty and without braces",
            ));
        }
        Ok(RedisStore {
            pool: Pool {
                client,
                idle: Mutex::new(Vec::new()),
                max_idle: config.max_idle,
                connect_timeout: config.connect_timeout,
                command_timeout: config.command_timeout,
                backoff: config.retry_backoff,
                base: Instant::now(),
                down_until: AtomicU64::new(0),
            },
            tag: config.hash_tag,
            acquire: Script::new(ACQUIRE),
            settle: Script::new(SETTLE),
            peek: Script::new(PEEK),
            reservations: (0..RES_SHARDS).map(|_| Mutex::default()).collect(),
            max_reservations_per_shard: config.max_reservations.div_ceil(RES_SHARDS).max(1),
        })
    }

    /// Connect, check that Redis answers and load the scripts, so that a misconfigured
    /// store fails at startup rather than on the first request.
    pub fn check(&self) -> Result<(), StoreError> {
        self.pool.run(|con| {
            redis::cmd("PING").query::<String>(con)?;
            for s in [&self.acquire, &self.settle, &self.peek] {
                s.prepare_invoke().load(con)?;
            }
            Ok(())
        })
    }

    /// Reservations kept for settle (unsettled; some may have expired and not been swept).
    pub fn reservation_count(&self) -> usize {
        self.reservations.iter().map(|s| lock(s).len()).sum()
    }

    /// The Redis key of a charge (with the budget window it falls in at `now_ns`).
    fn key(&self, c: &Charge, now_ns: u64) -> (String, i64) {
        let (letter, window) = match &c.kind {
            LimitKind::Rate(_) => ('r', None),
            LimitKind::Budget(b) => ('b', Some(b.calendar().window_index(now_ns))),
            LimitKind::Concurrency { .. } => ('c', None),
        };
        let mut k = String::with_capacity(self.tag.len() + c.key.len() + 24);
        k.push('{');
        k.push_str(&self.tag);
        k.push_str("}:");
        k.push(letter);
        k.push(':');
        k.push_str(&c.key);
        if let Some(w) = window {
            use std::fmt::Write;
            let _ = write!(k, ":w{w}");
        }
        (k, window.unwrap_or(0))
    }

    fn res_shard(&self, id: ReservationId) -> &Mutex<HashMap<u128, Res>> {
        let h = (id.0 as u64) ^ ((id.0 >> 64) as u64);
        &self.reservations[(h as usize) % RES_SHARDS]
    }

    /// Room for one more reservation in `id`'s shard (expired ones are dropped to make it).
    fn room_for(&self, id: ReservationId, now: u64) -> Result<(), StoreError> {
        let mut shard = lock(self.res_shard(id));
        if shard.contains_key(&id.0) {
            return Err(StoreError::new(
                StoreErrorKind::Protocol,
                "reservation id already in use",
            ));
        }
        if shard.len() >= self.max_reservations_per_shard {
            shard.retain(|_, r| r.expires >= now);
        }
        if shard.len() >= self.max_reservations_per_shard {
            return Err(StoreError::new(
                StoreErrorKind::Capacity,
                "redis store: too many reservations in flight",
            ));
        }
        Ok(())
    }
}

/// The state of one charge from its stored value before the call (`pre`), as the memory
/// store reports it; rates are converted from the microsecond grid to nanoseconds.
fn charge_state(
    c: &Charge,
    pre: u64,
    now_ns: u64,
    window: i64,
    charged: bool,
    lease: u64,
) -> Result<LimitState, StoreError> {
    Ok(match &c.kind {
        LimitKind::Rate(g) => {
            let g = rate_in_micros(g)?;
            let now_us = now_ns / 1_000;
            let v = match g.check_n(pre, now_us, c.amount) {
                Ok(_) => Verdict::Allowed,
                // Fits once the microsecond clock reaches now_us + d.
                Err(r) => match r.retry_after() {
                    Some(d) => Verdict::RetryAfter(
                        (now_us + d)
                            .saturating_mul(1_000)
                            .saturating_sub(now_ns)
                            .max(1),
                    ),
                    None => Verdict::ExceedsCapacity,
                },
            };
            let stored = if charged {
                pre.max(now_us) + g.increment(c.amount).unwrap_or(0)
            } else {
                pre
            };
            let s = g.snapshot(stored, now_us);
            LimitState {
                limit: g.limit(),
                remaining: s.remaining,
                reset_after_ns: stored.saturating_mul(1_000).saturating_sub(now_ns),
                verdict: v,
                charged,
            }
        }
        LimitKind::Budget(_) => {
            let before = pack(window, pre);
            let v = verdict(&c.kind, before, now_ns, c.amount);
            let after = if charged {
                pack(window, pre.saturating_add(c.amount))
            } else {
                before
            };
            state(&c.kind, after, now_ns, v, charged)
        }
        LimitKind::Concurrency { max } => {
            let v = concurrency_verdict(*max, pre, c.amount);
            let after = if charged && lease > 0 {
                pre + c.amount
            } else {
                pre
            };
            state(&c.kind, after, now_ns, v, charged)
        }
    })
}

impl LimitStore for RedisStore {
    fn acquire(
        &self,
        id: ReservationId,
        charges: &[Charge],
        now_ns: u64,
        lease_ns: u64,
        states: &mut Vec<LimitState>,
    ) -> Result<Outcome, StoreError> {
        states.clear();
        if charges.is_empty() {
            return Ok(Outcome::Admitted);
        }
        if lease_ns > 0 {
            self.room_for(id, now_ns)?;
        }
        let now_us = now_ns / 1_000;
        // Leases end on the microsecond grid: a lease ending at `e` ns is over for every
        // `now` whose rounded-up microsecond is past `e / 1000`, exact when `e` falls on it.
        let lease_end_us = if lease_ns > 0 {
            now_ns.saturating_add(lease_ns) / 1_000
        } else {
            0
        };
        let mut inv = self.acquire.prepare_invoke();
        inv.arg(now_us)
            .arg(lease_end_us)
            .arg(member(id))
            .arg(now_ns.div_ceil(1_000))
            .arg(TTL_SLACK_MS);
        let mut keys = Vec::with_capacity(charges.len());
        for c in charges {
            let (key, window) = self.key(c, now_ns);
            inv.key(&key);
            inv.arg(match c.kind {
                LimitKind::Rate(_) => "r",
                LimitKind::Budget(_) => "b",
                LimitKind::Concurrency { .. } => "c",
            });
            match &c.kind {
                LimitKind::Rate(g) => {
                    let g = rate_in_micros(g)?;
                    // -1: above the burst, never fits.
                    let inc = g.increment(c.amount).map_or(-1, |i| i as i64);
                    inv.arg(inc).arg(g.tau()).arg(0);
                }
                LimitKind::Budget(b) => {
                    let ttl_ms = b
                        .calendar()
                        .window_end(now_ns)
                        .saturating_sub(now_ns)
                        .div_ceil(1_000_000)
                        .saturating_add(BUDGET_GRACE_MS);
                    inv.arg(c.amount.min(LUA_EXACT)).arg(b.limit()).arg(ttl_ms);
                }
                LimitKind::Concurrency { max } => {
                    inv.arg(c.amount.min(*max + 1)).arg(*max).arg(0);
                }
            }
            inv.arg(if c.shadow { "1" } else { "0" });
            keys.push((key, window));
        }
        let reply: Vec<u64> = self.pool.run(|con| inv.invoke(con))?;
        if reply.len() != charges.len() + 1 || reply[0] > 1 {
            return Err(protocol("unexpected acquire reply"));
        }
        let admitted = reply[0] == 1;
        let mut held = Vec::new();
        for (i, c) in charges.iter().enumerate() {
            let pre = reply[i + 1];
            let fits = charge_state(c, pre, now_ns, keys[i].1, false, lease_ns)?.verdict
                == Verdict::Allowed;
            let charged = admitted && fits;
            states.push(charge_state(c, pre, now_ns, keys[i].1, charged, lease_ns)?);
            if charged && lease_ns > 0 {
                held.push(Held {
                    key: std::mem::take(&mut keys[i].0),
                    kind: c.kind,
                    index: i,
                    reserved: c.amount,
                    window: keys[i].1,
                });
            }
        }
        if !admitted {
            let Some((charge, retry_after_ns)) = worst_refusal(charges, states) else {
                return Err(protocol("refused without a refusing charge"));
            };
            return Ok(Outcome::Refused {
                charge,
                retry_after_ns,
            });
        }
        if !held.is_empty() {
            lock(self.res_shard(id)).insert(
                id.0,
                Res {
                    expires: now_ns.saturating_add(lease_ns),
                    held,
                },
            );
        }
        Ok(Outcome::Admitted)
    }

    fn settle(
        &self,
        id: ReservationId,
        actual: &[u64],
        now_ns: u64,
    ) -> Result<Settled, StoreError> {
        let Some(r) = lock(self.res_shard(id)).remove(&id.0) else {
            return Ok(Settled::Unknown);
        };
        if r.expires < now_ns {
            // The estimate stands; Redis frees the slots in flight by their lease.
            return Ok(Settled::Unknown);
        }
        let now_us = now_ns / 1_000;
        let mut inv = self.settle.prepare_invoke();
        inv.arg(now_us).arg(member(id)).arg(TTL_SLACK_MS);
        let mut any = false;
        for h in &r.held {
            let act = actual.get(h.index).copied().unwrap_or(h.reserved);
            match &h.kind {
                LimitKind::Rate(g) => {
                    let g = rate_in_micros(g)?;
                    let due = g.ticks(act).min(LUA_EXACT);
                    let charged = g.ticks(h.reserved);
                    if due == charged {
                        continue;
                    }
                    inv.key(&h.key)
                        .arg("r")
                        .arg(due as i64 - charged as i64)
                        .arg(0);
                }
                LimitKind::Budget(b) => {
                    if act == h.reserved || b.calendar().window_index(now_ns) > h.window {
                        continue;
                    }
                    inv.key(&h.key)
                        .arg("b")
                        .arg(h.reserved)
                        .arg(act.min(LUA_EXACT));
                }
                LimitKind::Concurrency { .. } => {
                    inv.key(&h.key).arg("c").arg(h.reserved).arg(0);
                }
            }
            any = true;
        }
        if any {
            let _: i64 = self.pool.run(|con| inv.invoke(con))?;
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
        if charges.is_empty() {
            return Ok(());
        }
        let mut inv = self.peek.prepare_invoke();
        inv.arg(now_ns.div_ceil(1_000));
        let mut windows = Vec::with_capacity(charges.len());
        for c in charges {
            let (key, window) = self.key(c, now_ns);
            inv.key(key).arg(match c.kind {
                LimitKind::Concurrency { .. } => "c",
                _ => "v",
            });
            windows.push(window);
        }
        let reply: Vec<u64> = self.pool.run(|con| inv.invoke(con))?;
        if reply.len() != charges.len() {
            return Err(protocol("unexpected peek reply"));
        }
        for (i, c) in charges.iter().enumerate() {
            states.push(charge_state(c, reply[i], now_ns, windows[i], false, 0)?);
        }
        Ok(())
    }
}

/// Synchronous connections, reused one caller at a time.
struct Pool {
    client: redis::Client,
    idle: Mutex<Vec<redis::Connection>>,
    max_idle: usize,
    connect_timeout: Duration,
    command_timeout: Duration,
    backoff: Duration,
    base: Instant,
    /// Nanoseconds after `base` before which a connect is not tried again.
    down_until: AtomicU64,
}

/// What a failed call says about its connection.
fn is_stale(e: &RedisError) -> bool {
    !e.is_timeout() && (e.is_connection_dropped() || e.is_io_error())
}

fn map_err(e: &RedisError) -> StoreError {
    let kind = if e.is_timeout() {
        StoreErrorKind::Timeout
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        StoreErrorKind::Unavailable
    } else {
        StoreErrorKind::Protocol
    };
    StoreError::new(kind, format!("redis: {e}"))
}

impl Pool {
    fn elapsed(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn connect(&self) -> Result<redis::Connection, StoreError> {
        if self.elapsed() < self.down_until.load(Ordering::Relaxed) {
            return Err(StoreError::new(
                StoreErrorKind::Unavailable,
                "redis: unreachable at the last attempt; backing off",
            ));
        }
        let con = self
            .client
            .get_connection_with_timeout(self.connect_timeout)
            .and_then(|con| {
                con.set_read_timeout(Some(self.command_timeout))?;
                con.set_write_timeout(Some(self.command_timeout))?;
                Ok(con)
            });
        con.map_err(|e| {
            let until = self
                .elapsed()
                .saturating_add(u64::try_from(self.backoff.as_nanos()).unwrap_or(u64::MAX));
            self.down_until.store(until, Ordering::Relaxed);
            map_err(&e)
        })
    }

    fn put(&self, con: redis::Connection) {
        let mut idle = lock(&self.idle);
        if idle.len() < self.max_idle {
            idle.push(con);
        }
    }

    /// Run `f` on a connection: a pooled one, or a new one when none is idle or the pooled
    /// one turned out dead (which empties the pool: after a restart they all are). A
    /// connection that timed out is dropped, since its late reply would answer the next call.
    fn run<T>(
        &self,
        mut f: impl FnMut(&mut redis::Connection) -> RedisResult<T>,
    ) -> Result<T, StoreError> {
        let pooled = lock(&self.idle).pop();
        if let Some(mut con) = pooled {
            match f(&mut con) {
                Ok(v) => {
                    self.put(con);
                    return Ok(v);
                }
                Err(e) if is_stale(&e) => lock(&self.idle).clear(),
                Err(e) => {
                    if !e.is_timeout() {
                        self.put(con);
                    }
                    return Err(map_err(&e));
                }
            }
        }
        let mut con = self.connect()?;
        match f(&mut con) {
            Ok(v) => {
                self.put(con);
                Ok(v)
            }
            Err(e) => {
                if !e.is_timeout() && !is_stale(&e) {
                    self.put(con);
                }
                Err(map_err(&e))
            }
        }
    }
}
