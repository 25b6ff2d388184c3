"""SIGTERM in two steps: readiness turns false first, while requests are still served, and
only then does uvicorn stop listening and drain.

On Kubernetes a deleted pod leaves its Service's endpoints while kube-proxies, ingress
controllers and clients holding keep-alive connections catch up; requests keep arriving
for a few seconds. uvicorn alone closes its listener at the first SIGTERM, so those
requests were refused or reset. Here SIGTERM starts a drain delay: `/readyz` answers 503
(anything that probes it stops sending), every other request is served as before, each
reply says `Connection: close` (so clients reconnect, through the Service, to a pod that
stays), and once the delay is over the server stops as uvicorn does (stop accepting,
finish in-flight requests within `timeout_graceful_shutdown`, run the app's shutdown).

A second SIGTERM, or SIGINT (Ctrl-C), stops at once without waiting out the delay.
"""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType

import uvicorn

log = logging.getLogger(__name__)


class Draining:
    """Whether the server is in its drain delay; set from the signal handler."""

    def __init__(self) -> None:
        self._since: float | None = None

    @property
    def active(self) -> bool:
        return self._since is not None

    def start(self) -> None:
        if self._since is None:
            self._since = time.monotonic()

    def elapsed(self) -> float:
        return 0.0 if self._since is None else time.monotonic() - self._since


class DrainingServer(uvicorn.Server):
    """uvicorn's server with the drain delay of the module's doc (`delay` seconds; 0: none,
    SIGTERM stops at once as in plain uvicorn)."""

    def __init__(self, config: uvicorn.Config, draining: Draining, delay: float) -> None:
        super().__init__(config)
        self.draining = draining
        self.delay = delay

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if (sig == signal.SIGTERM and self.delay > 0 and not self.draining.active
                and not self.should_exit):
            self.draining.start()
            log.info("SIGTERM: /readyz answers 503 for %ss while requests are still served, "
                     "then the server drains and stops", self.delay)
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        # Checked every 0.1 s by uvicorn's main loop.
        if self.draining.active and not self.should_exit and self.draining.elapsed() >= self.delay:
            log.info("drain delay over: closing the listener and draining requests")
            self.should_exit = True
        return await super().on_tick(counter)
