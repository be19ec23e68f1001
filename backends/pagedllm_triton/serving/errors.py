"""The error of a setting `pagedllm serve` cannot start with."""
from __future__ import annotations


class SettingError(ValueError):
    """A bad setting, found before anything started. Its message is one line that names the
    setting (the flag, or the environment variable it came from) and, where it can, the fix;
    `pagedllm serve` prints it and exits with status 2, without a traceback."""
