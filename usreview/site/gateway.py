"""The gateway: the Storage SCP, the uploader and the results follower in one process.

``usreview site gateway --config site.toml`` runs :func:`run_gateway` until SIGINT or
SIGTERM. It holds the state folder's lock, so a second gateway (or a ``pull``) on the
same site refuses to start. Everything it needs is checked before it listens: the
keys, the hub's key, the token, the allow-list.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

from usreview.site.client import HubClient
from usreview.site.config import SiteConfig
from usreview.site.results import ResultFollower
from usreview.site.scp import StorageSCP
from usreview.site.spool import Spool
from usreview.site.status import StateLock, StatusBook
from usreview.site.uploader import Uploader

__all__ = ["Gateway", "run_gateway"]

_log = logging.getLogger(__name__)


class Gateway:
    """A site's gateway; :meth:`start` it, then :meth:`stop` it.

    Parameters
    ----------
    config
        The site's configuration.
    upload_workers
        Concurrent uploads to the hub.
    """

    def __init__(self, config: SiteConfig, *, upload_workers: int = 2) -> None:
        self.config = config
        self._lock = StateLock(config.state)
        self._lock.acquire()
        try:
            HubClient(config).close()  # token and pinned certificate usable
            self.spool = Spool(config.spool)
            self.status = StatusBook(config.state)
            self.scp = StorageSCP(
                spool=self.spool,
                ae_title=config.ae_title,
                allowed_calling_ae_titles=config.allowed_calling_ae_titles,
            )
            self.uploader = Uploader(config, self.spool, self.status, workers=upload_workers)
            self.follower = ResultFollower(config, self.status) if config.follow_results else None
        except BaseException:
            self._lock.release()
            raise

    def start(self) -> None:
        """Listen for scanners, upload the spool, follow the results feed."""
        self.uploader.start()
        if self.follower is not None:
            self.follower.start()
        self.scp.start(self.config.bind, self.config.port)

    def stop(self) -> None:
        """Stop listening, then stop uploading and following; release the state lock."""
        try:
            self.scp.stop()
            self.uploader.stop()
            if self.follower is not None:
                self.follower.stop()
            self.status.flush(force=True)
        finally:
            self._lock.release()


def run_gateway(config: SiteConfig, *, announce: Callable[[str], None] | None = None) -> None:
    """Run a gateway until SIGINT or SIGTERM.

    Raises
    ------
    SiteConfigError
        A setting that cannot work (named), before anything listens.
    GatewayRunningError
        Another gateway holds the site's state folder.
    OSError
        The DICOM port cannot be bound.
    """
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    gateway = Gateway(config)
    try:
        gateway.start()
        depth, size = gateway.spool.depth()
        if announce is not None:
            announce(
                f"gateway {config.name}: AE {config.ae_title} on {config.bind}:"
                f"{gateway.scp.port}; hub {config.hub_url}; spool {depth} instance(s) "
                f"({size / 1e6:.1f} MB) to upload"
            )
        while not stopping.wait(1.0):
            gateway.status.flush()
    finally:
        gateway.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
