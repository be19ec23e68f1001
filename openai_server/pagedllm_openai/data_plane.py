"""Which of Triton's HTTP routes the /v2 proxy forwards: the data plane, nothing else.

Triton serves its control plane on the same port as inference (model load/unload and the
repository index, shared-memory registration, log and trace settings). tritonserver itself keeps
those behind a secret header that only make serve's watchdog holds (pagedllm_triton.serving.
control_plane), and the proxy does not even pass them on: a client gets a 403 that says what it
can use instead. Forwarded, as Triton's KServe v2 API and generate extension name them:

    GET       /v2                                           server metadata
    GET, HEAD /v2/health/live, /v2/health/ready             health
    GET       /v2/models/M[/versions/V]                     model metadata (M "stats": every
                                                            model's statistics)
    GET       /v2/models/M[/versions/V]/ready|config|stats  readiness, config, statistics
    POST      /v2/models/M[/versions/V]/infer|generate|generate_stream

Config and statistics are read-only, and perf_analyzer (genai-perf's engine) reads both around
every measurement, over HTTP as over gRPC.
"""
from __future__ import annotations

import re

from pagedllm_openai.errors import OpenAIError

# A model or version name: one path segment, never "." or ".." (no walking out of /v2/models),
# and none of ? # % \ or spaces (the decoded path is forwarded: they would change the URL).
_NAME = r"(?!\.\.?(?:/|$))[^/?#%\\\s]+"
_MODEL = rf"/v2/models/{_NAME}(?:/versions/{_NAME})?"
_ROUTES = (
    (("GET",), re.compile(r"/v2/?")),
    (("GET", "HEAD"), re.compile(r"/v2/health/(?:live|ready)")),
    (("GET",), re.compile(_MODEL)),
    (("GET",), re.compile(_MODEL + r"/(?:ready|config|stats)")),
    (("POST",), re.compile(_MODEL + r"/(?:infer|generate|generate_stream)")),
)


def check_data_plane(method: str, path: str) -> None:
    """Nothing when `method path` is a data-plane route of Triton's HTTP API; else a 403 saying
    what this port serves (405 for a data-plane path with the wrong method)."""
    matched = [methods for methods, pattern in _ROUTES if pattern.fullmatch(path)]
    if any(method in methods for methods in matched):
        return
    if matched:
        allowed = sorted({m for methods in matched for m in methods})
        raise OpenAIError(405, f"{method} is not allowed on {path}; use {', '.join(allowed)}",
                          None, "method_not_allowed")
    raise OpenAIError(403, f"{path} is not served here: this port serves Triton's data plane "
                           "only (health, metadata, config and statistics, infer, generate, "
                           "generate_stream); the control plane (model load/unload, the "
                           "repository index, shared memory, logging, trace) is not open to "
                           "clients", None, "forbidden")
