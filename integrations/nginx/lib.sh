# shellcheck shell=bash
# Shared helpers for the nginx test and bench scripts (sourced, not run).
# Callers use `set -euo pipefail` and call nginx_lib_cleanup from their trap.

# a failure inside $(...) must stop the caller too
shopt -s inherit_errexit

NGINX_BIN=${NGINX_BIN:-/usr/sbin/nginx}
NGINX_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
_lib_pids=()
_lib_prefixes=()

# a port that was free a moment ago on 127.0.0.1
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_port PORT [SECONDS]: wait until something accepts on 127.0.0.1:PORT
wait_port() {
    local port=$1 tries=$(( ${2:-10} * 20 ))
    while ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        tries=$((tries - 1))
        if [ "$tries" -le 0 ]; then
            echo "nothing listens on 127.0.0.1:$port" >&2
            return 1
        fi
        sleep 0.05
    done
}

# start_upstream PORT: the OpenAI-compatible test upstream, in the background
start_upstream() {
    python3 "$NGINX_DIR/upstream.py" "$1" &
    _lib_pids+=($!)
    wait_port "$1"
}

# start_nginx PREFIX: runs nginx with PREFIX/nginx.conf as a daemon, pid file
# PREFIX/nginx.pid (the conf must say `pid nginx.pid;`), waits for the pid
start_nginx() {
    local prefix=$1
    mkdir -p "$prefix/logs"
    _lib_prefixes+=("$prefix")
    "$NGINX_BIN" -p "$prefix/" -c "$prefix/nginx.conf" -e "$prefix/logs/error.log"
    local tries=100
    while [ ! -s "$prefix/nginx.pid" ]; do
        tries=$((tries - 1))
        [ "$tries" -gt 0 ] || { echo "nginx did not start ($prefix)" >&2; cat "$prefix/logs/error.log" >&2; return 1; }
        sleep 0.05
    done
}

# the common head of a test nginx.conf: one worker, no user switch, logs in
# the prefix, temp paths in the prefix (the packaged ones are under /var/lib)
nginx_conf_head() {
    cat <<CONF
worker_processes ${NGINX_WORKERS:-1};
pid nginx.pid;
error_log logs/error.log ${NGINX_LOG_LEVEL:-warn};
CONF
}

nginx_http_head() {
    cat <<CONF
    access_log ${NGINX_ACCESS_LOG:-off};
    client_body_temp_path body;
    proxy_temp_path proxy;
    fastcgi_temp_path fastcgi;
    uwsgi_temp_path uwsgi;
    scgi_temp_path scgi;
CONF
}

nginx_lib_cleanup() {
    local prefix pid
    for prefix in "${_lib_prefixes[@]}"; do
        if [ -s "$prefix/nginx.pid" ]; then
            pid=$(cat "$prefix/nginx.pid")
            kill -QUIT "$pid" 2>/dev/null || true
        fi
    done
    for pid in "${_lib_pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    # give nginx a moment to go, then make sure
    sleep 0.3
    for prefix in "${_lib_prefixes[@]}"; do
        if [ -s "$prefix/nginx.pid" ]; then
            kill -TERM "$(cat "$prefix/nginx.pid")" 2>/dev/null || true
        fi
    done
    wait 2>/dev/null || true
}
