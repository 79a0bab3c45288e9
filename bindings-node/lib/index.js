'use strict'
// The `edgeward` package: the native addon (built from source into ../edgeward.node by
// `npm install`) and the HTTP middleware in ./middleware.js.

const native = require('../edgeward.node')
const { guard, wrap } = require('./middleware.js')
const { install } = require('./decision.js')

install(native)

// `_templates` serves the tests, not users.
const { _templates, ...api } = native

module.exports = {
  ...api,
  guard,
  wrap,
}
