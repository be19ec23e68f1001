"""`make serve`: fill the model repository, run tritonserver and its front door, keep them serving.

    python -m pagedllm_triton.serving.serve [--model DIR] [--engine-args JSON]
                                           [--http-port 8000] [--grpc-port 8001]
                                           [--metrics-port 8002] [--openai-port 9000]
                                           [--host 127.0.0.1] [--tritonserver PATH]
                                           [--backend-directory DIR]
                                           [--api-key KEY] [--api-key-file FILE]

Three processes, bound to HOST (127.0.0.1 unless set), in the foreground until Ctrl-C (or SIGTERM):
- tritonserver (the nvidia-pytriton wheel's 2.51 = NGC 24.10, or the one --tritonserver names)
  with explicit model control: gRPC on GRPC_PORT, metrics on METRICS_PORT, its HTTP API on an
  internal port of 127.0.0.1 (TRITON_HTTP_PORT, a free port unless set), because a large
  form-urlencoded POST crashes 2.51's HTTP server;
- the front door (openai_server/, `pagedllm-openai`): the OpenAI-compatible API on OPENAI_PORT,
  and Triton's HTTP API proxied with limits on HTTP_PORT;
- a watchdog thread (watchdog.py) that loads again any model that unloaded itself or whose stub
  died.

A child process that dies (tritonserver 2.51 can abort under load) is started again: at most 5
restarts in 10 minutes each, 1, 2, 4 ... 30 s apart (supervisor.py), after the /dev/shm regions
a dead server left are removed (shm_regions.py); past that, or when
tritonserver never becomes ready, make serve stops everything and exits with status 1.

Security (docs/reliability.md, Security): tritonserver's control plane (model load/unload, the
repository index, shared memory, logging, trace) is behind a header whose value is made here at
start-up and handed to tritonserver and the watchdog only. With API keys (--api-key, env
PAGEDLLM_API_KEY; --api-key-file, env PAGEDLLM_API_KEY_FILE), the front door answers 401 without
one, on /v1 and /v2, and tritonserver's gRPC port, which cannot check them, binds 127.0.0.1 only.

In the NGC container (docker-compose.yml) the same launcher runs the image's server:
`--tritonserver /opt/tritonserver/bin/tritonserver --backend-directory /opt/tritonserver/backends
--host 0.0.0.0`.

Environment variables MODEL, HTTP_PORT, GRPC_PORT, METRICS_PORT, OPENAI_PORT, TRITON_HTTP_PORT,
ENGINE_ARGS, HOST, TRITONSERVER, TRITON_BACKEND_DIR, PAGEDLLM_API_KEY and PAGEDLLM_API_KEY_FILE
give the defaults.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from pagedllm_triton.serving import repository, shm_regions, tritonserver
from pagedllm_triton.serving.control_plane import AdminKey
from pagedllm_triton.serving.supervisor import Supervised
from pagedllm_triton.serving.watchdog import Watchdog


def _wait(url: str, processes: list[subprocess.Popen], stopping: threading.Event,
          timeout: float = 600.0) -> bool:
    """True once `url` answers 200; False if a process exits, a stop is asked, or time runs out."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and not stopping.is_set():
        if any(p.poll() is not None for p in processes):
            return False
        try:
            with urllib.request.urlopen(url, timeout=1):
                return True
        except OSError:
            time.sleep(0.25)
    return False


def local_address(host: str) -> str:
    """Where this machine reaches a socket bound to `host` (a URL's host part): a wildcard
    address (0.0.0.0, ::) is reached on loopback."""
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    env = os.environ
    parser.add_argument("--model", type=Path, default=Path(env.get("MODEL", "models/default")),
                        help="Hugging Face checkpoint directory (env MODEL)")
    parser.add_argument("--repo", type=Path, default=None,
                        help="where this server builds its model repository (default: a new "
                             "temporary directory of its own, removed at exit)")
    parser.add_argument("--http-port", type=int, default=int(env.get("HTTP_PORT", 8000)),
                        help="Triton's HTTP API, through the front door (env HTTP_PORT)")
    parser.add_argument("--grpc-port", type=int, default=int(env.get("GRPC_PORT", 8001)))
    parser.add_argument("--metrics-port", type=int, default=int(env.get("METRICS_PORT", 8002)))
    parser.add_argument("--openai-port", type=int, default=int(env.get("OPENAI_PORT", 9000)))
    parser.add_argument("--triton-http-port", type=int,
                        default=int(env.get("TRITON_HTTP_PORT", 0)),
                        help="tritonserver's own HTTP port, internal (0: a free port)")
    parser.add_argument("--engine-args", default=env.get("ENGINE_ARGS") or "{}",
                        help="JSON object of EngineConfig fields for llm/engine.json")
    parser.add_argument("--host", default=env.get("HOST", "127.0.0.1"),
                        help="address of gRPC, metrics and the front door (env HOST; 0.0.0.0 "
                             "in a container); Triton's own HTTP API stays on 127.0.0.1")
    parser.add_argument("--tritonserver", type=Path, default=env.get("TRITONSERVER") or None,
                        help="tritonserver binary (env TRITONSERVER; default: the "
                             "nvidia-pytriton wheel's, unpacked into .cache/)")
    parser.add_argument("--backend-directory", type=Path,
                        default=env.get("TRITON_BACKEND_DIR") or None,
                        help="holds python/, onnxruntime/ and pagedllm/ (env TRITON_BACKEND_DIR; "
                             "default: .cache/triton_backends, assembled for the wheel's server)")
    parser.add_argument("--api-key", action="append", default=[],
                        help="a key the front door requires (repeatable; env PAGEDLLM_API_KEY, "
                             "comma-separated: better, since a command line is visible to "
                             "every user of the machine)")
    parser.add_argument("--api-key-file", type=Path,
                        default=env.get("PAGEDLLM_API_KEY_FILE") or None,
                        help="a file of keys, one a line (env PAGEDLLM_API_KEY_FILE)")
    parser.add_argument("--log-verbose", type=int, default=0)
    return parser.parse_args(argv)


def door_environment(args: argparse.Namespace) -> tuple[dict[str, str], bool]:
    """The front door's environment, with the API keys of the flags and of this environment
    (they travel there, not on its command line), and whether any key is set."""
    env = dict(os.environ)
    keys = [k for k in env.get("PAGEDLLM_API_KEY", "").split(",") if k.strip()] + args.api_key
    env.pop("PAGEDLLM_API_KEY", None)
    env.pop("PAGEDLLM_API_KEY_FILE", None)
    if keys:
        env["PAGEDLLM_API_KEY"] = ",".join(keys)
    if args.api_key_file is not None:
        env["PAGEDLLM_API_KEY_FILE"] = str(args.api_key_file.resolve())
    return env, bool(keys) or args.api_key_file is not None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    own_repo = args.repo is None
    if own_repo:  # NOTE: one per server: two servers never load each other's engine.json
        args.repo = Path(tempfile.mkdtemp(prefix="pagedllm-repo-"))
    try:
        return _serve(args)
    finally:
        if own_repo:
            shutil.rmtree(args.repo, ignore_errors=True)


def _serve(args: argparse.Namespace) -> int:
    repository.build(args.model, args.repo, json.loads(args.engine_args))
    internal_http = args.triton_http_port or tritonserver.free_port()
    door_env, keys_set = door_environment(args)
    # NOTE: tritonserver's gRPC port cannot check API keys: with keys, local clients only.
    grpc_host = "127.0.0.1" if keys_set else args.host
    admin = AdminKey.new()  # NOTE: tritonserver's argv and the watchdog only; never printed
    cmd, server_env = tritonserver.server_command(
        args.repo.resolve(), internal_http, args.grpc_port, args.metrics_port, args.log_verbose,
        binary=args.tritonserver, backend_dir=args.backend_directory, host=args.host,
        admin=admin, grpc_host=grpc_host if keys_set else None)
    near = local_address(args.host)
    print(f"tritonserver {cmd[0]}: gRPC {grpc_host}:{args.grpc_port}  "
          f"metrics {args.host}:{args.metrics_port}  "
          f"(its HTTP API internal on 127.0.0.1:{internal_http})  model {args.model}", flush=True)
    if keys_set:
        print(f"API keys required on the front door (/v1, /v2); Triton gRPC bound to "
              f"{grpc_host} only, since it cannot check them", flush=True)
    stopping = threading.Event()
    watchdogs: list[Watchdog] = []
    ready_url = f"http://127.0.0.1:{internal_http}/v2/health/ready"

    def start_server() -> subprocess.Popen:
        for w in watchdogs:  # a dead server's watchdog goes with it
            w.stop()
        watchdogs.clear()
        removed = shm_regions.remove_orphans(before=time.time())
        if removed:
            logging.getLogger("pagedllm.serve").warning(
                "removed %d /dev/shm regions a dead tritonserver left", len(removed))
        process = subprocess.Popen(cmd, env=server_env)
        if _wait(ready_url, [process], stopping):
            watchdogs.append(Watchdog(f"127.0.0.1:{internal_http}", admin=admin).start())
        return process

    door_cmd = [sys.executable, "-m", "pagedllm_openai.server", "--model", str(args.model),
                "--triton-grpc-url", f"{local_address(grpc_host)}:{args.grpc_port}",
                "--triton-http-url", f"http://127.0.0.1:{internal_http}",
                "--triton-metrics-url", f"http://{near}:{args.metrics_port}/metrics",
                "--host", args.host,
                "--port", str(args.openai_port), "--http-port", str(args.http_port)]
    server = Supervised("tritonserver", start_server)
    door = Supervised("front door", lambda: subprocess.Popen(door_cmd, env=door_env))
    children: list[Supervised] = []

    signalled: set[int] = set()  # pids sent SIGTERM: once each (tritonserver logs every one)

    def stop(signum, frame) -> None:  # Ctrl-C or SIGTERM: stop everything, quietly
        stopping.set()
        for w in watchdogs:  # first: a stopping server's models are not to be loaded again
            w.stop()
        for child in children:
            p = child.process
            if p is not None and p.poll() is None and p.pid not in signalled:
                signalled.add(p.pid)
                p.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    children.append(server)
    server.launch()
    if watchdogs:  # the server became ready
        children.append(door)
        door.launch()
        if _wait(f"http://{near}:{args.openai_port}/v1/health/live", [door.process], stopping,
                 120):
            print(f"ready: OpenAI API http://{near}:{args.openai_port}/v1  "
                  f"Triton HTTP http://{near}:{args.http_port}/v2  "
                  f"Triton gRPC {local_address(grpc_host)}:{args.grpc_port}  "
                  f"(bound to {args.host})", flush=True)
    # A child that dies is started again (supervisor.py's bounds); one out of restarts, or a
    # server that never became ready, ends make serve with status 1.
    given_up = len(children) < 2 and not stopping.is_set()
    while not stopping.is_set() and not given_up:
        for child in children:
            if child.died() and not stopping.is_set() and not child.restart(stopping):
                given_up = True
                break
        time.sleep(0.5)
    asked = stopping.is_set() and not given_up
    stop(None, None)  # asked, or out of restarts: stop the rest
    for child in children:
        try:
            child.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.process.kill()
    return 0 if asked else 1


if __name__ == "__main__":
    sys.exit(main())
