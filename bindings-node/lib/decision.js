'use strict'
// The decision object built in JS from the addon's compact forms (src/flat.rs and
// src/decision.rs, `Compact`): each N-API call costs about as much as a whole JS object
// literal, so the addon hands over numbers and one string, and JS builds the same plain
// object, in the same shape, as the addon's own `inspect` returns. Decisions with more in
// them (refusals, matches, limits, a reservation) come as the full object.

// The shared Float64Array's layout; src/flat.rs has the same numbers.
const TOKEN = 0
const PARTS = 1
const MONITOR = 2
const SCORE = 3
const THRESHOLD = 4
const INSPECT_NS = 5
const HAS_COST = 6
const COST = 7
const TEMPLATE = 13
const STRINGS = 14
const LENS = 20

// Where an engine keeps its flat-lane function (src/engine.rs, `_flat`): made on the
// first call, then read-only (a frozen engine keeps it in a WeakMap).
const FLAT = Symbol('edgeward.flat')

// Module-private: only this module makes handles.
const KEY = Symbol('edgeward.DecisionHandle')

/**
 * The handle of a common decision: the index of the addon's template for it (its route,
 * model and mode) and its numbers, in private fields, so no JS code can read, change or
 * forge them. The addon keeps nothing per decision (src/flat.rs), so there is nothing to
 * release when the handle is collected.
 */
class DecisionHandle {
  #template
  #score
  #inspectNs
  #promptTokens
  #low
  #high
  #reserved
  #microUsd
  #exact
  constructor(key, template, score, inspectNs, promptTokens, low, high, reserved, microUsd, exact) {
    if (key !== KEY) throw new TypeError('decision handles come from engine.inspect')
    this.#template = template
    this.#score = score
    this.#inspectNs = inspectNs
    this.#promptTokens = promptTokens
    this.#low = low
    this.#high = high
    this.#reserved = reserved
    this.#microUsd = microUsd
    this.#exact = exact
  }

  /** Writes `h`'s numbers into `to` in the addon's order (HANDLE in src/flat.rs); false
   * when `h` is not a handle of this module. */
  static write(h, to) {
    if (typeof h !== 'object' || h === null || !(#template in h)) return false
    to[0] = h.#template
    to[1] = h.#score
    to[2] = h.#inspectNs
    to[3] = h.#promptTokens
    to[4] = h.#low
    to[5] = h.#high
    to[6] = h.#reserved
    to[7] = h.#microUsd
    to[8] = h.#exact
    return true
  }
}

/**
 * The common allowed decision's fields in the order of the addon's full object; the
 * varying ones are placeholders.
 */
const ALLOWED = {
  allowed: true,
  status: undefined,
  reasonCode: undefined,
  reason: undefined,
  stage: undefined,
  route: undefined,
  mode: 'enforce',
  wouldDeny: undefined,
  score: 0,
  threshold: 0,
  scores: undefined,
  retryAfter: undefined,
  headers: undefined,
  matches: undefined,
  matchesTruncated: false,
  principal: undefined,
  cost: undefined,
  rewrites: undefined,
  limits: undefined,
  signals: undefined,
  storeError: undefined,
  reservation: undefined,
  inspectNs: 0,
  handle: undefined,
}

/** Puts the JS-built decision behind `inspect` and `inspectAsync`. */
function install(native) {
  const Engine = native.Engine
  // `var`, not `let`: the hot paths read these from the closure, and a `let` costs a
  // hole check per read until the function is optimized.
  var io = new Float64Array(LENS + 64) // eslint-disable-line no-var
  // Tells this module instance's string cache apart from another's on the same thread.
  const token = Math.random()
  io[TOKEN] = token
  // The strings of the last common decision (the addon sends them only when they change).
  var stage, route, model, provider // eslint-disable-line no-var

  function fromArray(a) {
    // Any decision but the common allowed one comes as the full object already.
    if (!Array.isArray(a)) return a
    return {
      ...ALLOWED,
      allowed: a[0],
      stage: a[1],
      route: a[2],
      mode: a[3] ? 'monitor' : 'enforce',
      score: a[4],
      threshold: a[5],
      scores: {},
      headers: [],
      matches: [],
      cost:
        a[9] === undefined
          ? undefined
          : {
              model: a[8] === null ? undefined : a[8],
              promptTokens: a[9],
              promptTokensLow: a[10],
              promptTokensHigh: a[11],
              outputTokensReserved: a[12],
              microUsd: a[13],
              exact: a[14],
              provider: a[15] === null ? undefined : a[15],
            },
      rewrites: [],
      limits: [],
      signals: [],
      inspectNs: a[6],
      handle:
        a[9] === undefined
          ? new DecisionHandle(KEY, a[7], a[4], a[6], 0, 0, 0, 0, 0, 0)
          : new DecisionHandle(KEY, a[7], a[4], a[6], a[9], a[10], a[11], a[12], a[13], a[14] ? 1 : 0),
    }
  }

  function fromIo(s) {
    if (s !== undefined) {
      let at = io[STRINGS]
      stage = s.slice(0, at)
      route = s.slice(at, (at += io[STRINGS + 1]))
      const m = io[STRINGS + 2]
      model = m < 0 ? undefined : s.slice(at, (at += m))
      const p = io[STRINGS + 3]
      provider = p < 0 ? undefined : s.slice(at, at + p)
    }
    // The template's spread, then its varying fields: V8 copies a spread's shape in one
    // step in every tier, while a literal this large goes through the runtime until the
    // function is optimized.
    const score = io[SCORE]
    const inspectNs = io[INSPECT_NS]
    return {
      ...ALLOWED,
      stage,
      route,
      mode: io[MONITOR] === 1 ? 'monitor' : 'enforce',
      score,
      threshold: io[THRESHOLD],
      scores: {},
      headers: [],
      matches: [],
      cost:
        io[HAS_COST] === 1
          ? {
              model,
              promptTokens: io[COST],
              promptTokensLow: io[COST + 1],
              promptTokensHigh: io[COST + 2],
              outputTokensReserved: io[COST + 3],
              microUsd: io[COST + 4],
              exact: io[COST + 5] === 1,
              provider,
            }
          : undefined,
      rewrites: [],
      limits: [],
      signals: [],
      inspectNs,
      // The cost's slots are 0 when there is none.
      handle: new DecisionHandle(KEY, io[TEMPLATE], score, inspectNs, io[COST], io[COST + 1], io[COST + 2], io[COST + 3], io[COST + 4], io[COST + 5]),
    }
  }

  // Engines someone froze keep their flat-lane function here instead.
  const frozen = new WeakMap()
  function flatOf(engine) {
    let f = frozen.get(engine)
    if (f === undefined) {
      f = engine._flat()
      if (Object.isExtensible(engine)) Object.defineProperty(engine, FLAT, { value: f })
      else frozen.set(engine, f)
    }
    return f
  }

  // The addon's own methods: for what is not a plain object, and for a request whose
  // fields throw when read, so the error is the addon's (a TypeError, code
  // `node.argument`).
  const nativeInspect = Engine.prototype.inspect
  Engine.prototype.inspect = function inspect(req) {
    if (typeof req !== 'object' || req === null) return nativeInspect.call(this, req)
    let method, uri, url, headers, body, peer, clientIp, identity
    try {
      method = req.method
      uri = req.uri
      if (uri == null) url = req.url
      headers = req.headers
      body = req.body
      peer = req.peer
      clientIp = req.clientIp
      identity = req.identity
    } catch {
      return nativeInspect.call(this, req)
    }
    // The flat lane: the method, URI and node's `rawHeaders` (or no headers) as strings.
    const m = method == null ? 'GET' : method
    const u = uri == null ? url : uri
    if (typeof m === 'string' && typeof u === 'string') {
      const n = headers == null ? 0 : Array.isArray(headers) && headers.length % 2 === 0 ? headers.length : -1
      if (n >= 0) {
        if (io.length < LENS + 2 + n) {
          io = new Float64Array(LENS + 2 + n + 64)
          io[TOKEN] = token
        }
        let text = m + u
        io[LENS] = m.length
        io[LENS + 1] = u.length
        let i = 0
        for (; i < n; i++) {
          const h = headers[i]
          if (typeof h !== 'string') break
          text += h
          io[LENS + 2 + i] = h.length
        }
        if (i === n) {
          io[PARTS] = n + 2
          const flat = this[FLAT] ?? flatOf(this)
          const s = flat(text, body, peer, clientIp, identity, io)
          return typeof s === 'object' ? s : fromIo(s)
        }
      }
    }
    return fromArray(this._inspect(method, uri, url, headers, body, peer, clientIp, identity))
  }
  Engine.prototype.inspectAsync = function inspectAsync(req) {
    return this._inspectAsync(req).then(fromArray)
  }

  // The methods that take a decision back: a handle of ours goes to the addon as its
  // numbers (in `back`, which the addon reads before it runs any JS), and a number or a
  // typed array (which the addon would read as a handle's numbers) as what it is not, a
  // decision.
  const back = new Float64Array(9)
  const arg = (d) => {
    if (typeof d === 'object' && d !== null) {
      if (DecisionHandle.write(d.handle, back)) return back
      return ArrayBuffer.isView(d) ? null : d
    }
    return typeof d === 'number' ? null : d
  }
  for (const name of ['refusalBody', 'rewriteBody', 'usageFromBody', 'usageTracker', 'settle', 'settleAsync', 'decisionJson', 'eventJson']) {
    const f = Engine.prototype[name]
    Engine.prototype[name] = {
      // Two arguments after the decision, the most any of them takes, and no spread: a
      // spread may run JS (a patched iterator) after `arg` filled `back`.
      [name](d, a, b) {
        return f.call(this, arg(d), a, b)
      },
    }[name]
  }
}

module.exports = { install, DecisionHandle }
