"""Processors: small registered functions with one typed contract.

A processor is a plain function ``f(context) -> Output`` registered with
:func:`processor`, which declares its name, the image kinds it applies to, its version,
its parameters (with defaults) and the modules it needs::

    @processor("doppler_indices", kinds={ImageKind.PW_DOPPLER}, version="1.0",
               params={"dynamic_range_db": 50.0})
    def doppler_indices(context: Context) -> Output: ...

Third-party processors arrive through the entry-point group ``usreview.processors``: an
entry point may name a module (its decorators register), a decorated function or a
:class:`Processor`. One whose import fails, or whose ``requires`` modules are missing, is
listed as unavailable with the reason instead of breaking the import. A package installed
while a process runs (the worker's long-lived pool processes) is found at its next
:func:`default_registry` call, without a restart; a new version of one already loaded
still needs a restart (a module is not imported twice). :meth:`Processor.run`
never raises for a failure of the function: it returns a failed :class:`ProcessorResult`
whose reason reads "applying processor X to instance Y: ...". The quantities of a successful
run go through :func:`usreview.processing.plausible.screen`: a value no patient can have is
an ``implausible_value`` finding instead.

A name is letters, digits, ``_``, ``.`` and ``-`` (jobs record ``name=version`` lists), and
a version has no spaces; ``value_ranges``, the check's own record, is reserved, and so are
``similarity`` and ``study_evaluation``, what else a job records (:data:`RESERVED`).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from usreview.dicom import ImageKind
from usreview.processing import plausible
from usreview.processing.errors import (
    NotApplicable,
    ProcessorUnavailableError,
    UnknownProcessorError,
)
from usreview.processing.results import Output, ProcessorResult, Provenance, ResultStatus

if TYPE_CHECKING:
    from usreview.dicom import UltrasoundInstance

__all__ = [
    "ENTRY_POINT_GROUP",
    "RESERVED",
    "Context",
    "Processor",
    "ProcessorFunction",
    "Registry",
    "default_registry",
    "processor",
]

ENTRY_POINT_GROUP = "usreview.processors"
_log = logging.getLogger(__name__)
#: Modules of the built-in processors, imported by :func:`default_registry`.
BUILTIN_MODULES = (
    "usreview.processing.quantification.doppler",
    "usreview.processing.quantification.mmode",
    "usreview.processing.quantification.cine",
    "usreview.processing.quantification.volume",
    "usreview.processing.recommendations.rules",
    "usreview.processing.filters",
)


@dataclass(frozen=True)
class Context:
    """What a processor is given: the instance, its resolved parameters, earlier results."""

    instance: UltrasoundInstance
    params: Mapping[str, Any]
    prior: tuple[ProcessorResult, ...] = ()

    def prior_quantities(self, processor: str) -> dict[str, Any]:
        """Quantities (by name) of an earlier, successful result of ``processor``."""
        for result in self.prior:
            if result.provenance.processor == processor and result.ok:
                return {q.name: q for q in result.output.quantities}
        return {}


ProcessorFunction = Callable[[Context], Output]


@dataclass(frozen=True)
class Processor:
    """A registered processor: its function and contract."""

    name: str
    function: ProcessorFunction | None
    kinds: frozenset[ImageKind]
    version: str
    params: Mapping[str, Any] = field(default_factory=dict)
    requires: tuple[str, ...] = ()
    description: str = ""
    origin: str = "usreview"
    load_error: str | None = None

    @property
    def unavailable_reason(self) -> str | None:
        """Why the processor cannot run (a failed import, missing modules), or ``None``."""
        if self.load_error is not None:
            return self.load_error
        if self.function is None:
            return "no function"
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        return f"missing modules: {', '.join(missing)}" if missing else None

    @property
    def available(self) -> bool:
        """Whether every dependency is installed."""
        return self.unavailable_reason is None

    def applies_to(self, instance: UltrasoundInstance) -> bool:
        """Whether the instance holds one of the processor's kinds."""
        return bool(self.kinds & set(instance.kinds))

    def resolve(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The parameters: defaults with ``overrides``; unknown names are refused."""
        values = dict(self.params)
        for key, value in (overrides or {}).items():
            if key not in values:
                known = ", ".join(sorted(values)) or "none"
                raise ValueError(f"processor {self.name}: unknown parameter {key!r} ({known})")
            values[key] = type(values[key])(value) if values[key] is not None else value
        return values

    def describe(self) -> dict[str, Any]:
        """JSON view for listings."""
        return {
            "name": self.name,
            "version": self.version,
            "kinds": sorted(k.value for k in self.kinds),
            "params": dict(self.params),
            "available": self.available,
            "reason": self.unavailable_reason,
            "origin": self.origin,
            "description": self.description,
        }

    def run(
        self,
        instance: UltrasoundInstance,
        params: Mapping[str, Any] | None = None,
        prior: Iterable[ProcessorResult] = (),
    ) -> ProcessorResult:
        """Apply the processor; a failure becomes a failed result naming the step and instance."""
        uid = instance.sop_instance_uid or instance.path.name
        started = time.perf_counter()
        try:
            values = self.resolve(params)
        except (TypeError, ValueError) as exc:
            values = dict(self.params)
            return self._result(instance, values, ResultStatus.FAILED, reason=f"{exc}")
        reason = self.unavailable_reason
        if reason is not None or self.function is None:
            return self._result(
                instance, values, ResultStatus.SKIPPED, reason=f"unavailable: {reason}"
            )
        if not self.applies_to(instance):
            kinds = ", ".join(sorted(k.value for k in self.kinds))
            here = ", ".join(k.value for k in instance.kinds) or "none"
            return self._result(
                instance,
                values,
                ResultStatus.SKIPPED,
                reason=f"applies to {kinds}; instance is {here}",
            )
        try:
            output = self.function(Context(instance, values, tuple(prior)))
        except NotApplicable as exc:
            return self._result(
                instance, values, ResultStatus.SKIPPED, reason=str(exc), started=started
            )
        except Exception as exc:  # isolate every failure: the rest of the pipeline goes on
            text = str(exc).strip().splitlines()
            why = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
            return self._result(
                instance,
                values,
                ResultStatus.FAILED,
                reason=f"applying processor {self.name} to instance {uid}: {why}",
                started=started,
            )
        if not isinstance(output, Output):
            return self._result(
                instance,
                values,
                ResultStatus.FAILED,
                reason=f"applying processor {self.name} to instance {uid}: returned "
                f"{type(output).__name__}, not Output",
                started=started,
            )
        output = plausible.screen(output)  # values no patient can have are findings, not numbers
        return self._result(instance, values, ResultStatus.DONE, output=output, started=started)

    def _result(
        self,
        instance: UltrasoundInstance,
        values: Mapping[str, Any],
        status: ResultStatus,
        *,
        output: Output | None = None,
        reason: str | None = None,
        started: float | None = None,
    ) -> ProcessorResult:
        provenance = Provenance(
            processor=self.name,
            version=self.version,
            parameters=dict(values),
            sop_instance_uid=instance.sop_instance_uid,
            study_instance_uid=instance.study_instance_uid,
        )
        seconds = time.perf_counter() - started if started is not None else 0.0
        return ProcessorResult(provenance, status, output or Output(), reason, seconds)


class Registry:
    """Processors by name, in registration order."""

    def __init__(self) -> None:
        self._processors: dict[str, Processor] = {}
        #: The entry points loaded, by name: their value and their distribution's version.
        self._entry_points: dict[str, str] = {}

    def register(self, proc: Processor, *, replace: bool = False) -> Processor:
        """Add ``proc``; a second processor of the same name is refused unless ``replace``.

        Raises ``ValueError`` for a name or version a job could not record (see the module
        docstring).
        """
        if not _NAME.fullmatch(proc.name) or proc.name in RESERVED:
            raise ValueError(
                f"processor {proc.name!r}: a name is letters, digits, '_', '.' and '-' "
                f"({', '.join(repr(name) for name in sorted(RESERVED))} are reserved)"
            )
        if not proc.version.strip() or any(c.isspace() or c == "=" for c in proc.version):
            raise ValueError(
                f"processor {proc.name}: version {proc.version!r} must be non-empty, "
                "without spaces or '='"
            )
        if proc.name in self._processors and not replace:
            raise ValueError(f"a processor named {proc.name!r} is already registered")
        self._processors[proc.name] = proc
        return proc

    def get(self, name: str) -> Processor:
        """The processor called ``name``."""
        try:
            return self._processors[name]
        except KeyError:
            known = ", ".join(self._processors) or "none"
            raise UnknownProcessorError(f"no processor named {name!r} (known: {known})") from None

    def require(self, name: str) -> Processor:
        """The processor called ``name``, refusing one that is unavailable."""
        proc = self.get(name)
        if not proc.available:
            raise ProcessorUnavailableError(
                f"processor {name} is unavailable: {proc.unavailable_reason}"
            )
        return proc

    def __contains__(self, name: object) -> bool:
        return name in self._processors

    def __iter__(self) -> Iterator[Processor]:
        return iter(list(self._processors.values()))

    def __len__(self) -> int:
        return len(self._processors)

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> list[str]:
        """Register the third-party processors of entry-point ``group`` not loaded yet;
        return their names.

        An entry point loaded before is not loaded again (one whose package changed since,
        upgraded, is logged once: its new version runs after a restart); one that did not
        import is tried again, and replaces its unavailable listing once it imports.
        """
        names: list[str] = []
        for ep in importlib.metadata.entry_points(group=group):
            dist = getattr(ep, "dist", None)
            seen = f"{ep.value} {getattr(dist, 'version', '')}"
            if ep.name in self._entry_points:
                if self._entry_points[ep.name] != seen:
                    self._entry_points[ep.name] = seen
                    _log.warning(
                        "processor entry point %s changed (%s); restart to run it", ep.name, seen
                    )
                continue
            self._entry_points[ep.name] = seen  # before importing it: it may call us
            before = set(self._processors)
            try:
                loaded = ep.load()
            except Exception as exc:  # a missing dependency must not break usreview
                del self._entry_points[ep.name]
                text = str(exc).strip().splitlines()
                reason = f"cannot import {ep.value}: {text[0] if text else type(exc).__name__}"
                names.append(self._unavailable(ep, reason).name)
                continue
            found = loaded if isinstance(loaded, Processor) else getattr(loaded, "processor", None)
            listed = self._processors.get(found.name) if isinstance(found, Processor) else None
            if isinstance(found, Processor) and (listed is None or listed.load_error):
                try:
                    self.register(found, replace=True)
                except ValueError as exc:  # a name or version jobs cannot record
                    found = self._unavailable(ep, str(exc))
            names.extend(n for n in self._processors if n not in before)
            if isinstance(found, Processor) and found.name not in names:
                names.append(found.name)
        return names

    def _unavailable(self, ep: importlib.metadata.EntryPoint, reason: str) -> Processor:
        """List entry point ``ep`` as an unavailable processor, for ``reason``."""
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", ep.name)
        proc = Processor(name, None, frozenset(), "?", origin=ep.value, load_error=reason)
        return self.register(proc, replace=True)


REGISTRY = Registry()
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
#: Names a job records beside its processors', which no processor may take: the value check
#: (:data:`usreview.processing.plausible.NAME`), the descriptor of the similar cases
#: (:data:`usreview.processing.similarity.NAME`) and the study evaluation
#: (:data:`usreview.processing.recommendations.study.NAME`; those two modules are not
#: imported here, which the registry's own users do not need).
RESERVED: Final = frozenset({plausible.NAME, "similarity", "study_evaluation"})
#: What :func:`_installed` gave when :data:`REGISTRY` last read the entry points.
_fingerprint: tuple[tuple[str, int | None], ...] | None = None
_loading = threading.RLock()  # a plugin importing may call default_registry()


def processor(
    name: str,
    *,
    kinds: Iterable[ImageKind | str],
    version: str,
    params: Mapping[str, Any] | None = None,
    requires: Iterable[str] = (),
    description: str = "",
    registry: Registry | None = None,
) -> Callable[[ProcessorFunction], ProcessorFunction]:
    """Register the decorated function as processor ``name`` (see the module docstring).

    The function is returned unchanged, with its :class:`Processor` as attribute
    ``processor``.
    """
    kind_set = frozenset(ImageKind(k) for k in kinds)
    if not kind_set:
        raise ValueError(f"processor {name}: argument 'kinds' is empty")
    if not version.strip():
        raise ValueError(f"processor {name}: argument 'version' is empty")

    def decorate(function: ProcessorFunction) -> ProcessorFunction:
        module = getattr(function, "__module__", "")
        proc = Processor(
            name=name,
            function=function,
            kinds=kind_set,
            version=version,
            params=dict(params or {}),
            requires=tuple(requires),
            description=description or (function.__doc__ or "").strip().split("\n")[0],
            origin="usreview" if module.startswith("usreview.") else module,
        )
        (registry if registry is not None else REGISTRY).register(proc, replace=True)
        function.processor = proc  # type: ignore[attr-defined]
        return function

    return decorate


def default_registry() -> Registry:
    """The registry with the built-in processors and the entry-point group loaded.

    Processors installed since the last call are loaded too: the entry points are read
    again (about 10 ms) only when a folder of ``sys.path`` changed (:func:`_installed`,
    about 15 us per call), so a long-lived process (the worker's pool) runs a processor
    deployed while it runs from its next job on.
    """
    global _fingerprint
    installed = _installed()
    if installed != _fingerprint:
        with _loading:  # threads of a Dask worker, of a kernel
            if installed != _fingerprint:
                if _fingerprint is None:
                    for module in BUILTIN_MODULES:
                        importlib.import_module(module)
                else:
                    importlib.invalidate_caches()  # the new modules must import
                REGISTRY.load_entry_points()
                _fingerprint = installed
    return REGISTRY


def _installed() -> tuple[tuple[str, int | None], ...]:
    """Each folder of ``sys.path`` with its modification time: installing or removing a
    package there (its ``.dist-info`` folder) changes it."""
    found: list[tuple[str, int | None]] = []
    for entry in sys.path:
        try:
            found.append((entry, os.stat(entry or ".").st_mtime_ns))
        except (OSError, TypeError, ValueError):  # a zip file missing, a path hook's name
            found.append((entry, None))
    return tuple(found)
