"""/v1/health/live, /v1/health/ready and /v1/metrics, as NVIDIA NIM serves them.

Live: 200 while the process runs (it needs nothing else). Ready: 200 only when Triton's
`ensemble` is ready AND the engine answers: a real one-token generation through the ensemble,
because a loaded model whose engine process died is "ready" to Triton but serves nothing. The
answer is reused for ready_cache_s (one probe at a time), so a busy load balancer does not turn
into load. Metrics: Triton's Prometheus text, then the service's own counters.
"""
from __future__ import annotations

import asyncio
import time

from starlette.responses import JSONResponse, PlainTextResponse

from pagedllm_openai.errors import OpenAIError
from pagedllm_openai.service import Service
from pagedllm_openai.triton_client import ENSEMBLE

PROBE_PROMPT = "Hello"
PROBE_TIMEOUT_S = 10.0


def live() -> JSONResponse:
    return JSONResponse({"object": "health.response", "message": "live"})


class Readiness:
    """The cached answer to "can this service generate right now?"."""

    def __init__(self, service: Service):
        self._service = service
        self._lock = asyncio.Lock()
        self._checked_at = -float("inf")
        self._problem: str | None = "not checked yet"

    async def problem(self) -> str | None:
        """None when ready, else why not (checked at most once per ready_cache_s)."""
        ttl = self._service.config.ready_cache_s
        async with self._lock:
            if time.monotonic() - self._checked_at >= ttl:
                self._problem = await self._check()
                self._checked_at = time.monotonic()
            return self._problem

    async def _check(self) -> str | None:
        triton = self._service.triton
        if not await triton.model_ready(ENSEMBLE):
            return f"Triton's model '{ENSEMBLE}' is not ready at {triton.url}"
        generation = triton.generate(PROBE_PROMPT, {"max_tokens": 1, "temperature": 0})

        async def one_token() -> None:
            async for _ in generation:
                pass

        try:
            await asyncio.wait_for(one_token(), PROBE_TIMEOUT_S)
        except asyncio.TimeoutError:
            return f"the engine did not generate a token within {PROBE_TIMEOUT_S:g} s"
        except Exception as e:  # noqa: BLE001 - any failure means not ready; say which
            return f"the engine did not generate: {e}"
        finally:
            generation.close()
        return None

    async def response(self) -> JSONResponse:
        problem = await self.problem()
        if problem is not None:
            raise OpenAIError(503, f"not ready: {problem}", None, "not_ready")
        return JSONResponse({"object": "health.response", "message": "ready"})


async def metrics(service: Service) -> PlainTextResponse:
    """Triton's metrics (when its metrics port answers), then the service's own."""
    try:
        answer = await service.http.get(service.config.triton_metrics_url, timeout=5.0)
        triton = answer.text if answer.status_code == 200 else \
            f"# Triton's metrics answered HTTP {answer.status_code}\n"
    except Exception as e:  # noqa: BLE001 - our own counters are still worth serving
        triton = f"# Triton's metrics are not reachable: {type(e).__name__}\n"
    ours = service.metrics.render(service.limiter.in_flight(), service.triton.cancels_sent)
    return PlainTextResponse(triton.rstrip("\n") + "\n" + ours,
                             media_type="text/plain; version=0.0.4; charset=utf-8")
