"""The service's settings: where Triton is, which model it serves, and the limits it enforces.

One dataclass, filled by server.py's flags (or by tests directly), passed to `create_app`. The
limits exist because the service is the only door to Triton: tritonserver 2.51 itself has no
body-size limit (a >= 4 MB form-urlencoded POST crashes it), counts nothing per client, and
tokenizes a prompt of any length before anything can refuse it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pagedllm_openai.schemas import MAX_LOGPROBS, MAX_N, MAX_STOP, MAX_STOP_CHARS


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
            client is its verified API key, or with no api_keys its peer address.
        max_stop_sequences, max_stop_chars, max_n, max_logprobs, max_prompt_tokens: what one
            request may ask for (request_limits.py); each at most the engine's own ceiling.
            max_prompt_tokens None: the engine's max_model_len decides.
        request_timeout_s: longest a generation may run; then it is cancelled in the engine.
        ready_cache_s: how long a readiness probe's answer is reused.
        api_keys: the keys a client must present (api_keys.py); empty: none required. Left out
            of the repr, so a logged config shows no key.
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
    max_stop_sequences: int = MAX_STOP
    max_stop_chars: int = MAX_STOP_CHARS
    max_n: int = MAX_N
    max_logprobs: int = MAX_LOGPROBS
    max_prompt_tokens: int | None = None
    request_timeout_s: float = 600.0
    ready_cache_s: float = 1.0
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    tool_call_parser: str | None = None
    allowed_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.model_dir = Path(self.model_dir)
        if self.served_model_name is None:
            self.served_model_name = self.model_dir.resolve().name
        if not self.served_model_name:
            raise ValueError("served_model_name must not be empty")
        self.triton_http_url = self.triton_http_url.rstrip("/")
        self.api_keys = tuple(self.api_keys)
        if self.tool_call_parser not in (None, "hermes", "llama3_json"):
            raise ValueError("tool_call_parser must be 'hermes' or 'llama3_json', got "
                             f"{self.tool_call_parser!r}")
        self.allowed_origins = tuple(self.allowed_origins)
        for name in ("max_body_bytes", "max_prompt_chars", "max_concurrent_per_client",
                     "max_stop_chars", "max_n"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise ValueError(f"max_prompt_tokens must be >= 1 (or None), got "
                             f"{self.max_prompt_tokens}")
        for name, ceiling in (("max_stop_sequences", MAX_STOP), ("max_stop_chars", MAX_STOP_CHARS),
                              ("max_n", MAX_N), ("max_logprobs", MAX_LOGPROBS)):
            if not 0 <= getattr(self, name) <= ceiling:
                raise ValueError(f"{name} must be in [0, {ceiling}] (the engine's ceiling), got "
                                 f"{getattr(self, name)}")
        for name in ("request_timeout_s", "ready_cache_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("port", "http_port"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 65535:
                raise ValueError(f"{name} must be a TCP port in [0, 65535], got {value}")
