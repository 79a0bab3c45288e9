// Builds the addon with cargo in the workspace's own target directory and profile (the
// dev profile, unless --release), so `cargo test` and this build share every compiled
// dependency. `napi build` would pass `--target <host triple>`, which makes cargo build
// the whole dependency tree a second time under target/<triple>/.
//
// Then copies the library to edgeward.node and writes index.d.ts from the type
// definitions napi-derive records while it expands the crate (NAPI_TYPE_DEF_TMP_FOLDER),
// rendered by @napi-rs/cli's own generator.
//
//   node scripts/build.mjs [--release] [--check]
//
// --check writes nothing and fails when the committed index.d.ts differs from the one
// this build generates.
import { spawnSync } from 'node:child_process'
import { copyFileSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

import { generateTypeDef } from '@napi-rs/cli'

const here = dirname(dirname(fileURLToPath(import.meta.url)))
const release = process.argv.includes('--release')
const check = process.argv.includes('--check')

const meta = spawnSync('cargo', ['metadata', '--format-version', '1', '--no-deps'], {
  cwd: here,
  encoding: 'utf8',
  maxBuffer: 64 << 20,
})
if (meta.status !== 0) {
  process.stderr.write(meta.stderr)
  process.exit(1)
}
const targetDir = JSON.parse(meta.stdout).target_directory
const typeDefDir = join(targetDir, 'napi-type-defs', 'edgeward-node')
rmSync(typeDefDir, { recursive: true, force: true })
mkdirSync(typeDefDir, { recursive: true })

const args = ['build', '-p', 'edgeward-node', '--lib']
if (release) args.push('--release')
const build = spawnSync('cargo', args, {
  cwd: here,
  stdio: 'inherit',
  env: {
    ...process.env,
    NAPI_TYPE_DEF_TMP_FOLDER: typeDefDir,
    // napi-build reruns the crate's build script (and so re-expands the macros that
    // write the type definitions) when this changes.
    NAPI_FORCE_BUILD_EDGEWARD_NODE: String(Date.now()),
  },
})
if (build.status !== 0) process.exit(build.status ?? 1)

const lib = { linux: 'libedgeward_node.so', darwin: 'libedgeward_node.dylib', win32: 'edgeward_node.dll' }[process.platform]
if (!lib) throw new Error(`unsupported platform ${process.platform}`)
const built = join(targetDir, release ? 'release' : 'debug', lib)
if (!check) {
  // Copy then rename: a process that has the old addon loaded keeps its mapping.
  const tmp = join(here, 'edgeward.node.tmp')
  copyFileSync(built, tmp)
  renameSync(tmp, join(here, 'edgeward.node'))
}

const { dts } = await generateTypeDef({ typeDefDir, cwd: here })
if (!dts.includes('class Engine')) {
  console.error('build.mjs: no type definitions were generated (was the crate rebuilt?)')
  process.exit(1)
}
const dtsPath = join(here, 'index.d.ts')
if (check) {
  const committed = existsSync(dtsPath) ? readFileSync(dtsPath, 'utf8') : ''
  if (committed !== dts) {
    console.error('index.d.ts is stale: run `npm run build` and commit it')
    process.exit(1)
  }
} else {
  writeFileSync(dtsPath, dts)
}
