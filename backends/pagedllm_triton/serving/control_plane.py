"""Triton's control plane, locked with tritonserver's own switches and a secret made at start-up.

tritonserver 2.51 serves its control plane on the same ports as inference: model load/unload and
the repository index, shared-memory registration, log and trace settings. `make serve` needs
explicit model control (the watchdog loads a dead model again), so without a lock any client
could unload `llm` in a loop. tritonserver can require a header on groups of APIs:

    --http-restricted-api=<api>,<api>,...:<header>=<value>
    --grpc-restricted-protocol=<protocol>,...:<header>=<value>

`AdminKey.new()` makes a random value once per start; it goes on tritonserver's command line and
to the watchdog, and nowhere else: not to the log, not to a file, not to the front door (which
serves the data plane only). gRPC clients would have to send it as the metadata key
`triton-grpc-protocol-<header>` (2.51 prefixes it); a refused gRPC call gets UNAVAILABLE "This
protocol is restricted, expecting header ...", a refused HTTP call 403.

NOTE: a process's command line is readable by other users of the same machine (/proc/PID/cmdline,
`ps`) unless /proc is mounted with hidepid=2; tritonserver 2.51 reads these switches from its
command line only. In a container only its own processes see it.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field

HEADER = "pagedllm-admin-key"
# The control plane. Left open: health, metadata, model-config and statistics, which are
# read-only (perf_analyzer, and genai-perf through it, read a model's config before they send and
# its statistics around every measurement: with statistics restricted, perf_analyzer 2.51 fails
# with "This protocol is restricted"), and inference.
RESTRICTED = ("model-repository", "shared-memory", "logging", "trace")
GRPC_PREFIX = "triton-grpc-protocol-"


@dataclass(frozen=True)
class AdminKey:
    """The header value that opens tritonserver's control plane (its repr hides it: an AdminKey
    in a log line or a traceback shows no secret)."""

    value: str = field(repr=False)

    def __post_init__(self) -> None:
        if not self.value or not self.value.isascii() or any(c in self.value for c in " ,:=\r\n"):
            raise ValueError("the admin key must be non-empty ASCII without spaces, ',', ':' or "
                             "'='")

    @classmethod
    def new(cls) -> AdminKey:
        """A fresh random key (256 bits)."""
        return cls(secrets.token_urlsafe(32))

    def server_flags(self) -> list[str]:
        """tritonserver's switches that put RESTRICTED behind this key, on HTTP and gRPC."""
        apis = ",".join(RESTRICTED)
        return [f"--http-restricted-api={apis}:{HEADER}={self.value}",
                f"--grpc-restricted-protocol={apis}:{HEADER}={self.value}"]

    def http_headers(self) -> dict[str, str]:
        """The header an HTTP call to the control plane carries."""
        return {HEADER: self.value}

    def grpc_headers(self) -> dict[str, str]:
        """The metadata a gRPC call to the control plane carries (tritonclient's `headers=`)."""
        return {GRPC_PREFIX + HEADER: self.value}
