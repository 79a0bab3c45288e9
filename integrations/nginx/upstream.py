#!/usr/bin/env python3
"""A small OpenAI-compatible upstream for nginx tests and benchmarks.

    python3 upstream.py PORT [--delay SECONDS]

POST /v1/chat/completions
    non-streaming: a chat.completion JSON with usage
        {prompt_tokens, completion_tokens, total_tokens}
    "stream": true: text/event-stream, close-delimited, several
        data: {"choices":[{"delta":{"content":"..."}}]} chunks a little apart,
        a final chunk with usage when stream_options.include_usage is true,
        then data: [DONE]
    completion_tokens = min(max_tokens or max_completion_tokens or 50, 50)
    prompt_tokens is a rough count: words in the messages' text contents
POST /mirror  a mirror's copy (nginx `mirror`): kept apart, answers {}
GET /last     the raw body of the last POST other than /mirror (empty before)
GET /mirrored the raw body of the last POST /mirror (empty before)
GET /health   "ok"

Standard library only.
"""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_COMPLETION = 50
WORDS = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do "
         "eiusmod tempor incididunt ut labore et dolore magna aliqua").split()

_last_lock = threading.Lock()
_last_body = b""
_mirrored_body = b""
_chunk_delay = 0.02


def prompt_tokens(req):
    n = 0
    for m in req.get("messages") or []:
        if not isinstance(m, dict):
            continue
        content = m.get("content")
        if isinstance(content, str):
            n += len(content.split())
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    n += len(part["text"].split())
    return max(n, 1)


def completion_tokens(req):
    limit = req.get("max_tokens")
    if limit is None:
        limit = req.get("max_completion_tokens")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
        limit = MAX_COMPLETION
    return min(limit, MAX_COMPLETION)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "edgeward-test-upstream/1"

    def log_message(self, fmt, *args):  # quiet: benchmarks hit this hard
        pass

    def _send(self, status, body, ctype="application/json"):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status, message):
        self._send(status, json.dumps(
            {"error": {"message": message, "type": "invalid_request_error"}}))

    def _read_chunked(self):
        parts = []
        while True:
            size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()  # CRLF after the chunk

    def do_GET(self):
        if self.path in ("/last", "/mirrored"):
            with _last_lock:
                body = _last_body if self.path == "/last" else _mirrored_body
            self._send(200, body)
        elif self.path == "/health":
            self._send(200, "ok\n", "text/plain")
        else:
            self._error(404, "not found")

    def do_POST(self):
        global _last_body, _mirrored_body
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            body = self._read_chunked()
        else:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length > 0 else b""
        if self.path.split("?", 1)[0] == "/mirror":
            with _last_lock:
                _mirrored_body = body
            self._send(200, "{}")
            return
        with _last_lock:
            _last_body = body
        if self.path.split("?", 1)[0] != "/v1/chat/completions":
            self._error(404, "not found")
            return
        fail = self.headers.get("X-Fail")
        if fail and fail.isdigit():
            # A failing model server, on request: the status asked for.
            self._error(int(fail), "failure requested")
            return
        try:
            req = json.loads(body or b"{}")
            if not isinstance(req, dict):
                raise ValueError("not an object")
        except ValueError as e:
            self._error(400, "bad JSON: %s" % e)
            return
        model = req.get("model") or "test-model"
        ptok = prompt_tokens(req)
        ctok = completion_tokens(req)
        words = [WORDS[i % len(WORDS)] for i in range(ctok)]
        created = int(time.time())
        cid = "chatcmpl-test-%d" % threading.get_ident()
        usage = {"prompt_tokens": ptok, "completion_tokens": ctok,
                 "total_tokens": ptok + ctok}
        if req.get("stream") is True:
            opts = req.get("stream_options") or {}
            include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
            self._stream(cid, created, model, words, usage, include_usage)
            return
        self._send(200, json.dumps({
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": " ".join(words)},
                "finish_reason": "length" if ctok < MAX_COMPLETION else "stop",
            }],
            "usage": usage,
        }))

    def _stream(self, cid, created, model, words, usage, include_usage):
        # close-delimited event stream: no Content-Length, connection closes
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

        def event(obj):
            data = obj if isinstance(obj, str) else json.dumps(obj)
            self.wfile.write(("data: %s\n\n" % data).encode())
            self.wfile.flush()

        base = {"id": cid, "object": "chat.completion.chunk",
                "created": created, "model": model}
        try:
            event(dict(base, choices=[{"index": 0, "delta": {"role": "assistant"},
                                       "finish_reason": None}]))
            # a few words per chunk, so there are several chunks
            for i in range(0, len(words), 5):
                time.sleep(_chunk_delay)
                text = " ".join(words[i:i + 5])
                if i:
                    text = " " + text
                event(dict(base, choices=[{"index": 0, "delta": {"content": text},
                                           "finish_reason": None}]))
            event(dict(base, choices=[{"index": 0, "delta": {},
                                       "finish_reason": "stop"}]))
            if include_usage:
                event(dict(base, choices=[], usage=usage))
            event("[DONE]")
        except (BrokenPipeError, ConnectionResetError):
            pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def handle_error(self, request, client_address):
        # a proxy dropping an idle keep-alive connection is not an error
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


def main(argv):
    global _chunk_delay
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    port = int(argv[1])
    if len(argv) >= 4 and argv[2] == "--delay":
        _chunk_delay = float(argv[3])
    srv = Server(("127.0.0.1", port), Handler)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
