"""`pagedllm serve`'s command line and pre-flight checks, without a server.

Each bad setting is run as a user runs it (the console script's module, a subprocess) and must
end as one line on stderr naming it, exit status 2, no traceback, within 2 s: the checks come
before anything heavy starts. The rest are unit tests of the parser, the engine flags generated
from EngineConfig, the run directory and the model source.
"""
from __future__ import annotations

import dataclasses
import fcntl
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pagedllm.config import EngineConfig
from pagedllm_triton.serving import cli, engine_flags, model_source, run_dir, serve
from pagedllm_triton.serving.errors import SettingError
from pagedllm_triton.serving.tritonserver import free_port
from pagedllm_triton.serving.validate import Checked

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "models" / "default"
ENV = ("MODEL", "ENGINE_ARGS", "HOST", "OPENAI_PORT", "HTTP_PORT", "GRPC_PORT", "METRICS_PORT",
       "TRITON_HTTP_PORT", "PAGEDLLM_API_KEY", "PAGEDLLM_RUN_DIR", "TRITONSERVER",
       "TRITON_BACKEND_DIR")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def free_ports() -> list[str]:
    """Flags putting every public port on a free one (the defaults may be taken on this host)."""
    return [x for flag in ("--port", "--http-port", "--grpc-port", "--metrics-port")
            for x in (flag, str(free_port()))]


def run_cli(*argv: str, env: dict | None = None, ports: bool = True
            ) -> tuple[int, str, str, float]:
    """`pagedllm serve ARGV` in a subprocess: (status, stdout, stderr, seconds)."""
    environ = {k: v for k, v in os.environ.items() if k not in ENV}
    environ.update(env or {})
    cmd = [sys.executable, "-m", "pagedllm_triton.serving.cli", "serve", *argv,
           *(free_ports() if ports else [])]
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, env=environ, cwd=ROOT, timeout=60)
    return p.returncode, p.stdout, p.stderr, time.monotonic() - t0


def assert_one_line_error(result, *expected: str) -> None:
    code, out, err, seconds = result
    lines = [line for line in err.splitlines() if line.strip()]
    print(f"{seconds:.2f} s: {err.strip()}")
    assert code == 2, (code, out, err)
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("pagedllm serve: error: "), lines[0]
    for text in expected:
        assert text in lines[0], lines[0]
    assert seconds < 2.0, f"{seconds:.2f} s to fail"


def _checkpoint_without(tmp_path: Path, *missing: str) -> Path:
    d = tmp_path / "ckpt"
    shutil.copytree(DEFAULT_MODEL, d, ignore=shutil.ignore_patterns(*missing))
    return d


# ---- each bad setting: one line, status 2, < 2 s --------------------------------------------

def test_a_wrong_path():
    assert_one_line_error(run_cli("/no/such/dir"), "model directory /no/such/dir not found")


def test_a_hub_id_offline(tmp_path):
    result = run_cli("Qwen/Qwen3-0.6B", env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)})
    assert_one_line_error(result, "model Qwen/Qwen3-0.6B", "Hugging Face Hub",
                          "pass a local checkpoint directory")


def test_a_hub_id_without_huggingface_hub(tmp_path):
    shadow = tmp_path / "huggingface_hub"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('not installed (test)')\n")
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    assert_one_line_error(run_cli("Qwen/Qwen3-0.6B", env={"PYTHONPATH": path}),
                          "huggingface_hub is not installed", "local checkpoint directory")


def test_malformed_engine_args():
    assert_one_line_error(run_cli(env={"ENGINE_ARGS": "{max_num_seqs: 64}"}),
                          "ENGINE_ARGS is not valid JSON", "double quotes")


def test_a_misspelled_engine_setting():
    assert_one_line_error(run_cli(env={"ENGINE_ARGS": '{"max_num_seq": 64}'}),
                          "ENGINE_ARGS: unknown engine setting 'max_num_seq'",
                          "did you mean 'max_num_seqs'?")


def test_a_misspelled_flag():
    assert_one_line_error(run_cli("--max-num-seq", "64"),
                          "unknown flag --max-num-seq", "did you mean --max-num-seqs?")


@pytest.mark.parametrize("argv, env, expected", [
    (["--max-num-seqs", "0"], {}, "--max-num-seqs: max_num_seqs must be a positive int, got 0"),
    (["--gpu-memory-utilization", "1.5"], {}, "--gpu-memory-utilization: gpu_memory_utilization"),
    (["--max-num-seqs", "lots"], {}, "--max-num-seqs: invalid int value: 'lots'"),
    ([], {"ENGINE_ARGS": '{"max_num_seqs": "64"}'}, "ENGINE_ARGS: max_num_seqs must be an int"),
    ([], {"ENGINE_ARGS": "[64]"}, "ENGINE_ARGS must be a JSON object"),
    (["--max-model-len", "999999"], {}, "exceeds the model's max_position_embeddings 2048"),
], ids=["range", "float-range", "flag-type", "json-type", "json-list", "model-limit"])
def test_bad_engine_values(argv, env, expected):
    assert_one_line_error(run_cli(*argv, env=env), expected)


@pytest.mark.parametrize("missing, expected", [
    ("*.safetensors", "has no weights (*.safetensors"),
    ("tokenizer.json", "has no tokenizer.json"),
    ("config.json", "config.json not found"),
], ids=["weights", "tokenizer", "config"])
def test_a_directory_that_is_not_a_checkpoint(tmp_path, missing, expected):
    assert_one_line_error(run_cli(str(_checkpoint_without(tmp_path, missing))), expected)


def test_a_busy_port():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(str(DEFAULT_MODEL), "--port", str(free_port()), "--http-port",
                         str(free_port()), "--grpc-port", str(port), "--metrics-port",
                         str(free_port()), ports=False)
    assert_one_line_error(result, f"--grpc-port {port}: 127.0.0.1:{port} is already in use")


def test_one_port_for_two_things():
    port = str(free_port())
    result = run_cli("--port", port, "--http-port", str(free_port()), "--grpc-port", port,
                     "--metrics-port", str(free_port()), ports=False)
    assert_one_line_error(result, f"--grpc-port {port} is also --port's port")


def test_a_run_dir_in_use(tmp_path):
    with open(tmp_path / run_dir.LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lock.write("4242\n")
        lock.flush()
        result = run_cli(str(DEFAULT_MODEL), "--run-dir", str(tmp_path))
    assert_one_line_error(result, f"--run-dir {tmp_path} is in use by another server (pid 4242)")


def test_the_checkout_is_no_run_dir():
    assert_one_line_error(run_cli("--run-dir", str(ROOT)), "committed model_repository templates")


# ---- the parser ------------------------------------------------------------------------------

def test_help_lists_every_flag_with_its_default():
    code, out, err, _ = run_cli("--help", ports=False)
    assert code == 0, err
    parser = cli.serve_parser()
    for action in parser._actions:
        if action.help in (None, "==SUPPRESS==") or action.dest == "help":
            continue
        assert "default" in action.help, f"{action.option_strings or action.dest}: no default"
        for flag in action.option_strings:
            assert flag in out, flag
    for field in dataclasses.fields(EngineConfig):
        if field.name != "model":
            assert "--" + field.name.replace("_", "-") in out, field.name
    for flag in ("--max-model-len", "--served-model-name", "--host", "--port", "--api-key",
                 "--enable-prefix-caching", "--no-enable-prefix-caching"):
        assert flag in out


def test_each_engine_field_gets_a_flag_and_its_docstring():
    names = [f.name for f in engine_flags.engine_fields()]
    assert names == [f.name for f in dataclasses.fields(EngineConfig) if f.name != "model"]
    for f in engine_flags.engine_fields():
        assert len(f.help) > 10, f"EngineConfig's docstring says nothing of {f.name}"


def test_flags_override_engine_args_and_the_environment_gives_defaults(monkeypatch):
    monkeypatch.setenv("ENGINE_ARGS", '{"max_num_seqs": 8, "block_size": 32}')
    monkeypatch.setenv("OPENAI_PORT", "9100")
    monkeypatch.setenv("MODEL", "/some/model")
    options = cli.parse_serve_args(["--max-num-seqs", "64", "--no-enable-prefix-caching",
                                    "--dtype", "half", "--num-gpu-blocks-override", "100"])
    assert options.engine_args == {"max_num_seqs": 64, "block_size": 32, "dtype": "float16",
                                   "enable_prefix_caching": False, "num_kv_blocks": 100}
    assert options.engine_sources == {"max_num_seqs": "--max-num-seqs",
                                      "block_size": "ENGINE_ARGS", "dtype": "--dtype",
                                      "enable_prefix_caching": "--enable-prefix-caching",
                                      "num_kv_blocks": "--num-kv-blocks"}
    assert (options.model, options.port, options.http_port) == ("/some/model", 9100, 8000)
    monkeypatch.delenv("ENGINE_ARGS")
    assert cli.parse_serve_args(["--dtype", "auto"]).engine_args == {"dtype": None}
    assert cli.parse_serve_args(["m", "--openai-port", "1"]).port == 1  # the old name stays


def test_vllm_style_command_line():
    options = cli.parse_serve_args(["/path/to/model", "--port", "8010", "--max-model-len",
                                    "1024", "--served-model-name", "m", "--host", "0.0.0.0",
                                    "--api-key", "k"])
    assert (options.model, options.port, options.host, options.served_model_name,
            options.api_key) == ("/path/to/model", 8010, "0.0.0.0", "m", "k")
    assert options.engine_args == {"max_model_len": 1024}


def test_the_api_key_reaches_the_front_door_in_its_environment_only():
    options = cli.parse_serve_args([str(DEFAULT_MODEL), "--api-key", "sk-test"])
    argv, env = serve.door_command(options, Checked(DEFAULT_MODEL, "m"), 1234, "127.0.0.1")
    assert env["PAGEDLLM_API_KEY"] == "sk-test" and "sk-test" not in " ".join(argv)
    assert argv[argv.index("--served-model-name") + 1] == "m"


def test_pagedllm_serve_alias_and_the_container_command(monkeypatch):
    """`pagedllm-serve --model DIR` (docker-compose.yml) still parses."""
    options = serve.parse_args(["--model", "/models/model", "--host", "0.0.0.0"])
    assert (options.model, options.host) == ("/models/model", "0.0.0.0")


# ---- run directories and model sources ---------------------------------------------------------

def test_a_temporary_run_dir_is_removed_and_a_given_one_kept(tmp_path):
    run = run_dir.open_run_dir(None)
    assert run.repository.parent.is_dir()
    run.close()
    assert not run.path.exists()
    given = run_dir.open_run_dir(tmp_path / "run")
    (given.repository / "stale").mkdir(parents=True)
    given.close()
    again = run_dir.open_run_dir(tmp_path / "run")  # a restart: the old repository goes
    assert not again.repository.exists() and again.path.exists()
    with pytest.raises(SettingError, match="in use by another server"):
        run_dir.open_run_dir(tmp_path / "run")
    again.close()


def test_a_run_dir_that_pagedllm_did_not_write_is_left_alone(tmp_path):
    (tmp_path / "model_repository" / "mine").mkdir(parents=True)
    with pytest.raises(SettingError, match="did not write"):
        run_dir.open_run_dir(tmp_path)
    assert (tmp_path / "model_repository" / "mine").exists()


@pytest.mark.parametrize("spec, hub", [("Qwen/Qwen3-0.6B", True), ("gpt2", True),
                                       ("/abs/dir", False), ("./rel", False), ("a/b/c", False),
                                       ("../x", False), ("~/m", False), ("org/..", False)])
def test_what_reads_as_a_hub_id(spec, hub):
    assert model_source.looks_like_hub_id(spec) is hub


def test_a_local_directory_wins_and_names_the_model():
    source = model_source.resolve(str(DEFAULT_MODEL))
    assert (source.path, source.name) == (DEFAULT_MODEL, "default")


def test_a_hub_model_is_named_by_its_id(monkeypatch, tmp_path):
    hub_errors = pytest.importorskip("huggingface_hub.errors")
    fake = type(sys)("huggingface_hub")
    fake.snapshot_download = lambda repo_id, allow_patterns: str(tmp_path)
    fake.errors = hub_errors
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    source = model_source.resolve("org/name")
    assert (source.path, source.name) == (tmp_path, "org/name")
