"""The default pipeline: which processors run on which image kind, declared here as data.

Steps run in this order; a step runs when the instance holds one of its kinds, and later
steps see earlier results (the rules read the Doppler indices). Every step yields one
:class:`~usreview.processing.results.ProcessorResult`: done, skipped with the reason (the
kind does not apply, nothing measurable, a missing dependency) or failed with the reason.
Third-party processors from the entry-point group run after these, on their own kinds.
A queue worker calls :func:`run_pipeline` once per instance.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from usreview.dicom import ImageKind, UltrasoundInstance
from usreview.processing.registry import Processor, Registry, default_registry
from usreview.processing.results import ProcessorResult

__all__ = ["PIPELINE", "planned_steps", "run_pipeline"]

K = ImageKind

#: (processor name, image kinds it runs on), in order.
PIPELINE: tuple[tuple[str, frozenset[ImageKind]], ...] = (
    ("doppler_indices", frozenset({K.PW_DOPPLER, K.CW_DOPPLER})),
    ("mmode_motion", frozenset({K.MMODE})),
    ("cine_heart_rate", frozenset({K.CINE})),
    ("volume", frozenset({K.VOLUME})),
    ("vascular_rules", frozenset({K.PW_DOPPLER})),
    ("speckle_fast", frozenset({K.CINE})),
    ("speckle_obnlm", frozenset({K.BMODE})),
)


def planned_steps(registry: Registry | None = None) -> list[tuple[str, frozenset[ImageKind]]]:
    """What :func:`run_pipeline` runs by default: :data:`PIPELINE`, then the registry's
    third-party processors on their own kinds."""
    reg = registry if registry is not None else default_registry()
    listed = {name for name, _ in PIPELINE}
    extra = [(p.name, p.kinds) for p in reg if p.origin != "usreview" and p.name not in listed]
    return [*PIPELINE, *extra]


def run_pipeline(
    instance: UltrasoundInstance,
    *,
    registry: Registry | None = None,
    steps: tuple[tuple[str, frozenset[ImageKind]], ...] | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[ProcessorResult]:
    """Run every step of the pipeline on ``instance``; never raises for a processor's failure.

    ``params`` overrides parameters per processor name; ``steps`` replaces :data:`PIPELINE`
    (third-party processors of the registry are then not added).
    """
    reg = registry if registry is not None else default_registry()
    plan = list(steps) if steps is not None else planned_steps(reg)
    results: list[ProcessorResult] = []
    for name, kinds in plan:
        proc = reg.get(name)
        step = proc if kinds == proc.kinds else _restricted(proc, kinds)
        results.append(step.run(instance, (params or {}).get(name), results))
    return results


def _restricted(proc: Processor, kinds: frozenset[ImageKind]) -> Processor:
    return replace(proc, kinds=proc.kinds & kinds)
