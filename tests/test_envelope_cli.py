"""``usreview keys new / keys trust / seal / unseal``: exit statuses, one-line errors, no OUT."""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from usreview.cli import main
from usreview.envelope import generate_keys, load_private_keys, load_public_keys, seal

USREVIEW = [sys.executable, "-m", "usreview.cli"]


@pytest.fixture
def keydir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    d = tmp_path / "keys"
    d.mkdir()
    for name in ("site", "hub", "other"):
        assert main(["keys", "new", name, "--dir", str(d)]) == 0
    capsys.readouterr()
    return d


def test_keys_new_creates_a_private_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "new" / "keys"
    assert main(["keys", "new", "site", "--dir", str(folder)]) == 0
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "site.key").stat().st_mode) == 0o600
    assert "site.pub" in capsys.readouterr().out


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def fails(argv: list[str], capsys: pytest.CaptureFixture[str], words: str, out: Path) -> None:
    status, _, err = run(argv, capsys)
    assert status != 0
    assert err.count("\n") == 1 and err.startswith("usreview: error: "), err
    assert words in err, err
    assert not out.exists()
    assert [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")] == []


def seal_args(keydir: Path, src: Path, dst: Path, *to: str) -> list[str]:
    args = ["seal", "--key", str(keydir / "site.key")]
    for name in to or ("hub",):
        args += ["--to", str(keydir / f"{name}.pub")]
    return [*args, str(src), str(dst)]


def unseal_args(keydir: Path, src: Path, dst: Path, key: str = "hub", *extra: str) -> list[str]:
    return [
        "unseal",
        "--key",
        str(keydir / f"{key}.key"),
        "--trust",
        str(keydir / "site.pub"),
        *extra,
        str(src),
        str(dst),
    ]


def test_keys_new(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(["keys", "new", "hub", "--dir", str(tmp_path)], capsys)
    assert status == 0 and "key id" in out
    assert stat.S_IMODE((tmp_path / "hub.key").stat().st_mode) == 0o600
    fails(["keys", "new", "hub", "--dir", str(tmp_path)], capsys, "overwrite", tmp_path / "none")
    fails(
        ["keys", "new", "../x", "--dir", str(tmp_path)], capsys, "invalid key name", tmp_path / "n"
    )
    assert run(["keys", "new", "bad name", "--dir", str(tmp_path)], capsys)[0] == 2  # bad input


def test_seal_unseal_round_trip(
    keydir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, env, out = tmp_path / "study.dcm", tmp_path / "study.env", tmp_path / "study.out"
    src.write_bytes(b"DICM" * 50000)
    status, text, _ = run(seal_args(keydir, src, env, "hub", "other"), capsys)
    assert status == 0 and "2 recipient(s)" in text
    status, text, _ = run(unseal_args(keydir, env, out), capsys)
    assert status == 0 and "from site" in text
    assert out.read_bytes() == src.read_bytes()
    fails(unseal_args(keydir, env, out), capsys, "overwrite", tmp_path / "nothing")
    assert out.read_bytes() == src.read_bytes()
    fails(seal_args(keydir, src, env), capsys, "overwrite", tmp_path / "nothing")


@pytest.fixture
def sealed(keydir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    src, env = tmp_path / "in", tmp_path / "in.env"
    src.write_bytes(bytes(range(256)) * 1000)
    assert main(seal_args(keydir, src, env)) == 0
    capsys.readouterr()
    return env


def test_not_a_recipient(
    keydir: Path, sealed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o"
    fails(unseal_args(keydir, sealed, out, "other"), capsys, "not addressed to", out)


def test_untrusted_and_revoked_sender(
    keydir: Path, sealed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o"
    args = ["unseal", "--key", str(keydir / "hub.key"), "--trust", str(keydir / "other.pub")]
    fails([*args, str(sealed), str(out)], capsys, "not trusted", out)
    ring = tmp_path / "ring.json"
    assert (
        run(
            [
                "keys",
                "trust",
                str(keydir / "site.pub"),
                "--keyring",
                str(ring),
                "--state",
                "revoked",
            ],
            capsys,
        )[0]
        == 0
    )
    fails(unseal_args(keydir, sealed, out, "hub", "--keyring", str(ring)), capsys, "revoked", out)
    assert (
        run(
            [
                "keys",
                "trust",
                str(keydir / "site.pub"),
                "--keyring",
                str(ring),
                "--state",
                "retired",
            ],
            capsys,
        )[0]
        == 0
    )
    assert (
        run(
            [
                "unseal",
                "--key",
                str(keydir / "hub.key"),
                "--keyring",
                str(ring),
                str(sealed),
                str(out),
            ],
            capsys,
        )[0]
        == 0
    )


def test_sealing_to_a_retired_recipient(
    keydir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ring, src, env = tmp_path / "ring.json", tmp_path / "in", tmp_path / "env"
    src.write_bytes(b"x")
    run(
        ["keys", "trust", str(keydir / "hub.pub"), "--keyring", str(ring), "--state", "retired"],
        capsys,
    )
    fails(
        [*seal_args(keydir, src, env)[:-2], "--keyring", str(ring), str(src), str(env)],
        capsys,
        "retired",
        env,
    )


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "signature"),
        (lambda b: b[:600] + bytes([b[600] ^ 0x80]) + b[601:], "chunk 0"),
        (lambda b: b[:5000], "truncated"),
        (lambda b: b + b"junk", "after its signature"),
        (lambda b: b[:8] + b"\x00\x07" + b[10:], "version 7"),
        (lambda b: b"hello" + b, "not a usreview envelope"),
    ],
    ids=["signature", "chunk", "truncated", "trailing", "version", "garbage"],
)
def test_damaged_envelopes(
    mutate: Callable[[bytes], bytes],
    words: str,
    keydir: Path,
    sealed: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad, out = tmp_path / "bad.env", tmp_path / "o"
    bad.write_bytes(mutate(sealed.read_bytes()))
    fails(unseal_args(keydir, bad, out), capsys, words, out)


def test_replayed(
    keydir: Path, sealed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "seen.sqlite"
    assert (
        run(
            unseal_args(keydir, sealed, tmp_path / "o1", "hub", "--replay-cache", str(cache)),
            capsys,
        )[0]
        == 0
    )
    fails(
        unseal_args(keydir, sealed, tmp_path / "o2", "hub", "--replay-cache", str(cache)),
        capsys,
        "already opened",
        tmp_path / "o2",
    )


def test_an_output_in_a_missing_folder_is_named_as_given(
    keydir: Path, sealed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "no" / "such" / "out.env"
    status, _, err = run(seal_args(keydir, sealed, out), capsys)
    assert status == 1 and err == f"usreview: error: {out}: No such file or directory\n"


def test_a_replay_cache_that_cannot_be_used_is_one_line(
    keydir: Path, sealed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_a_db = tmp_path / "notes.txt"
    not_a_db.write_text("not a database, " * 100)
    for cache in (not_a_db, tmp_path, tmp_path / "no" / "folder.sqlite"):
        out = tmp_path / "o"
        fails(
            unseal_args(keydir, sealed, out, "hub", "--replay-cache", str(cache)),
            capsys,
            "not a replay cache this can use",
            out,
        )
    assert not_a_db.read_text() == "not a database, " * 100


def test_expired(keydir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env, out = tmp_path / "old.env", tmp_path / "o"
    with open(env, "wb") as f:
        seal(
            io.BytesIO(b"x"),
            f,
            sender=load_private_keys(keydir / "site.key"),
            recipients=[load_public_keys(keydir / "hub.pub")],
            valid_for=60,
            now=1_000_000_000,
        )
    fails(unseal_args(keydir, env, out), capsys, "expired", out)


def test_passphrase_env_and_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("USREVIEW_KEY_PASSPHRASE", "s3cret")
    status, out, _ = run(["keys", "new", "hub", "--dir", str(tmp_path)], capsys)
    assert status == 0 and "passphrase-protected" in out
    assert main(["keys", "new", "site", "--dir", str(tmp_path)]) == 0
    src, env = tmp_path / "in", tmp_path / "env"
    src.write_bytes(b"payload")
    assert (
        main(
            [
                "seal",
                "--key",
                str(tmp_path / "site.key"),
                "--to",
                str(tmp_path / "hub.pub"),
                str(src),
                str(env),
            ]
        )
        == 0
    )
    monkeypatch.delenv("USREVIEW_KEY_PASSPHRASE")
    base = ["unseal", "--key", str(tmp_path / "hub.key"), "--trust", str(tmp_path / "site.pub")]
    fails([*base, str(env), str(tmp_path / "o")], capsys, "passphrase-protected", tmp_path / "o")
    wrong, right = tmp_path / "wrong.txt", tmp_path / "pass.txt"
    wrong.write_text("nope\n")
    right.write_text("s3cret\n")
    fails(
        [*base, "--passphrase-file", str(wrong), str(env), str(tmp_path / "o")],
        capsys,
        "wrong passphrase",
        tmp_path / "o",
    )
    assert main([*base, "--passphrase-file", str(right), str(env), str(tmp_path / "o")]) == 0
    assert (tmp_path / "o").read_bytes() == b"payload"
    empty = tmp_path / "empty.txt"
    for text in ("", "\nsecond line\n"):  # asked for protection, given no passphrase
        empty.write_text(text)
        args = ["keys", "new", "x", "--dir", str(tmp_path / "x"), "--passphrase-file", str(empty)]
        status, _, err = run(args, capsys)
        assert status == 2 and "first line is empty" in err and err.count("\n") == 1
        assert not (tmp_path / "x" / "x.key").exists()


def test_usage_errors(keydir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in"
    src.write_bytes(b"x")
    fails(
        ["unseal", "--key", str(keydir / "hub.key"), str(src), str(tmp_path / "o")],
        capsys,
        "--trust",
        tmp_path / "o",
    )
    status, _, err = run([*seal_args(keydir, src, tmp_path / "e", "hub", "hub")], capsys)
    assert status == 2 and "twice" in err and err.count("\n") == 1
    fails(
        seal_args(keydir, tmp_path / "missing", tmp_path / "e"), capsys, "missing", tmp_path / "e"
    )
    for window, says in (("soon", "invalid duration 'soon'"), ("100d", "at most 90d")):
        with pytest.raises(SystemExit) as exit_info:
            main(
                [
                    *seal_args(keydir, src, tmp_path / "e")[:-2],
                    "--valid-for",
                    window,
                    str(src),
                    str(tmp_path / "e"),
                ]
            )
        assert exit_info.value.code == 2
        assert says in capsys.readouterr().err  # 100d said "valid_for must be 1 to 7776000"
    assert not (tmp_path / "e").exists()


def temporaries(out: Path) -> list[Path]:
    """The temporary files of ``out`` in its folder (quarantine or partial envelope)."""
    return [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


@pytest.mark.parametrize("command", ["seal", "unseal"])
def test_sigterm_leaves_no_partial_output(
    command: str, keydir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGTERM while IN still arrives (a slow pipe): exit 143, neither OUT nor its
    temporary file (a quarantine holds plaintext) is left."""
    plain, out = tmp_path / "plain", tmp_path / "out"
    plain.write_bytes(os.urandom(8 * 2**20))
    if command == "seal":
        data, args = plain.read_bytes(), seal_args(keydir, Path("/dev/stdin"), out)
    else:
        assert main(seal_args(keydir, plain, tmp_path / "plain.env")) == 0
        capsys.readouterr()
        data = (tmp_path / "plain.env").read_bytes()
        args = unseal_args(keydir, Path("/dev/stdin"), out)
    half = len(data) // 2
    with subprocess.Popen(
        [*USREVIEW, *args], stdin=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        assert process.stdin is not None and process.stderr is not None
        process.stdin.write(data[:half])
        process.stdin.flush()
        deadline = time.monotonic() + 30
        while not any(p.stat().st_size for p in temporaries(out)):
            assert process.poll() is None and time.monotonic() < deadline, "nothing written"
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        # More input, never all of it: as for Ctrl-C, a signal that arrives between two
        # reads of a buffered readinto (C code) runs its handler when the next read returns.
        with contextlib.suppress(BrokenPipeError):
            process.stdin.write(data[half:-1])
            process.stdin.flush()
        status = process.wait(timeout=30)
        err = process.stderr.read().decode()
        with contextlib.suppress(BrokenPipeError):
            process.stdin.close()
    assert status == 143 and err == "usreview: error: terminated\n", (status, err)
    assert not out.exists() and temporaries(out) == []


def test_the_next_run_removes_what_a_killed_one_left(
    keydir: Path, sealed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A hard kill (SIGKILL, power loss) leaves a temporary file; the next run writing
    the same OUT removes it, and nothing else: not another output's, not a live writer's."""
    out, env = tmp_path / "o", tmp_path / "o.env"
    left = [tmp_path / ".o.k1lled_1.quarantine", tmp_path / ".o.env.k1lled_1.part"]
    kept = [
        tmp_path / ".o2.k1lled_1.quarantine",  # another output
        tmp_path / ".o.x.k1lled_1.quarantine",  # the output o.x
        tmp_path / ".o.k1lled_1.part",  # not unseal's
        tmp_path / ".o.writing1.quarantine",  # a run still writing it: locked
    ]
    for path in (*left, *kept):
        path.write_bytes(b"partial plaintext")
    (tmp_path / ".o.symlink1.quarantine").symlink_to(plain := tmp_path / "plain")
    plain.write_bytes(b"not ours to remove")
    with open(kept[-1], "rb") as live:
        fcntl.flock(live, fcntl.LOCK_EX)
        assert run(unseal_args(keydir, sealed, out), capsys)[0] == 0
        assert run(seal_args(keydir, sealed, env), capsys)[0] == 0
    assert [p for p in left if p.exists()] == []
    assert all(p.read_bytes() == b"partial plaintext" for p in kept)
    assert (tmp_path / ".o.symlink1.quarantine").is_symlink() and plain.exists()


@pytest.mark.parametrize("mode", [0o644, 0o600], ids=["0644", "0600"])
@pytest.mark.parametrize("command", ["seal", "unseal"])
def test_a_public_key_given_as_key_is_named_as_such(
    command: str,
    mode: int,
    keydir: Path,
    sealed: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "o"
    args = (seal_args if command == "seal" else unseal_args)(keydir, sealed, out)
    pub = keydir / ("site.pub" if command == "seal" else "hub.pub")
    pub.chmod(mode)
    args[args.index("--key") + 1] = str(pub)
    status, _, err = run(args, capsys)
    assert status == 2, err
    assert err == (
        f"usreview: error: {pub} is a public key; --key takes your private key file "
        "(NAME.key, mode 0600)\n"
    )
    assert not out.exists()


def test_generated_keys_are_distinct() -> None:
    assert generate_keys("a").key_id != generate_keys("a").key_id
