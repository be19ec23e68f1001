"""Soak: a served model under steady mixed load for a long time, watching memory and leaks.

Starts what `make serve` starts (tritonserver with the default model, its watchdog, and the
OpenAI-compatible front door when it is installed) on free ports, then keeps `concurrency`
clients busy for `minutes`: through `ensemble` over gRPC, streamed and not, with stop strings,
n = 2, logprobs, and one request in eight cancelled mid-stream with its cancel_token; and, when
the front door runs, a share through /v1/completions and /v1/chat/completions, a few of them
dropped mid-stream. Every 30 s it records the RSS of every process (tritonserver, each stub, the
engine process, the front door), the files in /dev/shm and the KV usage. At the end: errors,
KV blocks still held once idle, and each process's RSS growth after the first 5 minutes.

    python -m pagedllm_tools.bench.soak [--minutes 30] [--concurrency 32] [--out docs/benchmarks/soak_cpu.json]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from pagedllm_tools import ROOT
from pagedllm_tools.processes import descendants
from pagedllm_triton.serving import repository, tritonserver
from pagedllm_triton.serving.control_plane import AdminKey
from pagedllm_triton.serving.watchdog import Watchdog

MODEL = ROOT / "models" / "default"
ENGINE_ARGS = {"device": "cpu", "num_kv_blocks": 1024, "max_model_len": 1024}
PROMPTS = ["def fib(n):", "import os\n", "class Stack:\n    def __init__(self", "# Sort a list",
           "for i in range(", "Le café était très animé, où les élèves", "東京タワーは日本の",
           "Party time 🎉 with emoji", "    if x > 0:\n        return"]


def _processes(root_pid: int) -> dict[int, str]:
    """{pid: short name} of `root_pid` and the processes below it that the soak watches."""
    out = {root_pid: "tritonserver"}
    for pid, cmd in descendants(root_pid).items():
        name = ("engine" if "spawn_main" in cmd else
                next((f"stub:{m}" for m in ("preprocessing", "postprocessing", "llm")
                      if "triton_python_backend_stub" in cmd and f"/{m}/" in cmd), None))
        if name:
            out[pid] = name
    return out


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return float("nan")


class Counts:
    """What the clients did (one asyncio loop: no lock needed)."""

    def __init__(self) -> None:
        self.requests = self.errors = self.cancelled = self.tokens = 0
        self.error_samples: list[str] = []

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 50:
            self.error_samples.append(text[:300])


async def _grpc_worker(url: str, stop_at: float, counts: Counts, seed: int) -> None:
    import tritonclient.grpc.aio as grpcclient

    from pagedllm_clients.cancel import cancel_inputs
    rng = random.Random(seed)
    client = grpcclient.InferenceServerClient(url)
    try:
        while time.monotonic() < stop_at:
            stream = rng.random() < 0.75
            cancel = stream and rng.random() < 0.125
            params = {"max_tokens": rng.randint(16, 128), "temperature": rng.choice([0, 0.8]),
                      "seed": rng.randrange(1000)}
            if rng.random() < 0.2:
                params["n"] = 2
            if rng.random() < 0.2:
                params["logprobs"] = 2
            if rng.random() < 0.2:
                params["stop"] = ["\n\n"]
            values = [("text_input", np.array([rng.choice(PROMPTS).encode()], dtype=np.object_), "BYTES"),
                      ("stream", np.array([stream]), "BOOL"),
                      ("exclude_input_in_output", np.array([True]), "BOOL"),
                      ("sampling_parameters", np.array([json.dumps(params).encode()], dtype=np.object_),
                       "BYTES")]
            inputs = []
            for name, value, dtype in values:
                t = grpcclient.InferInput(name, [1], dtype)
                t.set_data_from_numpy(value)
                inputs.append(t)
            done = asyncio.Event()

            async def requests():
                yield {"model_name": "ensemble", "inputs": inputs}
                await done.wait()

            counts.requests += 1
            responses = 0
            try:
                async for result, error in client.stream_infer(requests()):
                    if error is not None:
                        counts.error(str(error))
                        break
                    responses += 1
                    counts.tokens += int(result.as_numpy("num_output_tokens").sum())
                    reasons = [r.decode() for r in result.as_numpy("finish_reason")]
                    if cancel and responses == 3:
                        # Cancel by token, then read on to the request's final ("abort")
                        # response, as the front door does.
                        token = result.as_numpy("cancel_token")[0].decode()
                        async def cancel_requests():
                            yield {"model_name": "ensemble", "inputs": cancel_inputs(token)}
                        async for _, cancel_error in client.stream_infer(cancel_requests()):
                            if cancel_error is not None and "names no live request" not in str(cancel_error):
                                counts.error(f"cancel: {cancel_error}")
                            break
                        counts.cancelled += 1
                    if all(r not in ("None", "") for r in reasons):
                        break
            except Exception as e:  # noqa: BLE001 - counted, the worker goes on
                counts.error(f"{type(e).__name__}: {e}")
            finally:
                done.set()
    finally:
        await client.close()


async def _openai_worker(base: str, stop_at: float, counts: Counts, seed: int) -> None:
    import httpx
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        while time.monotonic() < stop_at:
            chat = rng.random() < 0.5
            body = {"model": "default", "max_tokens": rng.randint(16, 128), "stream": True,
                    "temperature": rng.choice([0, 0.8])}
            if chat:
                body["messages"] = [{"role": "user", "content": rng.choice(PROMPTS)}]
            else:
                body["prompt"] = rng.choice(PROMPTS)
            drop = rng.random() < 0.125
            counts.requests += 1
            try:
                async with client.stream("POST", "/v1/chat/completions" if chat else "/v1/completions",
                                         json=body) as response:
                    if response.status_code != 200:
                        counts.error(f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
                        continue
                    chunks = 0
                    async for line in response.aiter_lines():
                        if line.startswith("data: ") and line != "data: [DONE]":
                            chunks += 1
                            # An error event has a top-level "error" (the generated text may
                            # well say "error": the first soak counted 15 such chunks).
                            if "error" in json.loads(line[len("data: "):]):
                                counts.error(line)
                        if drop and chunks == 3:
                            counts.cancelled += 1
                            break
            except Exception as e:  # noqa: BLE001
                counts.error(f"{type(e).__name__}: {e}")


def _start_front_door(grpc: int, http: int, metrics: int, model_dir: Path, log: Path):
    """The OpenAI-compatible front door, when it is installed; (process, port) or (None, None)."""
    try:
        import pagedllm_openai  # noqa: F401  (installed or not)
    except ImportError:
        return None, None
    port = tritonserver.free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pagedllm_openai.server", "--port", str(port),
                             "--triton-grpc-url", f"127.0.0.1:{grpc}",
                             "--triton-http-url", f"http://127.0.0.1:{http}",
                             "--triton-metrics-url", f"http://127.0.0.1:{metrics}/metrics",
                             "--model", str(model_dir)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    end = time.monotonic() + 120
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health/ready", timeout=2):
                return proc, port
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"the front door did not become ready: {log.read_text()[-2000:]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--sample-every", type=float, default=30.0)
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "soak_cpu.json"))
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stopped: still stop the servers
    work = Path(tempfile.mkdtemp(prefix="pagedllm-soak-"))
    repo = work / "model_repository"
    shutil.copytree(ROOT / "model_repository", repo, ignore=shutil.ignore_patterns("1", "engine.json"))
    repository.build(MODEL, repo, ENGINE_ARGS)
    http, grpc, metrics = (tritonserver.free_port() for _ in range(3))
    admin = AdminKey.new()
    server = tritonserver.launch(repo, http, grpc, metrics, work / "tritonserver.log", admin=admin)
    watchdog = Watchdog(f"127.0.0.1:{http}", admin=admin).start()
    door, door_port = _start_front_door(grpc, http, metrics, MODEL, work / "front_door.log")
    samples, counts = [], Counts()
    t0 = time.monotonic()
    stop_at = t0 + args.minutes * 60

    def sample() -> None:
        procs = _processes(server.pid)
        if door is not None:
            procs[door.pid] = "front_door"
        entry = {"t_s": round(time.monotonic() - t0, 1), "requests": counts.requests,
                 "errors": counts.errors, "kv_usage": _metric(metrics, "pagedllm:kv_cache_usage_perc"),
                 "dev_shm_files": len(os.listdir("/dev/shm")),
                 "rss_mb": {name: _rss_mb(pid) for pid, name in sorted(procs.items())}}
        samples.append(entry)
        print(json.dumps(entry), flush=True)

    async def run() -> None:
        workers = []
        for i in range(args.concurrency):
            if door is not None and i % 4 == 3:
                workers.append(_openai_worker(f"http://127.0.0.1:{door_port}", stop_at, counts, i))
            else:
                workers.append(_grpc_worker(f"127.0.0.1:{grpc}", stop_at, counts, i))

        async def sampler() -> None:
            while time.monotonic() < stop_at:
                sample()
                await asyncio.sleep(args.sample_every)

        await asyncio.gather(sampler(), *workers)

    try:
        asyncio.run(run())
        time.sleep(3)
        sample()  # idle now: every block must be free
    finally:
        watchdog.stop()
        if door is not None:
            door.terminate()
        tritonserver.stop(server)
    after5 = [s for s in samples if s["t_s"] >= 300] or samples
    growth = {name: (after5[-1]["rss_mb"].get(name) or 0) - (after5[0]["rss_mb"].get(name) or 0)
              for name in after5[-1]["rss_mb"]}
    result = {"device": f"cpu ({platform.machine()}, {len(os.sched_getaffinity(0))} cores)",
              "minutes": args.minutes, "concurrency": args.concurrency,
              "front_door": door is not None, "requests": counts.requests,
              "errors": counts.errors, "error_samples": counts.error_samples,
              "cancelled": counts.cancelled, "output_tokens": counts.tokens,
              "kv_usage_idle_at_end": samples[-1]["kv_usage"],
              "rss_growth_after_5_min_mb": growth, "samples": samples}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1))
    return 0 if counts.errors == 0 and samples[-1]["kv_usage"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
