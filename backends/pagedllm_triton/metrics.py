"""The engine's Prometheus metrics on Triton's /metrics, through pb_utils.MetricFamily.

Part of the Triton adapter (imports triton_python_backend_utils); the engine never imports it.
Names follow vLLM's (`vllm:` -> `pagedllm:`), so its dashboards need only a prefix change.
"""
from __future__ import annotations

import triton_python_backend_utils as pb_utils

from pagedllm.engine_loop import LoopStats

# vLLM's buckets, in seconds.
_TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                 7.5, 10.0, 20.0, 40.0, 80.0]
_ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0]
_E2E_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                120.0, 240.0, 480.0, 960.0]


class TritonMetrics:
    """Gauges and counters follow LoopStats; histograms are observed per request by the adapter."""

    def __init__(self, labels: dict[str, str]) -> None:
        def family(name: str, kind, description: str):
            return pb_utils.MetricFamily(name=name, description=description, kind=kind)

        gauge, counter = pb_utils.MetricFamily.GAUGE, pb_utils.MetricFamily.COUNTER
        histogram = pb_utils.MetricFamily.HISTOGRAM
        self._families = [
            family("pagedllm:kv_cache_usage_perc", gauge, "Share of KV-cache blocks in use (0-1)"),
            family("pagedllm:num_requests_running", gauge, "Requests in the running batch"),
            family("pagedllm:num_requests_waiting", gauge, "Requests waiting to be scheduled"),
            family("pagedllm:num_preemptions_total", counter, "Preemptions (recompute) so far"),
            family("pagedllm:prompt_tokens_total", counter, "Prompt tokens admitted"),
            family("pagedllm:generation_tokens_total", counter, "Tokens generated"),
            family("pagedllm:time_to_first_token_seconds", histogram, "Arrival to first token"),
            family("pagedllm:inter_token_latency_seconds", histogram, "Between streamed tokens"),
            family("pagedllm:e2e_request_latency_seconds", histogram, "Arrival to final response"),
            family("pagedllm:engine_restarts_total", counter,
                   "Engine processes started again after one died"),
        ]
        f = self._families
        self.kv_cache_usage = f[0].Metric(labels=labels)
        self.running = f[1].Metric(labels=labels)
        self.waiting = f[2].Metric(labels=labels)
        self._counters = {"num_preemptions": f[3].Metric(labels=labels),
                          "num_prompt_tokens": f[4].Metric(labels=labels),
                          "num_generation_tokens": f[5].Metric(labels=labels)}
        self._counted = dict.fromkeys(self._counters, 0)
        self._last: LoopStats | None = None
        self.ttft = f[6].Metric(labels=labels, buckets=_TTFT_BUCKETS)
        self.itl = f[7].Metric(labels=labels, buckets=_ITL_BUCKETS)
        self.e2e = f[8].Metric(labels=labels, buckets=_E2E_BUCKETS)
        self.engine_restarts = f[9].Metric(labels=labels)

    def update(self, stats: LoopStats) -> None:
        """Sets the gauges and moves the counters up to the engine's totals.

        Skipped when nothing changed: each set is a round trip to the server, and an idle
        server polling 20 times a second took 6 % of a core from a benchmark beside it.
        """
        if stats == self._last:
            return
        self._last = stats
        self.kv_cache_usage.set(stats.kv_cache_usage)
        self.running.set(stats.num_running)
        self.waiting.set(stats.num_waiting)
        for name, metric in self._counters.items():
            total = getattr(stats, name)
            if total > self._counted[name]:
                metric.increment(total - self._counted[name])
                self._counted[name] = total
