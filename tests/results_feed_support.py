"""The site's results tests' peers: a hub's results feed for one site (an HTTP server that
seals what it publishes) and a PACS (a pynetdicom Storage SCP)."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pynetdicom import AE, AllStoragePresentationContexts, evt

from usreview.envelope import generate_keys, load_public_keys, seal, write_key_pair
from usreview.site import SiteConfig, init_site, load_config
from usreview.site.config import PacsDestination

PREFIX = "/services/usreview/api/v1/"
DAY = 86400


class FeedHub:
    """A hub's results feed for one site: what :meth:`publish` put in it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.keys = generate_keys("hub")
        write_key_pair(self.keys, folder / "hubkeys")
        self.items: list[dict[str, Any]] = []
        self.payloads: dict[int, bytes] = {}
        self.envelopes: dict[int, bytes] = {}
        self.fetched: list[int] = []
        self.site_key: Any = None
        self._changed = threading.Condition()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                path = parts.path[len(PREFIX) :]
                if path == "results":
                    query = parse_qs(parts.query)
                    cursor = int(query["cursor"][0])
                    wait = min(float(query.get("wait", ["0"])[0]), 0.3)
                    with hub._changed:
                        hub._changed.wait_for(
                            lambda: any(i["cursor"] > cursor for i in hub.items), wait
                        )
                        items = [dict(i) for i in hub.items if i["cursor"] > cursor]
                    last = items[-1]["cursor"] if items else cursor
                    self._send(200, json.dumps({"results": items, "cursor": last}).encode())
                elif path.startswith("results/"):
                    result_id = int(path.split("/")[1])
                    hub.fetched.append(result_id)
                    self._send(200, hub.envelopes[result_id], "application/vnd.usreview.envelope")
                else:
                    self._send(404, b'{"error": "not_found", "message": "no"}')

            def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def site(self, folder: Path, pacs: list[PacsDestination] | None = None) -> SiteConfig:
        """A site of this hub (``usreview site init`` as an administrator runs it)."""
        made = init_site(
            "clinic",
            self.url,
            folder,
            hub_public_key=self.folder / "hubkeys" / "hub.pub",
            pacs=pacs or [],
        )
        (folder / "token").write_text("token\n")
        (folder / "token").chmod(0o600)
        self.site_key = load_public_keys(made.public_key)
        return load_config(made.config)

    def _seal(self, payload: bytes, *, expired: bool = False) -> bytes:
        out = io.BytesIO()
        now = time.time() - 10 * DAY if expired else None
        seal(io.BytesIO(payload), out, sender=self.keys, recipients=[self.site_key], now=now)
        return out.getvalue()

    def publish(
        self,
        payload: bytes,
        study: str,
        kind: str,
        *,
        supersedes: int | None = None,
        expired: bool = False,
    ) -> int:
        """Seal ``payload`` to the site and list it under ``study`` (the feed's field)."""
        with self._changed:
            result_id = len(self.items) + 1
            envelope = self._seal(payload, expired=expired)
            self.payloads[result_id] = payload
            self.envelopes[result_id] = envelope
            self.items.append(
                {
                    "id": result_id,
                    "cursor": result_id,
                    "study_instance_uid": study,
                    "kind": kind,
                    "label": kind,
                    "supersedes": supersedes,
                    "sha256": hashlib.sha256(envelope).hexdigest(),
                }
            )
            self._changed.notify_all()
        return result_id

    def reseal(self, result_id: int) -> None:
        """Seal a result again, as the hub does near its expiry: same id, new message."""
        with self._changed:
            envelope = self._seal(self.payloads[result_id])
            self.envelopes[result_id] = envelope
            self.items[result_id - 1]["sha256"] = hashlib.sha256(envelope).hexdigest()


class Pacs:
    """A Storage SCP taking every storage class; the SOP Instance UIDs it took, in order.
    ``status`` is its answer (0xA700: out of resources, for now)."""

    def __init__(self, port: int = 0, status: int = 0x0000) -> None:
        self.status = status
        self.received: list[str] = []
        ae = AE(ae_title="PACS")
        ae.supported_contexts = AllStoragePresentationContexts
        self.server = ae.start_server(
            ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        self.port = int(self.server.server_address[1])

    def _store(self, event: Any) -> int:
        if self.status == 0:
            self.received.append(str(event.request.AffectedSOPInstanceUID))
        return self.status

    def stop(self) -> None:
        self.server.shutdown()
