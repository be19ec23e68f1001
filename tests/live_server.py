"""A real tritonserver for tests: the committed configs, the default model, free ports.

Also a small gRPC streaming helper, so tests read as "send, collect, compare".
"""
from __future__ import annotations

import json
import queue
import shutil
import subprocess
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
from pagedllm_triton.serving import model_configs, repository, tritonserver
from pagedllm_triton.serving.control_plane import AdminKey
from pagedllm_triton.serving.watchdog import Watchdog

DEFAULT_MODEL = ROOT / "models" / "default"
# Small enough that one long request shows in kv_cache_usage_perc; max_model_len bounds prompts.
ENGINE_ARGS = {"device": "cpu", "num_kv_blocks": 512, "max_model_len": 1024}


@dataclass
class Server:
    process: subprocess.Popen
    http: int
    grpc: int
    metrics: int
    log: Path
    admin: AdminKey
    watchdog: Watchdog | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc}"

    def ready(self) -> bool:
        return self._answers_200("/v2/health/ready")

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + "{") or line.startswith(name + " "):
                    return float(line.rsplit(" ", 1)[1])
        raise KeyError(name)

    def model_ready(self, name: str) -> bool:
        return self._answers_200(f"/v2/models/{name}/ready")

    def _answers_200(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}{path}", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def died(self) -> str | None:
        """None while tritonserver runs; else its exit code and the end of its log."""
        if self.process.poll() is None:
            return None
        tail = self.log.read_text(errors="replace").splitlines()[-15:]
        return f"tritonserver exited ({self.process.returncode}):\n" + "\n".join(tail)

    def stop(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
        tritonserver.stop(self.process, timeout=20)


def start_server(workdir: Path, engine_args: dict | None = None, timeout: float = 120.0,
                 llm_parameters: dict[str, str] | None = None, watchdog: bool = False,
                 probe_every: float = 5.0) -> Server:
    """A tritonserver on free ports over a fresh copy of the repository (default model).

    `engine_args` go to llm/engine.json; `llm_parameters` set entries of llm's config.pbtxt;
    `watchdog` runs make serve's watchdog beside it (in this process). Its control plane is
    locked as make serve locks it; `server.admin` opens it.
    """
    repo = workdir / "model_repository"
    shutil.copytree(ROOT / "model_repository", repo,
                    ignore=shutil.ignore_patterns("1", "engine.json"))
    repository.build(DEFAULT_MODEL, repo, {**ENGINE_ARGS, **(engine_args or {})})
    for key, value in (llm_parameters or {}).items():
        model_configs.set_parameter(repo / "llm" / "config.pbtxt", key, value)
    ports = tritonserver.free_port(), tritonserver.free_port(), tritonserver.free_port()
    log = workdir / "tritonserver.log"
    admin = AdminKey.new()
    server = Server(tritonserver.launch(repo, *ports, log, timeout=timeout, admin=admin), *ports,
                    log, admin)
    if watchdog:
        server.watchdog = Watchdog(f"127.0.0.1:{server.http}", probe_every=probe_every,
                                   admin=admin).start()
    return server


def tensor(name: str, value, batched: bool = False):
    """A tritonclient.grpc input: shape [1] as the ensemble (vllm_backend) takes it, or with
    `batched` [1, 1] ([1, n] for lists of ints) as the llm model takes it; bytes go as they are."""
    import tritonclient.grpc as grpcclient
    if isinstance(value, (str, bytes)):
        data = value.encode() if isinstance(value, str) else value
        arr, dtype = np.array([data], dtype=np.object_), "BYTES"
    elif isinstance(value, bool):
        arr, dtype = np.array([value], dtype=bool), "BOOL"
    elif isinstance(value, list):
        arr, dtype = np.array(value, dtype=np.int64), "INT64"
    else:
        arr, dtype = np.array([value], dtype=np.int32), "INT32"
    if batched:
        arr = arr[None]
    t = grpcclient.InferInput(name, list(arr.shape), dtype)
    t.set_data_from_numpy(arr)
    return t


@dataclass
class Result:
    """What one request's responses said (the first completion's, for n > 1: `texts` has all)."""

    pieces: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    num_output_tokens: int = 0
    num_input_tokens: int | None = None
    cancel_token: str = ""
    logprobs: list = field(default_factory=list)
    cumulative_logprob: float | None = None
    error: str | None = None
    num_final: int = 0
    num_responses: int = 0

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def stream(url: str, text: str | bytes | None, params: dict | None = None, stream: bool = True,
           model: str = "ensemble", request_id: str = "", timeout: float = 120.0,
           exclude_input: bool | None = True, on_response=None, **inputs) -> Result:
    """One request over a gRPC stream; collects every response until the final one.

    `exclude_input` None leaves the input out; `on_response(result)` sees each partial Result.
    """
    import tritonclient.grpc as grpcclient
    client = grpcclient.InferenceServerClient(url)
    responses: queue.SimpleQueue = queue.SimpleQueue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    batched = model != "ensemble"
    tensors = [tensor("stream", stream, batched)]
    if text is not None:
        tensors.append(tensor("text_input", text, batched))
    if exclude_input is not None:
        tensors.append(tensor("exclude_input_in_output", exclude_input, batched))
    if params is not None:
        tensors.append(tensor("sampling_parameters", json.dumps(params), batched))
    tensors += [tensor(k, v, batched) for k, v in inputs.items()]
    client.async_stream_infer(model, tensors, request_id=request_id,
                              enable_empty_final_response=True)
    out = Result()
    try:
        while True:
            result, error = responses.get(timeout=timeout)
            if error is not None:
                out.error = str(error)
                return out
            response = result.get_response()
            if response.outputs:
                _read(result, out)
                if on_response is not None:
                    on_response(out)
            if response.parameters["triton_final_response"].bool_param:
                out.num_final += 1
                return out
    finally:
        client.stop_stream()
        client.close()


def _read(result, out: Result) -> None:
    """Adds one response's outputs to `out` (every output as vllm_backend shapes it: [n])."""
    texts = [t.decode() for t in result.as_numpy("text_output").reshape(-1)]
    out.num_responses += 1
    out.pieces.append(texts[0])
    out.texts = [a + b for a, b in zip(out.texts, texts)] if out.texts else texts
    reason = result.as_numpy("finish_reason").reshape(-1)[0].decode()
    out.finish_reason = reason if reason != "None" else out.finish_reason
    out.num_output_tokens += int(result.as_numpy("num_output_tokens").reshape(-1)[0])
    out.num_input_tokens = int(result.as_numpy("num_input_tokens").reshape(-1)[0])
    out.cancel_token = result.as_numpy("cancel_token").reshape(-1)[0].decode()
    logprobs = json.loads(result.as_numpy("logprobs").reshape(-1)[0])
    if logprobs is not None:
        out.logprobs.extend(logprobs)
    out.cumulative_logprob = float(result.as_numpy("cumulative_logprob").reshape(-1)[0])
