"""Keeps the served models ready: loads what was unloaded, reloads what died.

tritonserver 2.51 never restarts a Python backend stub that died: its models stay "ready" while
every request fails with "Stub process '<model>_0_0' is not healthy", for good. And a model has
one way to say it is not ready: unload itself (the `llm` model does when its engine dies). So
`make serve` runs tritonserver with explicit model control and this watchdog beside it. Every
`interval` seconds it

- loads each model of the repository that is not ready (POST /v2/repository/models/M/load;
  loading `llm` loads the ensemble again too);
- sends a one-token probe through `ensemble`; an error naming a dead stub makes it unload and
  load that model (tritonserver then starts a new stub).

Each model has its own backoff (1, 2, 4, ... 60 s between failed tries) and at most
`max_restarts` restarts in `window` seconds; past that it is left down, logged, for a person.
`llm` is loaded with its config and the parameter `engine_restarts` = its restarts so far, so
the new instance's `pagedllm:engine_restarts_total` carries on counting.

Loading and unloading are tritonserver's control plane, locked behind a secret header
(control_plane.py): the watchdog is given the key and sends it with every POST.
"""
from __future__ import annotations

import json
import logging
import re
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from pagedllm_triton.serving.control_plane import AdminKey

logger = logging.getLogger("pagedllm.watchdog")

DEAD_STUB = re.compile(r"Stub process '(\w+?)_\d+_\d+' is not healthy")


@dataclass
class ModelState:
    """What the watchdog knows of one model."""

    name: str
    restarts: list[float] = field(default_factory=list)  # when each restart happened
    failures: int = 0  # failed tries in a row (sets the backoff)
    next_try: float = 0.0
    given_up: bool = False


class Watchdog:
    """Watches tritonserver's models over its HTTP API; `start()` runs it on a thread.

    Args:
        http_url: tritonserver's HTTP address, "host:port".
        models: the models that must be ready, dependencies first.
        interval: seconds between two looks.
        probe_every: seconds between two probe requests through the ensemble (0: never).
        max_restarts, window: at most this many restarts of one model in `window` seconds.
        admin: the key of tritonserver's control plane (None: a server without the lock).
    """

    def __init__(self, http_url: str, models=("preprocessing", "postprocessing", "llm", "ensemble"),
                 interval: float = 0.5, probe_every: float = 5.0, max_restarts: int = 10,
                 window: float = 3600.0, admin: AdminKey | None = None) -> None:
        self.url = f"http://{http_url}"
        self._headers = admin.http_headers() if admin is not None else {}
        self.models = {m: ModelState(m) for m in models}
        self.interval, self.probe_every = interval, probe_every
        self.max_restarts, self.window = max_restarts, window
        self._configs: dict[str, dict] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pagedllm-watchdog", daemon=True)
        self._last_probe = 0.0

    def start(self) -> "Watchdog":
        for name in self.models:  # the configs as loaded: the base of a reload's override
            try:
                self._configs[name] = self._get_json(f"/v2/models/{name}/config")
            except OSError as e:
                logger.warning("no config of %s yet (%s)", name, e)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops watching (at once if called twice, or before start)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def restarts(self, name: str) -> int:
        """How many times `name` was loaded again (all time)."""
        return len(self.models[name].restarts)

    # ---- the loop -------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the watchdog must outlive any one bad look
                logger.exception("watchdog check failed")

    def check(self) -> None:
        """One look: load what is not ready, then (when due) probe the ensemble."""
        now = time.monotonic()
        for state in self.models.values():
            if not self._ready(state.name):
                self._restart(state, now, unload_first=False)
        if self.probe_every and now - self._last_probe >= self.probe_every:
            self._last_probe = now
            error = self._probe()
            dead = DEAD_STUB.search(error or "")
            if dead and dead.group(1) in self.models:
                logger.error("model %s has a dead stub: %s", dead.group(1), error)
                self._restart(self.models[dead.group(1)], now, unload_first=True)

    def _restart(self, state: ModelState, now: float, unload_first: bool) -> None:
        if state.given_up or now < state.next_try:
            return
        state.restarts = [t for t in state.restarts if now - t < self.window]
        if len(state.restarts) >= self.max_restarts:
            state.given_up = True
            logger.error("%s restarted %d times in %.0f s: left down", state.name,
                         len(state.restarts), self.window)
            return
        try:
            if unload_first:
                self._post(f"/v2/repository/models/{state.name}/unload", {})
                self._wait_unloaded(state.name)
            self._post(f"/v2/repository/models/{state.name}/load", self._load_body(state))
        except OSError as e:
            state.failures += 1
            state.next_try = now + min(60.0, 2.0 ** (state.failures - 1))
            logger.warning("loading %s failed (%s); next try in %.0f s", state.name, e,
                           state.next_try - now)
            return
        state.failures, state.next_try = 0, 0.0
        state.restarts.append(now)
        logger.warning("loaded %s again (restart %d)", state.name, len(state.restarts))

    def _load_body(self, state: ModelState) -> dict:
        config = self._configs.get(state.name)
        if state.name != "llm" or config is None:
            return {}
        config = json.loads(json.dumps(config))
        restarts = len(state.restarts) + 1  # this one included
        config.setdefault("parameters", {})["engine_restarts"] = {"string_value": str(restarts)}
        return {"parameters": {"config": json.dumps(config)}}

    def _wait_unloaded(self, name: str, timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            index = self._post("/v2/repository/index", {"ready": False})
            states = {m.get("name"): m.get("state") for m in index or []}
            if states.get(name) not in ("READY", "UNLOADING", "LOADING"):
                return
            time.sleep(0.2)

    def _probe(self) -> str | None:
        """One token through the ensemble: None if it answered, else the error text."""
        body = {"text_input": "a", "max_tokens": 1, "exclude_input_in_output": True}
        try:
            self._post("/v2/models/ensemble/generate", body, timeout=30)
            return None
        except urllib.error.HTTPError as e:
            return e.read().decode(errors="replace")
        except OSError as e:
            return str(e)

    # ---- HTTP ------------------------------------------------------------------------------------

    def _ready(self, name: str) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v2/models/{name}/ready", timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    def _get_json(self, path: str):
        with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as r:
            return json.loads(r.read())

    def _post(self, path: str, body: dict, timeout: float = 120):
        request = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json",
                                                  **self._headers})
        with urllib.request.urlopen(request, timeout=timeout) as r:
            data = r.read()
        return json.loads(data) if data else None
