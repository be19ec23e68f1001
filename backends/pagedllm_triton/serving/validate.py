"""Pre-flight checks of `pagedllm serve`: what a user can get wrong, found before anything starts.

Without them, a misspelled engine setting or a directory without weights surfaced only after
tritonserver booted, as a TypeError deep in its log ending in "failed to load all models". Each
check raises a SettingError: one line naming the setting (the flag, or the environment variable
it came from), which serve.py prints before exiting with status 2. Nothing here imports torch or
reads weights, so a failure takes well under 2 s (a hub id being fetched aside).

Order: engine settings; the model when it is a local directory (or no hub id); the ports; the
model when it is a Hugging Face id still to fetch (a busy port should not wait for a download).
"""
from __future__ import annotations

import difflib
import errno
import socket
from dataclasses import dataclass
from pathlib import Path

from pagedllm.config import EngineConfig
from pagedllm.models.config import ModelConfig
from pagedllm_triton.serving import engine_flags, model_source
from pagedllm_triton.serving.cli import ServeOptions
from pagedllm_triton.serving.errors import SettingError
from pagedllm_triton.serving.engine_defaults import SERVER_DEFAULTS


@dataclass(frozen=True)
class Checked:
    """What the checks resolved: the checkpoint directory and the model id clients send."""

    model_dir: Path
    served_model_name: str


def preflight(options: ServeOptions) -> Checked:
    """Every check, in order; the first failure raises SettingError."""
    check_engine_settings(options)
    check_server_paths(options)
    fetch = model_source.needs_fetch(options.model)
    if not fetch:  # a local model is checked before the ports: its error is the likelier one
        source = _checked_model(options)
    check_ports(options)
    if fetch:  # NOTE: after the ports: a busy port should not wait for a download
        source = _checked_model(options)
    name = options.served_model_name or source.name
    if not name.strip():
        raise SettingError("--served-model-name must not be empty")
    return Checked(source.path, name)


def _checked_model(options: ServeOptions) -> model_source.ModelSource:
    source = model_source.resolve(options.model)
    check_model_dir(source.path)
    check_against_model(options, source.path)
    return source


def check_engine_settings(options: ServeOptions) -> None:
    """Names (with a did-you-mean), JSON types, then EngineConfig's own ranges."""
    fields = {f.name: f for f in engine_flags.engine_fields()}
    for name, value in options.engine_args.items():
        source = options.engine_sources.get(name, "engine settings")
        if name == "model":
            raise SettingError(f"{source}: 'model' is not an engine setting here; give the model "
                               "as the first argument (or MODEL)")
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SettingError(f"{source}: unknown engine setting {name!r}{hint}; "
                               "`pagedllm serve --help` lists them")
        problem = engine_flags.check_type(fields[name], value)
        if problem:
            raise SettingError(f"{source}: {problem}")
    try:  # NOTE: builds the dataclass only: it loads no model (the path is checked below)
        EngineConfig(model="-", **{**SERVER_DEFAULTS, **options.engine_args})
    except ValueError as e:
        named = str(e).split(" ", 1)[0]
        raise SettingError(f"{options.engine_sources.get(named, 'engine settings')}: {e}") \
            from None


def _ports(options: ServeOptions) -> list[tuple[str, str, int]]:
    """(flag, host, port) of each socket the server will bind."""
    ports = [("--port", options.host, options.port)]
    if options.http_port != options.port:  # NOTE: the same port serves /v1 and /v2 at once
        ports.append(("--http-port", options.host, options.http_port))
    ports += [("--grpc-port", options.host, options.grpc_port),
              ("--metrics-port", options.host, options.metrics_port)]
    if options.triton_http_port:
        ports.append(("--triton-http-port", "127.0.0.1", options.triton_http_port))
    return ports


def check_ports(options: ServeOptions) -> None:
    """Each port set once, in range, and free now on its address."""
    seen: dict[int, str] = {}
    for flag, host, port in _ports(options):
        if port == 0:
            raise SettingError(f"{flag} 0: give a port number (1-65535)")
        if port in seen:
            raise SettingError(f"{flag} {port} is also {seen[port]}'s port; give each its own")
        seen[port] = flag
        _check_free(flag, host, port)


def _check_free(flag: str, host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is free
        try:
            sock.bind((host, port))
        except socket.gaierror:
            raise SettingError(f"--host {host}: not an address this machine can bind") from None
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise SettingError(f"{flag} {port}: {host}:{port} is already in use (another "
                                   f"server?); choose another with {flag}") from None
            if e.errno == errno.EADDRNOTAVAIL:
                raise SettingError(f"--host {host}: not an address of this machine") from None
            if e.errno == errno.EACCES:
                raise SettingError(f"{flag} {port}: not allowed to bind it (ports below 1024 "
                                   "need privileges)") from None
            raise SettingError(f"{flag} {port}: cannot bind {host}:{port} ({e.strerror})") \
                from None


def check_server_paths(options: ServeOptions) -> None:
    """An explicit tritonserver binary and backend directory exist."""
    if options.tritonserver is not None and not options.tritonserver.is_file():
        raise SettingError(f"--tritonserver {options.tritonserver}: no such file")
    if options.backend_directory is not None and not options.backend_directory.is_dir():
        raise SettingError(f"--backend-directory {options.backend_directory}: no such directory")


def check_model_dir(model_dir: Path) -> None:
    """A Hugging Face checkpoint the engine can load: a supported config.json, safetensors
    weights and a tokenizer.json."""
    try:
        ModelConfig.from_dir(str(model_dir))
    except ValueError as e:
        raise SettingError(f"model {model_dir}: {e}") from None
    if not any(model_dir.glob("*.safetensors")):
        raise SettingError(f"model directory {model_dir} has no weights (*.safetensors; "
                           "pagedllm reads no other format)")
    if not (model_dir / "tokenizer.json").is_file():
        raise SettingError(f"model directory {model_dir} has no tokenizer.json (pagedllm reads "
                           "the Hugging Face `tokenizers` file)")


def check_against_model(options: ServeOptions, model_dir: Path) -> None:
    """Settings the model bounds: max_model_len within its max_position_embeddings."""
    max_len = options.engine_args.get("max_model_len")
    limit = ModelConfig.from_dir(str(model_dir)).max_position_embeddings
    if max_len is not None and max_len > limit:
        source = options.engine_sources.get("max_model_len", "max_model_len")
        raise SettingError(f"{source}: max_model_len {max_len} exceeds the model's "
                           f"max_position_embeddings {limit}")
