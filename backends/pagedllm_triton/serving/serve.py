"""`pagedllm serve` (and `make serve`, `pagedllm-serve`): check, build, run, keep serving.

    pagedllm serve [MODEL] [--port 9000] [--max-model-len N] ... (cli.py; --help lists them all)

First every setting is checked (validate.py: a bad one is one line and exit status 2, before
anything starts); then this server's own model repository is built in its run directory
(run_dir.py, repository.py). Then three processes, bound to --host (127.0.0.1 unless set), in
the foreground until Ctrl-C (or SIGTERM):
- tritonserver (the nvidia-pytriton wheel's 2.51 = NGC 24.10, or the one --tritonserver names)
  with explicit model control: gRPC on --grpc-port, metrics on --metrics-port, its HTTP API on
  an internal port of 127.0.0.1 (--triton-http-port, a free port unless set), because a large
  form-urlencoded POST crashes 2.51's HTTP server;
- the front door (openai_server/, `pagedllm-openai`): the OpenAI-compatible API on --port, and
  Triton's HTTP API proxied with limits on --http-port (each port answers both);
- a watchdog thread (watchdog.py) that loads again any model that unloaded itself or whose stub
  died.

A child process that dies (tritonserver 2.51 can abort under load) is started again: at most 5
restarts in 10 minutes each, 1, 2, 4 ... 30 s apart (supervisor.py), after the /dev/shm regions
a dead server left are removed (shm_regions.py); past that, or when
tritonserver never becomes ready, the server stops everything and exits with status 1.

In the NGC container (docker-compose.yml) the same launcher runs the image's server:
`--tritonserver /opt/tritonserver/bin/tritonserver --backend-directory /opt/tritonserver/backends
--host 0.0.0.0`.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from pagedllm_triton.serving import cli, shm_regions, tritonserver, validate
from pagedllm_triton.serving.cli import ServeOptions
from pagedllm_triton.serving.control_plane import AdminKey
from pagedllm_triton.serving.errors import SettingError
from pagedllm_triton.serving.run_dir import open_run_dir
from pagedllm_triton.serving.supervisor import Supervised
from pagedllm_triton.serving.validate import Checked
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


def parse_args(argv: list[str] | None, prog: str = "pagedllm-serve") -> ServeOptions:
    """The options of a command line (cli.py's parser); exits with status 2 when it is bad."""
    return cli.parse_serve_args(argv, prog)


def main(argv: list[str] | None = None, prog: str = "pagedllm-serve") -> int:
    """Checks everything (validate.py), then serves until Ctrl-C; status 2 for a bad setting,
    printed as one line, before anything started."""
    options = parse_args(argv, prog)
    try:
        checked = validate.preflight(options)
        run = open_run_dir(options.run_dir)
    except SettingError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    from pagedllm_triton.serving import repository  # NOTE: here: onnx is slow to import

    try:
        try:
            repository.build(checked.model_dir, run.repository, options.engine_args)
        except ValueError as e:  # the tokenizer export's: a tokenizer.json it cannot convert
            print(f"{prog}: error: model {options.model}: {e}", file=sys.stderr)
            return 2
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        return _serve(options, checked, run.repository)
    finally:
        run.close()


def door_command(options: ServeOptions, checked: Checked, triton_http: int,
                 grpc_host: str) -> tuple[list[str], dict[str, str]]:
    """The front door's argv and environment (the API key goes in PAGEDLLM_API_KEY, never on
    a command line that `ps` shows)."""
    near = local_address(options.host)
    argv = [sys.executable, "-m", "pagedllm_openai.server", "--model", str(checked.model_dir),
            "--served-model-name", checked.served_model_name,
            "--triton-grpc-url", f"{local_address(grpc_host)}:{options.grpc_port}",
            "--triton-http-url", f"http://127.0.0.1:{triton_http}",
            "--triton-metrics-url", f"http://{near}:{options.metrics_port}/metrics",
            "--host", options.host,
            "--port", str(options.port), "--http-port", str(options.http_port)]
    env = dict(os.environ)
    if options.api_key:
        env["PAGEDLLM_API_KEY"] = options.api_key
    return argv, env


def keys_required(options: ServeOptions) -> bool:
    """Whether the front door will ask clients for an API key (a flag, a variable or a file)."""
    env = os.environ
    return bool(options.api_key or env.get("PAGEDLLM_API_KEY", "").strip(",")
                or env.get("PAGEDLLM_API_KEY_FILE"))


def _serve(args: ServeOptions, checked: Checked, repo: Path) -> int:
    internal_http = args.triton_http_port or tritonserver.free_port()
    keys_set = keys_required(args)
    # NOTE: tritonserver's gRPC port cannot check API keys: with keys, local clients only.
    grpc_host = "127.0.0.1" if keys_set else args.host
    # NOTE: never printed or written to a file; but tritonserver 2.51 reads it only from its argv,
    # which local users can read (/proc/PID/cmdline): docs/reliability.md says so.
    admin = AdminKey.new()
    cmd, server_env = tritonserver.server_command(
        repo.resolve(), internal_http, args.grpc_port, args.metrics_port, args.log_verbose,
        binary=args.tritonserver, backend_dir=args.backend_directory, host=args.host,
        admin=admin, grpc_host=grpc_host if keys_set else None)
    near = local_address(args.host)
    print(f"tritonserver {cmd[0]}: gRPC {grpc_host}:{args.grpc_port}  "
          f"metrics {args.host}:{args.metrics_port}  "
          f"(its HTTP API internal on 127.0.0.1:{internal_http})  model {checked.model_dir}  "
          f"repository {repo}", flush=True)
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
                "removed %d stale /dev/shm regions (left by a tritonserver killed earlier)",
                len(removed))
        process = subprocess.Popen(cmd, env=server_env)
        if _wait(ready_url, [process], stopping):
            watchdogs.append(Watchdog(f"127.0.0.1:{internal_http}", admin=admin).start())
        return process

    door_cmd, door_env = door_command(args, checked, internal_http, grpc_host)
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
        if _wait(f"http://{near}:{args.port}/v1/health/live", [door.process], stopping, 120):
            print(f"ready: model {checked.served_model_name!r}  "
                  f"OpenAI API http://{near}:{args.port}/v1  "
                  f"Triton HTTP http://{near}:{args.http_port}/v2  "
                  f"Triton gRPC {near}:{args.grpc_port}  (bound to {args.host})", flush=True)
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
