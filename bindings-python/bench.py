"""Per-call cost of ``Engine.inspect`` from Python against the core's own bench, in one run.

    VIRTUAL_ENV=target/py target/py/bin/maturin develop --release -m bindings-python/Cargo.toml
    target/py/bin/python bindings-python/bench.py [--rounds N] [--no-core]
    valgrind --tool=callgrind target/py/bin/python bindings-python/bench.py --loop N

The request is the core bench's ``inspect/benign/4KiB`` (benches/src/lib.rs:
``chat_body_with(4096, false, Text::Triggers)`` and ``HEADERS``), rebuilt here byte for
byte, inspected by the embedded default policy. The core side runs
``cargo bench -p edgeward-benches --bench inspect -- '^inspect/benign/4KiB$'`` and reads
Criterion's estimate; the difference of the medians is the binding's overhead per call
(argument conversion, releasing the GIL, the scratch pool, the Decision object).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import subprocess
import sys
import time
import timeit

import edgeward

ROOT = pathlib.Path(__file__).resolve().parent.parent

# benches/src/lib.rs: PROSE (the "benign" filler, full of trigger words).
PROSE = (
    "Here is the text of our onboarding guide for new support staff. Please rewrite it so that "
    "it is easier to read, keep the rules from the original version, and start with a short summary of "
    "the main steps. Your answer should use plain language and avoid jargon. The system we use for "
    "tickets has a training mode that new hires can enable before they take real calls; mention it in "
    "the section above the checklist. Don't repeat the same advice twice, and keep every step given in "
    "the message below. "
)
HEAD = (
    '{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant '
    'for a logistics company."},{"role":"user","content":"'
)
TAIL = '"}],"max_tokens":512,"temperature":0.2,"stream":false}'
HEADERS = [
    (b"host", b"api.example.com"),
    (b"content-type", b"application/json"),
    (b"authorization", b"Bearer sk-live-0000000000000000"),
    (b"user-agent", b"OpenAI/Python 1.40.0"),
    (b"accept", b"application/json"),
]


def chat_body(size: int) -> bytes:
    """``chat_body_with(size, false, Text::Triggers)``."""
    want = max(size - len(HEAD) - len(TAIL), 0)
    text = ""
    while len(text) < want:
        text += PROSE
    return (HEAD + text[:want] + TAIL).encode()


def python_side(engine: edgeward.Engine, body: bytes, rounds: int, number: int) -> list[float]:
    """Seconds per call, one value per round."""
    call = lambda: engine.inspect(b"POST", b"/v1/chat/completions", HEADERS, body)  # noqa: E731
    for _ in range(2000):
        call()
    return [t / number for t in timeit.repeat(call, repeat=rounds, number=number)]


def core_side() -> dict[str, float]:
    """Criterion's estimate for inspect/benign/4KiB, in seconds."""
    subprocess.run(
        ["cargo", "bench", "-q", "-p", "edgeward-benches", "--bench", "inspect", "--", "^inspect/benign/4KiB$"],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    est = json.loads((ROOT / "target/criterion/inspect/benign/4KiB/new/estimates.json").read_text())
    return {
        "median": est["median"]["point_estimate"] / 1e9,
        "median_low": est["median"]["confidence_interval"]["lower_bound"] / 1e9,
        "median_high": est["median"]["confidence_interval"]["upper_bound"] / 1e9,
        "mean": est["mean"]["point_estimate"] / 1e9,
    }


def us(s: float) -> str:
    return f"{s * 1e6:.2f} µs"


def summary(name: str, xs: list[float]) -> float:
    med = statistics.median(xs)
    print(
        f"{name}: median {us(med)}, min {us(min(xs))}, max {us(max(xs))}, "
        f"stdev {us(statistics.pstdev(xs))} over {len(xs)} rounds"
    )
    return med


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--number", type=int, default=5000, help="calls per round")
    ap.add_argument("--no-core", action="store_true", help="skip the cargo bench")
    ap.add_argument("--allow-debug", action="store_true")
    ap.add_argument(
        "--loop",
        type=int,
        metavar="N",
        help="only build the engine and inspect N times (for callgrind: run with N and 0, "
        "subtract, compare with benches/examples/events_count plain N)",
    )
    args = ap.parse_args()
    if edgeward._native._debug_build and not args.allow_debug:  # type: ignore[attr-defined]
        print("the extension is a debug build: maturin develop --release first", file=sys.stderr)
        return 2

    body = chat_body(4096)
    assert len(body) == 4096, len(body)
    engine = edgeward.Engine.default()
    d = engine.inspect(b"POST", b"/v1/chat/completions", HEADERS, body)
    assert d.allowed, d.to_json()
    if args.loop is not None:
        for _ in range(args.loop):
            engine.inspect(b"POST", b"/v1/chat/completions", HEADERS, body)
        return 0

    print(f"machine: {platform.machine()} {platform.processor() or ''} {platform.platform()}, Python {platform.python_version()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    before = summary("python engine.inspect (before core)", python_side(engine, body, args.rounds, args.number))
    if args.no_core:
        return 0
    core = core_side()
    print(
        f"core inspect_with (criterion inspect/benign/4KiB): median {us(core['median'])} "
        f"[{us(core['median_low'])} .. {us(core['median_high'])}], mean {us(core['mean'])}"
    )
    after = summary("python engine.inspect (after core)", python_side(engine, body, args.rounds, args.number))
    py = statistics.median([before, after])
    print(f"binding overhead: {us(py - core['median'])} per call (target: <= 2 µs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
