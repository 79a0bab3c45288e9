"""Fixtures: the test policy, and a real uvicorn server on a loopback port running the
OpenAI-compatible app behind the middleware."""

from __future__ import annotations

import hashlib
import pathlib
import socket
import sys
import threading
import time
from collections.abc import Iterator

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import edgeward  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]

KEYS = {
    "general": "sk-py-test-key-general",
    "budget": "sk-py-test-key-budget",
    "stream": "sk-py-test-key-stream",
    "fail": "sk-py-test-key-fail",
    "threads": "sk-py-test-key-threads",
}
BUDGET = 600
MAX_OUTPUT = 64
MAX_BODY = 64 * 1024


def sha256(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


# Like integrations/nginx/test-policy.yaml: API keys, a chat route whose output limit is
# clamped, a daily token budget per caller that the tests exhaust and check by arithmetic.
POLICY = f"""
apiVersion: edgeward.dev/v1
kind: Policy
metadata:
  name: python-test
spec:
  identity:
    apiKeys:
      keys:
{chr(10).join(f'        - {{sha256: "{sha256(k)}", id: {name}, tenant: acme}}' for name, k in KEYS.items())}
  models:
    - match: ["gpt-4o-mini*"]
      tokenizer: o200k_base
      price: {{input: 0.15, output: 0.60}}
  routes:
    - name: chat
      match: {{paths: ["/v1/chat/completions"]}}
      schema: openai-chat
      params: {{maxOutputTokens: {MAX_OUTPUT}, onMaxOutput: clamp}}
  limits:
    - name: daily-tokens
      key: [principal]
      unit: totalTokens
      budget: {{limit: {BUDGET}, per: day}}
"""


@pytest.fixture(scope="session")
def root() -> pathlib.Path:
    return ROOT


@pytest.fixture(scope="session")
def policy_text() -> str:
    return POLICY


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """The base URL of a uvicorn server running upstream.app behind Guard."""
    import uvicorn

    import upstream
    from edgeward.asgi import Guard

    engine = edgeward.Engine.from_policy(POLICY)
    app = Guard(upstream.app, engine=engine, max_body=MAX_BODY)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)
