"""The README as a new user runs it, against one real server; and two servers from one checkout.

Every ```bash and ```python block of README.md is marked with an HTML comment just above it:
`<!-- test: serve -->` (the one block that starts the server: this module's server runs it as
written, with the ports moved to free ones through the environment variables it reads),
`<!-- test: run -->` (run here with bash or Python against that server: exit status 0, no error
in the output), or `<!-- test: skip (why) -->`. A block without a mark fails the suite, so a new
command cannot go untested by accident. The `<!-- test: startup-lines -->` block lists the
lines a CPU start-up prints that a user may ignore: each must appear in this server's log.

The two-server test starts a second server (a tiny checkpoint) beside the README's, kills each
one's engine so that the watchdog loads its `llm` again, and checks each still answers with its
own model, and that the checkout's model_repository/ was not touched.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

pytest.importorskip("tritonclient.grpc")
pytest.importorskip("openai")

from pagedllm_tools.processes import descendants  # noqa: E402
from pagedllm_triton.serving.tritonserver import free_port  # noqa: E402
from polling import wait_until  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCK = re.compile(r"(?:<!-- test: (\w[\w-]*)(?: \((.*?)\))? -->\n)?```(\w+)\n(.*?)\n```", re.S)
COMMAND_LANGUAGES = ("bash", "python")
# The variables the server and the clients read; the README's own ports, moved by the tests.
PORTS = {"OPENAI_PORT": 9000, "HTTP_PORT": 8000, "GRPC_PORT": 8001, "METRICS_PORT": 8002}
SERVER_ENV = ("MODEL", "ENGINE_ARGS", "HOST", "PAGEDLLM_RUN_DIR", "PAGEDLLM_API_KEY",
              "TRITON_HTTP_PORT", "OPENAI_WORKERS")
# What a block's output must show, by how the block starts (besides status 0 and no error).
EXPECT = {
    "curl -s localhost:9000/v1/chat": ['"chat.completion"', "data: [DONE]", '"id":"default"',
                                       "200\n", "pagedllm:num_requests_running"],
    "from openai import OpenAI": [],
    "curl -s localhost:8000/v2": ['"text_output"', "32 requests, 0 errors"],
    ".venv/bin/pagedllm serve --help": ["--max-model-len", "--port PORT", "--api-key",
                                        "(default: auto)"],
    "make install": [],
    "from pagedllm import LLM": [],
}
PROMPT = "def fib(n):"


@dataclass
class Block:
    mark: str | None
    why: str | None
    language: str
    text: str

    @property
    def id(self) -> str:
        return self.text.splitlines()[0][:40]


def readme_blocks() -> list[Block]:
    return [Block(*m.groups()) for m in BLOCK.finditer(README.read_text())]


def commands(mark: str) -> list[Block]:
    return [b for b in readme_blocks() if b.mark == mark]


@dataclass
class Served:
    """A `pagedllm serve` (or `make serve`) started in a session of its own, as a terminal would."""

    process: subprocess.Popen
    ports: dict[str, int]
    log: Path

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.ports['OPENAI_PORT']}"

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in SERVER_ENV}
        env.update({k: str(v) for k, v in self.ports.items()})
        return env

    def health(self) -> int:
        try:
            with urllib.request.urlopen(f"{self.api}/health", timeout=15) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return 0

    def complete(self, model: str) -> str:
        body = json.dumps({"model": model, "prompt": PROMPT, "max_tokens": 12,
                           "temperature": 0}).encode()
        request = urllib.request.Request(f"{self.api}/v1/completions", body,
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as r:
            return json.load(r)["choices"][0]["text"]

    def engine_json(self) -> dict:
        [repo] = re.findall(r"repository (\S+)", self.text())[:1]
        return json.loads((Path(repo) / "llm" / "engine.json").read_text())

    def kill_engine(self) -> None:
        [engine] = [p for p, cmd in descendants(self.process.pid).items() if "spawn_main" in cmd]
        os.kill(engine, signal.SIGKILL)

    def group_alive(self) -> bool:
        self.process.poll()  # NOTE: reaps the leader, else its zombie keeps the group "alive"
        try:
            os.killpg(self.process.pid, 0)
            return True
        except ProcessLookupError:
            return False

    def group(self) -> list[str]:
        """'pid state command' of each process still in the server's process group."""
        left = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == self.process.pid:
                    cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                    left.append(f"{stat.parent.name} {fields[0]} {cmd[:150]}")
            except (OSError, IndexError, ValueError):
                continue
        return left

    def stop(self) -> int | None:
        """Ctrl-C: SIGINT to the whole process group, as a terminal sends it; then waits until
        every process of the group is gone (SIGKILL after 60 s). Returns the first process's
        status (bash's, for `make serve`: -2, killed by that SIGINT, as in a terminal)."""
        if self.group_alive():
            os.killpg(self.process.pid, signal.SIGINT)
            if not wait_until(lambda: not self.group_alive(), timeout=60):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        return self.process.returncode


def start(argv: list[str], log: Path, ports: dict[str, int] | None = None) -> Served:
    """Starts `argv` (cwd: the checkout) and waits for its `ready:` line."""
    ports = ports or {name: free_port() for name in PORTS}
    served = Served(None, ports, log)  # type: ignore[arg-type]
    served.process = subprocess.Popen(argv, cwd=ROOT, env=served.env(), stdout=log.open("w"),
                                      stderr=subprocess.STDOUT, start_new_session=True)
    if not wait_until(lambda: "ready:" in served.text() or served.process.poll() is not None,
                      timeout=400) or "ready:" not in served.text():
        served.stop()
        pytest.fail(f"the server did not become ready:\n{served.text()[-4000:]}")
    return served


def checkout_state() -> str:
    """The checkout's model_repository/ as git sees it, ignored files included."""
    return subprocess.run(["git", "status", "--porcelain", "--ignored", "--", "model_repository"],
                          cwd=ROOT, capture_output=True, text=True, check=True).stdout


def substitute(text: str, ports: dict[str, int]) -> str:
    for name, default in PORTS.items():
        text = text.replace(f"localhost:{default}", f"localhost:{ports[name]}")
    return text


@pytest.fixture(scope="module")
def before() -> str:
    return checkout_state()


@pytest.fixture(scope="module")
def readme_server(before, tmp_path_factory):
    [block] = commands("serve")
    served = start(["bash", "-c", block.text], tmp_path_factory.mktemp("readme") / "serve.log")
    yield served
    served.stop()


# ---- the README's blocks ----------------------------------------------------------------------

def test_every_command_block_is_marked():
    for block in readme_blocks():
        if block.language in COMMAND_LANGUAGES:
            assert block.mark in ("serve", "run", "skip"), f"unmarked block: {block.id!r}"
            assert block.mark != "skip" or block.why, f"a skip says why: {block.id!r}"
    assert len(commands("serve")) == 1 and commands("startup-lines")


@pytest.mark.parametrize("block", commands("run"), ids=lambda b: b.id)
def test_readme_block(readme_server, block):
    text = substitute(block.text, readme_server.ports)
    argv = ["bash", "-e", "-o", "pipefail", "-c", text] if block.language == "bash" else \
        [sys.executable, "-c", text]
    t0 = time.monotonic()
    p = subprocess.run(argv, cwd=ROOT, env=readme_server.env(), capture_output=True, text=True,
                       timeout=300)
    print(f"{time.monotonic() - t0:.1f} s\n{p.stdout[-3000:]}\n{p.stderr[-2000:]}")
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip(), "no output"
    assert not re.search(r'"error"\s*:', p.stdout), p.stdout[-3000:]
    for start_of_block, expected in EXPECT.items():
        if block.text.startswith(start_of_block):
            for text in expected:
                assert text in p.stdout, f"{text!r} not in the output"
            if "32 requests, 0 errors" in expected:
                assert p.stdout.count("32 requests, 0 errors") == 2
            break
    else:
        pytest.fail(f"EXPECT has no entry for the block {block.id!r}")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the lines of a machine without a GPU")
def test_the_startup_lines_the_readme_says_to_ignore_are_printed(readme_server):
    [block] = commands("startup-lines")
    log = readme_server.text()
    for line in block.text.splitlines():
        assert line in log, f"the README lists a line a start-up does not print: {line!r}"


# ---- vLLM's paths on the API port ------------------------------------------------------------

def test_health_metrics_and_models_on_the_api_port(readme_server):
    assert readme_server.health() == 200
    with urllib.request.urlopen(f"{readme_server.api}/metrics", timeout=10) as r:
        text = r.read().decode()
    for name in ("pagedllm:num_requests_running", "pagedllm:kv_cache_usage_perc",
                 "nv_inference_count", "pagedllm_openai:requests_total"):
        assert name in text, name
    with urllib.request.urlopen(f"{readme_server.api}/v1/models", timeout=10) as r:
        assert [m["id"] for m in json.load(r)["data"]] == ["default"]


# ---- two servers from one checkout -------------------------------------------------------------

def test_two_servers_from_one_checkout_keep_their_own_models(readme_server, tiny_checkpoints,
                                                             tmp_path, before):
    """The second one as a vLLM user types it: `pagedllm serve DIR --port P --max-model-len
    1024 --served-model-name tiny`. Each answers with its model, before and after its `llm` is
    loaded again; the checkout's model_repository/ is what it was."""
    tiny = tiny_checkpoints["llama"]
    ports = {name: free_port() for name in PORTS}
    second = start([sys.executable, "-m", "pagedllm_triton.serving.cli", "serve", tiny,
                    "--port", str(ports["OPENAI_PORT"]), "--max-model-len", "1024",
                    "--served-model-name", "tiny", "--run-dir", str(tmp_path / "run"),
                    "--num-kv-blocks", "128"], tmp_path / "second.log", ports)
    try:
        first_text = readme_server.complete("default")
        second_text = second.complete("tiny")
        assert first_text != second_text
        assert readme_server.engine_json()["model"] == str(ROOT / "models" / "default")
        assert second.engine_json()["model"] == str(Path(tiny).resolve())
        assert second.engine_json()["max_model_len"] == 1024
        assert (tmp_path / "run" / "model_repository" / "llm" / "engine.json").exists()
        for served, model, expected in ((readme_server, "default", first_text),
                                        (second, "tiny", second_text)):
            served.kill_engine()
            assert wait_until(lambda: served.health() == 503, timeout=20), "/health not 503"
            assert wait_until(lambda: served.health() == 200, timeout=120), served.text()[-3000:]
            assert served.complete(model) == expected, f"{model}: another model after reload"
        assert readme_server.complete("default") == first_text
        assert second.complete("tiny") == second_text
    finally:
        assert second.stop() == 0, second.text()[-3000:]
    assert (tmp_path / "run" / "model_repository").exists(), "--run-dir is kept"
    assert checkout_state() == before, "the checkout's model_repository/ changed"


def test_ctrl_c_stops_everything_and_removes_the_temporary_run_dir(readme_server):
    [repo] = re.findall(r"repository (\S+)", readme_server.text())[:1]
    t0 = time.monotonic()
    os.killpg(readme_server.process.pid, signal.SIGINT)
    gone = wait_until(lambda: not readme_server.group_alive(), timeout=60)
    assert gone, f"still running 60 s after Ctrl-C: {readme_server.group()}\n" \
                 f"{readme_server.text()[-3000:]}"
    print(f"all gone {time.monotonic() - t0:.1f} s after Ctrl-C; the log ends:\n"
          f"{readme_server.text()[-1500:]}")
    assert not Path(repo).exists(), "the temporary run directory is left"
    assert "Traceback" not in readme_server.text()
