#!/usr/bin/env bash
# Build an nginx dynamic module against Debian's nginx-dev (nginx 1.22 in
# bookworm) so that the packaged /usr/sbin/nginx loads it with load_module.
#
#   integrations/nginx/build-module.sh MODULE_DIR [OUT_DIR]
#
# MODULE_DIR holds the module's `config` file and sources.  The .so files land
# in OUT_DIR (default: MODULE_DIR/build).  Extra environment is passed through
# to the module's `config` (e.g. EDGEWARD_LIB_DIR for ngx_module_libs).
#
# This does what Debian's dh nginx_mod build system does, but on a private
# copy of /usr/share/nginx/src, because nginx's configure writes a Makefile
# into the directory it runs from.
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: $0 MODULE_DIR [OUT_DIR]" >&2
    exit 2
fi

module_dir=$(cd "$1" && pwd)
out_dir=${2:-$module_dir/build}
mkdir -p "$out_dir"
out_dir=$(cd "$out_dir" && pwd)
ngx_src=/usr/share/nginx/src

if [ ! -x "$ngx_src/configure" ]; then
    echo "nginx-dev is not installed (no $ngx_src/configure)." >&2
    echo "  DEBIAN_FRONTEND=noninteractive apt-get install -y nginx nginx-dev" >&2
    exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -a "$ngx_src" "$work/src"
cd "$work/src"

# NGX_CONF_FLAGS: the configure flags of the packaged binary that matter for
# module ABI compatibility (--with-compat, --with-threads, --with-debug, ...)
# shellcheck disable=SC1091
. ./conf_flags

./configure \
    --with-cc-opt="$(dpkg-buildflags --get CFLAGS) -fPIC $(dpkg-buildflags --get CPPFLAGS)" \
    --with-ld-opt="$(dpkg-buildflags --get LDFLAGS) -fPIC" \
    "${NGX_CONF_FLAGS[@]}" \
    --add-dynamic-module="$module_dir" \
    --builddir="$work/objs" >"$work/configure.log" 2>&1 \
    || { tail -30 "$work/configure.log" >&2; exit 1; }

make -j"${MAKE_JOBS:-1}" -f "$work/objs/Makefile" modules >"$work/make.log" 2>&1 \
    || { tail -40 "$work/make.log" >&2; exit 1; }

# warnings are worth seeing, the rest of the log is not
grep -E 'warning:|error:' "$work/make.log" >&2 || true

cp "$work"/objs/*.so "$out_dir"/
ls -1 "$out_dir"/*.so
