"""Where the server runtime finds what it ships and where it keeps what it builds.

Nothing here depends on where a checkout is: an installed wheel serves from any directory.

- The shipped files (the model repository's config.pbtxt templates and the two backend entry
  files `backends/<name>/model.py`) are installed as data files into `<prefix>/share/pagedllm`
  (pyproject.toml); an editable install reads them from the source tree the package itself
  sits in. PAGEDLLM_SHARE overrides both.
- The cache (the tritonserver unpacked from its wheel, the stubs' numpy, the assembled backend
  directory) is PAGEDLLM_CACHE, else `$XDG_CACHE_HOME/pagedllm` (`~/.cache/pagedllm`).
"""
from __future__ import annotations

import os
import sysconfig
from pathlib import Path

# backends/pagedllm_triton/serving/paths.py -> the source tree's root, in an editable install.
_SOURCE_TREE = Path(__file__).resolve().parents[3]


def share_dir() -> Path:
    """The folder holding `model_repository/` (templates) and `backends/` (entry files)."""
    if os.environ.get("PAGEDLLM_SHARE"):
        return Path(os.environ["PAGEDLLM_SHARE"])
    installed = Path(sysconfig.get_path("data")) / "share" / "pagedllm"
    if (installed / "model_repository").is_dir():
        return installed
    if (_SOURCE_TREE / "model_repository").is_dir():
        return _SOURCE_TREE
    raise RuntimeError(f"pagedllm's model repository templates are missing (looked in "
                       f"{installed} and {_SOURCE_TREE}); reinstall the package or set "
                       f"PAGEDLLM_SHARE")


def template_repository() -> Path:
    """The committed model repository: config.pbtxt files only, the same for every model."""
    return share_dir() / "model_repository"


def backend_sources() -> Path:
    """Holds `pagedllm/model.py` and `onnxruntime/model.py`, what tritonserver loads."""
    return share_dir() / "backends"


def cache_dir() -> Path:
    """Where downloads and unpacked servers are kept between runs."""
    if os.environ.get("PAGEDLLM_CACHE"):
        return Path(os.environ["PAGEDLLM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pagedllm"
