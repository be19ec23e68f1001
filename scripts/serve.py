"""`make serve`: fill the model repository and run a real tritonserver in the foreground.

    python scripts/serve.py [--model DIR] [--http-port 8000] [--grpc-port 8001] [--metrics-port 8002]

Environment variables MODEL, HTTP_PORT, GRPC_PORT, METRICS_PORT give the defaults. The server is
the one in the nvidia-pytriton wheel (tritonserver 2.51 = NGC 24.10), bound to 127.0.0.1;
scripts/tritonserver_setup.py fetches it and assembles its backend directory.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tritonserver_setup as setup  # noqa: E402

ROOT = setup.ROOT


def server_command(repo: Path, http_port: int, grpc_port: int, metrics_port: int,
                   log_verbose: int = 0) -> tuple[list[str], dict[str, str]]:
    """The tritonserver argv and environment for a filled repository (installs what is missing)."""
    backends = setup.assemble_backends()
    argv = [str(setup.server_binary()), f"--model-repository={repo}",
            f"--backend-directory={backends}",
            "--http-address=127.0.0.1", f"--http-port={http_port}",
            "--grpc-address=127.0.0.1", f"--grpc-port={grpc_port}",
            "--metrics-address=127.0.0.1", f"--metrics-port={metrics_port}",
            "--allow-metrics=true", "--allow-gpu-metrics=false",
            "--exit-timeout-secs=3", f"--log-verbose={log_verbose}",
            "--model-config-name=host"]  # configs/host.pbtxt where build_repository wrote one
    return argv, setup.server_env()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(repo: Path, http_port: int, grpc_port: int, metrics_port: int, log: Path,
           extra_args: list[str] = (), timeout: float = 180.0) -> subprocess.Popen:
    """Starts tritonserver in the background (output to `log`); returns once it is ready.

    Raises:
        RuntimeError: it exited or was not ready within `timeout` s (the log's tail says why).
    """
    argv, env = server_command(repo, http_port, grpc_port, metrics_port)
    process = subprocess.Popen([*argv, *extra_args], env=env, stdout=log.open("w"),
                               stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready",
                                        timeout=1) as r:
                if r.status == 200:
                    return process
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            raise RuntimeError(f"tritonserver did not become ready; log {log}:\n"
                               f"{log.read_text()[-3000:]}")
        time.sleep(0.25)


def stop(process: subprocess.Popen, timeout: float = 30.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()


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
    import build_repository
    build_repository.build(args.model, args.repo, json.loads(args.engine_args))
    cmd, server_env = server_command(args.repo.resolve(), args.http_port, args.grpc_port,
                                     args.metrics_port, args.log_verbose)
    print(f"tritonserver: HTTP 127.0.0.1:{args.http_port}  gRPC 127.0.0.1:{args.grpc_port}  "
          f"metrics 127.0.0.1:{args.metrics_port}  model {args.model}", flush=True)
    os.execve(cmd[0], cmd, server_env)


if __name__ == "__main__":
    sys.exit(main())
