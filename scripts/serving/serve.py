"""`make serve`: fill the model repository, run tritonserver and keep it serving, in the foreground.

    python -m pagedllm_tools.serving.serve [--model DIR] [--http-port 8000] [--grpc-port 8001]
                                           [--metrics-port 8002] [--engine-args JSON]

Environment variables MODEL, HTTP_PORT, GRPC_PORT, METRICS_PORT and ENGINE_ARGS give the
defaults. The server is the one in the nvidia-pytriton wheel (tritonserver 2.51 = NGC 24.10),
bound to 127.0.0.1, with explicit model control; a watchdog (watchdog.py) beside it loads again
any model that unloaded itself or whose stub died. Ctrl-C (or SIGTERM) stops everything.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from pagedllm_tools import ROOT
from pagedllm_tools.serving import repository, tritonserver
from pagedllm_tools.serving.watchdog import Watchdog


def _wait_ready(http_port: int, process: subprocess.Popen, timeout: float = 600.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=1):
                return True
        except OSError:
            time.sleep(0.25)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    env = os.environ
    parser.add_argument("--model", type=Path, default=Path(env.get("MODEL", ROOT / "models" / "default")))
    parser.add_argument("--repo", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--http-port", type=int, default=int(env.get("HTTP_PORT", 8000)))
    parser.add_argument("--grpc-port", type=int, default=int(env.get("GRPC_PORT", 8001)))
    parser.add_argument("--metrics-port", type=int, default=int(env.get("METRICS_PORT", 8002)))
    parser.add_argument("--engine-args", default=env.get("ENGINE_ARGS", "{}"),
                        help="JSON object of EngineConfig fields for llm/engine.json")
    parser.add_argument("--log-verbose", type=int, default=0)
    args = parser.parse_args(argv)
    repository.build(args.model, args.repo, json.loads(args.engine_args))
    cmd, server_env = tritonserver.server_command(args.repo.resolve(), args.http_port,
                                                  args.grpc_port, args.metrics_port,
                                                  args.log_verbose)
    print(f"tritonserver: HTTP 127.0.0.1:{args.http_port}  gRPC 127.0.0.1:{args.grpc_port}  "
          f"metrics 127.0.0.1:{args.metrics_port}  model {args.model}", flush=True)
    server = subprocess.Popen(cmd, env=server_env)
    stopping = threading.Event()

    def stop(signum, frame) -> None:  # Ctrl-C or SIGTERM: stop the server, quietly
        stopping.set()
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    watchdog = None
    if _wait_ready(args.http_port, server) and not stopping.is_set():
        watchdog = Watchdog(f"127.0.0.1:{args.http_port}").start()
        print("ready: every model loaded; a watchdog loads again any that fails", flush=True)
    code = server.wait()
    if watchdog is not None:
        watchdog.stop()
    return 0 if stopping.is_set() else code


if __name__ == "__main__":
    sys.exit(main())
