"""A small OpenAI-compatible app (Starlette) for the middleware tests.

POST /v1/chat/completions answers a chat.completion JSON with usage, or with
``"stream": true`` a server-sent-events stream whose first chunk goes out at once and
the rest ``CHUNK_DELAY`` seconds apart, ending with a usage chunk when
``stream_options.include_usage`` is set. ``X-Fail: 502`` makes it fail; ``X-Raise``
makes it raise before answering. Every POST body is kept for ``GET /last``; the
decision's prompt estimate is echoed in ``x-test-prompt-estimate``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from edgeward.asgi import DECISION_KEY

PROMPT_TOKENS = 10
MAX_COMPLETION = 20
CHUNK_DELAY = 0.3
CHUNKS = 4

last: dict[str, bytes] = {"body": b"", "content-length": b""}


def completion_tokens(req: dict[str, Any]) -> int:
    limit = req.get("max_tokens")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
        limit = MAX_COMPLETION
    return min(limit, MAX_COMPLETION)


async def chat(request: Request) -> Response:
    body = await request.body()
    last["body"] = body
    last["content-length"] = request.headers.get("content-length", "").encode()
    if request.headers.get("x-raise"):
        raise RuntimeError("the model server crashed")
    fail = request.headers.get("x-fail")
    if fail:
        return JSONResponse({"error": {"message": "failure requested"}}, status_code=int(fail))
    req = json.loads(body)
    d = request.scope.get(DECISION_KEY)
    estimate = str(d.cost.prompt_tokens if d is not None and d.cost else -1)
    out = completion_tokens(req)
    usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": out, "total_tokens": PROMPT_TOKENS + out}
    if not req.get("stream"):
        return JSONResponse(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": req.get("model", "gpt-4o-mini"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                "usage": usage,
            },
            headers={"x-test-prompt-estimate": estimate},
        )
    include_usage = bool((req.get("stream_options") or {}).get("include_usage"))

    async def events():  # type: ignore[no-untyped-def]
        for i in range(CHUNKS):
            if i:
                await asyncio.sleep(CHUNK_DELAY)
            chunk = {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": f"word{i} "}}]}
            yield f"data: {json.dumps(chunk)}\n\n".encode()
        if include_usage:
            yield f"data: {json.dumps({'id': 'c', 'choices': [], 'usage': usage})}\n\n".encode()
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"x-test-prompt-estimate": estimate})


async def last_body(request: Request) -> Response:
    return Response(
        last["body"], media_type="application/json", headers={"x-test-content-length": last["content-length"].decode()}
    )


app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/last", last_body)])
