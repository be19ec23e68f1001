"""The service's settings: where Triton is, which model it serves, and the limits it enforces.

One dataclass, filled by server.py's flags (or by tests directly), passed to `create_app`. The
limits exist because the service is the only door to Triton: tritonserver 2.51 itself has no
body-size limit (a >= 4 MB form-urlencoded POST crashes it), counts nothing per client, and
tokenizes a prompt of any length before anything can refuse it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class ServiceConfig:
    """Settings of one service process.

    Attributes:
        model_dir: the checkpoint directory tritonserver serves (tokenizer.json,
            tokenizer_config.json and its chat template, or chat_template.jinja, are read here).
        served_model_name: the model id clients name in requests and /v1/models lists; None:
            the model directory's name.
        triton_grpc_url: Triton's gRPC HOST:PORT (generation goes through it).
        triton_http_url: Triton's HTTP base URL; internal: clients reach it through /v2 here.
        triton_metrics_url: Triton's Prometheus endpoint, passed through as /v1/metrics.
        host: the address the service binds to.
        port: the OpenAI port (/v1; it serves the /v2 proxy too).
        http_port: a second port for the /v2 proxy (KServe clients keep their usual port while
            Triton's own HTTP port is internal); None: no second socket.
        max_body_bytes: the largest request body, on every path (413 above it).
        max_prompt_chars: the longest prompt (characters of the prompt, or of all messages),
            checked before anything is tokenized.
        max_concurrent_per_client: requests one client may have in flight (429 above it); a
            client is its API key (`Authorization: Bearer ...`) or else its peer address.
        request_timeout_s: longest a generation may run; then it is cancelled in the engine.
        ready_cache_s: how long a readiness probe's answer is reused.
        tool_call_parser: how `tool_choice: auto` reads the model's tool calls ("hermes" or
            "llama3_json"); None: from the chat template (llama3_json for Llama 3's, else
            hermes).
        allowed_origins: the origins a browser may call the API from (CORS); empty: none (no
            CORS headers at all); ["*"]: any.
    """

    model_dir: Path
    served_model_name: str | None = None
    triton_grpc_url: str = "127.0.0.1:8001"
    triton_http_url: str = "http://127.0.0.1:8000"
    triton_metrics_url: str = "http://127.0.0.1:8002/metrics"
    host: str = "127.0.0.1"
    port: int = 9000
    http_port: int | None = None
    max_body_bytes: int = 1 << 20
    max_prompt_chars: int = 100_000
    max_concurrent_per_client: int = 64
    request_timeout_s: float = 600.0
    ready_cache_s: float = 1.0
    tool_call_parser: str | None = None
    allowed_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.model_dir = Path(self.model_dir)
        if self.served_model_name is None:
            self.served_model_name = self.model_dir.resolve().name
        if not self.served_model_name:
            raise ValueError("served_model_name must not be empty")
        self.triton_http_url = self.triton_http_url.rstrip("/")
        if self.tool_call_parser not in (None, "hermes", "llama3_json"):
            raise ValueError("tool_call_parser must be 'hermes' or 'llama3_json', got "
                             f"{self.tool_call_parser!r}")
        self.allowed_origins = tuple(self.allowed_origins)
        for name in ("max_body_bytes", "max_prompt_chars", "max_concurrent_per_client"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("request_timeout_s", "ready_cache_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("port", "http_port"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 65535:
                raise ValueError(f"{name} must be a TCP port in [0, 65535], got {value}")
