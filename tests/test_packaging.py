"""A wheel built from the repository carries what serving needs and nothing of the dev tools.

(`pip install .` into a fresh venv, then `pagedllm-serve --model DIR` from an empty directory,
was run by hand: README "Install". This test holds the part that can rot unseen: what the
wheel carries.)
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_carries_the_packages_templates_and_backend_entries(tmp_path):
    # NOTE: built from a copy: setuptools keeps a build/ folder in the source tree, whose stale
    # files would otherwise end up in later wheels.
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".cache", "build", "models", "docs", "tests", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(source)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("pagedllm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    tops = {n.split("/")[0] for n in names if not n.startswith("pagedllm-")}
    assert tops == {"pagedllm", "pagedllm_kernels", "pagedllm_triton", "pagedllm_openai",
                    "pagedllm_clients"}
    assert "pagedllm_triton/serving/serve.py" in names
    data = {n.split(".data/data/", 1)[1] for n in names if ".data/data/" in n}
    templates = {f"share/pagedllm/model_repository/{step}/config.pbtxt"
                 for step in ("ensemble", "llm", "preprocessing", "postprocessing")}
    entries = {f"share/pagedllm/backends/{b}/model.py" for b in ("pagedllm", "onnxruntime")}
    assert data == templates | entries
