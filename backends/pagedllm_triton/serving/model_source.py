"""MODEL as a user types it: a checkpoint directory, or a Hugging Face model id.

A local directory wins (vLLM's rule). Anything else that reads as a hub id (`org/name`, `name`)
is fetched with huggingface_hub into its cache (HF_HOME; HF_TOKEN for a gated model): only the
files the engine reads (*.json, *.safetensors, *.jinja). huggingface_hub falls back to a cached
copy when the hub cannot be reached, so a server restarts offline. It is an optional
dependency, imported here and only for a hub id: without it, a directory is all MODEL can be.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from pagedllm_triton.serving.errors import SettingError

HUB_FILES = ["*.json", "*.safetensors", "*.jinja"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


@dataclass(frozen=True)
class ModelSource:
    """Where a model's checkpoint is, and the id clients call it by unless told otherwise.

    Attributes:
        path: the checkpoint directory (absolute).
        name: the Hugging Face id, or the directory's name.
    """

    path: Path
    name: str


def looks_like_hub_id(spec: str) -> bool:
    """`org/name` or `name`: no leading `/`, `.` or `~`, at most one `/`, no `..`."""
    return bool(_HUB_ID.match(spec)) and ".." not in spec and not spec.endswith(".")


def needs_fetch(spec: str) -> bool:
    """Whether resolve() would ask the hub: no such path here, and it reads as a hub id."""
    return not Path(spec).expanduser().exists() and looks_like_hub_id(spec)


def resolve(spec: str) -> ModelSource:
    """The checkpoint directory MODEL names: itself, or the hub's copy in the local cache.

    Raises:
        SettingError: no such directory, and not a hub id that could be fetched (why not).
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        return ModelSource(path.resolve(), path.resolve().name)
    if path.exists():
        raise SettingError(f"model {spec} is a file; give the checkpoint directory "
                           "(config.json, *.safetensors, tokenizer.json)")
    if not looks_like_hub_id(spec):
        raise SettingError(f"model directory {spec} not found")
    return ModelSource(_fetch(spec), spec)


def _fetch(repo_id: str) -> Path:
    local = "pass a local checkpoint directory instead"
    try:
        import huggingface_hub
        from huggingface_hub import errors
    except ImportError:
        raise SettingError(
            f"model {repo_id}: no such directory here, and huggingface_hub is not installed to "
            f"fetch it from the Hugging Face Hub (pip install huggingface_hub), or {local}"
        ) from None
    try:
        return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except errors.GatedRepoError:
        why = "is gated: accept its terms on huggingface.co and set HF_TOKEN"
    except errors.RepositoryNotFoundError:
        why = ("is neither a directory here nor a model on the Hugging Face Hub (a private one "
               "needs HF_TOKEN)")
    except errors.LocalEntryNotFoundError:
        off = os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("", "0", "false", "no")
        reason = "is switched off (HF_HUB_OFFLINE)" if off else "cannot be reached"
        why = (f"is not a directory here, the Hugging Face Hub {reason} and no copy is cached; "
               f"run `hf download {repo_id}` where the hub is reachable, or {local}")
    except Exception as e:  # noqa: BLE001 - the hub's many failures: one line each
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        why = f"could not be fetched from the Hugging Face Hub ({type(e).__name__}: {first})"
    raise SettingError(f"model {repo_id} {why}")
