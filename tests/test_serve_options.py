"""serve.py's options for another tritonserver (the NGC container's, docker-compose.yml): read
from flags and the environment, and put on tritonserver's command line as given. Nothing is
downloaded and no server starts; the wheel's default command is pinned as it was."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pagedllm_triton.serving import repository, serve, tritonserver
from pagedllm_triton.serving.control_plane import AdminKey

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "default"

NGC_BINARY = Path("/opt/tritonserver/bin/tritonserver")
NGC_BACKENDS = Path("/opt/tritonserver/backends")
ENV = ("HOST", "TRITONSERVER", "TRITON_BACKEND_DIR", "ENGINE_ARGS", "PAGEDLLM_PYTHON",
       "PAGEDLLM_API_KEY", "PAGEDLLM_API_KEY_FILE")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def _never(*_args):
    raise AssertionError("the wheel's server was fetched or assembled")


def test_defaults_are_the_local_route():
    args = serve.parse_args([])
    assert (args.host, args.tritonserver, args.backend_directory) == ("127.0.0.1", None, None)


def test_environment_gives_the_defaults_and_flags_win(monkeypatch):
    monkeypatch.setenv("HOST", "0.0.0.0")
    monkeypatch.setenv("TRITONSERVER", str(NGC_BINARY))
    monkeypatch.setenv("TRITON_BACKEND_DIR", str(NGC_BACKENDS))
    monkeypatch.setenv("ENGINE_ARGS", "")  # docker-compose.yml passes an unset one as ""
    args = serve.parse_args([])
    assert (args.host, args.tritonserver, args.backend_directory) == \
        ("0.0.0.0", NGC_BINARY, NGC_BACKENDS)
    assert args.engine_args == {}
    args = serve.parse_args(["--host", "::", "--tritonserver", "/x/tritonserver",
                             "--backend-directory", "/x/backends"])
    assert (args.host, args.tritonserver, args.backend_directory) == \
        ("::", Path("/x/tritonserver"), Path("/x/backends"))


def test_an_installed_server_runs_as_given(monkeypatch, tmp_path):
    for name in ("ensure_server", "assemble_backends", "ensure_stub_site"):
        monkeypatch.setattr(tritonserver, name, _never)
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/tritonserver/lib")
    argv, env = tritonserver.server_command(tmp_path, 18000, 18001, 18002, binary=NGC_BINARY,
                                            backend_dir=NGC_BACKENDS, host="0.0.0.0")
    assert argv[0] == str(NGC_BINARY)
    assert f"--backend-directory={NGC_BACKENDS}" in argv
    assert {"--http-address=127.0.0.1", "--grpc-address=0.0.0.0",
            "--metrics-address=0.0.0.0"} <= set(argv)
    assert env["LD_LIBRARY_PATH"] == "/opt/tritonserver/lib"  # its own libraries, untouched
    assert env["PAGEDLLM_PYTHON"] == sys.executable


def test_the_wheels_command_is_unchanged(monkeypatch, tmp_path):
    binary = tritonserver.SERVER_DIR / "pytriton" / "tritonserver" / "bin" / "tritonserver"
    monkeypatch.setattr(tritonserver, "assemble_backends", lambda: tmp_path / "backends")
    monkeypatch.setattr(tritonserver, "server_binary", lambda: binary)
    monkeypatch.setattr(tritonserver, "server_env", lambda: {"the": "wheel's"})
    want = [str(binary), f"--model-repository={tmp_path}",
            f"--backend-directory={tmp_path / 'backends'}",
            "--http-address=127.0.0.1", "--http-port=1",
            "--grpc-address=127.0.0.1", "--grpc-port=2",
            "--metrics-address=127.0.0.1", "--metrics-port=3",
            "--allow-metrics=true", "--allow-gpu-metrics=false",
            "--exit-timeout-secs=3", "--log-verbose=0", "--model-config-name=host",
            "--model-control-mode=explicit", "--load-model=*",
            "--http-restricted-api=model-repository,shared-memory,logging,trace:"
            "pagedllm-admin-key=k3y",
            "--grpc-restricted-protocol=model-repository,shared-memory,logging,trace:"
            "pagedllm-admin-key=k3y"]
    assert tritonserver.server_command(tmp_path, 1, 2, 3, admin=AdminKey("k3y")) == \
        (want, {"the": "wheel's"})
    # the wheel's binary named explicitly (as --tritonserver) keeps the wheel's environment
    assert tritonserver.server_command(tmp_path, 1, 2, 3, binary=binary)[1] == {"the": "wheel's"}


def test_main_hands_the_options_to_the_server_command(monkeypatch):
    seen = {}

    def server_command(*args, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(serve.validate, "preflight",
                        lambda options: serve.Checked(DEFAULT_MODEL, "default"))
    monkeypatch.setattr(repository, "build", lambda *a: None)
    monkeypatch.setattr(serve.tritonserver, "server_command", server_command)
    with pytest.raises(SystemExit):
        serve.main(["--tritonserver", str(NGC_BINARY), "--backend-directory", str(NGC_BACKENDS),
                    "--host", "0.0.0.0"])
    admin = seen.pop("admin")
    assert isinstance(admin, AdminKey) and admin.value not in repr(admin)
    assert seen == {"binary": NGC_BINARY, "backend_dir": NGC_BACKENDS, "host": "0.0.0.0",
                    "grpc_host": None}


@pytest.mark.parametrize("host, reached", [("127.0.0.1", "127.0.0.1"), ("0.0.0.0", "127.0.0.1"),
                                           ("::", "127.0.0.1"), ("::1", "[::1]"),
                                           ("192.0.2.1", "192.0.2.1")])
def test_local_address(host, reached):
    assert serve.local_address(host) == reached


@pytest.mark.parametrize("argv, env, keys_set", [
    ([], {}, False),
    (["--api-key", "k1"], {}, True),
    ([], {"PAGEDLLM_API_KEY": "k2,k3"}, True),
    ([], {"PAGEDLLM_API_KEY_FILE": "keys.txt"}, True),
])
def test_api_keys_reach_the_front_door_by_environment(monkeypatch, argv, env, keys_set):
    """Keys go to the front door in its environment (not on its command line); with keys,
    tritonserver's gRPC port, which cannot check them, is reached on 127.0.0.1 only."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    options = serve.parse_args([str(DEFAULT_MODEL), "--host", "0.0.0.0", *argv])
    assert serve.keys_required(options) == keys_set
    checked = serve.Checked(DEFAULT_MODEL, "default")
    grpc_host = "127.0.0.1" if keys_set else "0.0.0.0"
    door_argv, door_env = serve.door_command(options, checked, 1, grpc_host)
    assert not any("k1" in a or "k2" in a for a in door_argv)
    if argv:
        assert door_env["PAGEDLLM_API_KEY"] == "k1"
    assert door_argv[door_argv.index("--triton-grpc-url") + 1].startswith("127.0.0.1:")


def test_the_control_plane_is_locked_whatever_the_caller_says(monkeypatch, tmp_path):
    """Every server this project starts has its control plane behind a key: a fresh one nobody
    holds when the caller gives none, and a different one each time."""
    for name in ("ensure_server", "assemble_backends", "ensure_stub_site"):
        monkeypatch.setattr(tritonserver, name, _never)
    flags = []
    for _ in range(2):
        argv, _env = tritonserver.server_command(tmp_path, 1, 2, 3, binary=NGC_BINARY,
                                                 backend_dir=NGC_BACKENDS)
        flags.append([a for a in argv if "restricted" in a])
    assert [len(f) for f in flags] == [2, 2] and flags[0] != flags[1]
    for flag in flags[0]:
        apis = flag.split("=", 1)[1].split(":")[0].split(",")
        assert set(apis) == {"model-repository", "shared-memory", "logging", "trace"}


@pytest.mark.parametrize("bad", ["", "a b", "a:b", "a=b", "a,b", "é"])
def test_an_admin_key_that_would_break_the_flag_is_refused(bad):
    with pytest.raises(ValueError, match="admin key"):
        AdminKey(bad)
