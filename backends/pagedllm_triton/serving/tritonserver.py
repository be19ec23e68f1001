"""A real tritonserver 2.51 without Docker: fetch it, assemble its backend directory, launch it.

The `nvidia-pytriton==0.7.0` wheel carries the server of NGC release 24.10 with its Python backend.
It is unpacked once into the cache (paths.cache_dir(); never pip-installed: the wheel pins
numpy<2). The backend directory <cache>/triton_backends holds:

    python/       libtriton_python.so, triton_python_backend_utils.py, the stub for this Python
    pagedllm/     -> backends/pagedllm   (the engine's Python-based backend: model.py)
    onnxruntime/  -> backends/onnxruntime (ONNX Runtime as a Python-based backend, because the
                     wheel's server has no native onnxruntime backend; see its README)

(backends/ as installed: paths.backend_sources().)

`launch()` starts a server on a filled model repository and waits until it is ready; `stop()`
ends it. `make serve` (pagedllm_triton.serving.serve), the tests and the benchmarks use them.
`server_command()` also takes another installed server (the NGC container's /opt/tritonserver),
which brings its own backends and libraries.
"""
from __future__ import annotations

import os
import shutil
import site
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
import zipfile
from pathlib import Path

from pagedllm_triton.serving.control_plane import AdminKey
from pagedllm_triton.serving.paths import backend_sources, cache_dir

CACHE = cache_dir()
WHEEL = "nvidia-pytriton==0.7.0"
SERVER_DIR = CACHE / "tritonserver"
BACKEND_DIR = CACHE / "triton_backends"
STUB_SITE = CACHE / "stub-site"
# The Python backend of 2.51 returns EMPTY output tensors under numpy 2 (seen here: a [1, 1] INT32
# output arrived with 0 bytes); the stubs get numpy 1.26 ahead of this environment's numpy 2.
STUB_NUMPY = "numpy==1.26.4"


def ensure_server() -> Path:
    """Unpacks the server from the wheel (downloading it if needed); returns the unpack root."""
    binary = SERVER_DIR / "pytriton" / "tritonserver" / "bin" / "tritonserver"
    if binary.exists():
        return SERVER_DIR
    wheels = CACHE / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = sorted(wheels.glob("nvidia_pytriton-0.7.0-*.whl"))
    if not found:
        print(f"downloading {WHEEL} (55 MB, once) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels),
                        WHEEL], check=True)
        found = sorted(wheels.glob("nvidia_pytriton-0.7.0-*.whl"))
    tmp = SERVER_DIR.with_suffix(".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(found[0]) as z:
        members = [m for m in z.namelist()
                   if m.startswith(("pytriton/tritonserver/", "nvidia_pytriton.libs/"))]
        z.extractall(tmp, members)
    for path in (tmp / "pytriton" / "tritonserver").rglob("*"):
        if path.is_file() and ("bin" in path.parts or "python_backend_stubs" in path.parts):
            path.chmod(0o755)
    shutil.rmtree(SERVER_DIR, ignore_errors=True)
    tmp.rename(SERVER_DIR)
    return SERVER_DIR


def assemble_backends() -> Path:
    """Builds the backend directory for the running Python's version; returns it."""
    server = ensure_server() / "pytriton" / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = server / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise RuntimeError(f"the tritonserver wheel has no Python backend stub for Python {version}")
    python = BACKEND_DIR / "python"
    python.mkdir(parents=True, exist_ok=True)
    for src in (server / "backends" / "python" / "libtriton_python.so",
                server / "backends" / "python" / "triton_python_backend_utils.py", stub):
        dst = python / src.name
        if not dst.exists() or dst.stat().st_size != src.stat().st_size:
            shutil.copy2(src, dst)
    for name in ("pagedllm", "onnxruntime"):
        link = BACKEND_DIR / name
        if link.is_symlink() and link.resolve() != (backend_sources() / name).resolve():
            link.unlink()  # another install's
        if not link.is_symlink():
            shutil.rmtree(link, ignore_errors=True)
            link.symlink_to(backend_sources() / name, target_is_directory=True)
    return BACKEND_DIR


def ensure_stub_site() -> Path:
    """Installs numpy<2 for the Python backend stubs into .cache/stub-site (once)."""
    marker = STUB_SITE / ".installed"
    if not marker.exists() or marker.read_text() != STUB_NUMPY:
        shutil.rmtree(STUB_SITE, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                        str(STUB_SITE), STUB_NUMPY], check=True)
        marker.write_text(STUB_NUMPY)
    return STUB_SITE


def server_env() -> dict[str, str]:
    """Environment for tritonserver and the Python stubs it starts.

    The stub embeds a shared libpython: the one of the Python running this script goes first on
    LD_LIBRARY_PATH (else the loader may pick the system's, another patch release). The stub runs
    Python isolated, so it ignores PYTHONPATH; our backends' model.py make its entries site
    directories themselves: the stubs' numpy 1.x and this environment's site-packages (the
    project installed, or its editable install's .pth files). The backend directory Triton puts
    on the stub's path holds a folder `pagedllm/` without `__init__.py`, which never shadows the
    engine package. The `llm` model's engine process (a spawned child) runs
    this same interpreter.
    """
    env = dict(os.environ)
    libs = [str(SERVER_DIR / "nvidia_pytriton.libs"), sysconfig.get_config_var("LIBDIR")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [*libs, env.get("LD_LIBRARY_PATH")]))
    paths = [str(ensure_stub_site()), *site.getsitepackages()]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [*paths, env.get("PYTHONPATH")]))
    env.setdefault("PAGEDLLM_PYTHON", sys.executable)  # the engine process's interpreter
    return env


def server_binary() -> Path:
    return ensure_server() / "pytriton" / "tritonserver" / "bin" / "tritonserver"


def installed_server_env() -> dict[str, str]:
    """Environment for a server installed with its own libraries and Python stub (the NGC
    container's): nothing to add, since its stub's Python finds numpy 1.x and the project's
    packages in its own site-packages. The engine process runs this same interpreter."""
    env = dict(os.environ)
    env.setdefault("PAGEDLLM_PYTHON", sys.executable)
    return env


def server_command(repo: Path, http_port: int, grpc_port: int, metrics_port: int,
                   log_verbose: int = 0, models: tuple[str, ...] = ("*",),
                   binary: Path | None = None, backend_dir: Path | None = None,
                   host: str = "127.0.0.1", admin: AdminKey | None = None,
                   grpc_host: str | None = None) -> tuple[list[str], dict[str, str]]:
    """The tritonserver argv and environment for a filled repository (installs what is missing).

    Explicit model control, `models` loaded at start: a model can then unload itself (the `llm`
    model does when its engine dies) and the watchdog can load it again (watchdog.py). The
    control plane (load/unload, repository index, shared memory, logging, trace) is
    always behind `admin` (control_plane.py); None: a fresh key that nobody holds.
    `binary` and `backend_dir` default to the wheel's server and the assembled directory; a
    binary from elsewhere runs with installed_server_env(). gRPC and metrics bind `host`; the
    HTTP API stays on 127.0.0.1 (it is internal: 2.51's HTTP server has no body limit);
    `grpc_host`, when given, binds gRPC elsewhere than `host` (make serve: 127.0.0.1 when API
    keys are set, since tritonserver's gRPC port cannot check them).
    """
    admin = admin or AdminKey.new()
    backends = Path(backend_dir) if backend_dir else assemble_backends()
    binary = Path(binary) if binary else server_binary()
    argv = [str(binary), f"--model-repository={repo}",
            f"--backend-directory={backends}",
            "--http-address=127.0.0.1", f"--http-port={http_port}",
            f"--grpc-address={grpc_host or host}", f"--grpc-port={grpc_port}",
            f"--metrics-address={host}", f"--metrics-port={metrics_port}",
            "--allow-metrics=true", "--allow-gpu-metrics=false",
            "--exit-timeout-secs=3", f"--log-verbose={log_verbose}",
            "--model-config-name=host",  # configs/host.pbtxt where the repository has one
            "--model-control-mode=explicit", *[f"--load-model={m}" for m in models],
            *admin.server_flags()]
    wheel = binary.resolve().is_relative_to(SERVER_DIR.resolve())
    return argv, server_env() if wheel else installed_server_env()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(repo: Path, http_port: int, grpc_port: int, metrics_port: int, log: Path,
           models: tuple[str, ...] = ("*",), timeout: float = 180.0,
           admin: AdminKey | None = None) -> subprocess.Popen:
    """Starts tritonserver in the background (output to `log`); returns once it is ready.

    `admin` opens its control plane (give the same key to a Watchdog); None: nobody can.

    Raises:
        RuntimeError: it exited or was not ready within `timeout` s (the log's tail says why).
    """
    argv, env = server_command(repo, http_port, grpc_port, metrics_port, models=models,
                               admin=admin)
    process = subprocess.Popen(argv, env=env, stdout=log.open("w"),
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
    """Ends a launched server: SIGTERM, then SIGKILL after `timeout` s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
