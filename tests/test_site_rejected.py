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


# -- what is final, and sending again --------------------------------------------------

# (status, error, reason, what it means): every refusal of an upload in the hub's table
# (usreview/hub/api/errors.py), each 422 reason (usreview.ingest.errors.RejectReason).
REFUSALS = [
    (422, "rejected_instance", "not DICOM", "final"),
    (422, "rejected_instance", "not ultrasound", "final"),
    (422, "rejected_instance", "corrupt pixel data", "final"),
    (422, "rejected_instance", "invalid header", "final"),
    (409, "conflict", None, "final"),
    (422, "rejected_instance", "unsupported transfer syntax", "instance"),
    (422, "rejected_instance", "image too large", "instance"),
    (422, "rejected_instance", "resource limit exceeded", "instance"),
    (422, "rejected_instance", "timed out", "instance"),
    (422, "rejected_instance", "worker crashed", "instance"),
    (422, "rejected_instance", None, "instance"),  # a reason this site does not know
    (413, "too_large", None, "instance"),
    (409, "replayed", None, "instance"),
    (400, "uid_mismatch", None, "final"),  # the dataset is not the UID it came under
    (400, "bad_request", None, "instance"),
    (400, "bad_envelope", None, "site"),
    (400, "not_for_hub", None, "site"),
    (403, "wrong_sender", None, "site"),
    (403, "forbidden", None, "site"),
    (401, "unauthorized", None, "site"),
    (404, "not_found", None, "site"),
    (408, "", None, "site"),
    (429, "", None, "site"),
]


@pytest.mark.parametrize(("status", "code", "reason", "meaning"), REFUSALS)
def test_only_an_instance_bad_in_itself_is_refused_for_good(
    status: int, code: str, reason: str | None, meaning: str
) -> None:
    from usreview.site.errors import HubRefusedError

    refused = HubRefusedError(status, code, "the hub's sentence", reason)
    assert refused.permanent is (meaning == "final")
    assert refused.refusal == meaning


def test_advice_for_a_refusal_the_site_or_the_hub_can_fix(tmp_path: Path) -> None:
    from usreview.site.errors import HubRefusedError

    ahead = HubRefusedError(
        400,
        "bad_envelope",
        "envelope refused: envelope is valid only from 2025-03-01 10:15:00Z "
        "(now 2025-03-01 10:00:00Z); check the clocks of sender and receiver",
    )
    assert str(ahead.advice()).startswith("the site clock is 900 s ahead of the hub: fix NTP")
    stale = HubRefusedError(400, "not_for_hub", "the envelope is not addressed to the hub's key")
    assert f"save it as {tmp_path / 'hub.pub'}" in str(
        stale.advice(hub_key_file=tmp_path / "hub.pub")
    )
    decoder = HubRefusedError(422, "rejected_instance", "x", "unsupported transfer syntax")
    assert str(decoder.advice(transfer_syntax="1.2.840.10008.1.2.4.201")).startswith(
        "the hub is missing a decoder for transfer syntax 1.2.840.10008.1.2.4.201: tell the "
        "hub's administrator"
    )
    assert "raise it" in str(HubRefusedError(413, "too_large", "too large").advice())
    assert HubRefusedError(409, "conflict", "another instance has this UID").advice() is None


def test_requeue_moves_rejected_instances_back_into_the_spool_once(
    site: tuple[Path, list[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    config, sent = site
    spool_root = load_config(config).spool
    first, second = list_rejected(Spool(spool_root))
    base = ["site", "rejected", "--config", str(config)]
    assert main([*base, "--requeue", first.sop_instance_uid]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "1 requeued for upload, 0 already in the spool, 0 failed"
    )
    back = spool_root / first.path.name
    assert back.read_bytes().startswith(MAGIC)  # moved as it was: sealed
    assert [i.path.name for i in list_rejected(Spool(spool_root))] == [second.path.name]
    assert not list((spool_root / "rejected").glob(first.path.stem + "*"))  # no note left
    cipher = load_spool_cipher(load_config(config))
    [pending] = Spool(spool_root, cipher).pending()
    assert Spool(spool_root, cipher).read(pending) == sent[0]

    # Interrupted after the move: only the note is left in rejected/. It is found in the
    # spool, not sent twice.
    note = spool_root / "rejected" / (first.path.stem + ".reason.json")
    note.write_text(json.dumps({"reason": REASONS[0], "rejected_at": 1.0}))
    assert main([*base, "--requeue", "--all"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "1 requeued for upload, 1 already in the spool, 0 failed"
    )
    assert list_rejected(Spool(spool_root)) == []
    assert len(Spool(spool_root).pending()) == 2

    log = load_config(config).state / EXPORTS_LOG
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(x["action"], x["sop_instance_uid"]) for x in lines] == [
        ("requeue_rejected", first.sop_instance_uid),
        ("requeue_rejected", second.sop_instance_uid),
    ]
    assert [x["reason"] for x in lines] == list(REASONS)

    # Nothing left to requeue: an unknown UID is named, exit status 1; no UID at all is
    # a usage error.
    assert main([*base, "--requeue", first.sop_instance_uid]) == 1
    captured = capsys.readouterr()
    assert f"{first.sop_instance_uid}: no rejected instance with this UID" in captured.err
    assert (
        captured.out.splitlines()[-1] == "0 requeued for upload, 0 already in the spool, 1 failed"
    )
    assert main([*base, "--requeue"]) == 2
    assert "--all" in capsys.readouterr().err
