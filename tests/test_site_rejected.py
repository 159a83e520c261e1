"""``usreview site rejected``: the instances the hub refused, listed and exported.

A site with an encrypted spool (``site init --encrypt-spool``) spools two simulated
instances and the spool rejects them as the upload process does (:meth:`Spool.reject`):
they rest sealed in ``rejected/``. The command lists them with their reasons; ``--export``
writes them as received (0600, recorded in ``STATE/exports.log``), never twice; a damaged
one, or a spool key missing from ``site.toml``, fails by name without stopping the others.
"""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pydicom
import pytest

from usreview.cli import main
from usreview.simulate import simulate
from usreview.site import Spool, init_site, load_config
from usreview.site.atrest import MAGIC, load_spool_cipher
from usreview.site.rejected import EXPORTS_LOG, list_rejected

REASONS = ("409 conflict: another instance has this UID", "400 bad_request: not ultrasound")


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, list[bytes]]:
    """(site.toml, the DICOM bytes of the two rejected instances, in rejection order)."""
    init_site("clinic", "https://hub.example.org", tmp_path / "site", encrypt_spool=True)
    config = load_config(tmp_path / "site" / "site.toml")
    spool = Spool(config.spool, load_spool_cipher(config))
    sent = []
    for n, reason in enumerate(REASONS):
        [path] = simulate(
            "bmode", tmp_path / f"sim{n}", seed=n, rows=128, columns=128, inclusions=1
        )
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        spool.reject(spool.put(uid, path.read_bytes()), reason)
        sent.append(path.read_bytes())
    return config.path, sent


def test_rejected_instances_are_listed_with_their_reasons_and_rest_sealed(
    site: tuple[Path, list[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    config, sent = site
    items = list_rejected(Spool(load_config(config).spool))
    assert [i.reason for i in items] == list(REASONS)
    assert [i.sha256 for i in items] == [hashlib.sha256(d).hexdigest() for d in sent]
    for item, data in zip(items, sent, strict=True):
        stored = item.path.read_bytes()
        assert stored.startswith(MAGIC) and item.size == len(stored)
        assert data[128:164] not in stored  # "DICM" and the file meta: no plaintext

    assert main(["site", "rejected", "--config", str(config)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "2 rejected instance(s)"
    for line, item in zip(out[:-1], items, strict=True):
        uid, sha, size, _, reason = line.split("\t")
        assert (uid, sha, size, reason) == (
            item.sop_instance_uid,
            item.sha256[:12],
            f"{item.size} B",
            item.reason,
        )


def test_export_writes_what_was_received_once_and_records_it(
    site: tuple[Path, list[bytes]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, sent = site
    out = tmp_path / "export"
    assert main(["site", "rejected", "--config", str(config), "--export", str(out)]) == 0
    assert "2 exported" in capsys.readouterr().out
    copies = sorted(out.iterdir())
    assert sorted(p.read_bytes() for p in copies) == sorted(sent)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in copies)
    for path in copies:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.stem.rpartition("_")[2]

    log = load_config(config).state / EXPORTS_LOG
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(line["to"] for line in lines) == [str(p) for p in copies]
    assert {line["reason"] for line in lines} == set(REASONS)
    assert stat.S_IMODE(log.stat().st_mode) == 0o600

    assert main(["site", "rejected", "--config", str(config), "--export", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"0 exported to {out}, 2 already there, 0 failed"
    )
    assert sorted(out.iterdir()) == copies
    assert len(log.read_text().splitlines()) == 2  # nothing exported twice


def test_a_damaged_file_or_a_missing_key_fails_by_name_and_the_others_export(
    site: tuple[Path, list[bytes]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, sent = site
    first, _ = list_rejected(Spool(load_config(config).spool))
    stored = bytearray(first.path.read_bytes())
    stored[-1] ^= 1
    first.path.write_bytes(bytes(stored))
    out = tmp_path / "export"
    assert main(["site", "rejected", "--config", str(config), "--export", str(out)]) == 1
    captured = capsys.readouterr()
    assert f"{first.path.name}: " in captured.err and "does not open with the spool key" in (
        captured.err
    )
    assert "Traceback" not in captured.err
    assert [p.read_bytes() for p in out.iterdir()] == [sent[1]]

    text = config.read_text()
    config.write_text(text.replace('spool_key = "keys/spool.key"', 'spool_key = ""'))
    again = tmp_path / "again"
    assert main(["site", "rejected", "--config", str(config), "--export", str(again)]) == 1
    err = capsys.readouterr().err
    assert err.count("set folders.spool_key") == 2 and not list(again.iterdir())


def test_a_note_with_an_impossible_time_is_listed_with_the_time_unknown(
    site: tuple[Path, list[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = site
    notes = sorted((load_config(config).spool / "rejected").glob("*.reason.json"))
    for times in ((1e20, float("nan")), (10**400, float("-inf"))):
        for note, at in zip(notes, times, strict=True):
            note.write_text(json.dumps({**json.loads(note.read_text()), "rejected_at": at}))
        assert main(["site", "rejected", "--config", str(config)]) == 0
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err
        lines = captured.out.splitlines()
        assert lines[-1] == "2 rejected instance(s)"
        assert sorted(line.split("\t")[3] for line in lines[:-1]) == ["?", "?"]
        assert {line.split("\t")[4] for line in lines[:-1]} == set(REASONS)


def test_a_copy_that_cannot_be_written_is_logged_as_failed(
    site: tuple[Path, list[bytes]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import errno

    import usreview.site.rejected as rejected

    config, _ = site
    first, second = list_rejected(Spool(load_config(config).spool))
    write = rejected.write_new_file

    def full_disk(path: Path, data: bytes, *, mode: int = 0o600) -> None:
        if path.name == first.path.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(path, data, mode=mode)

    monkeypatch.setattr(rejected, "write_new_file", full_disk)
    out = tmp_path / "export"
    assert main(["site", "rejected", "--config", str(config), "--export", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"usreview: error: {first.path.name}: cannot write {out / first.path.name}: " in err
    assert err.count(first.path.name) == 2  # the file named once, and its target
    assert [p.name for p in out.iterdir()] == [second.path.name]
    log = load_config(config).state / EXPORTS_LOG
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    # Recorded before the copy was written, then its failure: the log never claims a copy.
    assert [(x["action"], x["sop_instance_uid"]) for x in lines] == [
        ("export_rejected", first.sop_instance_uid),
        ("export_failed", first.sop_instance_uid),
        ("export_rejected", second.sop_instance_uid),
    ]
    assert "No space left on device" in lines[1]["failed"]
