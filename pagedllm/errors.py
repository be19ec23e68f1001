"""Errors the engine raises that callers tell apart from a plain bad request."""
from __future__ import annotations


class OverloadedError(ValueError):
    """The waiting queue is full (`EngineConfig.max_queue_len`): the caller should retry later."""
