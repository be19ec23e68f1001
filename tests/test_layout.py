"""The repository's rooms, checked on the import graph (every import statement, nested ones too).

- Every package folder is named exactly as it is imported, and pyproject.toml maps nothing:
  setuptools finds each package under its top-level folder (`where`).
- The engine (`pagedllm`) imports nothing of Triton Inference Server and nothing of the
  project's other packages but its kernels (`pagedllm_kernels`); the kernels import nothing of
  ours.
- The Triton adapter (`pagedllm_triton`, but its `serving` runtime) holds no engine logic: it
  reaches the engine only through the engine's public front (config, engine, engine loop and
  process, outputs, sampling params, tokenizer, errors), never its scheduler, cache or runner.
- The OpenAI service (`pagedllm_openai`) talks to Triton only: it imports neither the engine, nor
  the adapter, nor torch (it runs beside Triton, not inside it).
- Nothing under scripts/ (the dev tools, `pagedllm_tools`) is imported by product code.
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

ROOT = Path(__file__).resolve().parent.parent

# Import name -> folder: each top-level card folder holds its package folder of the same name.
PACKAGES = {"pagedllm": ROOT / "pagedllm",
            "pagedllm_kernels": ROOT / "kernels" / "pagedllm_kernels",
            "pagedllm_triton": ROOT / "backends" / "pagedllm_triton",
            "pagedllm_openai": ROOT / "openai_server" / "pagedllm_openai",
            "pagedllm_clients": ROOT / "clients" / "pagedllm_clients",
            "pagedllm_tools": ROOT / "scripts" / "pagedllm_tools"}
PRODUCT = {"pagedllm", "pagedllm_kernels", "pagedllm_triton", "pagedllm_openai",
           "pagedllm_clients"}
TRITON_SERVER_NAMES = {"triton_python_backend_utils", "tritonclient", "tritonserver",
                       "tritonfrontend"}
OURS = set(PACKAGES)
# What the adapter may use of the engine: its public front, not its inner rooms.
ENGINE_FRONT = {"pagedllm", "pagedllm.config", "pagedllm.engine", "pagedllm.engine_loop",
                "pagedllm.engine_process", "pagedllm.outputs", "pagedllm.sampling_params",
                "pagedllm.tokenizer", "pagedllm.errors"}


def _modules() -> dict[str, Path]:
    """Every module of the project's packages: dotted name -> file."""
    found: dict[str, Path] = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
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
    assert "pagedllm_kernels" in GRAPH["pagedllm.model_runner"]
    assert "pagedllm.engine" in GRAPH["pagedllm_triton.llm_model"]  # inside a function
    assert "triton_python_backend_utils" in GRAPH["pagedllm_triton.llm_model"]
    assert "torch" in _closure("pagedllm.engine")


def test_every_package_folder_is_named_as_it_is_imported():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "package-dir" not in setuptools, "map no names: name each folder as it is imported"
    found = set()
    for where in setuptools["packages"]["find"]["where"]:
        for init in (ROOT / where).glob("*/__init__.py"):
            found.add(init.parent.name)
            assert init.parent.relative_to(ROOT).parts[-1] == init.parent.name
    assert found >= PRODUCT, f"not found by setuptools: {PRODUCT - found}"
    for name, folder in PACKAGES.items():
        assert folder.name == name.split(".")[-1] and (folder / "__init__.py").exists(), name
    # The backend folders Triton loads are not packages: `backends/pagedllm` never shadows the
    # engine package `pagedllm`.
    for backend in ("pagedllm", "onnxruntime"):
        assert not (ROOT / "backends" / backend / "__init__.py").exists()


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.split(".")[0] == "pagedllm"))
def test_the_engine_imports_nothing_of_triton_server_or_the_other_rooms(module):
    reached = _closure(module)
    assert not reached & TRITON_SERVER_NAMES, f"{module} reaches {reached & TRITON_SERVER_NAMES}"
    others = {m for m in reached if m.split(".")[0] in OURS - {"pagedllm", "pagedllm_kernels"}}
    assert not others, f"{module} imports {others}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("pagedllm_kernels")))
def test_the_kernels_stand_alone(module):
    reached = _closure(module)
    assert not {m for m in reached if m.split(".")[0] in OURS - {"pagedllm_kernels"}}


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("pagedllm_triton")
                                          and not m.startswith("pagedllm_triton.serving")))
def test_the_adapter_holds_no_engine_logic(module):
    engine = {m for m in GRAPH[module] if m.split(".")[0] == "pagedllm"}
    assert engine <= ENGINE_FRONT, f"{module} reaches into the engine: {engine - ENGINE_FRONT}"


def test_the_backend_entry_files_only_import_the_adapter():
    for backend, target in (("pagedllm", "pagedllm_triton.llm_model"),
                            ("onnxruntime", "pagedllm_triton.onnx_model")):
        tree = ast.parse((ROOT / "backends" / backend / "model.py").read_text())
        froms = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert froms == [target], f"backends/{backend}/model.py imports {froms}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("pagedllm_openai")))
def test_the_openai_service_talks_to_triton_only(module):
    reached = _closure(module)
    rooms = {m for m in reached if m.split(".")[0] in OURS - {"pagedllm_openai"}}
    assert not rooms, f"{module} imports {rooms}"
    assert "torch" not in reached


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.split(".")[0] in PRODUCT))
def test_product_code_never_imports_the_dev_tools(module):
    assert not {m for m in GRAPH[module] if m.startswith("pagedllm_tools")}, module


def test_nothing_outside_tests_imports_from_tests():
    test_modules = {p.stem for p in (ROOT / "tests").glob("*.py")}
    for module, targets in GRAPH.items():
        assert not targets & test_modules, f"{module} imports {targets & test_modules} from tests/"


def test_the_adapter_stub_imports_no_torch_in_engine_process_mode():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import fake_pb_utils; "
            "fake_pb_utils.install(); import pagedllm_triton.llm_model; "
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
