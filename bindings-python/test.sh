#!/usr/bin/env bash
# The Python suite: builds the extension into a virtualenv with `maturin develop` (the dev
# profile, the one `cargo test` uses, so the dependencies it compiled are reused) and runs
# pytest: the API and its errors, threads, the shared vectors, mypy.stubtest on the
# hand-written stubs, and the ASGI middleware in a real uvicorn server.
#
#   bindings-python/test.sh [PYTEST ARGS...]
#
# The virtualenv is EDGEWARD_PY_VENV (default target/py); .ci/run creates it with
# maturin, pytest, httpx, uvicorn, starlette and mypy.
set -euo pipefail
cd "$(dirname "$0")"
venv="${EDGEWARD_PY_VENV:-$PWD/../target/py}"
py="$venv/bin/python"

missing=()
if [ -x "$py" ]; then
  for m in maturin pytest httpx uvicorn starlette mypy; do
    "$py" -c "import $m" 2>/dev/null || missing+=("$m")
  done
else
  missing=(virtualenv)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "bindings-python/test.sh: missing in $venv: ${missing[*]}" >&2
  echo "  python3 -m venv $venv && $venv/bin/pip install maturin pytest httpx uvicorn starlette mypy" >&2
  exit 1
fi

VIRTUAL_ENV="$venv" "$venv/bin/maturin" develop --quiet
set +e
"$py" -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  # pytest's "no tests ran": not a failure of the code, but never silent.
  echo
  echo "WARNING: pytest collected no tests (exit 5): the Python suite ran NOTHING." >&2
  rc=0
fi
exit "$rc"
