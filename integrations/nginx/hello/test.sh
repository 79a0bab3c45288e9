#!/usr/bin/env bash
# Builds the hello module against nginx-dev, loads it into the packaged nginx
# and checks its access-phase behaviour in front of the test upstream.
#   integrations/nginx/hello/test.sh
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=integrations/nginx/lib.sh
. "$here/../lib.sh"

work=$(mktemp -d)
cleanup() { nginx_lib_cleanup; rm -rf "$work"; }
trap cleanup EXIT

"$NGINX_DIR/build-module.sh" "$here" "$work/modules" >/dev/null
so="$work/modules/ngx_http_hello_module.so"

up_port=$(free_port)
ng_port=$(free_port)
start_upstream "$up_port"

prefix="$work/nginx"
mkdir -p "$prefix"
{
    echo "load_module $so;"
    nginx_conf_head
    cat <<CONF
events { worker_connections 256; }
http {
$(nginx_http_head)
    client_max_body_size 1m;
    client_body_buffer_size 1m;
    server {
        listen 127.0.0.1:$ng_port;
        hello on;
        location / {
            proxy_pass http://127.0.0.1:$up_port;
        }
        location /v1/ {
            hello_block_body "BLOCKME";
            proxy_pass http://127.0.0.1:$up_port;
        }
        location /off/ {
            hello off;
            proxy_pass http://127.0.0.1:$up_port/;
        }
    }
}
CONF
} >"$prefix/nginx.conf"
start_nginx "$prefix"

pass=0 fail=0
check() {  # check NAME EXPECTED ACTUAL
    if [ "$2" = "$3" ]; then
        pass=$((pass + 1)); echo "ok   $1"
    else
        fail=$((fail + 1)); echo "FAIL $1: expected [$2] got [$3]"
    fi
}

base="http://127.0.0.1:$ng_port"
body='{"model":"m","messages":[{"role":"user","content":"hello there"}],"max_tokens":5}'

check "GET passes" 200 "$(curl -s -o /dev/null -w '%{http_code}' "$base/health")"
check "X-Hello added" "passed" \
    "$(curl -s -D - -o /dev/null "$base/health" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-hello"{print $2}')"
check "x-block: 1 refused" 403 "$(curl -s -o /dev/null -w '%{http_code}' -H 'x-block: 1' "$base/health")"
check "x-block: 0 passes" 200 "$(curl -s -o /dev/null -w '%{http_code}' -H 'x-block: 0' "$base/health")"
check "hello off ignores x-block" 200 "$(curl -s -o /dev/null -w '%{http_code}' -H 'x-block: 1' "$base/off/health")"
check "POST with body passes" 200 \
    "$(curl -s -o /dev/null -w '%{http_code}' -H 'content-type: application/json' -d "$body" "$base/v1/chat/completions")"
check "body reached upstream intact" "$body" "$(curl -s "http://127.0.0.1:$up_port/last")"
check "body marker refused" 403 \
    "$(curl -s -o /dev/null -w '%{http_code}' -d '{"messages":[{"role":"user","content":"please blockme"}]}' "$base/v1/chat/completions")"
# a body that arrives in pieces (chunked, 3 x 64 KiB) goes through the
# asynchronous body-reading path
big=$(python3 -c 'import json; print(json.dumps({"messages":[{"role":"user","content":"x "*98000}],"max_tokens":2}))')
check "large chunked body passes" 200 \
    "$(printf '%s' "$big" | curl -s -o /dev/null -w '%{http_code}' -H 'Transfer-Encoding: chunked' --data-binary @- "$base/v1/chat/completions")"
check "large body reached upstream intact" "${#big}" "$(curl -s "http://127.0.0.1:$up_port/last" | wc -c)"
check "streamed answer ends with [DONE]" "data: [DONE]" \
    "$(curl -sN -d '{"messages":[{"role":"user","content":"hi"}],"stream":true}' "$base/v1/chat/completions" | grep -v '^$' | tail -1)"

if grep -E '\[(alert|emerg|crit)\]' "$prefix/logs/error.log"; then
    fail=$((fail + 1)); echo "FAIL error.log has alerts"
fi
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
