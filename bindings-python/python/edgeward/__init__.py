"""Edgeward: an in-process guard for AI inference endpoints.

Build an :class:`Engine` once from a policy, then ask it about each request before any
GPU time is spent::

    import edgeward

    engine = edgeward.Engine.from_policy("policy.yaml")
    d = engine.inspect("POST", "/v1/chat/completions",
                       [("content-type", "application/json")], body)
    if not d.allowed:
        ...  # answer d.status with engine.refusal_body(d) and d.headers

For ASGI servers, :class:`edgeward.asgi.Guard` does all of it (refusals, clamped
parameters, settlement of JSON and streamed usage) as a middleware.
"""

from edgeward._native import (
    ArgumentError,
    BundleError,
    Cost,
    Decision,
    EdgewardError,
    Engine,
    Match,
    NotFoundError,
    PolicyError,
    Reservation,
    Rewrite,
    RewriteError,
    StoreError,
    Usage,
    UsageError,
    UsageTracker,
    __version__,
    error_codes,
)

__all__ = [
    "ArgumentError",
    "BundleError",
    "Cost",
    "Decision",
    "EdgewardError",
    "Engine",
    "Match",
    "NotFoundError",
    "PolicyError",
    "Reservation",
    "Rewrite",
    "RewriteError",
    "StoreError",
    "Usage",
    "UsageError",
    "UsageTracker",
    "__version__",
    "error_codes",
]
