"""`pagedllm-openai`: run the OpenAI-compatible service in front of a running tritonserver.

    pagedllm-openai --model models/default --triton-grpc-url 127.0.0.1:8001 \\
                    --triton-http-url http://127.0.0.1:8000 --port 9000 [--http-port 8080]

Every ServiceConfig field has a flag; the environment gives these defaults: OPENAI_PORT (9000),
TRITON_GRPC_URL, TRITON_HTTP_URL, TRITON_METRICS_URL, MODEL (models/default) and HTTP_PORT
(a second socket for the /v2 proxy, so KServe clients keep their port while Triton's own HTTP
port stays internal). Both sockets serve the same app. Bound to 127.0.0.1 unless --host says
otherwise. API keys (api_keys.py): --api-key KEY (repeatable), env PAGEDLLM_API_KEY (one, or
several separated by commas), --api-key-file / env PAGEDLLM_API_KEY_FILE (one a line); prefer the
environment or the file: a command line is visible to every user of the machine (`ps`). On Ctrl-C / SIGTERM, live generations are cancelled in the engine first, then the
connections drain; no traceback.

`--workers N` (env OPENAI_WORKERS) runs N service processes on the same sockets, which this
process binds and hands down (the kernel spreads the connections): one Python process decodes
every Triton response and writes every SSE event of its streams, and at tens of thousands of
tokens a second that one core can be the limit (docs/benchmarks.md). Each worker keeps its own
counters: the per-client limit is per worker (a client may hold up to N x the limit), and the
service's own metrics are those of the worker that answers. A worker that dies takes the others
down (make serve starts the front door again).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import uvicorn

from pagedllm_openai.api_keys import check_key, read_key_file
from pagedllm_openai.app import create_app
from pagedllm_openai.config import ServiceConfig


def parse_args(argv: list[str] | None = None) -> tuple[ServiceConfig, argparse.Namespace]:
    """The ServiceConfig of the command line (and environment), and the parsed arguments."""
    env = os.environ
    defaults = ServiceConfig(model_dir=Path(env.get("MODEL", "models/default")))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=defaults.model_dir,
                   help="the checkpoint directory Triton serves (tokenizer, chat template); "
                        "env MODEL")
    p.add_argument("--served-model-name", default=None,
                   help="the model id clients use (default: the model directory's name)")
    p.add_argument("--triton-grpc-url", default=env.get("TRITON_GRPC_URL",
                                                        defaults.triton_grpc_url))
    p.add_argument("--triton-http-url", default=env.get("TRITON_HTTP_URL",
                                                        defaults.triton_http_url),
                   help="Triton's HTTP base URL (internal; proxied as /v2)")
    p.add_argument("--triton-metrics-url", default=env.get("TRITON_METRICS_URL",
                                                           defaults.triton_metrics_url))
    p.add_argument("--host", default=defaults.host)
    p.add_argument("--port", type=int, default=int(env.get("OPENAI_PORT", defaults.port)),
                   help="the OpenAI port (env OPENAI_PORT, default %(default)s)")
    http_port = env.get("HTTP_PORT")
    p.add_argument("--http-port", type=int, default=int(http_port) if http_port else None,
                   help="also serve on this port (for the /v2 proxy; env HTTP_PORT)")
    p.add_argument("--max-body-bytes", type=int, default=defaults.max_body_bytes)
    p.add_argument("--max-prompt-chars", type=int, default=defaults.max_prompt_chars)
    p.add_argument("--max-concurrent-per-client", type=int,
                   default=defaults.max_concurrent_per_client)
    p.add_argument("--max-stop-sequences", type=int, default=defaults.max_stop_sequences)
    p.add_argument("--max-stop-chars", type=int, default=defaults.max_stop_chars)
    p.add_argument("--max-n", type=int, default=defaults.max_n)
    p.add_argument("--max-logprobs", type=int, default=defaults.max_logprobs)
    p.add_argument("--max-prompt-tokens", type=int, default=None,
                   help="most prompt tokens (default: the engine's max_model_len decides)")
    p.add_argument("--request-timeout-s", type=float, default=defaults.request_timeout_s)
    p.add_argument("--ready-cache-s", type=float, default=defaults.ready_cache_s)
    p.add_argument("--api-key", action="append", default=[],
                   help="a key clients must send (Authorization: Bearer KEY, or api-key: KEY); "
                        "repeatable; env PAGEDLLM_API_KEY (comma-separated)")
    p.add_argument("--api-key-file", type=Path, default=env.get("PAGEDLLM_API_KEY_FILE") or None,
                   help="a file of keys, one a line (env PAGEDLLM_API_KEY_FILE)")
    p.add_argument("--tool-call-parser", choices=("hermes", "llama3_json"), default=None,
                   help="how tool_choice auto reads the model's tool calls (default: from the "
                        "chat template)")
    p.add_argument("--allowed-origins", default="",
                   help="comma-separated origins allowed to call the API from a browser (CORS; "
                        "'*' for any; default: none)")
    p.add_argument("--log-level", default="info")
    p.add_argument("--workers", type=int, default=int(env.get("OPENAI_WORKERS", 1)),
                   help="service processes sharing the sockets (env OPENAI_WORKERS, default 1)")
    p.add_argument("--listen-fds", help=argparse.SUPPRESS)  # a worker's inherited sockets
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error(f"--workers must be >= 1, got {args.workers}")
    try:
        keys = api_keys(args.api_key, env.get("PAGEDLLM_API_KEY", ""), args.api_key_file)
        config = ServiceConfig(
            model_dir=args.model, served_model_name=args.served_model_name,
            triton_grpc_url=args.triton_grpc_url, triton_http_url=args.triton_http_url,
            triton_metrics_url=args.triton_metrics_url, host=args.host, port=args.port,
            http_port=args.http_port, max_body_bytes=args.max_body_bytes,
            max_prompt_chars=args.max_prompt_chars,
            max_concurrent_per_client=args.max_concurrent_per_client,
            max_stop_sequences=args.max_stop_sequences, max_stop_chars=args.max_stop_chars,
            max_n=args.max_n, max_logprobs=args.max_logprobs,
            max_prompt_tokens=args.max_prompt_tokens,
            request_timeout_s=args.request_timeout_s, ready_cache_s=args.ready_cache_s,
            api_keys=keys, tool_call_parser=args.tool_call_parser,
            allowed_origins=tuple(o.strip() for o in args.allowed_origins.split(",")
                                  if o.strip()))
    except ValueError as e:
        p.error(str(e))
    return config, args


def api_keys(flags: list[str], env_value: str, key_file: Path | None) -> tuple[str, ...]:
    """Every configured key: the flags', the environment's (comma-separated) and the file's.

    Raises:
        ValueError: a key that cannot be sent in a header, or a key file that cannot be read or
            holds none (the message names where; never the key).
    """
    keys = [check_key(k, "--api-key") for k in flags]
    keys += [check_key(k.strip(), "PAGEDLLM_API_KEY") for k in env_value.split(",") if k.strip()]
    if key_file is not None:
        keys += read_key_file(key_file)
    return tuple(dict.fromkeys(keys))


class _Server(uvicorn.Server):
    """uvicorn, cancelling live generations in the engine before it waits for connections to
    drain (else a long stream would hold shutdown up, and the engine would run on for nobody)."""

    async def shutdown(self, sockets=None) -> None:
        service = getattr(self.config.app.state, "service", None)
        if service is not None:
            await service.triton.abort_all()
        await super().shutdown(sockets=sockets)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def sockets_for(config: ServiceConfig) -> list[socket.socket]:
    """The service's listening sockets: its port, and http_port when it has another."""
    sockets = [bind(config.host, config.port)]
    if config.http_port is not None and config.http_port != config.port:
        sockets.append(bind(config.host, config.http_port))
    return sockets


def serve(config: ServiceConfig, log_level: str = "info",
          sockets: list[socket.socket] | None = None) -> None:
    """Runs the service on its port (and http_port) until Ctrl-C / SIGTERM."""
    app = create_app(config)
    sockets = sockets or sockets_for(config)
    uv_config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=10,
                               proxy_headers=False)
    ports = " and ".join(str(s.getsockname()[1]) for s in sockets)
    logging.getLogger("pagedllm.openai").info(
        "serving model %r on %s port %s (/v1, and /v2 -> %s); Triton gRPC %s; %s (pid %d)",
        config.served_model_name, config.host, ports, config.triton_http_url,
        config.triton_grpc_url,
        f"{len(config.api_keys)} API key(s) required" if config.api_keys else "no API key",
        os.getpid())
    _Server(uv_config).run(sockets=sockets)


def run_workers(config: ServiceConfig, argv: list[str], workers: int) -> int:
    """Binds the sockets, starts `workers` service processes on them, and stops them together:
    SIGTERM / SIGINT is passed on; when one exits, the others are stopped too. Returns 0 when
    they were stopped and all stopped cleanly, else the failed worker's status (or 1)."""
    sockets = sockets_for(config)
    fds = ",".join(str(s.fileno()) for s in sockets)
    cmd = [sys.executable, "-m", "pagedllm_openai.server", *argv, "--workers", "1",
           "--listen-fds", fds]
    children = [subprocess.Popen(cmd, pass_fds=[s.fileno() for s in sockets])
                for _ in range(workers)]
    stopping = False

    def stop(signum=None, frame=None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while all(c.poll() is None for c in children):
            time.sleep(0.2)
        if not stopping:
            logging.getLogger("pagedllm.openai").error(
                "a worker exited (status %s): stopping the others",
                next(c.returncode for c in children if c.returncode is not None))
        stop()
        deadline = time.monotonic() + 30
        for child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    finally:
        for s in sockets:
            s.close()
    failed = [c.returncode for c in children if c.returncode not in (0, -signal.SIGTERM)]
    if stopping and not failed:
        return 0
    return failed[0] if failed and failed[0] > 0 else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config, args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per proxied request
    try:
        if args.listen_fds:
            sockets = [socket.socket(fileno=int(fd)) for fd in args.listen_fds.split(",")]
            serve(config, args.log_level, sockets)
        elif args.workers > 1:
            return run_workers(config, argv, args.workers)
        else:
            serve(config, args.log_level)
    except KeyboardInterrupt:
        return 130
    except (ValueError, OSError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
