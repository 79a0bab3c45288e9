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
//! types. The store may be pointed at any node: a `MOVED` answer is followed to the node
//! serving the slot (the calls it refused are sent there, and later ones too), also after
//! a resharding or a failover moves the slot. During a slot migration (`ASK`, `TRYAGAIN`)
//! calls fail with `store.protocol` and each limit's `onStoreError` applies. All limit
//! state lives on one cluster shard; deployments that outgrow one shard run one store (and
//! tag) per group of routes.
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
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use edgeward::limits::{LocalFirstConfig, LocalFirstStore, RedisStore, RedisStoreConfig};
//! use edgeward::{Engine, Policy};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let policy = Policy::from_file("policy.yaml")?;
//!     let redis = RedisStore::new(RedisStoreConfig::new("redis://10.0.0.5:6379/"))?;
//!     redis.check()?; // fail at startup, not on the first request
//!     let shared = Engine::builder().store(Arc::new(redis)).build(&policy)?;
//!     // Or decide locally and sync every 20 ms:
//!     let redis = RedisStore::new(RedisStoreConfig::new("redis://10.0.0.5:6379/"))?;
//!     let local_first = LocalFirstStore::new(redis, LocalFirstConfig::default());
//!     let fast = Engine::builder().store(Arc::new(local_first)).build(&policy)?;
//!     Ok(())
//! }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
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
    /// Connections to Redis. Callers share them: concurrent calls on one connection go out
    /// together as one pipeline, so a few connections serve many threads.
    pub connections: usize,
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
    /// Defaults for `url`: tag `edgeward`, 2 connections, 250 ms to connect, 100 ms
    /// per command, 250 ms back-off, a million reservations.
    pub fn new(url: impl Into<String>) -> RedisStoreConfig {
        RedisStoreConfig {
            url: url.into(),
            hash_tag: "edgeward".into(),
            connections: 2,
            connect_timeout: Duration::from_millis(250),
            command_timeout: Duration::from_millis(100),
            retry_backoff: Duration::from_millis(250),
            max_reservations: 1 << 20,
        }
    }
}

/// Decide several requests in order, each all-or-nothing. `ARGV[1]` is the TTL slack (ms);
/// then per decision: now (µs), the lease's end (µs, 0 for a final reservation), the
/// reservation's member name, now rounded up (µs, what expires leases), its number of
/// charges `n`; then per charge: type, a, b, c, shadow. `KEYS` holds the decisions' keys in
/// the same order. Per decision the reply holds `admitted` and each key's state as it was
/// before the decision, all decisions flat in one array.
///
/// Concurrent callers' decisions travel in one call (all keys share the hash tag, so they
/// share a slot): Redis then pays the fixed cost of a script call once per batch.
const ACQUIRE: &str = r#"
local slack = tonumber(ARGV[1])
local out = {}
local k0 = 0
local o = 1
while o < #ARGV do
  local now = tonumber(ARGV[o + 1])
  local lease_s = ARGV[o + 2]
  local lease_end = tonumber(lease_s)
  local member = ARGV[o + 3]
  local now_ceil = ARGV[o + 4]
  local n = tonumber(ARGV[o + 5])
  o = o + 5
  local head = #out + 1
  out[head] = 1
  local fits = {}
  for i = 1, n do
    local p = o + 5 * (i - 1)
    local key = KEYS[k0 + i]
    local t, a, b = ARGV[p + 1], tonumber(ARGV[p + 2]), tonumber(ARGV[p + 3])
    local v, ok
    if t == 'r' then
      v = tonumber(redis.call('GET', key) or '0')
      ok = a >= 0 and math.max(v, now) + a - b <= now
    elseif t == 'b' then
      v = tonumber(redis.call('GET', key) or '0')
      ok = a <= b - math.min(v, b)
    else
      redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. now_ceil)
      v = redis.call('ZCARD', key)
      ok = a <= b and v + a <= b
    end
    out[head + i] = v
    fits[i] = ok
    if not ok and ARGV[p + 5] == '0' then out[head] = 0 end
  end
  if out[head] == 1 then
    for i = 1, n do
      if fits[i] then
        local p = o + 5 * (i - 1)
        local key = KEYS[k0 + i]
        local t, a = ARGV[p + 1], tonumber(ARGV[p + 2])
        if t == 'r' then
          local tat = math.max(out[head + i], now) + a
          redis.call('SET', key, string.format('%.0f', tat),
            'PX', string.format('%.0f', math.floor((tat - now) / 1000) + slack))
        elseif t == 'b' then
          redis.call('SET', key, string.format('%.0f', out[head + i] + a), 'PX', ARGV[p + 4])
        elseif lease_end > 0 then
          for m = 1, a do
            redis.call('ZADD', key, lease_s, member .. ':' .. m)
          end
          local ttl = math.floor((lease_end - now) / 1000) + slack
          if redis.call('PTTL', key) < ttl then
            redis.call('PEXPIRE', key, ttl)
          end
        end
      end
    end
  end
  o = o + 5 * n
  k0 = k0 + n
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

/// `ARGV`: now (µs), the TTL slack (ms); then per key: type, a signed delta (rate: ticks,
/// budget: units), the budget key's TTL (ms). Adds each delta to the shared state (a rate
/// refund never moves the TAT below now, usage never goes below 0) and returns the states.
const SYNC: &str = r#"
local now = tonumber(ARGV[1])
local slack = tonumber(ARGV[2])
local out = {}
for i = 1, #KEYS do
  local o = 2 + 3 * (i - 1)
  local t, d = ARGV[o + 1], tonumber(ARGV[o + 2])
  local v = tonumber(redis.call('GET', KEYS[i]) or '0')
  if t == 'r' then
    if d > 0 then
      v = math.max(v, now) + d
    elseif d < 0 then
      v = math.max(v + d, math.min(now, v))
    end
    if d ~= 0 and v > now then
      redis.call('SET', KEYS[i], string.format('%.0f', v),
        'PX', string.format('%.0f', math.floor((v - now) / 1000) + slack))
    elseif d ~= 0 then
      redis.call('DEL', KEYS[i])
    end
  elseif d ~= 0 then
    v = math.max(v + d, 0)
    redis.call('SET', KEYS[i], string.format('%.0f', v), 'PX', ARGV[o + 3])
  end
  out[i] = v
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
    settle: Script,
    peek: Script,
    sync: Script,
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
        let lanes = config.connections.max(1);
        Ok(RedisStore {
            pool: Pool {
                target: Mutex::new((0, client)),
                lanes: (0..lanes).map(|_| Lane::default()).collect(),
                next_lane: AtomicUsize::new(0),
                connect_timeout: config.connect_timeout,
                command_timeout: config.command_timeout,
                backoff: config.retry_backoff,
                base: Instant::now(),
                down_until: AtomicU64::new(0),
                scripts: [ACQUIRE, SETTLE, PEEK, SYNC],
                acquire: Script::new(ACQUIRE),
                round_trips: AtomicU64::new(0),
                commands: AtomicU64::new(0),
            },
            tag: config.hash_tag,
            settle: Script::new(SETTLE),
            peek: Script::new(PEEK),
            sync: Script::new(SYNC),
            reservations: (0..RES_SHARDS).map(|_| Mutex::default()).collect(),
            max_reservations_per_shard: config.max_reservations.div_ceil(RES_SHARDS).max(1),
        })
    }

    /// Connect, check that Redis answers and load the scripts, so that a misconfigured
    /// store fails at startup rather than on the first request.
    pub fn check(&self) -> Result<(), StoreError> {
        match self.pool.query(Job::Cmd(redis::cmd("PING")))? {
            redis::Value::SimpleString(s) if s == "PONG" => Ok(()),
            v => Err(protocol(&format!("PING answered {v:?}"))),
        }
    }

    /// Round trips to Redis so far, and the calls they carried: with concurrent callers a
    /// round trip carries several (decisions, settles, peeks).
    pub fn round_trips(&self) -> (u64, u64) {
        (
            self.pool.round_trips.load(Ordering::Relaxed),
            self.pool.commands.load(Ordering::Relaxed),
        )
    }

    /// Reservations kept for settle (unsettled; some may have expired and not been swept).
    pub fn reservation_count(&self) -> usize {
        self.reservations.iter().map(|s| lock(s).len()).sum()
    }

    /// The Redis key of a charge (with the budget window it falls in at `now_ns`).
    fn key(&self, c: &Charge, now_ns: u64) -> (String, i64) {
        let window = match &c.kind {
            LimitKind::Budget(b) => b.calendar().window_index(now_ns),
            _ => 0,
        };
        (self.key_in(&c.key, &c.kind, window), window)
    }

    /// The Redis key of a limit key of `kind` (in budget window `window`).
    fn key_in(&self, key: &str, kind: &LimitKind, window: i64) -> String {
        let letter = match kind {
            LimitKind::Rate(_) => 'r',
            LimitKind::Budget(_) => 'b',
            LimitKind::Concurrency { .. } => 'c',
        };
        let mut k = String::with_capacity(self.tag.len() + key.len() + 24);
        k.push('{');
        k.push_str(&self.tag);
        k.push_str("}:");
        k.push(letter);
        k.push(':');
        k.push_str(key);
        if let LimitKind::Budget(_) = kind {
            use std::fmt::Write;
            let _ = write!(k, ":w{window}");
        }
        k
    }

    /// Add what a local-first store charged (or refunded) since its last sync to the shared
    /// state, all in one round trip, and return the shared state of each: a rate's TAT in
    /// microseconds, a budget window's usage. `deltas` are `(key, kind, budget window, units)`
    /// (rates and budgets only).
    pub(crate) fn sync(
        &self,
        deltas: &[(Arc<str>, LimitKind, i64, i128)],
        now_ns: u64,
    ) -> Result<Vec<u64>, Failed> {
        let mut keys = Vec::with_capacity(deltas.len());
        let mut args = Vec::with_capacity(2 + 3 * deltas.len());
        args.extend([
            Arg::Num((now_ns / 1_000) as i64),
            Arg::Num(TTL_SLACK_MS as i64),
        ]);
        for (key, kind, window, units) in deltas {
            keys.push(self.key_in(key, kind, *window));
            let mag = units.unsigned_abs().min(u128::from(u64::MAX)) as u64;
            let (t, d, ttl) = match kind {
                LimitKind::Rate(g) => {
                    // A rate too long for the script's arithmetic is not shared (its
                    // replicas count alone) rather than holding up the other keys.
                    let ticks = rate_in_micros(g).map_or(0, |g| g.ticks(mag).min(LUA_EXACT) as i64);
                    ("r", if *units < 0 { -ticks } else { ticks }, 0)
                }
                LimitKind::Budget(b) => {
                    let end = b.calendar().window_end(now_ns).saturating_sub(now_ns);
                    let ttl = end.div_ceil(1_000_000).saturating_add(BUDGET_GRACE_MS);
                    let d = mag.min(LUA_EXACT) as i64;
                    (
                        "b",
                        if *units < 0 { -d } else { d },
                        ttl.min(LUA_EXACT) as i64,
                    )
                }
                // Counted per replica; the local-first store never sends them.
                LimitKind::Concurrency { .. } => ("b", 0, 1),
            };
            args.extend([Arg::Str(t), Arg::Num(d), Arg::Num(ttl)]);
        }
        let value = self
            .pool
            .query_sent(Job::Write(evalsha(&self.sync, &keys, &args)))?;
        let reply = numbers(value)
            .ok()
            .filter(|r| r.len() == deltas.len())
            .ok_or_else(|| Failed {
                err: protocol("unexpected sync reply"),
                sent: true,
            })?;
        Ok(reply)
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
        // Leases end on the microsecond grid, rounded up: a slot is freed when `now` rounded
        // up is past the lease's end rounded up, never before the lease is over (exact when
        // the end falls on a microsecond).
        let lease_end_us = if lease_ns > 0 {
            now_ns.saturating_add(lease_ns).div_ceil(1_000)
        } else {
            0
        };
        let mut args = Vec::with_capacity(5 + 5 * charges.len());
        args.extend([
            Arg::Num(now_us as i64),
            Arg::Num(lease_end_us as i64),
            // Only leases name their member in a concurrency set.
            if lease_ns > 0 {
                Arg::Text(id.to_string())
            } else {
                Arg::Str("")
            },
            Arg::Num(now_ns.div_ceil(1_000) as i64),
            Arg::Num(charges.len() as i64),
        ]);
        let mut keys = Vec::with_capacity(charges.len());
        let mut windows = Vec::with_capacity(charges.len());
        for c in charges {
            let (key, window) = self.key(c, now_ns);
            keys.push(key);
            windows.push(window);
            let (t, a, b, x) = match &c.kind {
                LimitKind::Rate(g) => {
                    let g = rate_in_micros(g)?;
                    if now_us.saturating_add(g.tau()).saturating_add(g.tau()) >= LUA_EXACT {
                        return Err(StoreError::new(
                            StoreErrorKind::Config,
                            "a rate's burst spans more time than Redis scripts count exactly",
                        ));
                    }
                    // -1: above the burst, never fits.
                    let inc = g.increment(c.amount).map_or(-1, |i| i as i64);
                    ("r", inc, g.tau() as i64, 0)
                }
                LimitKind::Budget(b) => {
                    let ttl_ms = b
                        .calendar()
                        .window_end(now_ns)
                        .saturating_sub(now_ns)
                        .div_ceil(1_000_000)
                        .saturating_add(BUDGET_GRACE_MS);
                    let amount = c.amount.min(LUA_EXACT) as i64;
                    ("b", amount, b.limit() as i64, ttl_ms.min(LUA_EXACT) as i64)
                }
                LimitKind::Concurrency { max } => {
                    let max = (*max).min(LUA_EXACT - 1);
                    ("c", c.amount.min(max + 1) as i64, max as i64, 0)
                }
            };
            args.extend([
                Arg::Str(t),
                Arg::Num(a),
                Arg::Num(b),
                Arg::Num(x),
                Arg::Str(if c.shadow { "1" } else { "0" }),
            ]);
        }
        let reply = numbers(self.pool.query(Job::Decide { keys, args })?)?;
        if reply.len() != charges.len() + 1 || reply[0] > 1 {
            return Err(protocol("unexpected acquire reply"));
        }
        let admitted = reply[0] == 1;
        let mut held = Vec::new();
        for (i, c) in charges.iter().enumerate() {
            let pre = reply[i + 1];
            // The state as if not charged says whether it fitted (as the script decided);
            // only a charged one is computed again, with its charge.
            let mut state = charge_state(c, pre, now_ns, windows[i], false, lease_ns)?;
            let charged = admitted && state.verdict == Verdict::Allowed;
            if charged {
                state = charge_state(c, pre, now_ns, windows[i], true, lease_ns)?;
            }
            states.push(state);
            if charged && lease_ns > 0 {
                held.push(Held {
                    key: self.key(c, now_ns).0,
                    kind: c.kind,
                    index: i,
                    reserved: c.amount,
                    window: windows[i],
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
        let mut keys = Vec::with_capacity(r.held.len());
        let mut args = Vec::with_capacity(3 + 3 * r.held.len());
        args.extend([
            Arg::Num(now_us as i64),
            Arg::Text(id.to_string()),
            Arg::Num(TTL_SLACK_MS as i64),
        ]);
        for h in r.held {
            let act = actual.get(h.index).copied().unwrap_or(h.reserved);
            let (t, a, b) = match &h.kind {
                LimitKind::Rate(g) => {
                    let g = rate_in_micros(g)?;
                    let due = g.ticks(act).min(LUA_EXACT) as i64;
                    let charged = g.ticks(h.reserved) as i64;
                    if due == charged {
                        continue;
                    }
                    ("r", due - charged, 0)
                }
                LimitKind::Budget(b) => {
                    if act == h.reserved || b.calendar().window_index(now_ns) > h.window {
                        continue;
                    }
                    ("b", h.reserved as i64, act.min(LUA_EXACT) as i64)
                }
                LimitKind::Concurrency { .. } => ("c", h.reserved as i64, 0),
            };
            keys.push(h.key);
            args.extend([Arg::Str(t), Arg::Num(a), Arg::Num(b)]);
        }
        if !keys.is_empty() {
            self.pool
                .query(Job::Write(evalsha(&self.settle, &keys, &args)))?;
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
        let mut keys = Vec::with_capacity(charges.len());
        let mut windows = Vec::with_capacity(charges.len());
        let mut args = Vec::with_capacity(1 + charges.len());
        args.push(Arg::Num(now_ns.div_ceil(1_000) as i64));
        for c in charges {
            let (key, window) = self.key(c, now_ns);
            keys.push(key);
            windows.push(window);
            args.push(Arg::Str(match c.kind {
                LimitKind::Concurrency { .. } => "c",
                _ => "v",
            }));
        }
        let reply = numbers(
            self.pool
                .query(Job::Cmd(evalsha(&self.peek, &keys, &args)))?,
        )?;
        if reply.len() != charges.len() {
            return Err(protocol("unexpected peek reply"));
        }
        for (i, c) in charges.iter().enumerate() {
            states.push(charge_state(c, reply[i], now_ns, windows[i], false, 0)?);
        }
        Ok(())
    }
}

/// A few connections, each shared by every caller that picks it: callers queue their
/// command, and whoever finds the connection idle sends everything queued as one pipeline
/// and hands each caller its reply (group commit). One caller alone pays one round trip;
/// many callers at once share round trips instead of each blocking a connection of its own.
struct Pool {
    /// Where calls go, and a generation that changes when a cluster moves the slot: a
    /// connection of an older generation is not used again.
    target: Mutex<(u64, redis::Client)>,
    lanes: Box<[Lane]>,
    next_lane: AtomicUsize,
    connect_timeout: Duration,
    command_timeout: Duration,
    backoff: Duration,
    base: Instant,
    /// Nanoseconds after `base` before which a connect is not tried again.
    down_until: AtomicU64,
    /// Loaded on every new connection, so the common case is a plain `EVALSHA`.
    scripts: [&'static str; 4],
    /// The acquire script, which the pool calls for merged decisions.
    acquire: Script,
    /// Pipelines sent and commands in them (merged decisions count once each).
    round_trips: AtomicU64,
    commands: AtomicU64,
}

/// One connection and the callers queued on it.
#[derive(Default)]
struct Lane {
    state: Mutex<LaneState>,
}

/// A caller waiting on a lane: the leader of its batch puts the reply here and wakes it,
/// or tells it to lead the next batch. Callers park on their own slot, so a batch wakes
/// exactly its own callers and the next leader, and a woken caller takes no lock.
struct Slot {
    reply: Mutex<Option<Result<redis::Value, Failed>>>,
    lead: std::sync::atomic::AtomicBool,
    thread: std::thread::Thread,
}

/// A queued command and its caller.
type Queued = (Job, Arc<Slot>);

/// A connection and the target generation it was opened for.
type Conn = (u64, redis::Connection);

/// A caller's reply, by ticket.
type Reply = (u64, Result<redis::Value, Failed>);

/// A call that failed, and whether it may have run: `false` only when it was never sent
/// (no connection). A call that may have run is never sent again by the pool, and the
/// local-first store does not resend refunds that may already have been applied.
#[derive(Debug, Clone)]
pub(crate) struct Failed {
    pub(crate) err: StoreError,
    pub(crate) sent: bool,
}

/// What a caller sends.
enum Job {
    /// A command that changes nothing (a peek, a ping): safe to send twice.
    Cmd(redis::Cmd),
    /// A command that must not run twice (a settle, a sync): never resent after a failure
    /// that may have come after it ran.
    Write(redis::Cmd),
    /// One decision for the acquire script (its arguments without the leading slack):
    /// consecutive decisions in a batch go out as one script call.
    Decide { keys: Vec<String>, args: Vec<Arg> },
}

/// The most decisions merged into one script call, which bounds how long one call runs.
const MAX_MERGED: usize = 64;

#[derive(Default)]
struct LaneState {
    con: Option<Conn>,
    /// Commands waiting for the next batch.
    queue: Vec<Queued>,
    /// A caller leads (a batch is in flight, or its next leader is being woken).
    busy: bool,
}

/// What a failed call says about its connection: dead (Redis went away or restarted).
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

/// A server's error answer: loading, busy, a cluster down or migrating, a read-only
/// replica mean "not available now"; anything else is a protocol error.
fn server_error(e: redis::ServerError) -> StoreError {
    let kind = match e.code() {
        "LOADING" | "BUSY" | "CLUSTERDOWN" | "READONLY" | "TRYAGAIN" | "ASK" | "MASTERDOWN" => {
            StoreErrorKind::Unavailable
        }
        _ => StoreErrorKind::Protocol,
    };
    StoreError::new(kind, format!("redis: {}", RedisError::from(e)))
}

/// Where a cluster's `MOVED` answer says the slot now lives.
fn moved_to(v: &redis::Value) -> Option<(String, u16)> {
    let redis::Value::ServerError(e) = v else {
        return None;
    };
    if e.kind() != Some(redis::ServerErrorKind::Moved) {
        return None;
    }
    // "<slot> <host>:<port>"; an IPv6 host keeps its colons, the port is after the last.
    let addr = e.details()?.rsplit(' ').next()?;
    let (host, port) = addr.rsplit_once(':')?;
    Some((
        host.trim_matches(['[', ']']).to_string(),
        port.parse().ok()?,
    ))
}

fn is_noscript(v: &redis::Value) -> bool {
    matches!(v, redis::Value::ServerError(e) if e.kind() == Some(redis::ServerErrorKind::NoScript))
}

impl Pool {
    fn elapsed(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn connect(&self) -> Result<Conn, StoreError> {
        if self.elapsed() < self.down_until.load(Ordering::Relaxed) {
            return Err(StoreError::new(
                StoreErrorKind::Unavailable,
                "redis: unreachable at the last attempt; backing off",
            ));
        }
        let (generation, client) = {
            let t = lock(&self.target);
            (t.0, t.1.clone())
        };
        let con = client
            .get_connection_with_timeout(self.connect_timeout)
            .and_then(|mut con| {
                con.set_read_timeout(Some(self.command_timeout))?;
                con.set_write_timeout(Some(self.command_timeout))?;
                self.load_scripts(&mut con)?;
                Ok(con)
            });
        con.map(|c| (generation, c)).map_err(|e| {
            if is_stale(&e) || e.is_connection_refusal() || e.is_timeout() {
                let until = self
                    .elapsed()
                    .saturating_add(u64::try_from(self.backoff.as_nanos()).unwrap_or(u64::MAX));
                self.down_until.store(until, Ordering::Relaxed);
            }
            map_err(&e)
        })
    }

    /// Follow a cluster's `MOVED` answer: every key carries one hash tag, so they all live
    /// in the slot that moved, and every later call goes to its new node. Credentials and
    /// settings stay those of the configured URL.
    fn retarget(&self, seen: u64, host: &str, port: u16) {
        let mut t = lock(&self.target);
        if t.0 != seen {
            return; // another caller already followed it
        }
        let info =
            t.1.get_connection_info()
                .clone()
                .set_addr(redis::ConnectionAddr::Tcp(host.to_string(), port));
        if let Ok(client) = redis::Client::open(info) {
            *t = (seen + 1, client);
        }
    }

    fn load_scripts(&self, con: &mut redis::Connection) -> RedisResult<()> {
        let mut pipe = redis::Pipeline::with_capacity(self.scripts.len());
        for s in &self.scripts {
            pipe.cmd("SCRIPT").arg("LOAD").arg(*s);
        }
        pipe.query::<Vec<String>>(con).map(drop)
    }

    /// Send `cmd` (on a connection shared with other callers) and wait for its reply.
    fn query(&self, job: Job) -> Result<redis::Value, StoreError> {
        self.query_sent(job).map_err(|f| f.err)
    }

    /// [`query`](Pool::query), telling a failure before sending from one after.
    fn query_sent(&self, job: Job) -> Result<redis::Value, Failed> {
        let n = self.next_lane.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
        let lane = &self.lanes[n];
        let me = Arc::new(Slot {
            reply: Mutex::new(None),
            lead: std::sync::atomic::AtomicBool::new(false),
            thread: std::thread::current(),
        });
        let mut st = lock(&lane.state);
        st.queue.push((job, Arc::clone(&me)));
        if st.busy {
            drop(st);
            loop {
                if let Some(r) = lock(&me.reply).take() {
                    return r;
                }
                if me.lead.load(Ordering::Acquire) {
                    break;
                }
                // Unparked when answered or asked to lead; spurious wake-ups loop.
                std::thread::park();
            }
            st = lock(&lane.state);
        } else {
            st.busy = true;
        }
        // Leading: this caller's command is still queued (only a leader takes the queue,
        // and there is one at a time), so this batch carries it.
        let batch = std::mem::take(&mut st.queue);
        let con = st.con.take();
        drop(st);
        let mut slots = Vec::with_capacity(batch.len());
        let jobs: Vec<(u64, Job)> = batch
            .into_iter()
            .enumerate()
            .map(|(i, (j, slot))| {
                slots.push(slot);
                (i as u64, j)
            })
            .collect();
        // A panic in `send` (a bug) must not leave this lane busy for good: every caller of
        // the batch is answered below, and the lead is handed on.
        let (con, replies) =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.send(con, jobs)))
                .unwrap_or((None, Vec::new()));
        let mut mine = None;
        let mut replies: Vec<Option<Result<redis::Value, Failed>>> = {
            let mut v: Vec<_> = (0..slots.len()).map(|_| None).collect();
            for (i, r) in replies {
                if let Some(x) = v.get_mut(i as usize) {
                    *x = Some(r);
                }
            }
            v
        };
        for (slot, r) in slots.iter().zip(replies.iter_mut()) {
            // Every caller is answered, whatever `send` returned, so none waits forever.
            let r = r.take().unwrap_or_else(|| {
                Err(Failed {
                    err: protocol("no reply for a queued call"),
                    sent: true,
                })
            });
            if Arc::ptr_eq(slot, &me) {
                mine = Some(r);
            } else {
                *lock(&slot.reply) = Some(r);
                slot.thread.unpark();
            }
        }
        let mut st = lock(&lane.state);
        st.con = con;
        // Whoever queued meanwhile waits for a leader: the first of them leads.
        match st.queue.first() {
            Some((_, next)) => {
                next.lead.store(true, Ordering::Release);
                next.thread.unpark();
            }
            None => st.busy = false,
        }
        drop(st);
        mine.unwrap_or_else(|| {
            Err(Failed {
                err: protocol("no reply for a queued call"),
                sent: true,
            })
        })
    }

    /// Send a batch as one pipeline: on the lane's connection, or a new one when there is
    /// none or it turns out dead (once). A connection that timed out is dropped, since its
    /// late replies would answer the next batch.
    fn send(&self, con: Option<Conn>, batch: Vec<(u64, Job)>) -> (Option<Conn>, Vec<Reply>) {
        let mut pipe = redis::Pipeline::with_capacity(batch.len());
        pipe.ignore_errors();
        // Per pipeline command: its callers, and for merged decisions each one's number of
        // reply entries (`None`: the whole reply is the caller's).
        let mut owners: Vec<Vec<(u64, Option<usize>)>> = Vec::with_capacity(batch.len());
        let mut merged: Option<(Vec<String>, Vec<Arg>)> = None;
        let flush = |merged: &mut Option<(Vec<String>, Vec<Arg>)>, pipe: &mut redis::Pipeline| {
            if let Some((keys, args)) = merged.take() {
                pipe.add_command(evalsha(&self.acquire, &keys, &args));
            }
        };
        let resendable = !batch.iter().any(|(_, j)| matches!(j, Job::Write(_)));
        for (t, job) in batch {
            match job {
                Job::Cmd(c) | Job::Write(c) => {
                    flush(&mut merged, &mut pipe);
                    pipe.add_command(c);
                    owners.push(vec![(t, None)]);
                }
                Job::Decide { keys, args } => {
                    let n = keys.len() + 1;
                    let full = owners.last().is_some_and(|o| o.len() >= MAX_MERGED);
                    match &mut merged {
                        Some((k, a)) if !full => {
                            k.extend(keys);
                            a.extend(args);
                            owners.last_mut().expect("merging").push((t, Some(n)));
                        }
                        _ => {
                            flush(&mut merged, &mut pipe);
                            let mut a = Vec::with_capacity(1 + args.len());
                            a.push(Arg::Num(TTL_SLACK_MS as i64));
                            a.extend(args);
                            merged = Some((keys, a));
                            owners.push(vec![(t, Some(n))]);
                        }
                    }
                }
            }
        }
        flush(&mut merged, &mut pipe);
        let tickets: Vec<u64> = owners.iter().flatten().map(|(t, _)| *t).collect();
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        self.commands
            .fetch_add(tickets.len() as u64, Ordering::Relaxed);
        let fail = |tickets: Vec<u64>, err: StoreError, sent: bool| {
            tickets
                .into_iter()
                .map(|t| {
                    let f = Failed {
                        err: err.clone(),
                        sent,
                    };
                    (t, Err(f))
                })
                .collect()
        };
        let current = lock(&self.target).0;
        let (mut con, fresh) = match con.filter(|c| c.0 == current) {
            Some(c) => (c, false),
            None => match self.connect() {
                Ok(c) => (c, true),
                Err(e) => return (None, fail(tickets, e, false)),
            },
        };
        let mut result = pipe.query::<Vec<redis::Value>>(&mut con.1);
        if let (Err(e), false, true) = (&result, fresh, resendable) {
            if is_stale(e) {
                // The pooled connection was dead (Redis restarted, a proxy closed it): once
                // more on a new one. Only batches that may run twice: peeks, and decisions,
                // where running twice after a lost reply can only charge more, never less.
                con = match self.connect() {
                    Ok(c) => c,
                    Err(e) => return (None, fail(tickets, e, true)),
                };
                result = pipe.query::<Vec<redis::Value>>(&mut con.1);
            }
        }
        let mut values = match result {
            Ok(v) if v.len() == owners.len() => v,
            Ok(_) => return (None, fail(tickets, protocol("pipeline reply count"), true)),
            Err(e) => {
                let keep = !e.is_timeout() && !is_stale(&e);
                return (keep.then_some(con), fail(tickets, map_err(&e), true));
            }
        };
        // Calls that did not run are sent once more: after loading the scripts when the
        // script cache was flushed, or to the slot's new node when a cluster moved it. If
        // that fails, only those calls fail.
        let mut failed: Vec<Option<StoreError>> = vec![None; values.len()];
        let mut keep = true;
        for _ in 0..2 {
            let again: Vec<usize> = (0..values.len())
                .filter(|&i| is_noscript(&values[i]) || moved_to(&values[i]).is_some())
                .collect();
            if again.is_empty() {
                break;
            }
            let ready = if let Some((host, port)) = again.iter().find_map(|&i| moved_to(&values[i]))
            {
                self.retarget(con.0, &host, port);
                self.connect().map(|c| con = c)
            } else {
                self.load_scripts(&mut con.1).map_err(|e| map_err(&e))
            };
            let mut retry = redis::Pipeline::with_capacity(again.len());
            retry.ignore_errors();
            for &i in &again {
                if let Some(c) = pipe.cmd_iter().nth(i) {
                    retry.add_command(c.clone());
                }
            }
            let answer = ready.and_then(|()| {
                retry
                    .query::<Vec<redis::Value>>(&mut con.1)
                    .map_err(|e| map_err(&e))
                    .and_then(|v| {
                        if v.len() == again.len() {
                            Ok(v)
                        } else {
                            Err(protocol("pipeline reply count"))
                        }
                    })
            });
            match answer {
                Ok(v) => {
                    for (i, v) in again.into_iter().zip(v) {
                        values[i] = v;
                    }
                }
                Err(e) => {
                    for i in again {
                        failed[i] = Some(e.clone());
                    }
                    keep = false;
                    break;
                }
            }
        }
        let mut replies = Vec::with_capacity(tickets.len());
        for ((owners, v), failed) in owners.into_iter().zip(values).zip(failed) {
            let v = match (failed, v) {
                (Some(e), _) => Err(e),
                (None, redis::Value::ServerError(e)) => Err(server_error(e)),
                (None, v) => Ok(v),
            };
            let v = v.map_err(|err| Failed { err, sent: true });
            match (v, owners.as_slice()) {
                (v, [(t, None)]) => replies.push((*t, v)),
                (Ok(redis::Value::Array(items)), _) => {
                    let mut items = items.into_iter();
                    for &(t, n) in &owners {
                        let mine: Vec<redis::Value> = items.by_ref().take(n.unwrap_or(0)).collect();
                        replies.push((t, Ok(redis::Value::Array(mine))));
                    }
                }
                (Ok(_), _) => {
                    let f = Failed {
                        err: protocol("unexpected acquire reply"),
                        sent: true,
                    };
                    replies.extend(owners.iter().map(|&(t, _)| (t, Err(f.clone()))));
                }
                (Err(f), _) => replies.extend(owners.iter().map(|&(t, _)| (t, Err(f.clone())))),
            }
        }
        if !keep {
            return (None, replies);
        }
        (Some(con), replies)
    }
}

/// The script's reply as numbers.
fn numbers(v: redis::Value) -> Result<Vec<u64>, StoreError> {
    redis::FromRedisValue::from_redis_value(v)
        .map_err(|e| protocol(&format!("unexpected script reply: {e}")))
}

/// An `EVALSHA` of `script` over `keys` and `args`.
fn evalsha(script: &Script, keys: &[String], args: &[Arg]) -> redis::Cmd {
    let mut c = redis::cmd("EVALSHA");
    c.arg(script.get_hash()).arg(keys.len()).arg(keys);
    for a in args {
        match a {
            Arg::Num(n) => c.arg(*n),
            Arg::Str(s) => c.arg(*s),
            Arg::Text(s) => c.arg(s.as_str()),
        };
    }
    c
}

/// A script argument, collected beside the keys (`EVALSHA` wants all keys first).
enum Arg {
    Num(i64),
    Str(&'static str),
    Text(String),
}
