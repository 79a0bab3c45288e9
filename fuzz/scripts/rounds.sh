#!/usr/bin/env bash
# Runs libFuzzer rounds on every target (or those named) and keeps one log per target and
# round, so `plateau.py` can tell when each target stopped finding new coverage.
#
#   fuzz/scripts/rounds.sh SECONDS [target ...]
#
# Scratch corpora live in $FUZZ_SCRATCH (default /tmp/fz/<target>) and grow from round to
# round; the committed seeds in fuzz/corpus/<target> are read, never written. Logs go to
# $FUZZ_SCRATCH/logs/<target>.<round>.log. Needs cargo-fuzz (`cargo install cargo-fuzz`)
# and builds with `-s none` on the stable toolchain (see fuzz/README.md).
set -euo pipefail
seconds=${1:?usage: rounds.sh SECONDS [target ...]}
shift
here=$(cd "$(dirname "$0")/.." && pwd)
scratch=${FUZZ_SCRATCH:-/tmp/fz}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(inspect json urlencoded multipart policy bundle sse c_abi)
fi
mkdir -p "$scratch/logs"
cd "$here"
for t in "${targets[@]}"; do
    mkdir -p "$scratch/$t" "$scratch/artifacts/$t"
    round=1
    while [ -e "$scratch/logs/$t.$round.log" ]; do round=$((round + 1)); done
    log="$scratch/logs/$t.$round.log"
    echo "== $t round $round: ${seconds}s -> $log"
    # Build first, so the round's clock starts with fuzzing, not compiling.
    RUSTC_BOOTSTRAP=1 cargo fuzz build -s none "$t"
    # Every line gets the wall-clock second it was printed (libFuzzer's status lines carry
    # no clock), for plateau.py. libFuzzer exits non-zero on a finding; keep going with the
    # other targets and say so.
    set +o pipefail
    RUSTC_BOOTSTRAP=1 cargo fuzz run -s none "$t" "$scratch/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=3072 -print_final_stats=1 \
        -artifact_prefix="$scratch/artifacts/$t/" 2>&1 |
        perl -MTime::HiRes=time -ne '$|=1; printf "%.1f %s", time, $_' >"$log"
    status=${PIPESTATUS[0]}
    set -o pipefail
    if [ "$status" -ne 0 ]; then
        echo "!! $t stopped early (status $status): see $log and $scratch/artifacts/$t/"
    fi
done
