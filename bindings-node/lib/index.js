'use strict'
// The `edgeward` package: the native addon (built from source into ../edgeward.node by
// `npm install`) and the HTTP middleware in ./middleware.js.

const native = require('../edgeward.node')
const { guard, wrap } = require('./middleware.js')
const { install } = require('./decision.js')

install(native)

// `_release` and `_kept` serve lib/decision.js and the tests, not users.
const { _release, _kept, ...api } = native

module.exports = {
  ...api,
  guard,
  wrap,
}
