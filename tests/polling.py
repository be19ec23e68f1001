"""wait_until: poll a condition that another thread or process makes true."""
from __future__ import annotations

import time


def wait_until(predicate, timeout: float = 5.0) -> bool:
    """True as soon as predicate() is; its last value after `timeout` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()
