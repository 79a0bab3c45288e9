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
const ID = 13
const STRINGS = 14
const LENS = 20

/**
 * The handle of a decision the addon holds by id. The id is private, so no JS code can
 * read or forge one; the addon keeps the core decision until this object is collected.
 */
class DecisionHandle {
  #id
  constructor(id) {
    this.#id = id
  }

  static idOf(h) {
    return typeof h === 'object' && h !== null && #id in h ? h.#id : undefined
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

/** Ties the addon's slab entry to a handle's life. */
function handles(native) {
  let pending = []
  const flush = () => {
    const ids = Float64Array.from(pending)
    pending = []
    native._release(ids)
  }
  // One N-API call per batch of collected handles, not per handle.
  const registry = new FinalizationRegistry((id) => {
    if (pending.push(id) === 1) queueMicrotask(flush)
  })
  return (id) => {
    const h = new DecisionHandle(id)
    registry.register(h, id)
    return h
  }
}

/** Puts the JS-built decision behind `inspect` and `inspectAsync`. */
function install(native) {
  const Engine = native.Engine
  const handleOf = handles(native)
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
      handle: handleOf(a[7]),
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
    return {
      ...ALLOWED,
      stage,
      route,
      mode: io[MONITOR] === 1 ? 'monitor' : 'enforce',
      score: io[SCORE],
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
      inspectNs: io[INSPECT_NS],
      handle: handleOf(io[ID]),
    }
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
          const s = this._inspectFlat(text, body, peer, clientIp, identity, io)
          return typeof s === 'object' ? s : fromIo(s)
        }
      }
    }
    return fromArray(this._inspect(method, uri, url, headers, body, peer, clientIp, identity))
  }
  Engine.prototype.inspectAsync = function inspectAsync(req) {
    return this._inspectAsync(req).then(fromArray)
  }

  // The methods that take a decision back: a handle of ours goes to the addon as its id,
  // and a bare number (which the addon would read as an id) as what it is not, a decision.
  const arg = (d) => {
    const id = typeof d === 'object' && d !== null ? DecisionHandle.idOf(d.handle) : undefined
    return id !== undefined ? id : typeof d === 'number' ? null : d
  }
  for (const name of ['refusalBody', 'rewriteBody', 'usageFromBody', 'usageTracker', 'settle', 'settleAsync', 'decisionJson', 'eventJson']) {
    const f = Engine.prototype[name]
    Engine.prototype[name] = {
      [name](d, ...rest) {
        return f.call(this, arg(d), ...rest)
      },
    }[name]
  }
}

module.exports = { install, DecisionHandle }
