#!/usr/bin/env bash
# wrk benchmark of nginx in front of an OpenAI-compatible upstream:
#   (a) nginx alone (proxy_pass)
#   (b) nginx + ModSecurity v3 with Debian's OWASP CRS (SecRuleEngine On,
#       request body access on, JSON body processor)
#   (c) nginx + the edgeward module (skipped while the module .so is absent)
#
#   integrations/nginx/bench.sh
#
# Environment:
#   DURATION=10s THREADS=2 CONNECTIONS=32    wrk settings
#   BODY_BYTES=4096                          size of the POSTed chat body
#   BENCH_UPSTREAM=python|static             python: upstream.py (default);
#       static: an extra nginx server answering a canned completion, so the
#       upstream costs little and the proxy's own cost shows
#   NGINX_WORKERS=1                          worker_processes of each nginx
#   UNIQUE=1                                 every request's user message differs (a
#       counter in its first ten bytes), so nothing can be recognised from an earlier
#       request; default: wrk repeats one body, as a client resending the same system
#       prompt and conversation would
#   EDGEWARD_SO=path/to/ngx_http_edgeward_module.so (default: built here from a
#       release libedgeward_ffi when missing)
#   KEEP=1                                   keep the temp dir (configs, logs)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=integrations/nginx/lib.sh
. "$here/lib.sh"

DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-32}
BENCH_UPSTREAM=${BENCH_UPSTREAM:-python}
BODY_BYTES=${BODY_BYTES:-4096}
EDGEWARD_SO=${EDGEWARD_SO:-$here/edgeward/build/ngx_http_edgeward_module.so}
MODSEC_SO=/usr/lib/nginx/modules/ngx_http_modsecurity_module.so
CRS_RULES=/usr/share/modsecurity-crs/rules

# ---- packages ------------------------------------------------------------
need=()
command -v wrk >/dev/null || need+=(wrk)
[ -x "$NGINX_BIN" ] || need+=(nginx)
[ -f "$MODSEC_SO" ] || need+=(libnginx-mod-http-modsecurity)
[ -d "$CRS_RULES" ] || need+=(modsecurity-crs)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi

work=$(mktemp -d)
cleanup() {
    nginx_lib_cleanup
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

# ---- request body and wrk script -----------------------------------------
# a plain chat request of exactly BODY_BYTES bytes, nothing a WAF should mind
python3 - "$work/body.json" "$BODY_BYTES" "${UNIQUE:-0}" <<'PY'
import json, sys
words = ("please summarise the following notes about the quarterly planning "
         "meeting where the team discussed the roadmap the hiring plan and "
         "the budget for the next release of the product").split()
def body(n):
    text = " ".join(words[i % len(words)] for i in range(n))
    if sys.argv[3] == "1":
        # Ten bytes the wrk script overwrites with a per-request counter.
        text = "NONCE00000" + text[10:]
    return json.dumps({"model": "test-model", "max_tokens": 32,
                       "messages": [{"role": "system", "content": "You are a helpful assistant."},
                                    {"role": "user", "content": text}]},
                      separators=(",", ":"))
size = int(sys.argv[2])
n = 1
while len(body(n + 1)) <= size:
    n += 1
b = body(n)
b = b.replace('"max_tokens":32', '"max_tokens":32' + " " * (size - len(b)), 1)
assert len(b) == size, (len(b), size)
open(sys.argv[1], "w").write(b)
PY

cat >"$work/post.lua" <<LUA
local f = assert(io.open("$work/body.json", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench-key"
LUA
if [ "${UNIQUE:-0}" = 1 ]; then
    # Each wrk thread numbers its requests from its own base, so no two bodies repeat.
    cat >>"$work/post.lua" <<'LUA'
local threads = 0
function setup(thread)
    threads = threads + 1
    thread:set("base", threads * 100000000)
end
local head, tail = wrk.body:match("^(.-)NONCE00000(.*)$")
local n = 0
function request()
    n = n + 1
    return wrk.format(nil, nil, nil, head .. string.format("%010d", base + n) .. tail)
end
LUA
fi

# ---- upstream --------------------------------------------------------------
up_port=$(free_port)
if [ "$BENCH_UPSTREAM" = static ]; then
    mkdir -p "$work/static"
    {
        nginx_conf_head
        cat <<CONF
events { worker_connections 1024; }
http {
$(nginx_http_head)
    client_body_buffer_size 64k;
    server {
        listen 127.0.0.1:$up_port;
        keepalive_requests 100000;
        location / {
            default_type application/json;
            return 200 '{"id":"chatcmpl-static","object":"chat.completion","model":"test-model","choices":[{"index":0,"message":{"role":"assistant","content":"lorem ipsum dolor sit amet"},"finish_reason":"length"}],"usage":{"prompt_tokens":700,"completion_tokens":32,"total_tokens":732}}';
        }
    }
}
CONF
    } >"$work/static/nginx.conf"
    start_nginx "$work/static"
    wait_port "$up_port"
else
    start_upstream "$up_port"
fi

# ---- the nginx configs -------------------------------------------------------
# conf NAME LOAD_LINES HTTP_LINES LOCATION_LINES: writes and starts the
# config, records its port in ports[NAME].  Not to be called in $(...): the
# started nginx must be known to this shell's cleanup.
declare -A ports
conf() {
    local name=$1 load=$2 http=$3 loc=$4 port
    port=$(free_port)
    mkdir -p "$work/$name"
    {
        printf '%s\n' "$load"
        nginx_conf_head
        cat <<CONF
events { worker_connections 1024; }
http {
$(nginx_http_head)
    client_max_body_size 1m;
    client_body_buffer_size 64k;
    keepalive_requests 100000;
    upstream llm {
        server 127.0.0.1:$up_port;
        keepalive 64;
    }
$http
    server {
        listen 127.0.0.1:$port;
        location / {
$loc
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_pass http://llm;
        }
    }
}
CONF
    } >"$work/$name/nginx.conf"
    start_nginx "$work/$name"
    wait_port "$port"
    ports[$name]=$port
}

# (b) ModSecurity main configuration: engine on, bodies inspected (JSON bodies
# through the JSON processor), then Debian's CRS (paranoia level 1)
cat >"$work/modsec.conf" <<CONF
SecRuleEngine On
SecRequestBodyAccess On
SecRequestBodyLimit 1048576
SecRequestBodyNoFilesLimit 1048576
SecRequestBodyLimitAction Reject
SecRule REQUEST_HEADERS:Content-Type "@rx ^application/json" \
    "id:1000001,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=JSON"
SecRule REQBODY_ERROR "!@eq 0" \
    "id:1000002,phase:2,t:none,deny,status:400,log,msg:'request body parse error'"
SecResponseBodyAccess Off
SecAuditEngine Off
SecTmpDir $work/modsec-tmp
SecDataDir $work/modsec-tmp
# owasp-crs.load says IncludeOptional, which libmodsecurity 3.0.9 cannot
# parse, so its four includes are spelled out here
Include /etc/modsecurity/crs/crs-setup.conf
Include /etc/modsecurity/crs/REQUEST-900-EXCLUSION-RULES-BEFORE-CRS.conf
Include /usr/share/modsecurity-crs/rules/*.conf
Include /etc/modsecurity/crs/RESPONSE-999-EXCLUSION-RULES-AFTER-CRS.conf
CONF
mkdir -p "$work/modsec-tmp"

conf a-nginx "" "" ""
conf b-modsecurity "load_module $MODSEC_SO;" \
    "    modsecurity on;
    modsecurity_rules_file $work/modsec.conf;" ""
names=(a-nginx b-modsecurity)

if [ ! -f "$EDGEWARD_SO" ] && [ -f "$here/edgeward/config" ]; then
    repo=$(cd "$here/../.." && pwd)
    target_dir=$(cd "$repo" && cargo metadata --format-version 1 --no-deps \
        | python3 -c 'import json,sys;print(json.load(sys.stdin)["target_directory"])')
    (cd "$repo" && cargo build --release -p edgeward-ffi)
    EDGEWARD_LIB_DIR="$target_dir/release" EDGEWARD_INCLUDE_DIR="$repo/ffi/include" \
        "$here/build-module.sh" "$here/edgeward" "$(dirname "$EDGEWARD_SO")" >/dev/null
fi
if [ -f "$EDGEWARD_SO" ]; then
    # The module with bench-policy.yaml (built-in rules, cost, a limit that never refuses).
    EDGEWARD_HTTP_CONF=${EDGEWARD_HTTP_CONF:-"    edgeward_policy $here/bench-policy.yaml;"}
    EDGEWARD_LOC_CONF=${EDGEWARD_LOC_CONF:-"            edgeward on;"}
    conf c-edgeward "load_module $EDGEWARD_SO;" \
        "$EDGEWARD_HTTP_CONF" "$EDGEWARD_LOC_CONF"
    names+=(c-edgeward)
else
    echo "(c) edgeward: skipped, no module at $EDGEWARD_SO" >&2
fi

# ---- sanity: everything answers 200, and CRS really blocks -----------------
for name in "${names[@]}"; do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
        --data-binary @"$work/body.json" "http://127.0.0.1:${ports[$name]}/v1/chat/completions" || true)
    if [ "$code" != 200 ]; then
        echo "$name: the benchmark request got $code, not 200" >&2
        tail -5 "$work/$name/logs/error.log" >&2
        exit 1
    fi
done
sqli_url="http://127.0.0.1:${ports[b-modsecurity]}/v1/chat/completions?id=1'%20OR%20'1'='1"
code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
    --data-binary @"$work/body.json" "$sqli_url" || true)
if [ "$code" != 403 ]; then
    echo "b-modsecurity: SQL injection in the query got $code, not 403: CRS is not active" >&2
    exit 1
fi
sqli_body='{"model":"m","messages":[{"role":"user","content":"x"}],"user":"1'"'"' OR '"'"'1'"'"'='"'"'1"}'
code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
    -d "$sqli_body" "http://127.0.0.1:${ports[b-modsecurity]}/v1/chat/completions" || true)
if [ "$code" != 403 ]; then
    echo "b-modsecurity: SQL injection in the JSON body got $code, not 403: bodies not inspected" >&2
    exit 1
fi
echo "CRS active: SQL injection in query and in JSON body both refused with 403" >&2

# ---- the runs ----------------------------------------------------------------
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, POST $BODY_BYTES-byte chat body (unique=${UNIQUE:-0})," \
     "upstream=$BENCH_UPSTREAM, nginx workers=${NGINX_WORKERS:-1}, $(date -u '+%Y-%m-%d %H:%M UTC')"
printf '%-15s %10s %9s %9s %9s %9s %8s %12s\n' config req/s avg p50 p90 p99 non2xx 'cpu us/req'
# CPU time (user + system) of a config's nginx workers, in clock ticks: less sensitive to
# what else runs on the machine than requests per second.
worker_ticks() {
    local master t=0 w
    master=$(cat "$work/$1/nginx.pid")
    for w in $(pgrep -P "$master"); do
        t=$((t + $(awk '{print $14 + $15}' "/proc/$w/stat")))
    done
    echo "$t"
}
hz=$(getconf CLK_TCK)
for name in "${names[@]}"; do
    out="$work/$name.wrk"
    t0=$(worker_ticks "$name")
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$work/post.lua" \
        "http://127.0.0.1:${ports[$name]}/v1/chat/completions" >"$out"
    t1=$(worker_ticks "$name")
    awk -v name="$name" -v ticks=$((t1 - t0)) -v hz="$hz" '
        /^    Latency/          { avg = $2 }
        /^ +50%/                { p50 = $2 }
        /^ +90%/                { p90 = $2 }
        /^ +99%/                { p99 = $2 }
        /Non-2xx or 3xx/        { bad = $NF }
        /^Requests\/sec/        { rps = $2 }
        / requests in /         { reqs = $1 }
        END { printf "%-15s %10s %9s %9s %9s %9s %8s %12.1f\n", name, rps, avg, p50, p90, p99, (bad == "" ? 0 : bad), (reqs > 0 ? ticks * 1e6 / hz / reqs : 0) }
    ' "$out"
done
