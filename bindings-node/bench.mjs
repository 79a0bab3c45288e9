// Per-call cost of `engine.inspect` and `engine.inspectAsync` from Node against the
// core's own bench, in one run.
//
//   node scripts/build.mjs --release
//   node bench.mjs [--rounds N] [--number N] [--alternations N] [--no-core]
//   valgrind --tool=callgrind --separate-threads=yes node bench.mjs --loop N [--drain]
//                                          (N = 0 and N = 2000: subtract)
//   node bench.mjs --loop N --split        (each call's time minus the core's inspectNs)
//
// --drain collects the loop's garbage and lets the finalizers run before exiting, so the
// count includes what the decisions cost after the loop (freeing their core decisions).
//
// The request is the core bench's `inspect/benign/4KiB` (benches/src/lib.rs:
// `chat_body_with(4096, false, Text::Triggers)` and `HEADERS`), rebuilt here byte for
// byte, inspected by the embedded default policy. The headers go in as node gives them
// (`req.rawHeaders`, a flat array of strings) and the body as a Buffer. The core side
// runs `cargo bench -p edgeward-benches --bench inspect -- '^inspect/benign/4KiB$'` and
// reads Criterion's estimate. Node and core runs alternate (node, core, node, ...), so a
// change of load on the shared machine shows up as a change between neighbours; the
// overhead reported is the median of Node's rounds minus the median of the core's
// estimates, with each side's spread.
import { spawnSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { arch, cpus, platform, release } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import v8 from 'node:v8'
import vm from 'node:vm'

const require = createRequire(import.meta.url)
const edgeward = require('./lib/index.js')
const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..')

const { values: args } = parseArgs({
  options: {
    rounds: { type: 'string', default: '15' },
    number: { type: 'string', default: '5000' },
    alternations: { type: 'string', default: '3' },
    'no-core': { type: 'boolean', default: false },
    'allow-debug': { type: 'boolean', default: false },
    loop: { type: 'string' },
    drain: { type: 'boolean', default: false },
    split: { type: 'boolean', default: false },
  },
})

// benches/src/lib.rs: PROSE (the "benign" filler, full of trigger words).
const PROSE =
  'Here is the text of our onboarding guide for new support staff. Please rewrite it so that ' +
  'it is easier to read, keep the rules from the original version, and start with a short summary of ' +
  'the main steps. Your answer should use plain language and avoid jargon. The system we use for ' +
  'tickets has a training mode that new hires can enable before they take real calls; mention it in ' +
  'the section above the checklist. Don\'t repeat the same advice twice, and keep every step given in ' +
  'the message below. '
const HEAD =
  '{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant ' +
  'for a logistics company."},{"role":"user","content":"'
const TAIL = '"}],"max_tokens":512,"temperature":0.2,"stream":false}'
const HEADERS = [
  'host', 'api.example.com',
  'content-type', 'application/json',
  'authorization', 'Bearer sk-live-0000000000000000',
  'user-agent', 'OpenAI/Python 1.40.0',
  'accept', 'application/json',
]

function chatBody(size) {
  const want = Math.max(size - HEAD.length - TAIL.length, 0)
  let text = ''
  while (text.length < want) text += PROSE
  return Buffer.from(HEAD + text.slice(0, want) + TAIL)
}

const body = chatBody(4096)
if (body.length !== 4096) throw new Error(`body is ${body.length} bytes`)
const req = { method: 'POST', uri: '/v1/chat/completions', headers: HEADERS, body }
const engine = edgeward.Engine.default()
const d = engine.inspect(req)
if (!d.allowed) throw new Error(engine.decisionJson(d))

if (args.loop !== undefined && args.split) {
  // The binding's cost within one process: each call's time minus the core's own
  // `inspectNs` for it. Two processes differ by more than the binding's cost: each draws
  // its own seed for the core's clean-field memo, and some seeds make two of the request's
  // fields evict each other on every call (callgrind: 160k-210k instructions per call).
  const n = Number(args.loop)
  for (let i = 0; i < 2000; i++) engine.inspect(req)
  let core = 0
  const t0 = process.hrtime.bigint()
  for (let i = 0; i < n; i++) core += engine.inspect(req).inspectNs
  const per = Number(process.hrtime.bigint() - t0) / n
  console.log(`per call ${(per / 1e3).toFixed(3)} µs, core inspectNs ${(core / n / 1e3).toFixed(3)} µs, binding ${((per - core / n) / 1e3).toFixed(3)} µs`)
  process.exit(0)
}
if (args.loop !== undefined) {
  for (let i = 0, n = Number(args.loop); i < n; i++) engine.inspect(req)
  if (args.drain) {
    v8.setFlagsFromString('--expose-gc')
    const gc = vm.runInNewContext('gc')
    for (let i = 0; i < 5; i++) {
      gc()
      await new Promise((r) => setTimeout(r, 1))
    }
  }
  process.exit(0)
}
if (edgeward.DEBUG_BUILD && !args['allow-debug']) {
  console.error('the addon is a debug build: node scripts/build.mjs --release first')
  process.exit(2)
}

const rounds = Number(args.rounds)
const number = Number(args.number)
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2
}
const us = (s) => `${(s * 1e6).toFixed(2)} µs`
const summary = (name, xs) => {
  const m = median(xs)
  console.log(`${name}: median ${us(m)}, min ${us(Math.min(...xs))}, max ${us(Math.max(...xs))} over ${xs.length} rounds`)
  return m
}

/** Seconds per sync call, one value per round. */
function syncSide() {
  for (let i = 0; i < 2000; i++) engine.inspect(req)
  const out = []
  for (let r = 0; r < rounds; r++) {
    const t0 = process.hrtime.bigint()
    for (let i = 0; i < number; i++) engine.inspect(req)
    out.push(Number(process.hrtime.bigint() - t0) / 1e9 / number)
  }
  return out
}

/** Seconds per async call: one at a time (latency, with the hop to the pool and back)
 * and 64 in flight (the JS thread's cost per call while the pool works). */
async function asyncSide(inFlight) {
  for (let i = 0; i < 500; i++) await engine.inspectAsync(req)
  const out = []
  const n = Math.max(number >> 2, inFlight)
  for (let r = 0; r < rounds; r++) {
    const t0 = process.hrtime.bigint()
    for (let i = 0; i < n; i += inFlight) {
      const batch = []
      for (let j = 0; j < inFlight; j++) batch.push(engine.inspectAsync(req))
      await Promise.all(batch)
    }
    out.push(Number(process.hrtime.bigint() - t0) / 1e9 / n)
  }
  return out
}

function coreSide() {
  const r = spawnSync(
    'cargo',
    ['bench', '-q', '-p', 'edgeward-benches', '--bench', 'inspect', '--', '^inspect/benign/4KiB$'],
    { cwd: ROOT, stdio: ['ignore', 'ignore', 'inherit'] },
  )
  if (r.status !== 0) throw new Error('cargo bench failed')
  // Criterion writes under cargo's target directory, which CARGO_TARGET_DIR moves.
  const target = resolve(ROOT, process.env.CARGO_TARGET_DIR || 'target')
  const est = JSON.parse(readFileSync(join(target, 'criterion/inspect/benign/4KiB/new/estimates.json'), 'utf8'))
  return {
    median: est.median.point_estimate / 1e9,
    low: est.median.confidence_interval.lower_bound / 1e9,
    high: est.median.confidence_interval.upper_bound / 1e9,
  }
}

console.log(`machine: ${arch()} ${cpus()[0]?.model ?? ''} x${cpus().length}, ${platform()} ${release()}, Node ${process.version}`)
console.log(`date: ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC`)
const syncMedians = []
const asyncMedians = []
const batchMedians = []
const coreMedians = []
for (let a = 0; a <= Number(args.alternations); a++) {
  syncMedians.push(summary(`[${a}] node inspect (sync)`, syncSide()))
  asyncMedians.push(summary(`[${a}] node inspectAsync, 1 in flight`, await asyncSide(1)))
  batchMedians.push(summary(`[${a}] node inspectAsync, 64 in flight`, await asyncSide(64)))
  if (args['no-core'] || a === Number(args.alternations)) continue
  const c = coreSide()
  console.log(`[${a}] core inspect_with (criterion inspect/benign/4KiB): median ${us(c.median)} [${us(c.low)} .. ${us(c.high)}]`)
  coreMedians.push(c.median)
}
const s = median(syncMedians)
console.log(`\nnode inspect: median of medians ${us(s)} (${us(Math.min(...syncMedians))} .. ${us(Math.max(...syncMedians))})`)
console.log(`node inspectAsync (1 in flight): ${us(median(asyncMedians))}; (64 in flight): ${us(median(batchMedians))}`)
if (coreMedians.length) {
  const c = median(coreMedians)
  console.log(`core: median of medians ${us(c)} (${us(Math.min(...coreMedians))} .. ${us(Math.max(...coreMedians))})`)
  console.log(`sync binding overhead: ${us(s - c)} per call, ratio ${(s / c).toFixed(3)} (target: <= 3 µs)`)
  console.log(`inspectAsync overhead (1 in flight): ${us(median(asyncMedians) - c)} per call`)
}
