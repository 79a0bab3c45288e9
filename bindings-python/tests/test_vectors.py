"""The shared test vectors (rulesets/tests/*.toml) through the Python API, with the
decisions the core suite expects of the embedded default policy."""

from __future__ import annotations

import base64
import pathlib
import sys
from typing import Any

import pytest

import edgeward

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.9 and 3.10 read them with tomli when it is there
    tomllib = pytest.importorskip("tomli")

VECTORS = pathlib.Path(__file__).resolve().parents[2] / "rulesets" / "tests"


def cases() -> list[Any]:
    out = []
    for f in sorted(VECTORS.glob("*.toml")):
        for c in tomllib.loads(f.read_text())["case"]:
            out.append(pytest.param(c, id=f"{f.stem}:{c['name']}"))
    return out


CASES = cases()


def test_there_are_vectors() -> None:
    assert len(CASES) >= 40


@pytest.fixture(scope="module")
def engine() -> edgeward.Engine:
    return edgeward.Engine.default()


@pytest.mark.parametrize("case", CASES)
def test_vector(engine: edgeward.Engine, case: dict[str, Any]) -> None:
    if "body_b64" in case:
        body = base64.b64decode(case["body_b64"])
    else:
        body = case.get("body", "").encode()
    d = engine.inspect(case["method"], case["uri"], [tuple(h) for h in case.get("headers", [])], body)
    assert ("allow" if d.allowed else "deny") == case["action"], d.to_json()
    if "status" in case:
        assert d.status == case["status"], d.to_json()
    for r in case.get("rules", []):
        assert d.matched(r), f"rule {r} did not match: {d.to_json()}"
    for r in case.get("not_rules", []):
        assert not d.matched(r), f"rule {r} matched: {d.to_json()}"
    if "route" in case:
        assert d.route == case["route"]
