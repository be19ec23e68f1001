"""pagedllm against a peer engine (vLLM) on one GPU: same checkpoints, settings and workloads.

Each engine runs in its own subprocess (its own process group: vLLM starts an EngineCore
process too), one after the other, so they never share the GPU. Checkpoints: random-weight bf16
with the real configs of Llama-3.2-1B, Qwen3-0.6B, Llama-3.1-8B and Qwen3-8B (`llama-1b`,
`qwen3-0.6b`, `llama-8b`, `qwen3-8b`: pagedllm_tools.bench.gpu.build_shape).

Settings (both engines): max_num_seqs 256, max_num_batched_tokens 8192, max_model_len 4096,
gpu_memory_utilization 0.45, greedy, ignore_eos. Workloads (docs/workloads.md), prompt ids below
10000: A = 256 `nano` requests (seed 7) and B = 1,024 (seed 8), prompt and output lengths
uniform in [100, 1024]; C = 128 long prompts (seed 9), prompts uniform in [2000, 3500], outputs
in [64, 256]; D = one stream (seed 10), 512 in and 512 out. After start-up, one untimed warm-up
(256 prompts x 16 tokens, seed 5), then each timed run twice in a row (the prefix cache emptied
before each): the FIRST run is what a user meets after start-up, the second shows what compiling
cost it. tok/s = output tokens / wall time of the generate() call. Start-up = constructor to
ready. The whole matrix (4 shapes x 4 workloads, both engines) takes longer than one 10-minute
GPU call: pick a part with --shapes and --workloads.

    python -m pagedllm_tools.bench.peer [--vllm-site DIR] [--out DIR] [--budget 540]
        [--shapes llama-8b] [--workloads C_long_128_seed9 D_single_seed10]

Without --vllm-site only pagedllm runs (the peer's figures recorded earlier are in
docs/benchmarks.md).
Writes OUT/peer.json and a log per child; prints a table last.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pagedllm_clients.workloads import peer_workload as workload

ENGINE_KW = dict(max_num_seqs=256, max_num_batched_tokens=8192, max_model_len=4096,
                 gpu_memory_utilization=0.45)
NANO = (100, 1024)
# name -> (requests, seed, prompt length range, output length range)
WORKLOADS = {"A_256_seed7": (256, 7, NANO, NANO), "B_1024_seed8": (1024, 8, NANO, NANO),
             "C_long_128_seed9": (128, 9, (2000, 3500), (64, 256)),
             "D_single_seed10": (1, 10, (512, 512), (512, 512))}
PLAN = [(shape, list(WORKLOADS)) for shape in ("llama-1b", "qwen3-0.6b", "llama-8b", "qwen3-8b")]


def _save(path: Path, obj: dict) -> None:
    Path(path).write_text(json.dumps(obj, indent=1))


# ---- children: one engine each ------------------------------------------------------------------

def child_build(shape: str, out_dir: str) -> None:
    import torch

    from pagedllm_tools.bench.gpu import build_shape
    t0 = time.perf_counter()
    del_model = build_shape(shape, Path(out_dir))
    del del_model
    torch.cuda.empty_cache()
    print(json.dumps({"built": shape, "s": round(time.perf_counter() - t0, 1)}), flush=True)


def child_pagedllm(model_dir: str, works: list[str], out: str, repeats: int,
                   extra: str = "{}") -> None:
    import torch

    from pagedllm import LLM, SamplingParams
    extra_kw = json.loads(extra)
    res: dict = {"engine": "pagedllm", "extra_engine_kwargs": extra_kw}
    t0 = time.perf_counter()
    llm = LLM(model_dir, device="cuda", dtype="bfloat16", **ENGINE_KW, **extra_kw)
    res["startup_s"] = time.perf_counter() - t0
    _save(Path(out), res)
    pauses: list[float] = []
    started = [0.0]

    def on_gc(phase: str, info: dict) -> None:  # the time Python's collector stops the loop
        if phase == "start":
            started[0] = time.perf_counter()
        elif info.get("generation") == 2:
            pauses.append(time.perf_counter() - started[0])
        else:
            pauses.append(-(time.perf_counter() - started[0]))  # young generations, negative
    gc.callbacks.append(on_gc)

    def run(prompts, outputs) -> dict:
        if not llm.reset_prefix_cache():
            raise RuntimeError("prefix cache not emptied: a request still holds blocks")
        params = [SamplingParams(temperature=0.0, max_tokens=o, ignore_eos=True) for o in outputs]
        engine = llm.engine
        def counts():
            r = engine.runner
            return (engine.scheduler.stats.num_steps, engine.scheduler.stats.num_preemptions,
                    r.graphs.num_replays if r.graphs else 0,
                    r.mixed_graphs.num_replays if getattr(r, "mixed_graphs", None) else 0)
        before = counts()
        torch.cuda.synchronize()
        t = time.perf_counter()
        pauses.clear()
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
        wall = time.perf_counter() - t
        made = sum(len(o.outputs[0].token_ids) for o in outs)
        full = [p for p in pauses if p > 0]
        after = counts()
        # (what the run did, so that two runs of one workload that differ can be told apart)
        steps, preemptions, replays, mixed_replays = (b - a for a, b in zip(before, after))
        return {"output_tokens": made, "wall_s": wall, "output_tok_s": made / wall,
                "gc_full_collections": len(full), "gc_full_s": sum(full),
                "gc_young_s": -sum(p for p in pauses if p < 0),
                "steps": steps, "preemptions": preemptions, "graph_replays": replays,
                "mixed_graph_replays": mixed_replays}

    t = time.perf_counter()
    run(workload(256, 5)[0], [16] * 256)
    res["warmup_s"] = time.perf_counter() - t
    for name in works:
        res[name] = [run(*workload(*WORKLOADS[name])) for _ in range(repeats)]
        _save(Path(out), res)
        print("pagedllm", name, [round(r["output_tok_s"]) for r in res[name]], flush=True)
    res["done"] = True
    _save(Path(out), res)


def child_vllm(model_dir: str, works: list[str], out: str, repeats: int) -> None:
    # NOTE: flashinfer is not carried to the GPU machine; vLLM 0.25 imports its sampler probe
    # unguarded unless told not to. Greedy sampling never uses it.
    os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    import vllm
    from vllm import LLM, SamplingParams
    res: dict = {"engine": "vllm", "version": vllm.__version__}
    t0 = time.perf_counter()
    llm = LLM(model=model_dir, dtype="bfloat16", seed=0, **ENGINE_KW)
    res["startup_s"] = time.perf_counter() - t0
    _save(Path(out), res)

    def run(prompts, outputs) -> dict:
        llm.reset_prefix_cache()
        params = [SamplingParams(temperature=0.0, max_tokens=o, ignore_eos=True) for o in outputs]
        t = time.perf_counter()
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        wall = time.perf_counter() - t
        made = sum(len(o.outputs[0].token_ids) for o in outs)
        return {"output_tokens": made, "wall_s": wall, "output_tok_s": made / wall}

    run(workload(256, 5)[0], [16] * 256)
    for name in works:
        res[name] = [run(*workload(*WORKLOADS[name])) for _ in range(repeats)]
        _save(Path(out), res)
        print("vllm", name, [round(r["output_tok_s"]) for r in res[name]], flush=True)
    res["done"] = True
    _save(Path(out), res)


# ---- the orchestrator ---------------------------------------------------------------------------

def _with_env(variable: tuple[str, str] | None) -> dict | None:
    """This process's environment with NAME set to VALUE (or removed when VALUE is empty)."""
    if variable is None:
        return None
    name, value = variable
    env = {k: v for k, v in os.environ.items() if k != name}
    if value:
        env[name] = value
    return env


def _child(args: list[str], log: Path, timeout: float, env: dict | None = None):
    if timeout < 10:
        return "skipped"
    with open(log, "a") as f:
        p = subprocess.Popen([sys.executable, "-m", "pagedllm_tools.bench.peer", "--child", *args],
                             stdout=f, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = "timeout"
        try:  # the whole process group: vLLM's EngineCore too
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
    return rc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--work", default="/tmp/peer")
    ap.add_argument("--budget", type=float, default=540.0, help="seconds for everything")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--vllm-site", help="a folder holding vLLM's packages (PYTHONPATH for its runs)")
    ap.add_argument("--shapes", nargs="+", default=[s for s, _ in PLAN])
    ap.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    ap.add_argument("--pagedllm-kw", action="append", default=[], metavar="NAME=JSON",
                    help="an EngineConfig field for pagedllm's runs (A/B runs), e.g. "
                         "async_scheduling=false; repeat the option to run pagedllm once per value")
    ap.add_argument("--pagedllm-env", action="append", default=[], metavar="NAME=VALUE",
                    help="an environment variable for pagedllm's runs (A/B of a setting), "
                         "e.g. PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True; repeat it to run once per value "
                         "(NAME= for unset); crossed with --pagedllm-kw")
    ap.add_argument("--child", nargs="+")
    a = ap.parse_args()
    if a.child:
        kind, *rest = a.child
        if kind == "build":
            return child_build(*rest)
        fn = {"pagedllm": child_pagedllm, "vllm": child_vllm}[kind]
        return fn(rest[0], rest[1].split(","), rest[2], int(rest[3]), *rest[4:])
    out, work = Path(a.out), Path(a.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def left() -> float:
        return a.budget - (time.perf_counter() - start)

    device = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                            capture_output=True, text=True).stdout.strip()
    report: dict = {"device": device, "engine_kwargs": ENGINE_KW, "repeats": a.repeats,
                    "workloads": {k: list(v) for k, v in WORKLOADS.items()}, "runs": {}}
    variants = [dict([kv.split("=", 1)]) for kv in a.pagedllm_kw] or [{}]
    variants = [{k: json.loads(v) for k, v in d.items()} for d in variants]
    env_variants = [tuple(kv.split("=", 1)) for kv in a.pagedllm_env] or [None]
    engines = [("pagedllm", None)]
    if a.vllm_site:
        engines.append(("vllm", dict(os.environ, PYTHONPATH=os.pathsep.join(
            filter(None, [a.vllm_site, os.environ.get("PYTHONPATH")])))))
    for shape, works in PLAN:
        works = [w for w in works if w in a.workloads]
        if shape not in a.shapes or not works:
            continue
        ckpt = work / shape
        if not (ckpt / "config.json").exists():
            _child(["build", shape, str(ckpt)], out / f"build-{shape}.log", min(left(), 180))
        runs = [(e, env, {}, "") for e, env in engines if e != "pagedllm"]
        runs = [("pagedllm", _with_env(ev), kw, f"-{ev[0]}-{ev[1] or 'unset'}" if ev else "")
                for ev in env_variants for kw in variants] + runs
        for engine, env, kw, env_tag in runs:
            tag = engine + env_tag + "".join(f"-{k}-{json.dumps(v)}" for k, v in kw.items())
            result = out / f"{tag}-{shape}.json"
            args = [engine, str(ckpt), ",".join(works), str(result), str(a.repeats)]
            rc = _child(args + ([json.dumps(kw)] if kw else []), out / f"{tag}-{shape}.log",
                        left() - 5, env)
            report["runs"][f"{tag}/{shape}"] = {
                "rc": rc, **(json.loads(result.read_text()) if result.exists() else {})}
            _save(out / "peer.json", report)
    print(f"\n{device}")
    for key, run in report["runs"].items():
        figures = "  ".join(f"{w}: " + " / ".join(f"{r['output_tok_s']:,.0f}" for r in run[w])
                            for w in WORKLOADS if w in run)
        print(f"{key:40s} start-up {run.get('startup_s', float('nan')):5.1f} s  {figures}")


if __name__ == "__main__":
    main()
