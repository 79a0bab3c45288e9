// Shared by the suites: the test policy (API keys, a clamped chat route, a daily token
// budget the tests exhaust and check by arithmetic), a small OpenAI-compatible upstream
// handler, and servers on loopback ports.
import { createHash } from 'node:crypto'
import { createServer } from 'node:http'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
export const edgeward = require('../lib/index.js')

export const KEYS = {
  general: 'sk-node-test-key-general',
  budget: 'sk-node-test-key-budget',
  stream: 'sk-node-test-key-stream',
  fail: 'sk-node-test-key-fail',
  express: 'sk-node-test-key-express',
  api: 'sk-node-test-key-api',
}
export const BUDGET = 600
export const MAX_OUTPUT = 64
export const MAX_BODY = 64 * 1024
export const PROMPT = 10
export const COMPLETION = 20
export const CHUNK_DELAY_MS = 300
export const CHUNKS = 4
export const CHAT = '/v1/chat/completions'

const sha256 = (s) => createHash('sha256').update(s).digest('hex')

export const POLICY = `
apiVersion: edgeward.dev/v1
kind: Policy
metadata:
  name: node-test
spec:
  identity:
    apiKeys:
      keys:
${Object.entries(KEYS)
  .map(([name, k]) => `        - {sha256: "${sha256(k)}", id: ${name}, tenant: acme}`)
  .join('\n')}
  models:
    - match: ["gpt-4o-mini*"]
      tokenizer: o200k_base
      price: {input: 0.15, output: 0.60}
  routes:
    - name: chat
      match: {paths: ["/v1/chat/completions"]}
      schema: openai-chat
      params: {maxOutputTokens: ${MAX_OUTPUT}, onMaxOutput: clamp}
  limits:
    - name: daily-tokens
      key: [principal]
      unit: totalTokens
      budget: {limit: ${BUDGET}, per: day}
`

export function chat(text = 'Summarize the causes of the French Revolution.', params = {}) {
  return Buffer.from(
    JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: text }], max_tokens: 500, ...params }),
  )
}

export function headers(key, extra = {}) {
  const h = { 'content-type': 'application/json', ...extra }
  if (key) h.authorization = `Bearer ${KEYS[key]}`
  return h
}

/** The body the upstream last received, and its content-length header. */
export const last = { body: Buffer.alloc(0), contentLength: '' }

async function bodyOf(req) {
  const chunks = []
  for await (const c of req) chunks.push(c)
  return Buffer.concat(chunks)
}

/**
 * A small OpenAI-compatible app: POST /v1/chat/completions answers a chat.completion
 * with usage (prompt 10, completion min(max_tokens, 20)), or with `"stream": true` a
 * server-sent-events stream whose chunks go out CHUNK_DELAY_MS apart, ending with a usage
 * chunk when `stream_options.include_usage` is set. `x-fail: 502` makes it fail,
 * `x-throw` makes it throw before answering. The decision's prompt estimate is echoed in
 * `x-test-prompt-estimate`. Reads the body from the stream (node:http) or `req.body`
 * (Express, after the guard).
 */
export async function upstream(req, res) {
  if (req.method === 'GET' && req.url === '/last') {
    res.writeHead(200, { 'content-type': 'application/json', 'x-test-content-length': last.contentLength })
    res.end(last.body)
    return
  }
  const body = Buffer.isBuffer(req.body) && req.readableEnded !== false ? req.body : await bodyOf(req)
  last.body = body
  last.contentLength = req.headers['content-length'] ?? ''
  if (req.headers['x-throw']) throw new Error('the model server crashed')
  if (req.headers['x-fail']) {
    res.writeHead(Number(req.headers['x-fail']), { 'content-type': 'application/json' })
    res.end(JSON.stringify({ error: { message: 'failure requested' } }))
    return
  }
  const r = JSON.parse(body)
  const d = req.edgeward
  const estimate = String(d?.cost ? d.cost.promptTokens : -1)
  const limit = Number.isInteger(r.max_tokens) && r.max_tokens > 0 ? r.max_tokens : COMPLETION
  const out = Math.min(limit, COMPLETION)
  const usage = { prompt_tokens: PROMPT, completion_tokens: out, total_tokens: PROMPT + out }
  if (!r.stream) {
    res.writeHead(200, { 'content-type': 'application/json', 'x-test-prompt-estimate': estimate })
    res.end(
      JSON.stringify({
        id: 'chatcmpl-1',
        object: 'chat.completion',
        model: r.model,
        choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop' }],
        usage,
      }),
    )
    return
  }
  res.writeHead(200, { 'content-type': 'text/event-stream', 'x-test-prompt-estimate': estimate })
  for (let i = 0; i < CHUNKS; i++) {
    if (i) await new Promise((ok) => setTimeout(ok, CHUNK_DELAY_MS))
    const c = { id: 'c', object: 'chat.completion.chunk', choices: [{ index: 0, delta: { content: `word${i} ` } }] }
    res.write(`data: ${JSON.stringify(c)}\n\n`)
  }
  if (r.stream_options?.include_usage) res.write(`data: ${JSON.stringify({ id: 'c', choices: [], usage })}\n\n`)
  res.end('data: [DONE]\n\n')
}

/** Starts `listener` on a loopback port; resolves to its base URL and a close(). */
export function listen(listener) {
  const server = createServer(listener)
  return new Promise((ok) => {
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      ok({
        url: `http://127.0.0.1:${port}`,
        close: () =>
          new Promise((done) => {
            server.closeAllConnections?.()
            server.close(done)
          }),
      })
    })
  })
}

export const quiet = { info() {}, warn() {}, error() {} }
