#!/usr/bin/env bash
# The reference the Redis store benches are compared with (benches/RESULTS.md): a minimal
# one-key GCRA Lua script called by redis-benchmark (one epoll thread, no Rust) on a
# throw-away redis-server, unpipelined from 1 and 16 clients and pipelined 16 deep, plus a
# PING round trip. Run it right before and after `cargo bench --bench redis`.
set -euo pipefail
port="${1:-6398}"
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes >/dev/null
trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true' EXIT
sleep 0.3
lua="local t = tonumber(redis.call('GET', KEYS[1]) or '0')
local now = tonumber(ARGV[1])
local n = math.max(t, now) + tonumber(ARGV[2])
if n - tonumber(ARGV[3]) <= now then
  redis.call('SET', KEYS[1], string.format('%.0f', n), 'PX', 60000)
  return 1
end
return 0"
sha=$(redis-cli -p "$port" SCRIPT LOAD "$lua")
for opts in "-c 1" "-c 16" "-c 16 -P 16"; do
  printf 'gcra script %-12s ' "$opts"
  # shellcheck disable=SC2086
  redis-benchmark -p "$port" -n 100000 -r 1000 $opts -q EVALSHA "$sha" 1 "k:__rand_int__" \
    1795780800000000 1 1000000000 | tr '\r' '\n' | tail -1 | sed 's/.*: //'
done
printf 'PING %-19s ' "-c 1"
redis-benchmark -p "$port" -n 50000 -c 1 -q PING | tr '\r' '\n' | tail -1 | sed 's/.*: //'
