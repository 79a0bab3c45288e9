'use strict'
// HTTP middleware that guards an inference server with an edgeward engine: a
// connect/Express-style `guard(options)` returning `(req, res, next)`, and `wrap(handler,
// options)` for a plain `node:http` request listener.
//
// For each request it reads the body (bounded by `maxBody`), inspects it off the JS
// thread (`inspectAsync`), and either answers the refusal itself (the decision's status,
// its Retry-After and rate-limit headers, a JSON body in the OpenAI error shape) or
// passes the request on, with clamped parameters rewritten into the body and
// content-length fixed. On the way back it adds the rate-limit headers and settles the
// request's reservation (`settleAsync`, so a Redis store never blocks the event loop)
// with what the response used: the `usage` of a JSON body, or the usage a
// server-sent-events stream reports (counted from the streamed text when it reports
// none), read chunk by chunk while every chunk is passed on at once, so streams are
// never buffered.
//
// Settlement follows the nginx module and the Python middleware: a request the app never
// answered, or answered with a 5xx, is settled with zero usage (refunded); an answer
// whose usage cannot be read (a 3xx/4xx, a compressed or oversized body, a body without
// usage) keeps the estimate; a stream cut short is settled with what was seen of it.

const { Readable } = require('node:stream')

const native = require('../edgeward.node')

/** The property under which the app finds the request's decision (cost, principal). */
const DECISION = 'edgeward'

function errorBody(code, message, status) {
  const type = status >= 500 ? 'server_error' : 'invalid_request_error'
  return Buffer.from(JSON.stringify({ error: { message, type, code } }))
}

function answer(res, status, body, contentType = 'application/json', extra = []) {
  if (res.headersSent) {
    res.end()
    return
  }
  const headers = [['content-type', contentType], ['content-length', String(body.length)], ...extra]
  res.writeHead(status, headers.flat())
  res.end(body)
}

function tooLarge(res) {
  answer(res, 413, errorBody('body_too_large', 'request body too large to inspect', 413), 'application/json', [
    ['connection', 'close'],
  ])
}

/** The whole request body, or null when it was answered here (too large) or the client
 * went away. */
function readBody(req, res, maxBody) {
  return new Promise((resolve) => {
    const declared = req.headers['content-length']
    if (declared !== undefined) {
      if (!/^\d+$/.test(declared)) {
        answer(res, 400, errorBody('bad_request', 'invalid content-length', 400))
        req.resume()
        resolve(null)
        return
      }
      if (Number(declared) > maxBody) {
        tooLarge(res)
        req.resume()
        resolve(null)
        return
      }
    }
    const chunks = []
    let size = 0
    let done = false
    const finish = (v) => {
      if (done) return
      done = true
      req.off('data', onData)
      req.off('end', onEnd)
      req.off('error', onGone)
      req.off('aborted', onGone)
      resolve(v)
    }
    const onData = (chunk) => {
      size += chunk.length
      if (size > maxBody) {
        tooLarge(res)
        // Drain the rest without keeping it; the connection closes after the answer.
        req.resume()
        finish(null)
        return
      }
      chunks.push(chunk)
    }
    const onEnd = () => finish(chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, size))
    const onGone = () => finish(null)
    req.on('data', onData)
    req.on('end', onEnd)
    req.on('error', onGone)
    req.on('aborted', onGone)
  })
}

/** `rawHeaders` with content-length set to `length` (and no transfer-encoding: the
 * body is now whole). */
function withLength(rawHeaders, length) {
  const out = []
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const name = rawHeaders[i].toLowerCase()
    if (name === 'content-length' || name === 'transfer-encoding') continue
    out.push(rawHeaders[i], rawHeaders[i + 1])
  }
  out.push('content-length', String(length))
  return out
}

class Settler {
  constructor(engine, d, maxResponse, log) {
    this.engine = engine
    this.d = d
    this.maxResponse = maxResponse
    this.log = log
    this.status = 0
    this.tracker = null
    this.json = null
    this.kept = 0
    this.settled = false
  }

  start(status, header) {
    if (this.status) return
    this.status = status
    if (status >= 300) return // no usage to read: the estimate (or zero for 5xx) at the end
    const encoding = String(header('content-encoding') || '').trim().toLowerCase()
    if (encoding && encoding !== 'identity') return // compressed: the estimate stands
    const type = String(header('content-type') || '').toLowerCase()
    if (type.startsWith('text/event-stream')) {
      this.tracker = this.engine.usageTracker(this.d)
    } else {
      this.json = []
    }
  }

  body(chunk) {
    if (this.settled || !chunk || chunk.length === 0) return
    if (this.tracker) {
      this.tracker.feed(chunk)
    } else if (this.json) {
      this.kept += chunk.length
      if (this.kept > this.maxResponse) {
        this.json = null // too large to keep: the estimate stands
      } else {
        this.json.push(Buffer.from(chunk))
      }
    }
  }

  estimate() {
    const c = this.d.cost
    if (!c) return { source: 'partial' }
    return { promptTokens: c.promptTokens, outputTokens: c.outputTokensReserved, source: 'partial' }
  }

  finish(complete) {
    if (this.settled) return
    this.settled = true
    let usage = null
    if (this.status === 0 || this.status >= 500) {
      usage = {} // never answered, or the model server failed: refunded
    } else if (this.tracker) {
      usage = this.tracker.finish()
    } else if (complete && this.json && this.json.length) {
      try {
        usage = this.engine.usageFromBody(this.d, Buffer.concat(this.json))
      } catch (e) {
        this.log.info?.(`edgeward: no usage in the response (${e.code}); settled with the estimate`)
      }
    }
    this.settle(usage ?? this.estimate())
  }

  settle(usage) {
    this.settled = true
    settle(this.engine, this.d, usage, this.log)
  }
}

/** Settles on the thread pool; never throws into the request. */
function settle(engine, d, usage, log) {
  engine.settleAsync(d, usage).catch((e) => {
    // A store outage must not turn an answered request into an error; the reservation
    // expires at the end of its lease.
    log.warn?.(`edgeward: settlement failed (${e.code}): ${e.message}`)
  })
}

/** Wraps `res` so every chunk is passed on first and read for usage after. */
function watch(res, settler) {
  const { writeHead, write, end } = res
  const headerOf = (args) => {
    // writeHead(status, [message], headers) with headers as an object or a flat array.
    const h = typeof args[1] === 'string' ? args[2] : args[1]
    return (name) => {
      if (Array.isArray(h)) {
        for (let i = 0; i + 1 < h.length; i += 2) if (String(h[i]).toLowerCase() === name) return h[i + 1]
      } else if (h && typeof h === 'object') {
        for (const k of Object.keys(h)) if (k.toLowerCase() === name) return h[k]
      }
      return res.getHeader(name)
    }
  }
  res.writeHead = function (...args) {
    settler.start(Number(args[0]) || res.statusCode, headerOf(args))
    return writeHead.apply(this, args)
  }
  const bytes = (chunk, encoding) =>
    typeof chunk === 'string' ? Buffer.from(chunk, typeof encoding === 'string' ? encoding : 'utf8') : chunk
  res.write = function (chunk, encoding, cb) {
    const r = write.call(this, chunk, encoding, cb)
    if (!settler.status) settler.start(res.statusCode, (n) => res.getHeader(n))
    if (chunk != null) settler.body(bytes(chunk, encoding))
    return r
  }
  res.end = function (chunk, encoding, cb) {
    if (typeof chunk === 'function') {
      cb = chunk
      chunk = undefined
    }
    const r = end.call(this, chunk, encoding, cb)
    if (!settler.status) settler.start(res.statusCode, (n) => res.getHeader(n))
    if (chunk != null) settler.body(bytes(chunk, encoding))
    return r
  }
  res.on('finish', () => settler.finish(true))
  // Closed before the answer was complete: a stream cut short, or never answered.
  res.on('close', () => settler.finish(false))
}

function options(opts = {}) {
  const maxBody = opts.maxBody ?? 1 << 20
  const maxResponse = opts.maxResponse ?? 1 << 20
  if (!Number.isSafeInteger(maxBody) || maxBody < 0 || !Number.isSafeInteger(maxResponse) || maxResponse < 0) {
    throw new RangeError('maxBody and maxResponse must be non-negative integers')
  }
  if (opts.engine != null && !(opts.engine instanceof native.Engine)) {
    throw new TypeError('engine must be an edgeward Engine')
  }
  return {
    engine: opts.engine ?? native.Engine.default(),
    maxBody,
    maxResponse,
    identity: opts.identity ?? null,
    requestId: opts.requestId ?? null,
    log: opts.log ?? console,
  }
}

/**
 * Runs the guard for one request; calls `forward(body, rawHeaders)` with the body to
 * pass on when the request is allowed.
 */
async function run(o, req, res, forward, fail) {
  const body = await readBody(req, res, o.maxBody)
  if (body === null) return
  const engine = o.engine
  let d
  try {
    d = await engine.inspectAsync({
      method: req.method,
      url: req.url,
      headers: req.rawHeaders,
      body,
      peer: req.socket?.remoteAddress ?? null,
      identity: o.identity ? o.identity(req) : null,
    })
  } catch (e) {
    fail(e)
    return
  }
  if (!d.allowed) {
    const refusal = Buffer.from(engine.refusalBody(d, o.requestId ? o.requestId(req) : null) ?? '')
    answer(res, d.status ?? 403, refusal, engine.refusalContentType, d.headers)
    return
  }
  let out = body
  let rawHeaders = req.rawHeaders
  if (d.rewrites.length) {
    try {
      out = engine.rewriteBody(d, body) ?? body
    } catch (e) {
      // The body cannot carry the clamped parameters: never forward it as is, and give
      // back what it reserved.
      settle(engine, d, {}, o.log)
      answer(res, 400, errorBody(e.code, 'the request body cannot be rewritten', 400))
      return
    }
    if (out !== body) rawHeaders = withLength(req.rawHeaders, out.length)
  }
  for (const [name, value] of d.headers) res.setHeader(name, value)
  watch(res, new Settler(engine, d, o.maxResponse, o.log))
  forward(d, out, rawHeaders)
}

function headersOf(rawHeaders) {
  const h = {}
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const k = rawHeaders[i].toLowerCase()
    const v = rawHeaders[i + 1]
    if (h[k] === undefined) h[k] = v
    else if (k === 'set-cookie') h[k] = [].concat(h[k], v)
    else h[k] = `${h[k]}, ${v}`
  }
  return h
}

/**
 * A connect/Express middleware. Mount it before any body parser: it reads the body
 * itself, then leaves the bytes it forwards (rewritten when parameters were clamped) in
 * `req.body` as a Buffer, marked read (`req._body`) so later body parsers pass; the
 * decision is in `req.edgeward`.
 */
function guard(opts) {
  const o = options(opts)
  return function edgewardGuard(req, res, next) {
    run(
      o,
      req,
      res,
      (d, body, rawHeaders) => {
        if (rawHeaders !== req.rawHeaders) {
          req.rawHeaders = rawHeaders
          req.headers = headersOf(rawHeaders)
        }
        req.body = body
        req._body = true
        req[DECISION] = d
        next()
      },
      next,
    ).catch(next)
  }
}

/** The request the wrapped handler sees: the original's fields over a stream that
 * replays the (possibly rewritten) body. */
function replay(req, d, body, rawHeaders) {
  const r = Readable.from(body.length ? [body] : [], { objectMode: false })
  for (const k of ['method', 'url', 'httpVersion', 'httpVersionMajor', 'httpVersionMinor', 'socket', 'trailers', 'rawTrailers']) {
    r[k] = req[k]
  }
  r.connection = req.socket
  r.rawHeaders = rawHeaders
  r.headers = rawHeaders === req.rawHeaders ? req.headers : headersOf(rawHeaders)
  r.body = body
  r.original = req
  r[DECISION] = d
  req.on('close', () => r.emit('close'))
  return r
}

/**
 * A `node:http` request listener that guards `handler(req, res)`: the handler sees a
 * readable request whose body is what the guard forwards (also in `req.body`), with the
 * decision in `req.edgeward`. A handler that throws or rejects before answering gets a
 * 500 in the OpenAI error shape (and its reservation refunded).
 */
function wrap(handler, opts) {
  if (typeof handler !== 'function') throw new TypeError('wrap takes a request handler function')
  const o = options(opts)
  const fail = (res) => (e) => {
    o.log.error?.('edgeward: request failed', e)
    answer(res, 500, errorBody('internal_error', 'the server failed', 500))
  }
  return function edgewardListener(req, res) {
    run(
      o,
      req,
      res,
      (d, body, rawHeaders) => {
        let r
        try {
          r = handler(replay(req, d, body, rawHeaders), res)
        } catch (e) {
          fail(res)(e)
          return
        }
        if (r && typeof r.then === 'function') r.then(undefined, fail(res))
      },
      fail(res),
    ).catch(fail(res))
  }
}

module.exports = { guard, wrap, DECISION }
