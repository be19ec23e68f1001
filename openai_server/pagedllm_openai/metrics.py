"""The service's own Prometheus counters, appended to Triton's metrics on /v1/metrics.

Few on purpose: what only the front door can see. Requests by endpoint and status (a 429 or 413
never reaches Triton), clients that disconnected mid-request, and the cancels sent to the engine
for them, so a dashboard can tell "clients gave up" from "the engine failed".

NOTE: only the event loop's thread updates them; no lock.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

PREFIX = "pagedllm_openai:"


@dataclass
class ServiceMetrics:
    requests: Counter = field(default_factory=Counter)   # (endpoint, status) -> count
    disconnects: int = 0

    def request_done(self, endpoint: str, status: int) -> None:
        self.requests[(endpoint, status)] += 1

    def render(self, in_flight: int, cancels: int) -> str:
        """Prometheus text exposition of the counters."""
        lines = [f"# HELP {PREFIX}requests_total OpenAI API requests answered, by endpoint and "
                 "HTTP status.",
                 f"# TYPE {PREFIX}requests_total counter"]
        for (endpoint, status), count in sorted(self.requests.items()):
            lines.append(f'{PREFIX}requests_total{{endpoint="{endpoint}",status="{status}"}} '
                         f"{count}")
        lines += [f"# HELP {PREFIX}requests_in_flight Generation requests being served now.",
                  f"# TYPE {PREFIX}requests_in_flight gauge",
                  f"{PREFIX}requests_in_flight {in_flight}",
                  f"# HELP {PREFIX}client_disconnects_total Clients that left before their "
                  "answer was complete.",
                  f"# TYPE {PREFIX}client_disconnects_total counter",
                  f"{PREFIX}client_disconnects_total {self.disconnects}",
                  f"# HELP {PREFIX}engine_cancels_total Cancels sent to the engine (client "
                  "gone, timeout, shutdown).",
                  f"# TYPE {PREFIX}engine_cancels_total counter",
                  f"{PREFIX}engine_cancels_total {cancels}"]
        return "\n".join(lines) + "\n"
