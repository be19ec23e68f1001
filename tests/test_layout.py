"""The repository's rooms, checked on the import graph (every import statement, nested ones too).

- The engine (`pagedllm`, its kernels included) imports nothing of Triton Inference Server and
  nothing of the project's other packages.
- The Triton backend folder (`pagedllm_backends`) holds only what tritonserver loads: every module
  in it is reached from a backend's model.py, and no other package imports it.
- The OpenAI service (`pagedllm_openai`) talks to Triton only: it imports neither the engine, nor
  the backends, nor torch (it runs beside Triton, not inside it).
- Nothing outside tests/ imports from tests/.
- In engine-process mode the `llm` adapter's stub does not import torch.
- Every relative link in README.md and docs/ names a file of this repository.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pagedllm_tools import ROOT

# Import name -> folder, as pyproject.toml maps them.
PACKAGES = {"pagedllm": ROOT / "pagedllm", "pagedllm.kernels": ROOT / "kernels",
            "pagedllm_backends": ROOT / "backends", "pagedllm_tools": ROOT / "scripts",
            "pagedllm_clients": ROOT / "clients", "pagedllm_openai": ROOT / "openai_server"}
TRITON_SERVER_NAMES = {"triton_python_backend_utils", "tritonclient", "tritonserver",
                       "tritonfrontend"}
OURS = {"pagedllm", "pagedllm_backends", "pagedllm_tools", "pagedllm_clients", "pagedllm_openai"}


def _modules() -> dict[str, Path]:
    """Every module of the project's packages: dotted name -> file."""
    found: dict[str, Path] = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if package == "pagedllm" and parts[:1] == ["kernels"]:
                continue  # (no such folder; kernels/ is mapped above)
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Dotted names this module imports: our modules resolved, others by their top-level name."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in MODULES and target.split(".")[0] in OURS:
                target = target.rpartition(".")[0]  # `from pkg.mod import func` -> pkg.mod
            if target in MODULES:
                out.add(target)
            elif target:
                out.add(target.split(".")[0])
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _closure(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in GRAPH.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_the_graph_sees_the_known_imports():
    # The checker itself: imports it must resolve (absolute, from-import, nested, relative).
    assert "pagedllm.kernels" in GRAPH["pagedllm.model_runner"]
    assert "pagedllm.engine" in GRAPH["pagedllm_backends.pagedllm.model"]  # inside a function
    assert "triton_python_backend_utils" in GRAPH["pagedllm_backends.pagedllm.model"]
    assert "torch" in _closure("pagedllm.engine")


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.split(".")[0] == "pagedllm"))
def test_the_engine_imports_nothing_of_triton_server_or_the_other_rooms(module):
    reached = _closure(module)
    assert not reached & TRITON_SERVER_NAMES, f"{module} reaches {reached & TRITON_SERVER_NAMES}"
    others = {m for m in reached if m.split(".")[0] in OURS - {"pagedllm"}}
    assert not others, f"{module} imports {others}"


def test_the_backend_folder_holds_only_what_triton_loads():
    backend = {m for m in MODULES if m.startswith("pagedllm_backends")}
    entries = {"pagedllm_backends.pagedllm.model", "pagedllm_backends.onnxruntime.model"}
    reached = set().union(*(_closure(e) for e in entries)) | entries
    packages = {m for m in backend if MODULES[m].name == "__init__.py"}
    assert backend - packages <= reached, f"not loaded by any backend: {backend - packages - reached}"
    importers = {m for m, targets in GRAPH.items()
                 if not m.startswith("pagedllm_backends") and targets & backend}
    # Tools and tests may drive the backends; the engine and the clients never.
    assert not {m for m in importers if m.split(".")[0] in ("pagedllm", "pagedllm_clients")}


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("pagedllm_openai")))
def test_the_openai_service_talks_to_triton_only(module):
    reached = _closure(module)
    rooms = {m for m in reached if m.split(".")[0] in OURS - {"pagedllm_openai"}}
    assert not rooms, f"{module} imports {rooms}"
    assert "torch" not in reached


def test_nothing_outside_tests_imports_from_tests():
    test_modules = {p.stem for p in (ROOT / "tests").glob("*.py")}
    for module, targets in GRAPH.items():
        assert not targets & test_modules, f"{module} imports {targets & test_modules} from tests/"


def test_the_adapter_stub_imports_no_torch_in_engine_process_mode():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import fake_pb_utils; "
            "fake_pb_utils.install(); import pagedllm_backends.pagedllm.model; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent)],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")),
            *sorted(ROOT.glob("*/README.md")), *sorted(ROOT.glob("*/*/README.md"))]


@pytest.mark.parametrize("doc", _doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_doc_links_name_files_of_this_repository(doc):
    for target in re.findall(r"\]\(([^)#\s]+)", doc.read_text()):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        resolved = (doc.parent / target).resolve()
        assert resolved.is_relative_to(ROOT) and resolved.exists(), f"{doc.name}: {target}"


def test_every_console_script_names_a_function_that_exists():
    """pyproject's [project.scripts] entries import and resolve (pagedllm-generate once did not)."""
    import importlib
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for name, target in scripts.items():
        module, _, attr = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attr, None)), f"{name} -> {target}"
