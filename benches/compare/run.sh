#!/usr/bin/env bash
# Side by side with ModSecurity (issue 10): the labeled corpora and benign chat bodies of
# 1-64 KiB through Debian's libmodsecurity3 + CRS (paranoia level 1) and through edgeward's
# embedded default policy (paranoia level 1), both timed in-process by one C program
# (modsec_harness.c says why one program and why edgeward through its C ABI).
#
#   bash benches/compare/run.sh [--smoke] [CORPORA_DIR]
#
# CORPORA_DIR defaults to ../shared/corpora relative to the repository root (the corpora
# are not in the repository). --smoke: the first 20 counted rows of one file and the 1 KiB
# body only, to check that everything builds and runs. MODSEC_HARNESS_LOG=1 prints
# ModSecurity's rule messages to stderr (why a row was refused).
#
# Takes several minutes: not part of the CI test command.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
smoke=()
corpora=""
for a in "$@"; do
    case "$a" in
        --smoke) smoke=(--smoke) ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) corpora=$a ;;
    esac
done
corpora=${corpora:-$root/../shared/corpora}
[ -d "$corpora" ] || { echo "no corpora directory: $corpora" >&2; exit 1; }
corpora=$(cd "$corpora" && pwd)

# ---- packages ----------------------------------------------------------------------------
need=()
for p in libmodsecurity3 libmodsecurity-dev modsecurity-crs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]}" >&2
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >&2
fi

# ---- edgeward's C library and the harness ------------------------------------------------
# One release build of the C ABI crate; cargo does nothing when it is up to date.
(cd "$root" && cargo build --release -p edgeward-ffi >&2)
target=$(cd "$root" && cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json,sys;print(json.load(sys.stdin)["target_directory"])')

work=$(mktemp -d "${TMPDIR:-/tmp}/edgeward-compare.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Linked statically against edgeward so the harness runs the library just built, and
# dynamically against ModSecurity as a connector would.
cc -std=c11 -O2 -Wall -Wextra -Werror -pedantic \
    -I"$root/ffi/include" \
    -o "$work/modsec_harness" "$here/modsec_harness.c" \
    "$target/release/libedgeward_ffi.a" \
    -lmodsecurity -lpthread -ldl -lm

python3 "$here/compare.py" "${smoke[@]}" \
    --harness "$work/modsec_harness" --conf "$here/modsecurity.conf" --work "$work" \
    "$corpora"
