"""The processor registry and pipeline: contract, availability, entry points, failure isolation."""

from __future__ import annotations

import importlib.metadata
import sys
import types
from pathlib import Path
from typing import Any

import pytest

import usreview.processing
from tests.processing_support import HOTPLUG, install_fake_package
from usreview.dicom import ImageKind, read
from usreview.processing import (
    PIPELINE,
    Code,
    CodingScheme,
    Context,
    NotApplicable,
    Output,
    Processor,
    Quantity,
    Registry,
    ResultStatus,
    UnknownProcessorError,
    default_registry,
    plausible,
    processor,
    run_pipeline,
)
from usreview.processing.results import Recommendation
from usreview.simulate import simulate

CODE = Code("x-1", CodingScheme.USREVIEW, "Test value")


@pytest.fixture(scope="module")
def pw_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulate(
        "pw",
        tmp_path_factory.mktemp("pw"),
        seed=3,
        snr_db=20.0,
        psv_cm_s=260,
        vessel="ica",
        side="left",
    )[0]


def test_public_names_are_sorted_and_present() -> None:
    names = usreview.processing.__all__

    def isort_style(name: str) -> tuple[int, str]:  # as ruff's RUF022: constants, classes, rest
        return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)

    assert names == sorted(names, key=isort_style)
    assert all(hasattr(usreview.processing, name) for name in names)


def test_builtin_processors_and_pipeline_are_declared() -> None:
    registry = default_registry()
    assert {"doppler_indices", "mmode_motion", "volume", "vascular_rules"} <= {
        p.name for p in registry
    }
    for name, kinds in PIPELINE:
        assert kinds <= registry.get(name).kinds
        assert registry.get(name).available
    assert registry.get("doppler_indices").kinds == {ImageKind.PW_DOPPLER, ImageKind.CW_DOPPLER}


def test_a_processor_with_missing_modules_is_listed_unavailable(pw_file: Path) -> None:
    registry = Registry()

    @processor(
        "needs_more",
        kinds={"pw_doppler"},
        version="0.1",
        requires=("no_such_mod_x",),
        registry=registry,
    )
    def needs_more(context: Context) -> Output:
        return Output()

    proc = registry.get("needs_more")
    assert not proc.available
    assert proc.unavailable_reason == "missing modules: no_such_mod_x"
    assert proc.describe()["available"] is False
    result = proc.run(read(pw_file))
    assert result.status == ResultStatus.SKIPPED and "unavailable" in (result.reason or "")
    with pytest.raises(UnknownProcessorError):
        registry.get("nope")


def test_failures_are_isolated_and_name_the_step_and_instance(pw_file: Path) -> None:
    registry = Registry()

    @processor("broken", kinds={"pw_doppler"}, version="1", registry=registry)
    def broken(context: Context) -> Output:
        raise ZeroDivisionError("division by zero")

    @processor("not_here", kinds={"pw_doppler"}, version="1", registry=registry)
    def not_here(context: Context) -> Output:
        raise NotApplicable("nothing to measure")

    @processor(
        "fine", kinds={"pw_doppler"}, version="2.1", params={"factor": 2.0}, registry=registry
    )
    def fine(context: Context) -> Output:
        value = float(context.params["factor"]) * len(context.prior)
        return Output(quantities=(Quantity("count", CODE, value, "1"),))

    steps = (
        ("broken", frozenset({ImageKind.PW_DOPPLER})),
        ("not_here", frozenset({ImageKind.PW_DOPPLER})),
        ("fine", frozenset({ImageKind.PW_DOPPLER})),
    )
    instance = read(pw_file)
    results = run_pipeline(instance, registry=registry, steps=steps, params={"fine": {"factor": 3}})
    assert [r.status for r in results] == [
        ResultStatus.FAILED,
        ResultStatus.SKIPPED,
        ResultStatus.DONE,
    ]
    assert results[0].reason == (
        f"applying processor broken to instance {instance.sop_instance_uid}: "
        "ZeroDivisionError: division by zero"
    )
    assert results[1].reason == "nothing to measure"
    done = results[2]
    assert done.output.quantities[0].value == 6.0
    assert done.provenance.as_dict() == {
        "processor": "fine",
        "version": "2.1",
        "parameters": {"factor": 3.0},
        "sop_instance_uid": instance.sop_instance_uid,
        "study_instance_uid": instance.study_instance_uid,
    }
    bad = registry.get("fine").run(instance, {"nope": 1})
    assert bad.status == ResultStatus.FAILED and "unknown parameter 'nope'" in (bad.reason or "")


class _EntryPoint:
    def __init__(self, name: str, value: str) -> None:
        self.name, self.value = name, value

    def load(self) -> object:
        module, _, attr = self.value.partition(":")
        loaded = __import__(module, fromlist=["_"])
        return getattr(loaded, attr) if attr else loaded


def test_entry_point_processors_load_and_broken_ones_are_unavailable(
    monkeypatch: pytest.MonkeyPatch, pw_file: Path
) -> None:
    registry = Registry()
    plugin = types.ModuleType("usreview_test_plugin")

    def peak_count(context: Context) -> Output:
        return Output(quantities=(Quantity("kinds", CODE, len(context.instance.kinds), "1"),))

    plugin.peak_count = processor(  # type: ignore[attr-defined]
        "plugin_kinds", kinds={"pw_doppler"}, version="9", registry=Registry()
    )(peak_count)
    monkeypatch.setitem(sys.modules, "usreview_test_plugin", plugin)
    points = [
        _EntryPoint("plugin_kinds", "usreview_test_plugin:peak_count"),
        _EntryPoint("missing_dep", "usreview_no_such_plugin_module:thing"),
    ]

    def fake_entry_points(group: str) -> list[_EntryPoint]:
        assert group == "usreview.processors"
        return points

    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points)
    names = registry.load_entry_points()
    assert sorted(names) == ["missing_dep", "plugin_kinds"]
    loaded = registry.get("plugin_kinds")
    assert loaded.available and loaded.origin == "tests.test_processing_registry"
    broken = registry.get("missing_dep")
    assert not broken.available
    assert "cannot import usreview_no_such_plugin_module:thing" in (broken.unavailable_reason or "")
    results = {
        r.provenance.processor: r
        for r in run_pipeline(read(pw_file), registry=_with_builtins(registry))
    }
    assert results["plugin_kinds"].status == ResultStatus.DONE
    assert results["missing_dep"].status == ResultStatus.SKIPPED


def test_names_and_versions_a_job_cannot_record_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A job records "name=version name=version ...": a space or "=" would corrupt it.
    registry = Registry()

    def nothing(context: Context) -> Output:
        return Output()

    for name, version, why in [
        ("my proc", "1.0", "a name is letters, digits"),
        ("a=b", "1.0", "a name is letters, digits"),
        (plausible.NAME, "1.0", "are reserved"),
        ("similarity", "1.0", "are reserved"),
        ("study_evaluation", "1.0", "are reserved"),
        ("fine", "1.0 beta", "without spaces or '='"),
        ("fine", "1=2", "without spaces or '='"),
    ]:
        with pytest.raises(ValueError, match=why):
            processor(name, kinds={"bmode"}, version=version, registry=registry)(nothing)
    processor("my-proc.v2", kinds={"bmode"}, version="2.0rc1", registry=registry)(nothing)
    assert [p.name for p in registry] == ["my-proc.v2"]
    # From an entry point: listed as unavailable with the reason, the others still load.
    bad = Processor("bad name", nothing, frozenset({ImageKind.BMODE}), "1")
    plugin = types.ModuleType("usreview_test_bad_plugin")
    plugin.bad = bad  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "usreview_test_bad_plugin", plugin)
    points = [_EntryPoint("bad name", "usreview_test_bad_plugin:bad")]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: points)
    assert registry.load_entry_points() == ["bad_name"]
    listed = registry.get("bad_name")
    assert not listed.available and "a name is letters" in (listed.unavailable_reason or "")


def test_a_processor_installed_while_running_is_found_without_a_restart(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pw_file: Path
) -> None:
    """The worker's pool processes live long: a package deployed meanwhile runs at the
    next job (``run_pipeline``), and ``usreview hub jobs --outdated`` expects it."""
    from usreview.processing import registry as module
    from usreview.processing.pipeline import planned_steps

    registry = default_registry()  # loaded (as a pool process after its first job)
    monkeypatch.setattr(registry, "_processors", dict(registry._processors))
    monkeypatch.setattr(registry, "_entry_points", dict(registry._entry_points))
    monkeypatch.setattr(module, "_fingerprint", module._fingerprint)
    assert "hotplug_kinds" not in default_registry()
    site = tmp_path / "site-packages"
    install_fake_package(
        site, "usreview_hotplug", HOTPLUG, "hotplug = usreview_hotplug:hotplug_kinds"
    )
    monkeypatch.syspath_prepend(str(site))
    try:
        assert default_registry() is registry and "hotplug_kinds" in registry
        assert registry.get("hotplug_kinds").available
        assert ("hotplug_kinds", frozenset({ImageKind.PW_DOPPLER})) in planned_steps()
        results = {r.provenance.processor: r for r in run_pipeline(read(pw_file))}
        assert results["hotplug_kinds"].status == ResultStatus.DONE
        assert [p.name for p in default_registry()].count("hotplug_kinds") == 1  # once
    finally:
        sys.modules.pop("usreview_hotplug", None)


def test_looking_for_new_processors_reads_no_entry_point_when_nothing_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each job asks :func:`default_registry`: with nothing installed meanwhile, it reads
    no entry point (a few stats of the ``sys.path`` folders)."""

    default_registry()
    read: list[str] = []
    real = importlib.metadata.entry_points

    def counted(**kwargs: Any) -> Any:
        read.append(str(kwargs.get("group")))
        return real(**kwargs)

    monkeypatch.setattr(importlib.metadata, "entry_points", counted)
    for _ in range(100):
        default_registry()
    assert read == []


def _with_builtins(extra: Registry) -> Registry:
    registry = Registry()
    for proc in default_registry():
        registry.register(proc)
    for proc in extra:
        registry.register(proc, replace=True)
    return registry


def test_rules_carry_values_source_and_decision_support_wording(pw_file: Path) -> None:
    results = {r.provenance.processor: r for r in run_pipeline(read(pw_file))}
    assert results["mmode_motion"].status == ResultStatus.SKIPPED
    assert "applies to mmode" in (results["mmode_motion"].reason or "")
    recommendations = results["vascular_rules"].output.recommendations
    by_rule = {r.rule: r for r in recommendations}
    ica = by_rule["sru_ica_stenosis_psv"]
    assert isinstance(ica, Recommendation)
    assert ica.category == "ica_70_or_more"  # PSV about 260 cm/s
    assert "Radiology 2003" in ica.source
    assert ica.text.startswith("Decision support for the reviewing expert")
    psv = results["doppler_indices"].quantity("peak_systolic_velocity")
    assert ica.evidence == (psv,)
    assert psv is not None and psv.code.value == "11726-7" and psv.unit == "cm/s"


def test_constructed_results_validate_their_arguments() -> None:
    with pytest.raises(ValueError, match="'value'"):
        Quantity("psv", CODE, float("nan"), "cm/s")
    with pytest.raises(ValueError, match="'unit'"):
        Quantity("psv", CODE, 1.0, " ")


def test_values_no_patient_can_have_are_findings_in_any_processor(pw_file: Path) -> None:
    from usreview.processing.plausible import RANGES
    from usreview.processing.quantification.codes import CODES

    def measured(values: dict[str, float]) -> Output:
        return Output(
            quantities=tuple(
                Quantity(name, CODES[name][0], value, CODES[name][1])
                for name, value in values.items()
            )
        )

    registry = Registry()
    edges = {"peak_systolic_velocity": 800.0, "heart_rate": 15.0}  # the bounds are included
    for name, values in (
        ("edges", edges),
        ("too_fast", {"peak_systolic_velocity": 800.5, "heart_rate": 70.0}),
    ):
        processor(name, kinds={"pw_doppler"}, version="1", registry=registry)(
            lambda context, values=values: measured(values)
        )
    instance = read(pw_file)
    kept = registry.get("edges").run(instance)
    assert {q.name: q.value for q in kept.output.quantities} == edges and not kept.output.findings
    wrong = registry.get("too_fast").run(instance)
    assert wrong.ok and wrong.output.quantities == ()
    [finding] = wrong.output.findings
    assert finding.code == "implausible_value"
    assert finding.evidence == {
        "name": "peak_systolic_velocity",
        "value": 800.5,
        "unit": "cm/s",
        "range": [0.0, 800.0],
        "range_unit": "cm/s",
        "withheld": ["heart_rate"],
    }
    assert RANGES[("peak_systolic_velocity", "cm/s")] == (0.0, 800.0)


@pytest.mark.parametrize(
    ("name", "values"),
    [
        # the same velocity in cm/s, m/s and mm/s: at the bound (kept) and past it
        ("peak_systolic_velocity", [(800.0, "cm/s"), (8.0, "m/s"), (8000.0, "mm/s")]),
        ("peak_systolic_velocity", [(800.5, "cm/s"), (8.005, "m/s"), (8005.0, "mm/s")]),
        ("peak_systolic_velocity", [(230.0, "cm/s"), (2.3, "m/s"), (2300.0, "mm/s")]),
        ("end_diastolic_velocity", [(-400.0, "cm/s"), (-4.0, "m/s")]),
        ("end_diastolic_velocity", [(-400.1, "cm/s"), (-4.001, "m/s")]),
        ("lv_internal_dimension_diastole", [(121.0, "mm"), (12.1, "cm"), (0.121, "m")]),
        ("volume", [(10_000.0, "mL"), (10.0, "L")]),
        ("volume", [(10_500.0, "mL"), (10.5, "L")]),
    ],
)
def test_a_value_in_another_unit_gets_the_same_verdict_as_in_the_ranges_unit(
    name: str, values: list[tuple[float, str]]
) -> None:
    """The check converts exactly (as the rules do) before comparing: 9 m/s is no longer
    waved through as 9 cm/s, nor 3 m/s left unchecked."""
    from usreview.processing.plausible import screen

    code = CODE
    verdicts = []
    for value, unit in values:
        output = screen(Output(quantities=(Quantity(name, code, value, unit),)))
        verdicts.append(bool(output.quantities))
        if not output.quantities:
            [finding] = output.findings
            assert finding.evidence["unit"] == unit and finding.evidence["value"] == value
            range_unit = finding.evidence["range_unit"]
            assert range_unit == values[0][1]
            if unit != range_unit:  # the value is shown in both units
                assert f"{value:.4g} {unit} (" in finding.text
    assert len(set(verdicts)) == 1, verdicts


def test_a_unit_that_does_not_convert_is_not_checked() -> None:
    """Nothing says what 900 cm/sec (a misspelt unit) or 900 kHz would be in cm/s."""
    from usreview.processing.plausible import screen

    for unit in ("cm/sec", "kHz", "cm"):
        output = Output(quantities=(Quantity("peak_systolic_velocity", CODE, 900.0, unit),))
        assert screen(output) == output, unit
