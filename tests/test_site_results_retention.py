"""How long results stay at the site: ``[results] keep_days`` and ``outbox = false``.

Results come from the results feed of a hub stand-in (:class:`FeedHub`: envelopes sealed
by a hub key the site trusts) and go to real DICOM peers (pynetdicom Storage SCPs on
loopback ports), as in ``test_site_results_feed``; they are delivered by ``site pull``'s
code, which removes what is due after delivering.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.results_feed_support import FeedHub, Pacs
from tests.site_helpers import wait_until
from usreview.cli import main
from usreview.simulate import simulate
from usreview.site import SiteConfig, SiteConfigError, format_status, load_config, read_status
from usreview.site.config import PacsDestination
from usreview.site.pull import pull_results
from usreview.site.results import ResultFollower
from usreview.site.status import StatusBook
from usreview.site.studies import read_journal

DAY = 86400


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[FeedHub]:
    running = FeedHub(tmp_path / "hub")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> pydicom.Dataset:
    folder = tmp_path_factory.mktemp("sim")
    [path] = simulate("bmode", folder, seed=4, rows=128, columns=128, inclusions=1)
    return pydicom.dcmread(path)


def _dicom(image: pydicom.Dataset, study: str) -> tuple[bytes, str]:
    """A derived image of ``study`` (a new SOP Instance UID): its bytes and that UID."""
    ds = image.copy()
    ds.StudyInstanceUID = study
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue(), str(ds.SOPInstanceUID)


def _destination(name: str, port: int) -> PacsDestination:
    return PacsDestination(name, "PACS", "127.0.0.1", port)


def _set(config: SiteConfig, old: str, new: str) -> SiteConfig:
    text = config.path.read_text()
    assert text.count(old) == 1, old
    config.path.write_text(text.replace(old, new))
    return load_config(config.path)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _age(path: Path, days: float) -> None:
    then = time.time() - days * DAY
    os.utime(path, (then, then))


def _removed(config: SiteConfig) -> dict[str, object]:
    removed = read_status(config).recorded.get("removed")
    assert isinstance(removed, dict)
    return removed


# pynetdicom 3.0.4 shuts down the socket of a refused connection before closing it (see
# test_site_deliver): a ResourceWarning when it is collected.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_outbox_files_past_keep_days_go_once_every_pacs_took_them(
    hub: FeedHub, image: pydicom.Dataset, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: the outbox kept every result for ever (no setting)."""
    caplog.set_level(logging.INFO, logger="usreview.site.retention")
    good, late = Pacs(), Pacs(status=0xA900)  # 'late' refuses until it is fixed
    try:
        config = hub.site(
            tmp_path / "site", [_destination("good", good.port), _destination("late", late.port)]
        )
        config = _set(config, "keep_days = 0", "keep_days = 30")
        study = generate_uid()
        (old_image, uid1), (new_image, uid3) = _dicom(image, study), _dicom(image, study)
        first = hub.publish(old_image, study, "derived")
        second = hub.publish(b'{"psv": 95}', study, "summary")
        third = hub.publish(new_image, study, "derived")
        pull_results(config)
        folder = config.outbox / study
        names = [f"{first:08d}-derived.dcm", f"{second:08d}-summary.json"]
        names.append(f"{third:08d}-derived.dcm")
        assert _files(folder) == sorted(names)
        assert sorted(good.received) == sorted([uid1, uid3])
        assert len(list((config.state / "pacs" / "late" / "failed").glob("*.json"))) == 2
        clinic = folder / "notes.txt"  # the clinic's own file: never removed
        clinic.write_text("seen")
        for path in [folder / names[0], folder / names[1], clinic]:
            _age(path, 31)

        pull_results(config)  # the summary (no PACS takes it) goes; the first waits for 'late'
        assert _files(folder) == sorted([names[0], names[2], "notes.txt"])
        assert _removed(config)["count"] == 1
        assert f"outbox: removed {folder / names[1]}: older than 30 days" in caplog.text
        shown = format_status(read_status(config))
        assert "files kept 30 days once every PACS took them; 1 removed" in shown
        assert f"{study}/{names[1]}" in shown

        late.status = 0x0000  # fixed: what it refused is sent again and taken
        assert main(["site", "pacs", "--config", str(config.path), "--retry-failed"]) == 0
        pull_results(config)
        assert sorted(late.received) == sorted([uid1, uid3])
        assert _files(folder) == sorted([names[2], "notes.txt"])  # the third is 0 days old
        assert _removed(config)["count"] == 2
        _age(folder / names[2], 31)
        clinic.unlink()
        pull_results(config)
        assert not folder.exists()  # emptied, then removed
        assert _removed(config)["count"] == 3
    finally:
        good.stop()
        late.stop()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_pacs_only_site_keeps_a_result_until_every_pacs_took_it(
    hub: FeedHub, image: pydicom.Dataset, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="usreview.site.retention")
    with socket.socket() as closed:  # where the second PACS will listen: down for now
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    first = Pacs()
    second: Pacs | None = None
    try:
        config = hub.site(
            tmp_path / "site", [_destination("first", first.port), _destination("second", port)]
        )
        config = _set(config, "outbox = true", "outbox = false")
        study = generate_uid()
        data, uid = _dicom(image, study)
        report_id = hub.publish(data, study, "report")
        summary_id = hub.publish(b"Report: normal\n", study, "report-summary")
        pulled = pull_results(config)
        kept = config.state / "pacs" / "second" / f"{report_id:08d}.dcm"
        assert pulled.delivered == [(report_id, config.state / "pacs" / "first" / kept.name),
                                    (summary_id, None)]  # fmt: skip
        assert pulled.pacs_pending == 1 and first.received == [uid]
        assert not config.outbox.exists()
        # The one copy left: the queue's of the PACS still to take it, private.
        assert sorted(p.name for p in (config.state / "pacs").rglob("*.dcm")) == [kept.name]
        assert kept.read_bytes() == data and stat.S_IMODE(kept.stat().st_mode) == 0o600
        assert _removed(config)["count"] == 1  # the summary, which no PACS takes
        assert f"result {summary_id} (report-summary) not kept" in caplog.text
        shown = format_status(read_status(config))
        assert "outbox        not written (results.outbox = false" in shown

        second = Pacs(port)
        assert pull_results(config).pacs_pending == 0
        assert second.received == [uid]
        assert list((config.state / "pacs").rglob("*.dcm")) == []  # nothing left
        removed = _removed(config)
        assert removed["count"] == 2
        assert removed["last"]["what"] == f"result {report_id}"  # type: ignore[index]
        assert f"result {report_id} removed: every PACS took it" in caplog.text
        shown = format_status(read_status(config))
        assert "2 removed, last " in shown and f"result {report_id} (every PACS took it" in shown
        journal = [e for e in read_journal(config.state) if e["e"] in ("result", "pacs")]
        assert [(e["e"], e["id"], e.get("file"), e.get("pacs")) for e in journal] == [
            ("result", report_id, None, ["first", "second"]),
            ("result", summary_id, None, []),
            ("pacs", report_id, None, "first"),
            ("pacs", report_id, None, "second"),
        ]
    finally:
        first.stop()
        if second is not None:
            second.stop()


@pytest.mark.parametrize(
    ("old", "new", "setting", "said"),
    [
        ("keep_days = 0", "keep_day = 30", "results.keep_day", "did you mean results.keep_days?"),
        ("keep_days = 0", "keep_days = -1", "results.keep_days", "must be from 0 to 36500"),
        ("keep_days = 0", 'keep_days = "30"', "results.keep_days", "must be a float"),
        ("outbox = true", 'outbox = "no"', "results.outbox", "must be true or false"),
        ("outbox = true", "outbox = false", "results.outbox", "needs a [[pacs]]"),
        ("outbox = true", "outbx = false", "results.outbx", "did you mean results.outbox?"),
    ],
)
def test_results_settings_are_checked(
    hub: FeedHub, tmp_path: Path, old: str, new: str, setting: str, said: str
) -> None:
    config = hub.site(tmp_path / "site")  # no PACS
    assert (config.results_to_outbox, config.outbox_keep_days) == (True, 0.0)
    with pytest.raises(SiteConfigError) as info:
        _set(config, old, new)
    assert info.value.setting == setting
    assert f": {setting}: " in str(info.value) and said in str(info.value), str(info.value)


def test_a_site_toml_without_the_settings_keeps_every_result(hub: FeedHub, tmp_path: Path) -> None:
    config = hub.site(tmp_path / "site")
    config = _set(config, "outbox = true\n", "")
    config = _set(config, "keep_days = 0\n", "")
    assert (config.results_to_outbox, config.outbox_keep_days) == (True, 0.0)
    study = generate_uid()
    hub.publish(b'{"psv": 95}', study, "summary")
    pull_results(config)
    [path] = (config.outbox / study).iterdir()
    _age(path, 10 * 365)
    pull_results(config)
    assert path.exists()
    doc = json.loads(json.dumps(read_status(config).to_dict()))
    assert doc["outbox"] == {"folder": str(config.outbox), "written": True, "keep_days": 0.0}
    assert "removed" not in doc
    assert "files kept for ever (results.keep_days = 0)" in format_status(read_status(config))


def test_the_gateways_follower_removes_old_outbox_files_when_it_starts(
    hub: FeedHub, tmp_path: Path
) -> None:
    config = _set(hub.site(tmp_path / "site"), "keep_days = 0", "keep_days = 1.5")
    study = generate_uid()
    hub.publish(b'{"psv": 95}', study, "summary")
    pull_results(config)
    [path] = (config.outbox / study).iterdir()
    _age(path, 1.4)
    follower = ResultFollower(config, StatusBook(config.state))
    follower.start()
    try:
        time.sleep(0.5)
        assert path.exists()  # not old enough
    finally:
        follower.stop()
    _age(path, 1.6)
    follower = ResultFollower(config, StatusBook(config.state))
    follower.start()
    try:
        wait_until(lambda: not path.exists(), timeout=10)
    finally:
        follower.stop()
    assert _removed(config)["count"] == 1
