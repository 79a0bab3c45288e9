'use strict'
// The decision object built in JS from the addon's compact form (src/decision.rs,
// `Compact`): creating ~25 properties one N-API call at a time costs more than the
// inspection itself, while a JS object literal costs almost nothing. The result is the
// same plain object, in the same shape, as the addon's own `inspect` returns. Decisions
// with more in them (refusals, matches, limits, a reservation) come as the full object.

function decisionOf(a) {
  // Any decision but the common allowed one comes as the full object already.
  if (!Array.isArray(a)) return a
  const handle = a[7]
  return {
    allowed: a[0],
    status: undefined,
    reasonCode: undefined,
    reason: undefined,
    stage: a[1],
    route: a[2],
    mode: a[3] ? 'monitor' : 'enforce',
    wouldDeny: undefined,
    score: a[4],
    threshold: a[5],
    scores: {},
    retryAfter: undefined,
    headers: [],
    matches: [],
    matchesTruncated: false,
    principal: undefined,
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
    storeError: undefined,
    reservation: undefined,
    inspectNs: a[6],
    handle,
  }
}

/** Puts the JS-built decision behind `inspect` and `inspectAsync`. */
function install(Engine) {
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
    return decisionOf(this._inspect(method, uri, url, headers, body, peer, clientIp, identity))
  }
  Engine.prototype.inspectAsync = function inspectAsync(req) {
    return this._inspectAsync(req).then(decisionOf)
  }
}

module.exports = { install }
