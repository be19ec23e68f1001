"""Edits of a committed config.pbtxt for one deployment (tests, benchmarks), kept to one entry.

Triton reads model settings from config.pbtxt; a test or a benchmark that needs another value
copies the repository and changes the one entry, so the rest stays what is committed.
"""
from __future__ import annotations

import re
from pathlib import Path


def set_parameter(config_path: Path, key: str, value: str) -> None:
    """Sets `parameters { key: KEY value: { string_value: ... } }` in a config.pbtxt file."""
    text = config_path.read_text()
    pattern = (r'(parameters\s*\{\s*key\s*:\s*"' + re.escape(key)
               + r'"\s*value\s*:\s*\{\s*string_value\s*:\s*)"[^"]*"')
    new, n = re.subn(pattern, lambda m: f'{m.group(1)}"{value}"', text)
    if n != 1:
        raise ValueError(f"{config_path} has no parameter {key!r} to set")
    config_path.write_text(new)
