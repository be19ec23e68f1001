"""The OpenAI service (`pagedllm-openai`) in a subprocess in front of a live tritonserver."""
from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from live_server import DEFAULT_MODEL
from pagedllm_triton.serving.tritonserver import free_port


@dataclass
class Service:
    process: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, api_key: str = "test"):
        import openai

        # NOTE: no retries: the SDK would retry a 429 or 503 and hide it.
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0,
                             timeout=120)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_service(triton, workdir: Path, *flags: str, model_dir: Path = DEFAULT_MODEL,
                  timeout: float = 60.0) -> Service:
    """`python -m pagedllm_openai.server` on a free port in front of `triton`."""
    port = free_port()
    log = workdir / f"openai-{port}.log"
    argv = [sys.executable, "-m", "pagedllm_openai.server", "--model", str(model_dir),
            "--triton-grpc-url", triton.grpc_url,
            "--triton-http-url", f"http://127.0.0.1:{triton.http}",
            "--triton-metrics-url", f"http://127.0.0.1:{triton.metrics}/metrics",
            "--port", str(port), *flags]
    process = subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT)
    service = Service(process, port, log)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{service.url}/v1/health/live", timeout=1).status_code == 200:
                return service
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            service.stop()
            raise RuntimeError(f"the service did not start; log:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
