"""The dashboards' connection to the usreview service, as the reviewer who opened them.

>>> client = ReviewClient.from_environment()          # doctest: +SKIP
>>> [s["study_instance_uid"] for s in client.studies(status="processed")]  # doctest: +SKIP
>>> client.claim(uid)                                   # doctest: +SKIP
>>> client.priors(uid)                                  # the patient's other studies
>>> png = client.frame(sop_uid)                         # the first frame, rendered by the service
>>> instance = client.instance(sop_uid)                 # usreview.dicom.UltrasoundInstance
>>> client.teaching_cases()                   # the case library (trainees, scientists)

Inside a single-user server the service's loopback URL is ``$USREVIEW_SERVICE_URL``
and the reviewer's token ``$JUPYTERHUB_API_TOKEN`` (both set by the hub, see
:mod:`usreview.hub.dashboards`). Every call is checked and audited by the service; an
answer that is not a success raises :class:`ServiceError` (or :class:`ClaimedError`)
with the service's own message. Instances are downloaded once per session into a
private temporary folder (mode 0700) that is removed when the client is closed or the
kernel exits.
"""

from __future__ import annotations

import atexit
import http.client
import json
import os
import shutil
import ssl
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote, urlencode, urlsplit

from usreview._http import STALE_CONNECTION_ERRORS, connection_dropped
from usreview.errors import ReviewError

if TYPE_CHECKING:
    from usreview.dicom import UltrasoundInstance

__all__ = ["ClaimedError", "ReviewClient", "ServiceError"]

_SERVICE_URL_ENV: Final = "USREVIEW_SERVICE_URL"  # as usreview.hub.dashboards sets it
_TOKEN_ENV: Final = "JUPYTERHUB_API_TOKEN"
_CHUNK: Final = 1024 * 1024
#: What a request or its answer can fail with on the way (timeouts and TLS errors are OSErrors).
_TRANSPORT_ERRORS: Final = (OSError, http.client.HTTPException)
_SAFE_METHODS: Final = frozenset({"GET", "HEAD"})


class ServiceError(ReviewError):
    """The service refused or failed a request; ``status`` and ``error`` say how."""

    def __init__(self, status: int, error: str, message: str, body: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.body = dict(body)


class ClaimedError(ServiceError):
    """Another reviewer holds the study (HTTP 409); ``body["claim"]`` says who, until when."""


class ReviewClient:
    """Calls of the service's review API (``api/v1``) with one person's token."""

    def __init__(self, service_url: str, token: str, *, timeout: float = 60.0) -> None:
        parts = urlsplit(service_url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ReviewError(
                f"service URL must be http(s)://HOST:PORT/PREFIX/, not {service_url!r}"
            )
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/") + "/api/v1"
        self._token = token
        self._timeout = timeout
        self._local = threading.local()
        self._cache: Path | None = None
        self._lock = threading.Lock()
        self._worklists: dict[str, tuple[str, list[dict[str, Any]]]] = {}
        self._studies: dict[str, tuple[str, bytes]] = {}  # uid -> ETag, answer
        self._downloads: dict[str, threading.Lock] = {}
        self._connections: set[http.client.HTTPConnection] = set()
        self._closed = False

    @classmethod
    def from_environment(cls) -> ReviewClient:
        """The client of the person whose server this is.

        Raises
        ------
        ReviewError
            Outside a hub's single-user server (the variables are missing).
        """
        url, token = os.environ.get(_SERVICE_URL_ENV), os.environ.get(_TOKEN_ENV)
        if not url or not token:
            raise ReviewError(
                f"${_SERVICE_URL_ENV} and ${_TOKEN_ENV} are not set: the dashboards and "
                "notebooks run in your own server, started by the usreview hub (log in to the "
                "hub and open them there)"
            )
        return cls(url, token)

    # Studies and instances -------------------------------------------------------------

    def studies(
        self, *, site: str | None = None, status: str | None = None
    ) -> list[dict[str, Any]]:
        """The studies the caller may read, newest first (the worklist's rows).

        Asked again with the same filters, an unchanged list costs no transfer: the
        service answers 304 to the ETag of the last answer, and the last list is returned.
        """
        query = {k: v for k, v in (("site", site), ("status", status)) if v}
        key = urlencode(sorted(query.items()))
        known = self._worklists.get(key)
        extra = {"If-None-Match": known[0]} if known else None
        response = self._request("GET", "/studies", query=query, headers=extra)
        if response.status == 304 and known is not None:
            self._read("GET", response)
            return list(known[1])
        studies = list(json.loads(self._read("GET", response))["studies"])
        etag = response.getheader("ETag")
        if etag:
            self._worklists[key] = (etag, studies)
        return studies

    def study(self, study_instance_uid: str) -> dict[str, Any]:
        """One study: series, instances with their analyses and processing, claim, reports.

        Asked again, an unchanged study costs no transfer (as :meth:`studies`): the
        service answers 304 to the ETag of the last answer, which is read again (a new
        dictionary each time: the caller may change it).
        """
        path = f"/studies/{quote(study_instance_uid)}"
        known = self._studies.get(study_instance_uid)
        extra = {"If-None-Match": known[0]} if known else None
        response = self._request("GET", path, headers=extra)
        data = self._read("GET", response)
        if response.status == 304 and known is not None:
            data = known[1]
        else:
            etag = response.getheader("ETag")
            if etag:
                self._studies[study_instance_uid] = (etag, data)
        return dict(json.loads(data))

    def priors(self, study_instance_uid: str) -> list[dict[str, Any]]:
        """The patient's other studies at the study's site, newest first (worklist rows)."""
        return list(self._json("GET", f"/studies/{quote(study_instance_uid)}/priors")["priors"])

    def analysis(self, sop_instance_uid: str) -> dict[str, Any] | None:
        """The automatic results of one instance, or ``None`` while there are none."""
        try:
            return dict(self._json("GET", f"/instances/{quote(sop_instance_uid)}/analysis"))
        except ServiceError as exc:
            if exc.status == 404:
                return None
            raise

    def frame(self, sop_instance_uid: str, number: int = 1, *, rows: int | None = None) -> bytes:
        """Frame ``number`` (from 1) as the viewers show it, PNG, rendered by the service.

        Fast once rendered (the service keeps it): what a page shows before the instance
        itself has arrived. ``rows`` asks for a thumbnail of at least that many rows.
        """
        query = {"rows": str(rows)} if rows is not None else None
        path = f"/instances/{quote(sop_instance_uid)}/frames/{int(number)}"
        return self._read("GET", self._request("GET", path, query=query))

    def instance_file(self, sop_instance_uid: str) -> Path:
        """The instance's DICOM file, downloaded once into the private cache."""
        path = f"/instances/{quote(sop_instance_uid)}"
        return self._download(path, f"{sop_instance_uid}.dcm")

    def instance(self, sop_instance_uid: str) -> UltrasoundInstance:
        """The instance, read with :func:`usreview.dicom.read` (frames decoded lazily)."""
        from usreview.dicom import read

        return read(self.instance_file(sop_instance_uid))

    # Claims and reports ----------------------------------------------------------------

    def claim(self, study_instance_uid: str) -> dict[str, Any]:
        """Claim (or renew the claim on) a study; raises :class:`ClaimedError` if taken."""
        return dict(self._json("POST", f"/studies/{quote(study_instance_uid)}/claim"))

    def release(self, study_instance_uid: str) -> None:
        """Give the study back to the worklist."""
        self._json("DELETE", f"/studies/{quote(study_instance_uid)}/claim")

    def publish(self, study_instance_uid: str, report: Mapping[str, Any]) -> dict[str, Any]:
        """Publish a report (or an amendment of the last one); the claim must be held."""
        path = f"/studies/{quote(study_instance_uid)}/reports"
        return dict(self._json("POST", path, body=report))

    def reports(self, study_instance_uid: str) -> list[dict[str, Any]]:
        """Every published version of the study's report, oldest first."""
        path = f"/studies/{quote(study_instance_uid)}/reports"
        return list(self._json("GET", path)["reports"])

    # Teaching cases --------------------------------------------------------------------

    def mark_teaching(self, study_instance_uid: str) -> tuple[dict[str, Any], bool]:
        """Make a published study a teaching case (reviewers): its case, and whether it was
        made now (``False``: the study had one already, which is returned)."""
        body = {"study_instance_uid": study_instance_uid}
        response = self._request("POST", "/teaching", body=body)
        return dict(json.loads(self._read("POST", response))), response.status == 201

    def teaching_cases(self) -> list[dict[str, Any]]:
        """The teaching cases, newest first (trainees, scientists)."""
        return list(self._json("GET", "/teaching")["cases"])

    def teaching_case(self, case_uid: str) -> dict[str, Any]:
        """One teaching case: the reviewer's words and the de-identified instances."""
        return dict(self._json("GET", f"/teaching/{quote(case_uid)}"))

    def withdraw_teaching(self, case_uid: str) -> None:
        """Withdraw a teaching case (reviewers who may see its study): gone for everyone."""
        self._json("DELETE", f"/teaching/{quote(case_uid)}")

    def whoami(self) -> dict[str, Any]:
        """Who the hub says the caller is: ``name``, ``kind``, ``groups``, ``scopes``."""
        return dict(self._json("GET", "/whoami"))

    def teaching_instance(self, case_uid: str, sop_instance_uid: str) -> UltrasoundInstance:
        """A de-identified instance of a case, downloaded once into the private cache."""
        from usreview.dicom import read

        path = f"/teaching/{quote(case_uid)}/instances/{quote(sop_instance_uid)}"
        return read(self._download(path, f"teaching-{sop_instance_uid}.dcm"))

    # Plumbing --------------------------------------------------------------------------

    def _download(self, path: str, name: str) -> Path:
        target = self._cache_dir() / name
        with self._lock:
            busy = self._downloads.setdefault(name, threading.Lock())
        with busy:  # a second thread asking for the same file waits for the first
            if target.exists():
                return target
            partial = target.with_suffix(".part")
            response = self._request("GET", path)
            try:
                with open(partial, "wb") as out:
                    while chunk := self._read("GET", response, _CHUNK):
                        out.write(chunk)
            except FileNotFoundError:  # the cache went with close() meanwhile
                raise ReviewError("the review session is closed") from None
            finally:
                response.close()
            partial.replace(target)
            return target

    def thread(self, target: Callable[[], None], *, name: str) -> threading.Thread:
        """Start a daemon thread running ``target``; its connection is closed when it ends."""

        def run() -> None:
            try:
                target()
            finally:
                self.end_thread()

        started = threading.Thread(target=run, name=name, daemon=True)
        started.start()
        return started

    def end_thread(self) -> None:
        """Close the calling thread's connection (each thread has its own)."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            self._local.connection = None
            connection.close()
            with self._lock:
                self._connections.discard(connection)

    def close(self) -> None:
        """Close every thread's connection and remove the downloaded instances.

        Calls still running in other threads then fail with :class:`ReviewError`.
        """
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, set()
        for connection in connections:
            connection.close()
        self._local.connection = None
        with self._lock:
            if self._cache is not None:
                shutil.rmtree(self._cache, ignore_errors=True)
                self._cache = None

    def __enter__(self) -> ReviewClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _cache_dir(self) -> Path:
        with self._lock:
            if self._closed:
                raise ReviewError("the review session is closed")
            if self._cache is None:
                self._cache = Path(tempfile.mkdtemp(prefix="usreview-review-"))
                atexit.register(shutil.rmtree, self._cache, True)
            return self._cache

    def _connection(self) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            connection = cls(self._host, self._port, timeout=self._timeout)
            with self._lock:
                if self._closed:
                    raise ReviewError("the review session is closed")
                self._connections.add(connection)
            self._local.connection = connection
        return connection

    def _request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> http.client.HTTPResponse:
        url = self._prefix + path + (f"?{urlencode(query)}" if query else "")
        sent = {"Authorization": f"token {self._token}", "Accept": "application/json"}
        sent.update(headers or {})
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        for attempt in (1, 2):
            connection = self._connection()
            if connection_dropped(connection):  # closed while idle: nothing was sent on it
                self._drop_connection()
                connection = self._connection()
            reused = connection.sock is not None
            try:
                connection.request(method, url, body=data, headers=sent)
                response = connection.getresponse()
                break
            except _TRANSPORT_ERRORS as exc:
                self._drop_connection()
                # A kept-alive connection the service closed just as the request went: a
                # read goes once more on a new connection. A change does not: the service
                # may have died while making it (see _transport_error).
                if (
                    attempt == 1
                    and reused
                    and method in _SAFE_METHODS
                    and isinstance(exc, STALE_CONNECTION_ERRORS)
                ):
                    continue
                raise _transport_error(method, self._timeout, exc) from exc
        if response.status >= 400:
            _raise(response, self._read(method, response))
        return response

    def _read(self, method: str, response: http.client.HTTPResponse, amount: int = -1) -> bytes:
        """``amount`` bytes (all by default) of the answer; a broken transfer is a
        :class:`ReviewError` that says whether the request may have been carried out."""
        try:
            return response.read(None if amount < 0 else amount)
        except _TRANSPORT_ERRORS as exc:
            self._drop_connection()
            raise _transport_error(method, self._timeout, exc) from exc

    def _drop_connection(self) -> None:
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def _json(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> Any:
        response = self._request(method, path, query=query, body=body)
        data = self._read(method, response)
        return json.loads(data) if data else {}


def _transport_error(method: str, timeout: float, exc: BaseException) -> ReviewError:
    """What a reviewer reads when the service's answer does not arrive whole."""
    if isinstance(exc, TimeoutError):
        problem = f"the usreview service did not answer within {timeout:g} s"
    elif isinstance(exc, ssl.SSLError):
        problem = f"the secure connection to the usreview service failed ({exc})"
    else:
        problem = f"the usreview service does not answer ({exc or type(exc).__name__})"
    if method not in _SAFE_METHODS:
        problem += "; the change may have been made: reload the study before trying again"
    return ReviewError(problem)


def _raise(response: http.client.HTTPResponse, data: bytes) -> None:
    try:
        body = json.loads(data)
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    error = str(body.get("error", "error"))
    message = str(body.get("message") or f"HTTP {response.status} {response.reason}")
    cls = ClaimedError if response.status == 409 and error == "claimed" else ServiceError
    raise cls(response.status, error, message, body)
