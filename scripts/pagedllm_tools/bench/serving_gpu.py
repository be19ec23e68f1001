"""Serving benchmark on the GPU machine: the `serve` workload through `ensemble`, vs offline.

The GPU machine has no pip index, and a device call carries at most 64 MiB with the tree, so the
pieces travel in two calls (the machine keeps ignored files between calls while it is warm):

    here:    python -m pagedllm_tools.bench.serving_gpu pack     # .gpu/ (server), .gpu2/ (the rest)
    call 1:  ... unpack      # carry [".gpu"]: tritonserver -> .cache
    call 2:  ... run         # carry [".gpu2"]: wheels, ONNX files; gRPC levels, then /v1
    call 3:  ... preprocessing   # the same machine, warm
    or:      ... compare     # concurrency 64, engine process vs thread

On the GPU machine every call first installs the checkout (no index needed):
`python3 -m pip install -q --no-deps --no-build-isolation --no-index -e .`

`preprocessing` runs perf_analyzer.py's preprocessing comparison (dynamic batching vs
none, the default model's tokenizer, perf_analyzer 2.51 over gRPC) on the GPU machine's CPU
cores, where the load generator does not share two cores with the server.

`run` builds the llama-1b shape (random bf16 weights; gpu.py), fills a model
repository (the committed configs, the carried ONNX tokenizer models, engine.json on cuda),
starts tritonserver (the nvidia-pytriton wheel's 2.51) and runs the load generator at concurrency 1,
16, 64 and 256 (the `nano` prompts; fewer requests at low concurrency to fit one call), the last
also through the offline engine in the client's process for the ratio, then once more through the
OpenAI front door (PAGEDLLM_OPENAI_WORKERS="1 2" runs it once per front-door process count;
PAGEDLLM_SERVING_REPEATS=3 alternates three served/offline rounds). Results: $OUT/serving-*.json.
"""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from pagedllm_tools import ROOT
from pagedllm_triton.serving import tritonserver as setup

# NOTE: the tools that need tritonclient (perf_analyzer, model_configs) are imported inside the
# steps that run after `_install_sites`, which brings tritonclient to the GPU machine.

PACK1, PACK2 = ROOT / ".gpu", ROOT / ".gpu2"
CLIENT_SITE = setup.CACHE / "client-site"
WHEELS = ["numpy==1.26.4", "tritonclient==2.73.0", "protobuf==6.33.6", "python-rapidjson",
          "onnxruntime-extensions==0.15.2"]
# The front door's packages the GPU machine lacks (it has grpcio, anyio, h11, click, httpx, jinja2).
FRONT_DOOR_WHEELS = ["fastapi==0.162.5", "starlette==1.7.0", "uvicorn==0.54.0", "uvloop==0.23.0",
                     "httptools==0.9.0", "pydantic==2.14.3",
                     "pydantic-core==2.50.4", "annotated-types", "annotated-doc",
                     "typing-inspection", "typing-extensions", "opentelemetry-api",
                     "importlib-metadata",
                     # the load generator's HTTP client (clients/pagedllm_clients/load.py --api openai)
                     "aiohttp==3.14.5", "aiohappyeyeballs", "aiosignal", "frozenlist", "multidict",
                     "propcache", "yarl", "attrs"]
OPENAI_PORT = 9000
# Rounds of the last level (server run, then offline run, alternating; the median ratio counts):
# one 5-second run at concurrency 256 is noisy (offline alone ranged 24k-31k tok/s on one H200).
REPEATS = int(os.environ.get("PAGEDLLM_SERVING_REPEATS", "1"))
LEVELS = [(1, 8), (16, 64), (64, 256), (256, 256)]  # (concurrency, requests)
# Front-door processes for the /v1 level, one run each: PAGEDLLM_OPENAI_WORKERS="1 2".
OPENAI_WORKERS = [int(w) for w in os.environ.get("PAGEDLLM_OPENAI_WORKERS", "1").split()]


def pack() -> None:
    """Builds the two bundles on the development machine (Python 3.12 wheels for the GPU machine)."""
    import onnx

    from pagedllm_tools.bench import gpu, perf_analyzer
    from pagedllm_triton.serving import repository, tokenizer_onnx
    server = setup.ensure_server()
    PACK1.mkdir(exist_ok=True)
    with tarfile.open(PACK1 / "tritonserver.tar.xz", "w:xz") as tar:
        def keep(info: tarfile.TarInfo):
            stubs = "python_backend_stubs/"
            if "libpython3-" in info.name or (stubs in info.name and f"{stubs}3.12" not in info.name
                                              and not info.name.endswith(stubs.rstrip("/"))):
                return None
            return info
        for name in ("pytriton", "nvidia_pytriton.libs"):
            tar.add(server / name, arcname=name, filter=keep)
    perf_analyzer.ensure_perf_analyzer()
    with tarfile.open(PACK1 / "perf_analyzer.tar.xz", "w:xz") as tar:
        tar.add(perf_analyzer.CACHE / "bin", arcname="bin")
        tar.add(perf_analyzer.CACHE / "lib" / "libcudart.so.12", arcname="lib/libcudart.so.12")
        tar.add(Path("/usr/lib/x86_64-linux-gnu/libb64.so.0d"), arcname="lib/libb64.so.0d")
    PACK2.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--platform", "manylinux_2_28_x86_64",
                    "--platform", "manylinux2014_x86_64", "-d", str(PACK2), *WHEELS, *FRONT_DOOR_WHEELS],
                   check=True)
    tok = PACK2 / "llama1b_tok"
    tok.mkdir(exist_ok=True)
    shape = gpu.SHAPES["llama-1b"]
    gpu.write_tokenizer(tok / "tokenizer.json", shape["vocab_size"],
                              {shape["bos_token_id"]: "<|begin_of_text|>",
                               shape["eos_token_id"]: "<|end_of_text|>"})
    (tok / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    tokenizer_onnx.export(tok, tok / "pre.onnx", tok / "post.onnx")
    onnx.save(repository.add_pass_through(onnx.load(str(tok / "post.onnx"))),
              str(tok / "post.onnx"))
    shutil.copy(ROOT / "model_repository" / "preprocessing" / "1" / "model.onnx",
                PACK2 / "default_pre.onnx")  # built by `make serve` here


def unpack() -> None:
    shutil.rmtree(setup.SERVER_DIR, ignore_errors=True)
    setup.SERVER_DIR.mkdir(parents=True)
    with tarfile.open(PACK1 / "tritonserver.tar.xz") as tar:
        tar.extractall(setup.SERVER_DIR)
    print("tritonserver unpacked:", setup.server_binary().exists())
    from pagedllm_tools.bench import perf_analyzer
    with tarfile.open(PACK1 / "perf_analyzer.tar.xz") as tar:
        tar.extractall(perf_analyzer.CACHE)
    print("perf_analyzer unpacked:", (perf_analyzer.CACHE / "bin" / "perf_analyzer").exists())


def _install(patterns: list[str], target: Path) -> None:
    wheels = [str(w) for p in patterns for w in PACK2.glob(p)]
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                    "--target", str(target), *wheels], check=True)


def _install_sites() -> None:
    if not setup.server_binary().exists():
        raise SystemExit("run `unpack` first (call 1, carry .gpu)")
    if (setup.STUB_SITE / ".installed").exists() and CLIENT_SITE.exists():
        return
    shutil.rmtree(setup.STUB_SITE, ignore_errors=True)
    _install(["numpy-*.whl", "onnxruntime_extensions-*.whl"], setup.STUB_SITE)
    (setup.STUB_SITE / ".installed").write_text(setup.STUB_NUMPY)
    _install(["tritonclient-*.whl", "protobuf-*.whl", "python_rapidjson-*.whl"], CLIENT_SITE)
    _install([f"{name.split('==')[0].replace('-', '_')}-*.whl" for name in FRONT_DOOR_WHEELS],
             CLIENT_SITE)


def _client_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(CLIENT_SITE), os.environ.get("PYTHONPATH")])))


def preprocessing() -> None:
    """perf_analyzer: `preprocessing` with vs without dynamic batching, on this machine's CPUs."""
    out = Path(os.environ.get("OUT", "/tmp/out"))
    out.mkdir(parents=True, exist_ok=True)
    _install_sites()
    repo = Path("/tmp/pagedllm-preprocessing")
    shutil.rmtree(repo, ignore_errors=True)
    (repo / "preprocessing" / "1").mkdir(parents=True)
    shutil.copy(ROOT / "model_repository" / "preprocessing" / "config.pbtxt",
                repo / "preprocessing" / "config.pbtxt")
    shutil.copy(PACK2 / "default_pre.onnx", repo / "preprocessing" / "1" / "model.onnx")
    cmd = [sys.executable, "-m", "pagedllm_tools.bench.perf_analyzer", "preprocessing",
           "--repo", str(repo), "--concurrency", "1", "16", "64",
           "--out", str(out / "perf_analyzer_preprocessing_gpu_host")]
    subprocess.run(cmd, env=_client_env(), check=True, timeout=560)


def run(levels: list[tuple[int, int]] = LEVELS, engine_process: bool = True,
        tag: str = "", post_instances: int | None = None, offline: bool = True,
        openai: bool = True) -> None:
    """The serve workload at `levels` ((concurrency, requests)); with `offline`, the last level's
    prompts also go through the offline engine, for the ratio; with `openai`, the last level
    once more through the OpenAI front door (/v1/completions), with its own offline ratio."""
    out = Path(os.environ.get("OUT", "/tmp/out"))
    out.mkdir(parents=True, exist_ok=True)
    _install_sites()
    site.addsitedir(str(CLIENT_SITE))  # model_configs needs tritonclient's model_config_pb2

    import torch

    from pagedllm_tools.bench import gpu
    from pagedllm_triton.serving import model_configs
    work = Path("/tmp/pagedllm-serving")
    ckpt = work / "llama-1b"
    shutil.rmtree(work, ignore_errors=True)
    ckpt.mkdir(parents=True)
    model = gpu.build_shape("llama-1b", ckpt)
    del model
    torch.cuda.empty_cache()
    shutil.copy(PACK2 / "llama1b_tok" / "tokenizer.json", ckpt / "tokenizer.json")

    repo = work / "model_repository"
    shutil.copytree(ROOT / "model_repository", repo,
                    ignore=shutil.ignore_patterns("1", "engine.json", "configs"))
    for name, onnx_file in (("preprocessing", "pre.onnx"), ("postprocessing", "post.onnx")):
        (repo / name / "1").mkdir()
        shutil.copy(PACK2 / "llama1b_tok" / onnx_file, repo / name / "1" / "model.onnx")
    for name in ("ensemble", "llm"):
        (repo / name / "1").mkdir()
    model_configs.write_host_configs(repo, post_instances)  # None: by this machine's CPUs
    engine_args = {"model": str(ckpt), "device": "cuda", "dtype": "bfloat16",
                   "num_kv_blocks": 40000, "max_num_seqs": 256, "max_num_batched_tokens": 2048}
    (repo / "llm" / "engine.json").write_text(json.dumps(engine_args))
    model_configs.set_parameter(repo / "llm" / "config.pbtxt", "engine_process",
                                "true" if engine_process else "false")

    log = out / "tritonserver.log"
    t0 = time.monotonic()
    server = setup.launch(repo, 8000, 8001, 8002, log, timeout=400)
    try:
        print(f"server ready after {time.monotonic() - t0:.1f} s", flush=True)
        client_env = _client_env()
        summary = {"device": torch.cuda.get_device_name(),
                   "engine_args": {**engine_args, "engine_process": engine_process},
                   "workload": "serve (nano prompts, text through ensemble, gRPC streaming)",
                   "server_ready_s": time.monotonic() - t0, "levels": []}
        for concurrency, num in levels:
            path = out / f"serving{tag}-c{concurrency}.json"
            cmd = [sys.executable, "-m", "pagedllm_clients.load", "--url", "127.0.0.1:8001",
                   "--concurrency", str(concurrency), "--num-requests", str(num),
                   "--model-dir", str(ckpt), "--json", str(path), "--no-progress",
                   "--timeout", "600"]
            if offline and concurrency == levels[-1][0]:
                cmd += ["--offline", str(ckpt), "--engine-args", str(repo / "llm" / "engine.json"),
                        "--repeats", str(REPEATS)]
            t1 = time.monotonic()
            done = subprocess.run(cmd, env=client_env, capture_output=True, text=True,
                                  timeout=400 * REPEATS)
            print(f"--- concurrency {concurrency} ({time.monotonic() - t1:.0f} s)\n"
                  f"{done.stdout[-2500:]}\n{done.stderr[-1500:]}", flush=True)
            if path.exists():
                summary["levels"].append(json.loads(path.read_text()))
                summary["levels"][-1]["server_stats"] = _model_stats()
            (out / f"serving{tag}-gpu.json").write_text(json.dumps(summary, indent=1))
        if openai:
            for workers in OPENAI_WORKERS:
                key = "openai" if workers == 1 else f"openai-workers{workers}"
                summary[key] = _openai_level(levels[-1], ckpt, repo, out, tag, client_env,
                                             workers)
                (out / f"serving{tag}-gpu.json").write_text(json.dumps(summary, indent=1))
    finally:
        setup.stop(server)


def _openai_level(level: tuple[int, int], ckpt: Path, repo: Path, out: Path, tag: str,
                  env: dict[str, str], workers: int = 1) -> dict | None:
    """The last level again through the front door's /v1/completions (`workers` processes),
    with its own offline run."""
    import urllib.request
    concurrency, num = level
    door = subprocess.Popen(
        [sys.executable, "-m", "pagedllm_openai.server", "--model", str(ckpt),
         "--triton-grpc-url", "127.0.0.1:8001", "--triton-http-url", "http://127.0.0.1:8000",
         "--triton-metrics-url", "http://127.0.0.1:8002/metrics", "--port", str(OPENAI_PORT),
         "--max-concurrent-per-client", str(max(64, concurrency)), "--log-level", "warning",
         "--workers", str(workers)],
        env=env, stdout=open(out / "front_door.log", "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{OPENAI_PORT}/v1/health/live", timeout=2)
                break
            except OSError:
                if door.poll() is not None or time.monotonic() > deadline:
                    print("front door did not start: see front_door.log", flush=True)
                    return None
                time.sleep(0.5)
        suffix = "" if workers == 1 else f"-workers{workers}"
        path = out / f"serving{tag}-openai{suffix}-c{concurrency}.json"
        cmd = [sys.executable, "-m", "pagedllm_clients.load", "--api", "openai",
               "--url", f"http://127.0.0.1:{OPENAI_PORT}", "--model", ckpt.name,
               "--concurrency", str(concurrency), "--num-requests", str(num),
               "--model-dir", str(ckpt), "--json", str(path), "--no-progress", "--timeout", "600",
               "--offline", str(ckpt), "--engine-args", str(repo / "llm" / "engine.json"),
               "--repeats", str(REPEATS)]
        t1 = time.monotonic()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400 * REPEATS)
        print(f"--- OpenAI /v1/completions ({workers} front-door process(es)), "
              f"concurrency {concurrency} "
              f"({time.monotonic() - t1:.0f} s)\n{done.stdout[-2500:]}\n{done.stderr[-1500:]}",
              flush=True)
        return json.loads(path.read_text()) if path.exists() else None
    finally:
        door.terminate()
        door.wait(timeout=30)


def _model_stats() -> dict:
    """Per model: inferences, executions, mean queue and compute-infer ms (cumulative)."""
    import urllib.request
    stats = json.load(urllib.request.urlopen("http://127.0.0.1:8000/v2/models/stats"))
    return {s["name"]: {"inferences": s["inference_count"], "executions": s["execution_count"],
                        **{f"{k}_ms": round(v["ns"] / max(1, v["count"]) / 1e6, 3)
                           for k, v in s["inference_stats"].items()
                           if k in ("queue", "compute_infer")}}
            for s in stats["model_stats"]}


def compare_engine_process(concurrency: int = 64, requests: int = 256) -> None:
    """One level: engine on a thread / in a process, postprocessing with 1 or 4 instances."""
    for engine_process, post in ((False, 1), (True, 1), (True, 4), (False, 4)):
        run([(concurrency, requests)], engine_process,
            f"-{'process' if engine_process else 'thread'}-post{post}", post, offline=False,
            openai=False)


if __name__ == "__main__":
    if sys.argv[1] == "run" and len(sys.argv) > 2:  # run C:N ...: only these levels
        run([tuple(map(int, level.split(":"))) for level in sys.argv[2:]])
    else:
        {"pack": pack, "unpack": unpack, "run": run, "preprocessing": preprocessing,
         "compare": compare_engine_process}[sys.argv[1]]()
