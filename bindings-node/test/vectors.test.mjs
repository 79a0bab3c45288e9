// The shared test vectors (rulesets/tests/*.toml) through the Node API, with the
// decisions the core suite expects of the embedded default policy; each case runs
// through inspect and inspectAsync.
import assert from 'node:assert/strict'
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { fileURLToPath } from 'node:url'

import { parse } from 'smol-toml'

import { edgeward } from './helpers.mjs'

const dir = fileURLToPath(new URL('../../rulesets/tests/', import.meta.url))
const cases = []
for (const f of readdirSync(dir).filter((n) => n.endsWith('.toml')).sort()) {
  for (const c of parse(readFileSync(join(dir, f), 'utf8')).case) cases.push({ file: f, ...c })
}

test('there are vectors', () => {
  assert.ok(cases.length >= 40, `${cases.length} cases`)
  assert.equal(new Set(cases.map((c) => c.name)).size, cases.length)
})

const engine = edgeward.Engine.default()

function check(c, d) {
  const why = engine.decisionJson(d)
  assert.equal(d.allowed ? 'allow' : 'deny', c.action, why)
  if (c.status !== undefined) assert.equal(d.status, c.status, why)
  const ids = new Set(d.matches.map((m) => m.ruleId))
  for (const r of c.rules ?? []) assert.ok(ids.has(r), `rule ${r} did not match: ${why}`)
  for (const r of c.not_rules ?? []) assert.ok(!ids.has(r), `rule ${r} matched: ${why}`)
  if (c.route !== undefined) assert.equal(d.route, c.route)
}

for (const c of cases) {
  test(`${c.file.replace(/\.toml$/, '')}:${c.name}`, async () => {
    const body = c.body_b64 !== undefined ? Buffer.from(c.body_b64, 'base64') : Buffer.from(c.body ?? '')
    const req = { method: c.method, uri: c.uri, headers: c.headers ?? [], body }
    check(c, engine.inspect(req))
    check(c, await engine.inspectAsync(req))
  })
}
