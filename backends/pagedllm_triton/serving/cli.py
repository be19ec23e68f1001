"""`pagedllm serve MODEL [flags]`: the server's command line, the way `vllm serve` reads.

    pagedllm serve models/default --port 8010 --max-model-len 1024 --served-model-name m
    pagedllm serve Qwen/Qwen3-0.6B --host 0.0.0.0 --api-key k        (a Hugging Face id)

MODEL is a checkpoint directory or a Hugging Face model id (model_source.py). Every engine
setting is a flag (engine_flags.py: generated from EngineConfig). The environment gives the
defaults, so `MODEL=... ENGINE_ARGS='{...}' make serve` keeps working: MODEL, ENGINE_ARGS, HOST,
OPENAI_PORT, HTTP_PORT, GRPC_PORT, METRICS_PORT, TRITON_HTTP_PORT, PAGEDLLM_API_KEY,
PAGEDLLM_RUN_DIR, TRITONSERVER and TRITON_BACKEND_DIR. `pagedllm-serve` is the same command
without the word `serve` (the container's entry point).

A bad command line is one line on stderr and exit status 2 (argparse's), with a did-you-mean
for a misspelled flag; what the values mean together is checked next (validate.py).
"""
from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from pagedllm_triton.serving import engine_flags

DEFAULT_MODEL = "models/default"  # the bundled model, in a checkout


@dataclass
class ServeOptions:
    """What `pagedllm serve` was asked to do, as parsed (nothing checked against the machine).

    Attributes:
        model: a checkpoint directory or a Hugging Face id, as given.
        engine_args: EngineConfig fields set by ENGINE_ARGS / --engine-args and the engine
            flags (the flags win); the server's defaults fill the rest (repository.py).
        engine_sources: for each field in engine_args, where it was set ("--max-num-seqs",
            "ENGINE_ARGS"), so that an error can name it.
        served_model_name: the model id clients send; None: the Hugging Face id, or the
            directory's name.
        host: the address the public ports bind.
        port: the OpenAI API (the front door; it serves /v2 too).
        http_port: Triton's HTTP API (/v2) through the front door (it serves /v1 too).
        grpc_port, metrics_port: tritonserver's gRPC API and Prometheus metrics.
        triton_http_port: tritonserver's own HTTP API on 127.0.0.1, internal (0: a free port).
        api_key: handed to the front door as PAGEDLLM_API_KEY.
        run_dir: where this server writes its model repository (run_dir.py); None: a new
            temporary directory.
        tritonserver, backend_directory: another tritonserver and its backends (the NGC
            container's); None: the nvidia-pytriton wheel's.
        log_verbose: tritonserver's --log-verbose.
    """

    model: str
    engine_args: dict = field(default_factory=dict)
    engine_sources: dict = field(default_factory=dict)
    served_model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 9000
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    triton_http_port: int = 0
    api_key: str | None = None
    run_dir: Path | None = None
    tritonserver: Path | None = None
    backend_directory: Path | None = None
    log_verbose: int = 0


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block) and a did-you-mean for unknown flags."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")

    def parse_args(self, args=None, namespace=None):  # noqa: D102 - argparse's
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            flags = [s for a in self._actions for s in a.option_strings]
            word = unknown[0].split("=", 1)[0]
            close = difflib.get_close_matches(word, flags, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            kind = "flag" if word.startswith("-") else "argument"
            self.error(f"unknown {kind} {word}{hint}; `{self.prog} --help` lists them")
        return parsed


def _port(env_name: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = -1
        if not 0 <= value <= 65535:
            raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (0-65535; env "
                                             f"{env_name})")
        return value
    parse.__name__ = "port"
    return parse


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `pagedllm serve` (and `pagedllm-serve`)."""
    env = os.environ
    p.add_argument("model", nargs="?", default=None,
                   help="checkpoint directory (config.json, *.safetensors, tokenizer.json) or a "
                        "Hugging Face model id (fetched with huggingface_hub); env MODEL "
                        f"(default: {env.get('MODEL') or DEFAULT_MODEL})")
    p.add_argument("--model", dest="model_flag", default=None, help=argparse.SUPPRESS)
    s = p.add_argument_group("server")
    s.add_argument("--served-model-name", default=None,
                   help="the model id clients send and /v1/models lists (default: the Hugging "
                        "Face id, or the model directory's name)")
    s.add_argument("--host", default=env.get("HOST") or "127.0.0.1",
                   help="address of every public port; 0.0.0.0 for all interfaces (a "
                        "container). Triton's own HTTP API stays on 127.0.0.1. env HOST "
                        "(default: %(default)s)")
    s.add_argument("--port", "--openai-port", dest="port", type=_port("OPENAI_PORT"),
                   default=env.get("OPENAI_PORT") or "9000",
                   help="the OpenAI API: /v1, /health, /metrics (it answers /v2 too); env "
                        "OPENAI_PORT (default: %(default)s)")
    s.add_argument("--http-port", type=_port("HTTP_PORT"), default=env.get("HTTP_PORT") or "8000",
                   help="Triton's HTTP API (/v2) through the front door, which caps bodies at 1 "
                        "MiB (it answers /v1 too; the same port as --port serves both); env "
                        "HTTP_PORT (default: %(default)s)")
    s.add_argument("--grpc-port", type=_port("GRPC_PORT"), default=env.get("GRPC_PORT") or "8001",
                   help="Triton's gRPC API; env GRPC_PORT (default: %(default)s)")
    s.add_argument("--metrics-port", type=_port("METRICS_PORT"),
                   default=env.get("METRICS_PORT") or "8002",
                   help="tritonserver's Prometheus metrics (also on the API port's /metrics); "
                        "env METRICS_PORT (default: %(default)s)")
    s.add_argument("--triton-http-port", type=_port("TRITON_HTTP_PORT"),
                   default=env.get("TRITON_HTTP_PORT") or "0",
                   help="tritonserver's own HTTP API on 127.0.0.1, internal; 0: a free port. env "
                        "TRITON_HTTP_PORT (default: %(default)s)")
    s.add_argument("--api-key", default=env.get("PAGEDLLM_API_KEY") or None,
                   help="the key clients must send (Authorization: Bearer KEY), handed to the "
                        "front door as PAGEDLLM_API_KEY; env PAGEDLLM_API_KEY (default: none)")
    s.add_argument("--run-dir", type=Path, default=env.get("PAGEDLLM_RUN_DIR") or None,
                   help="where this server writes its model repository (RUN_DIR/model_repository,"
                        " kept after exit); one server at a time. env PAGEDLLM_RUN_DIR "
                        "(default: a new temporary directory, removed at exit)")
    s.add_argument("--repo", default=None, help=argparse.SUPPRESS)  # renamed: see _options
    s.add_argument("--engine-args", default=None, metavar="JSON",
                   help="engine settings as a JSON object, e.g. '{\"max_num_seqs\": 64}'; the "
                        "flags below override it. env ENGINE_ARGS (default: {})")
    s.add_argument("--tritonserver", type=Path, default=env.get("TRITONSERVER") or None,
                   help="the tritonserver binary; env TRITONSERVER (default: the nvidia-pytriton "
                        "wheel's, unpacked into the cache)")
    s.add_argument("--backend-directory", type=Path,
                   default=env.get("TRITON_BACKEND_DIR") or None,
                   help="its backends (python/, onnxruntime/, pagedllm/); env TRITON_BACKEND_DIR "
                        "(default: assembled in the cache for the wheel's server)")
    s.add_argument("--log-verbose", type=int, default=0,
                   help="tritonserver's log verbosity (default: %(default)s)")
    engine_flags.add_engine_flags(p)


def _engine_json(parser: argparse.ArgumentParser, text: str, source: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        parser.error(f"{source} is not valid JSON ({e}); write it like "
                     "'{\"max_num_seqs\": 64}' (keys in double quotes)")
    if not isinstance(value, dict):
        parser.error(f"{source} must be a JSON object like '{{\"max_num_seqs\": 64}}', "
                     f"got {type(value).__name__}")
    return value


def _options(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> ServeOptions:
    if ns.repo is not None:
        parser.error("--repo is now --run-dir DIR (the repository goes to DIR/model_repository)")
    if ns.model and ns.model_flag and ns.model != ns.model_flag:
        parser.error(f"two models given: {ns.model} and --model {ns.model_flag}")
    model = ns.model or ns.model_flag or os.environ.get("MODEL") or DEFAULT_MODEL
    if ns.engine_args is not None:
        json_source, text = "--engine-args", ns.engine_args
    else:
        json_source, text = "ENGINE_ARGS", os.environ.get("ENGINE_ARGS") or "{}"
    engine_args = _engine_json(parser, text, json_source)
    sources = {name: json_source for name in engine_args}
    flags = engine_flags.given_engine_flags(ns)
    engine_args.update(flags)
    sources.update({name: "--" + name.replace("_", "-") for name in flags})
    return ServeOptions(
        model=model, engine_args=engine_args, engine_sources=sources,
        served_model_name=ns.served_model_name, host=ns.host, port=ns.port,
        http_port=ns.http_port, grpc_port=ns.grpc_port, metrics_port=ns.metrics_port,
        triton_http_port=ns.triton_http_port, api_key=ns.api_key, run_dir=ns.run_dir,
        tritonserver=ns.tritonserver, backend_directory=ns.backend_directory,
        log_verbose=ns.log_verbose)


def serve_parser(prog: str = "pagedllm serve") -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, allow_abbrev=False,
                     description="Serve a model: tritonserver with the pagedllm engine, an "
                                 "OpenAI-compatible API in front, and a watchdog; in the "
                                 "foreground until Ctrl-C.")
    add_serve_arguments(parser)
    return parser


def parse_serve_args(argv: list[str] | None = None,
                     prog: str = "pagedllm serve") -> ServeOptions:
    """The ServeOptions of a `pagedllm serve` command line; exits with status 2 when it is bad."""
    parser = serve_parser(prog)
    return _options(parser, parser.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    """`pagedllm SUBCOMMAND ...` (one subcommand so far: serve)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "serve":
        from pagedllm_triton.serving import serve  # NOTE: after parsing: --help stays quick
        return serve.main(argv[1:], prog="pagedllm serve")
    top = _Parser(prog="pagedllm", description="pagedllm's command line.")
    commands = top.add_subparsers(title="commands", metavar="COMMAND")
    commands.add_parser("serve", help="serve a model (OpenAI API, Triton HTTP and gRPC); "
                                      "`pagedllm serve --help` lists its flags")
    top.parse_args(argv)  # --help, or an unknown command: exits
    top.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
