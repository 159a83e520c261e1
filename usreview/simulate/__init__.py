"""Simulated ultrasound studies with known answers (ground truth).

:func:`simulate` writes valid DICOM instances of one study plus a ``NAME.truth.json``
sidecar beside each ``NAME.dcm``. The same kind, seed and parameters give the same
bytes. Which module builds which kind, with which parameters and default SNR, is the
table :data:`_KINDS`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from usreview.errors import SimulationError
from usreview.simulate import bmode, cine, color, mmode, spectral, volume
from usreview.simulate.params import describe, parse_params
from usreview.simulate.writer import Context, Instance, discard, instance_files, save

__all__ = ["KINDS", "describe_kind", "simulate"]


class _Kind(NamedTuple):
    params: type
    build: Callable[[Context, Any], list[Instance]]
    snr_db: float  # default SNR: tissue echo or Doppler signal over white noise


_KINDS: dict[str, _Kind] = {
    "bmode": _Kind(bmode.BmodeParams, bmode.build, 40.0),
    "cine": _Kind(cine.CineParams, cine.build, 40.0),
    "mmode": _Kind(mmode.MmodeParams, mmode.build, 40.0),
    "pw": _Kind(spectral.PwParams, spectral.build_pw, 20.0),
    "cw": _Kind(spectral.CwParams, spectral.build_cw, 20.0),
    "color": _Kind(color.ColorParams, color.build, 40.0),
    "volume": _Kind(volume.VolumeParams, volume.build, 40.0),
}

KINDS: tuple[str, ...] = ("bmode", "cine", "mmode", "pw", "cw", "color", "volume")


def describe_kind(kind: str) -> list[tuple[str, object, str]]:
    """Return ``(name, default, help)`` for every parameter of ``kind``."""
    return describe(_lookup(kind).params)


def _lookup(kind: str) -> _Kind:
    try:
        return _KINDS[kind]
    except (KeyError, TypeError):
        raise SimulationError(
            f"parameter 'kind': unknown kind {kind!r}; known: {', '.join(KINDS)}"
        ) from None


def simulate(
    kind: str,
    out: Path,
    *,
    seed: int = 0,
    snr_db: float | None = None,
    overwrite: bool = False,
    **params: Any,
) -> list[Path]:
    """Write one simulated study of ``kind`` into folder ``out``; return the DICOM paths.

    Parameters
    ----------
    kind
        One of :data:`KINDS`.
    out
        Output folder, created if needed. Each instance is ``NAME.dcm`` with
        ``NAME.truth.json`` (the true values) beside it.
    seed
        Seed of every random draw (non-negative integer).
    snr_db
        Signal-to-noise ratio in dB; ``None`` for the kind's default (20 dB for ``pw``
        and ``cw``, 40 dB otherwise).
    overwrite
        Replace files of an earlier run; by default a file that exists is an error and
        nothing is written.
    **params
        Kind-specific parameters (strings are converted, as from the command line).

    Raises
    ------
    SimulationError
        Unknown kind or parameter, or a value that cannot make a valid study (the
        message names the parameter); a file to write that exists, unless ``overwrite``.
    OSError
        A file could not be written (the message names it); what this call wrote is
        removed.
    """
    spec = _lookup(kind)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise SimulationError(f"parameter 'seed': expected a non-negative integer, got {seed!r}")
    seed = int(seed)
    if snr_db is None:
        snr_db = spec.snr_db
    if (
        isinstance(snr_db, bool)
        or not isinstance(snr_db, int | float)
        or not math.isfinite(snr_db)
        or not -20.0 <= snr_db <= 80.0
    ):
        raise SimulationError(f"parameter 'snr_db': {snr_db!r} is not a number in [-20, 80]")
    resolved: Any = parse_params(spec.params, params, kind)
    values = dataclasses.asdict(resolved)
    ctx = Context(kind=kind, seed=seed, snr_db=float(snr_db), params=values)
    out = Path(out)
    instances = spec.build(ctx, resolved)
    for name, _ds, _truth in instances:
        for target in instance_files(out, name):
            if not overwrite and os.path.lexists(target):
                raise SimulationError(
                    f"{target} exists: refusing to overwrite it (--force, or overwrite=True "
                    "in Python, replaces it)"
                )
    written: list[Path] = []
    try:
        for name, ds, truth in instances:
            record = {
                "kind": kind,
                "seed": seed,
                "snr_db": float(snr_db),
                "params": values,
                "file": f"{name}.dcm",
                "sop_class_uid": str(ds.SOPClassUID),
                "sop_instance_uid": str(ds.SOPInstanceUID),
                "study_instance_uid": str(ds.StudyInstanceUID),
                **truth,
            }
            written.append(save(ds, record, out, name, overwrite=overwrite))
    except BaseException:  # a full disk, say: leave no part of the study
        discard(f for path in written for f in instance_files(out, path.stem))
        raise
    return written
