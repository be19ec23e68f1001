#!/usr/bin/env python3
"""Load generator for the `ensemble` model: gRPC streaming, asyncio, one stream per request.

    pagedllm-load --concurrency 32                     # the `nano` workload, 256 requests
    pagedllm-load --request-rate 4 --num-requests 64   # Poisson arrivals, 4 requests/s
    pagedllm-load --concurrency 32 --scale 0.25 --offline models/default   # + offline ratio
    pagedllm-load --workload serve --json docs/benchmarks/serve_cpu.json   # 1, 16, 64, 256
(or `python clients/pagedllm_clients/load.py ...`, `python -m pagedllm_clients.load ...`)

Reports output tok/s, TTFT and ITL (mean, p50, p99). `--offline MODEL_DIR` runs the same prompts
through the offline engine (`pagedllm.LLM`) in this process afterwards and prints the ratio, the
cost of the Triton layer.

Workloads (pagedllm_clients.workloads, docs/workloads.md):
  nano   256 requests; prompt and output lengths each uniform in [100, 1024] (times --scale);
         random token ids below 10000; ignore_eos; max_tokens = output length; seed 0.
  serve  the same lengths at concurrency 1, 16, 64 and 256 (or the --concurrency given).

Prompts are text, since `ensemble` takes text (workloads.prompt_texts: about `length` tokens
each; the server's exact count is reported as num_input_tokens).
The lengths come from --seed (0); the token ids from a prompt seed that is new for every server
run (from the clock, recorded in the JSON; --prompt-seed fixes it): a server with prefix caching
keeps what it has served, and a run that met its own earlier prompts would skip their prefill.
`--repeats N` alternates N rounds of server and offline runs and prints the median ratio.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from pagedllm_clients.cancel import default_grpc_url
from pagedllm_clients.generate import build_inputs
from pagedllm_clients.workloads import (SERVE_CONCURRENCIES, Workload, make_workload,
                                        poisson_arrivals)

# The tokenizer the workload's prompts are drawn with: the served model's (env MODEL, else the
# bundled model of a checkout this runs from).
DEFAULT_MODEL_DIR = Path(os.environ.get("MODEL", "models/default"))


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), numpy's linear interpolation; nan if there are no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    return float(np.percentile(values, q)) if len(values) else math.nan


@dataclass
class RequestRecord:
    """What one request saw: when it started, and each response's time and running token count."""

    index: int
    start: float = 0.0
    times: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    num_input_tokens: int = 0
    finish_reason: str = ""
    error: str = ""

    @property
    def num_output_tokens(self) -> int:
        return self.counts[-1] if self.counts else 0

    def ttft(self) -> float | None:
        """Seconds from sending to the first response that carries a token."""
        for t, c in zip(self.times, self.counts):
            if c > 0:
                return t - self.start
        return None

    def itls(self) -> list[float]:
        """Inter-token latencies: each gap between responses, spread over the tokens it brought.

        NOTE: `counts` are running totals (num_output_tokens of each response), so a response
        that brings k tokens after a gap g contributes k latencies of g / k.
        """
        out: list[float] = []
        prev_t, prev_c = None, 0
        for t, c in zip(self.times, self.counts):
            if c > prev_c:
                if prev_t is not None and prev_c > 0:
                    k = c - prev_c
                    out.extend([(t - prev_t) / k] * k)
                prev_t, prev_c = t, c
        return out


def _dist(values: Sequence[float], scale: float = 1000.0) -> dict:
    return {"mean": (sum(values) / len(values) * scale) if values else math.nan,
            "p50": percentile(values, 50) * scale, "p99": percentile(values, 99) * scale}


def summarize(records: Sequence[RequestRecord], wall_s: float) -> dict:
    """Throughput and latency figures of one run (latencies in milliseconds)."""
    ok = [r for r in records if not r.error]
    out_tokens = sum(r.num_output_tokens for r in ok)
    ttfts = [x for x in (r.ttft() for r in ok) if x is not None]
    itls = [x for r in ok for x in r.itls()]
    e2e = [r.times[-1] - r.start for r in ok if r.times]
    return {
        "num_requests": len(records), "num_errors": len(records) - len(ok),
        "wall_s": wall_s, "input_tokens": sum(r.num_input_tokens for r in ok),
        "output_tokens": out_tokens,
        "output_tok_s": out_tokens / wall_s if wall_s > 0 else math.nan,
        "requests_s": len(ok) / wall_s if wall_s > 0 else math.nan,
        "ttft_ms": _dist(ttfts), "itl_ms": _dist(itls), "e2e_ms": _dist(e2e),
        "errors": sorted({r.error for r in records if r.error})[:5],
    }


def format_summary(label: str, s: dict) -> str:
    return (f"{label}: {s['output_tok_s']:.1f} output tok/s ({s['output_tokens']} tokens, "
            f"{s['num_requests']} requests, {s['num_errors']} errors, {s['wall_s']:.1f} s)\n"
            f"  TTFT ms  mean {s['ttft_ms']['mean']:.1f}  p50 {s['ttft_ms']['p50']:.1f}  "
            f"p99 {s['ttft_ms']['p99']:.1f}\n"
            f"  ITL ms   mean {s['itl_ms']['mean']:.2f}  p50 {s['itl_ms']['p50']:.2f}  "
            f"p99 {s['itl_ms']['p99']:.2f}"
            + "".join(f"\n  error: {e}" for e in s.get("errors", [])))


# ---------------------------------------------------------------------------------------------
# Triton client
# ---------------------------------------------------------------------------------------------

def _inputs(prompt: str, max_tokens: int, params: dict):
    """The ensemble's inputs for one streamed request (pagedllm_clients.generate builds them)."""
    return build_inputs(prompt, True, max_tokens, params)


def _scalar(result, name):
    value = result.as_numpy(name)
    return None if value is None else value.reshape(-1)[0]


async def _one_request(client, model: str, record: RequestRecord, prompt: str, max_tokens: int,
                       params: dict, timeout: float) -> None:
    """Streams one request on its own gRPC stream, recording each response's time and count.

    NOTE: tritonclient's asyncio `stream_infer` cannot ask for Triton's empty final response, so
    the end of a request is its response whose `finish_reason` is set (not "" or "None", which
    vllm_backend sends before the end), or a `triton_final_response` parameter, should one come.
    The request iterator stays open until then, so the stream is not half-closed while responses
    are in flight. Each response's `num_output_tokens` counts its own tokens (vllm_backend's
    meaning); the record keeps running totals.
    """
    done = asyncio.Event()

    async def requests():
        yield {"model_name": model, "inputs": _inputs(prompt, max_tokens, params),
               "request_id": str(record.index)}
        await done.wait()

    record.start = time.perf_counter()
    stream = client.stream_infer(requests(), stream_timeout=timeout)
    try:
        async for result, error in stream:
            now = time.perf_counter()
            if error is not None:
                record.error = str(error)
                break
            count = _scalar(result, "num_output_tokens")
            reason = _scalar(result, "finish_reason")
            reason = reason.decode() if isinstance(reason, bytes) else (reason or "")
            reason = "" if reason == "None" else reason
            if count is not None:
                record.times.append(now)
                record.counts.append(record.num_output_tokens + int(count))
            n_in = _scalar(result, "num_input_tokens")
            if n_in is not None:
                record.num_input_tokens = int(n_in)
            params_ = result.get_response().parameters
            final = ("triton_final_response" in params_
                     and params_["triton_final_response"].bool_param)
            if reason or final:
                record.finish_reason = reason
                break
        else:
            if not record.finish_reason:
                record.error = "stream ended before the final response"
    except Exception as e:  # grpc errors (deadline, unavailable) end this request only
        record.error = f"{type(e).__name__}: {e}"
    finally:
        done.set()
        stream.cancel()


async def _one_openai_request(client, model: str, record: RequestRecord, prompt: str,
                              max_tokens: int, params: dict, timeout: float) -> None:
    """Streams one request through the OpenAI-compatible service's /v1/completions.

    A chunk carries no token count; the usage chunk at the end (stream_options.include_usage)
    gives the total, and the running counts spread it over the chunks (a chunk is one engine
    step of this request, one token unless steps were coalesced).
    """
    import aiohttp

    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}, **params}
    record.start = time.perf_counter()
    times, total = [], None
    try:
        async with client.post("/v1/completions", json=body,
                               timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            if response.status != 200:
                record.error = f"HTTP {response.status}: {(await response.read())[:300]!r}"
                return
            async for line in response.content:  # one SSE line at a time, b"\n"-terminated
                if not line.startswith(b"data: {"):
                    continue
                chunk = json.loads(line[len(b"data: "):])
                if "error" in chunk:
                    record.error = str(chunk["error"])
                    return
                if chunk.get("usage"):
                    total = chunk["usage"]["completion_tokens"]
                    record.num_input_tokens = chunk["usage"]["prompt_tokens"]
                for choice in chunk.get("choices", []):
                    if choice.get("text"):
                        times.append(time.perf_counter())
                    if choice.get("finish_reason"):
                        record.finish_reason = choice["finish_reason"]
    except Exception as e:  # the connection broke, a timeout: this request only
        record.error = f"{type(e).__name__}: {e}"
        return
    if total is None:
        record.error = "no usage chunk at the end of the stream"
        return
    record.times = times
    record.counts = [round((i + 1) * total / len(times)) for i in range(len(times))]


async def run_load(url: str, model: str, workload: Workload, concurrency: int | None = None,
                   request_rate: float | None = None, sampling: dict | None = None,
                   timeout: float = 600.0, progress: bool = True, api: str = "triton") -> dict:
    """Sends every request of `workload` and returns `summarize`'s figures.

    At most `concurrency` requests are in flight (None: no limit); with `request_rate`, requests
    arrive as a Poisson process of that rate (seeded by the workload's seed). `api` "triton":
    gRPC streams to `model` at `url` (HOST:PORT); "openai": /v1/completions of the
    OpenAI-compatible service at `url` (http://HOST:PORT).
    """
    if concurrency is None and request_rate is None:
        raise ValueError("give concurrency or request_rate")
    if concurrency is not None and concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    base = {"temperature": 0.0, "ignore_eos": True, **(sampling or {})}
    records = [RequestRecord(i) for i in range(len(workload))]
    arrivals = (poisson_arrivals(len(workload), request_rate, workload.seed)
                if request_rate else [0.0] * len(workload))
    gate = asyncio.Semaphore(concurrency) if concurrency else None
    label = f"c={concurrency}" if concurrency else f"rate={request_rate}/s"
    bar = tqdm(total=len(workload), desc=label, unit="req", leave=False, disable=not progress)
    if api == "openai":
        # NOTE: aiohttp, not httpx: parsing SSE through httpx cost ~70 us of client CPU a token,
        # as much as the server's front door itself, so at tens of thousands of tokens a second
        # the load generator measured itself (aiohttp: ~22 us per streamed event).
        import aiohttp
        client = aiohttp.ClientSession(base_url=url, connector=aiohttp.TCPConnector(limit=0))
        one, close = _one_openai_request, client.close
    else:
        import tritonclient.grpc.aio as grpcclient
        client = grpcclient.InferenceServerClient(url=url)
        one, close = _one_request, client.close
    try:
        if api != "openai":
            await _check_ready(client, url, model)
        t0 = time.perf_counter()

        async def launch(i: int) -> None:
            delay = t0 + arrivals[i] - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if gate:
                async with gate:
                    await _send(i)
            else:
                await _send(i)

        async def _send(i: int) -> None:
            await one(client, model, records[i], workload.prompts[i],
                      workload.output_lens[i], base, timeout)
            bar.update()

        await asyncio.gather(*(launch(i) for i in range(len(workload))))
        wall = time.perf_counter() - t0
    finally:
        bar.close()
        await close()
    summary = summarize(records, wall)
    summary.update({"concurrency": concurrency, "request_rate": request_rate})
    return summary


async def _check_ready(client, url: str, model: str) -> None:
    from tritonclient.utils import InferenceServerException

    try:
        ready = await client.is_model_ready(model)
    except InferenceServerException as e:
        raise SystemExit(f"error: cannot reach Triton's gRPC endpoint at {url}: {e}\n"
                         "Is the server running (`make serve`)? Or pass --url HOST:PORT.")
    if not ready:
        raise SystemExit(f"error: model {model!r} is not ready on {url}")


# ---------------------------------------------------------------------------------------------
# Offline engine, for the ratio
# ---------------------------------------------------------------------------------------------

def run_offline(model_dir: str | Path, workload: Workload, engine_args: dict | None = None,
                sampling: dict | None = None) -> dict:
    """Output tok/s of the offline engine (`pagedllm.LLM`) on the same prompts, all at once.

    A short warm-up runs first and is not timed.
    """
    from pagedllm import LLM, SamplingParams

    llm = LLM(model=str(model_dir), **{"device": "cpu", **(engine_args or {})})
    base = {"temperature": 0.0, "ignore_eos": True, **(sampling or {})}
    llm.generate(workload.prompts[:2], SamplingParams(**{**base, "max_tokens": 4}))
    params = [SamplingParams(**{**base, "max_tokens": n}) for n in workload.output_lens]
    t0 = time.perf_counter()
    outs = llm.generate(list(workload.prompts), params)
    wall = time.perf_counter() - t0
    out_tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"wall_s": wall, "output_tokens": out_tokens,
            "input_tokens": sum(len(o.prompt_token_ids) for o in outs),
            "output_tok_s": out_tokens / wall, "engine_args": {"device": "cpu", **(engine_args or {})}}


def load_engine_args(path: str | None) -> dict:
    """Engine arguments from a JSON file (the `llm` model's engine_args.json), or {}."""
    if not path:
        return {}
    data = json.loads(Path(path).read_text())
    data.pop("model", None)
    return data


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def _environment() -> dict:
    import subprocess
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=5).stdout.strip()
    except Exception:
        commit = ""
    return {"device": f"{platform.machine()} cpu, {_ncpu()} threads (client side)",
            "python": platform.python_version(), "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def _ncpu() -> int:
    import os
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--url", default=None,
                   help="Triton gRPC HOST:PORT (default localhost:8001, or GRPC_PORT), or with "
                        "--api openai the service's base URL (default http://localhost:9000, "
                        "or OPENAI_PORT)")
    p.add_argument("--api", choices=("triton", "openai"), default="triton",
                   help="triton: gRPC streams to --model; openai: /v1/completions")
    p.add_argument("--model", default=None,
                   help="Triton model (default ensemble), or the OpenAI model id (default: default)")
    p.add_argument("--workload", choices=("nano", "serve"), default="nano")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--concurrency", type=int, nargs="+",
                   help="requests in flight (several values: one run each); default 32, "
                        "or 1 16 64 256 for --workload serve")
    g.add_argument("--request-rate", type=float, help="Poisson arrivals, requests per second")
    p.add_argument("--num-requests", type=int, default=256, help="default %(default)s")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply prompt and output lengths (e.g. 0.25 for a quick CPU run)")
    p.add_argument("--seed", type=int, default=0, help="seed of the lengths (default 0)")
    p.add_argument("--prompt-seed", type=int,
                   help="seed of the first run's prompt text (each further run adds 1); default "
                        "from the clock, so that no run meets prompts the server has cached")
    p.add_argument("--model-dir", default=str(DEFAULT_MODEL_DIR),
                   help="checkpoint whose tokenizer.json makes the prompts (default models/default)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--offline", metavar="MODEL_DIR",
                   help="also run the same prompts through the offline engine and print the ratio")
    p.add_argument("--engine-args", metavar="JSON",
                   help="engine arguments for --offline (e.g. the llm model's JSON), to match the server")
    p.add_argument("--repeats", type=int, default=1,
                   help="rounds of (server runs, then offline), alternating; with --offline "
                        "prints each round's ratio and the median (this machine's speed drifts "
                        "between runs: one round decides little)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per request stream")
    p.add_argument("--json", metavar="PATH", help="write every figure to this JSON file")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    openai = args.api == "openai"
    args.url = args.url or (f"http://localhost:{os.environ.get('OPENAI_PORT') or 9000}" if openai
                            else default_grpc_url())
    args.model = args.model or ("default" if openai else "ensemble")
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    return args


def _round(args, workloads: list[Workload], settings: list, sampling: dict
           ) -> tuple[list, dict | None]:
    """One run per setting through the server (each with its own prompts), then (with
    --offline) the offline engine on the first setting's prompts."""
    runs = []
    for workload, (concurrency, rate) in zip(workloads, settings):
        s = asyncio.run(run_load(args.url, args.model, workload, concurrency, rate, sampling,
                                 args.timeout, not args.no_progress, args.api))
        label = f"{args.api} {args.model} " + (f"concurrency {concurrency}" if concurrency
                                               else f"request rate {rate}/s")
        print(format_summary(label, s), flush=True)
        s["prompt_seed"] = workload.text_seed
        runs.append(s)
    if not args.offline:
        return runs, None
    off = run_offline(args.offline, workloads[0], load_engine_args(args.engine_args), sampling)
    off["prompt_seed"] = workloads[0].text_seed
    print(f"offline engine: {off['output_tok_s']:.1f} output tok/s "
          f"({off['output_tokens']} tokens, {off['wall_s']:.1f} s)")
    for s in runs:
        s["ratio_to_offline"] = s["output_tok_s"] / off["output_tok_s"]
        print(f"  triton/offline at {s['concurrency'] or s['request_rate']}: "
              f"{s['ratio_to_offline']:.1%}")
    return runs, off


def _median_ratios(rounds: list[tuple[list, dict]]) -> dict:
    """Per setting: each round's served/offline ratio and their median (printed too)."""
    out = {}
    for i, first in enumerate(rounds[0][0]):
        label = str(first["concurrency"] or first["request_rate"])
        ratios = [runs[i]["ratio_to_offline"] for runs, _ in rounds]
        out[label] = {"rounds": ratios, "median": percentile(ratios, 50)}
        print(f"triton/offline at {label} over {len(ratios)} rounds: "
              f"{', '.join(f'{x:.1%}' for x in ratios)}; median {percentile(ratios, 50):.1%}")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workload = make_workload(args.workload, args.num_requests, args.seed, args.scale)
    # Fresh prompts for every server run (see Workload.prompt_seed); --prompt-seed fixes them.
    base = args.prompt_seed if args.prompt_seed is not None else time.time_ns() % (1 << 31)
    sampling = {"temperature": args.temperature}
    if args.request_rate:
        settings = [(None, args.request_rate)]
    else:
        default = list(SERVE_CONCURRENCIES) if args.workload == "serve" else [32]
        settings = [(c, None) for c in (args.concurrency or default)]
    result = {"workload": workload.describe(), "url": args.url, "model": args.model,
              "sampling": {"ignore_eos": True, **sampling}, "environment": _environment()}
    rounds = []
    for r in range(args.repeats):
        if args.repeats > 1:
            print(f"round {r + 1} of {args.repeats}", flush=True)
        seeds = [base + r * len(settings) + i for i in range(len(settings))]
        workloads = [workload.with_prompts(args.model_dir, seed) for seed in seeds]
        rounds.append(_round(args, workloads, settings, sampling))
    result["runs"], offline = rounds[0]
    if offline is not None:
        result["offline"] = offline
    if args.repeats > 1:
        result["rounds"] = [{"runs": runs, "offline": off} for runs, off in rounds]
        if args.offline:
            result["ratio_to_offline"] = _median_ratios(rounds)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 1 if any(s["num_errors"] for runs, _ in rounds for s in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
