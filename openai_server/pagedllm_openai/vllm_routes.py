"""vLLM's operational paths on the API port: GET /health and GET /metrics.

A load balancer or a Prometheus scrape configured for `vllm serve` asks the OpenAI port for
these; NIM's /v1/health/live|ready and /v1/metrics stay (health.py). /health is vLLM's: 200
with an empty body while the engine generates, else 503 saying why: the same check as
/v1/health/ready (a real one-token generation, its answer cached for ready_cache_s), so a dead
engine that Triton still lists as loaded is reported dead. /metrics is /v1/metrics: Triton's
Prometheus text (the pagedllm:* engine metrics and Triton's own) and then the front door's.
"""
from __future__ import annotations

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from pagedllm_openai import health


def add_routes(app: FastAPI) -> None:
    @app.get("/health")
    async def healthy(request: Request):
        await request.app.state.readiness.response()  # raises the 503 when not ready
        return Response(status_code=200)

    @app.get("/metrics")
    async def metrics(request: Request):
        return await health.metrics(request.app.state.service)
