"""The site's configuration: init, loading, errors that name the setting; backoff."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.site_helpers import USREVIEW
from usreview.cli import main
from usreview.envelope import generate_keys, load_public_keys, write_key_pair
from usreview.site import SiteConfigError, init_site, load_config
from usreview.site.backoff import Backoff
from usreview.site.config import PacsDestination, parse_pacs


@pytest.fixture
def site_dir(tmp_path: Path) -> Path:
    hub = generate_keys("hub")
    write_key_pair(hub, tmp_path / "hubkeys")
    init_site(
        "clinic",
        "https://hub.example.org:8443",
        tmp_path / "site",
        hub_public_key=tmp_path / "hubkeys" / "hub.pub",
        allowed_calling_ae_titles=["SCANNER1"],
        pacs=[PacsDestination("pacs", "PACS", "10.0.0.5", 104)],
    )
    return tmp_path / "site"


def _edit(config: Path, old: str, new: str) -> None:
    text = config.read_text()
    assert old in text
    config.write_text(text.replace(old, new))


def test_init_writes_a_loadable_site(site_dir: Path) -> None:
    config = load_config(site_dir / "site.toml")
    assert config.name == "clinic"
    assert config.api_url == "https://hub.example.org:8443/services/usreview/api/v1/"
    assert config.private_key == (site_dir / "keys" / "clinic.key").resolve()
    assert config.allowed_calling_ae_titles == ("SCANNER1",)
    assert config.pacs == (PacsDestination("pacs", "PACS", "10.0.0.5", 104),)
    assert config.spool == (site_dir / "spool").resolve()
    assert config.min_free_bytes == 10**9  # gateway.min_free_mb = 1000
    assert config.hub_certificate is None
    assert config.load_hub_key().name == "hub"
    assert config.load_private_keys().name == "clinic"
    assert (site_dir / "keys" / "clinic.key").stat().st_mode & 0o077 == 0
    assert (site_dir / "site.toml").stat().st_mode & 0o077 == 0


def test_init_refuses_to_overwrite(site_dir: Path) -> None:
    with pytest.raises(SiteConfigError, match="exists"):
        init_site("clinic", "https://hub.example.org", site_dir)


def test_init_refuses_a_bad_name_and_url(tmp_path: Path) -> None:
    with pytest.raises(SiteConfigError, match="site name") as info:
        init_site("Clinic A", "https://hub.example.org", tmp_path / "a")
    assert info.value.setting == "site.name"
    with pytest.raises(SiteConfigError, match=r"^--hub: ") as info:
        init_site("clinic", "http://hub.example.org", tmp_path / "b")
    assert info.value.setting == "hub.url"
    assert not (tmp_path / "b").exists()


def _init_args(folder: Path, hub_key: Path) -> list[str]:
    """``site init`` with every option that writes a file, all valid."""
    return [
        *("site", "init", "clinic", "--hub", "https://hub.example.org:8443"),
        *("--dir", str(folder), "--hub-key", str(hub_key), "--dicom-tls", "--encrypt-spool"),
    ]


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        (["--hub", "http://hub.example:8000"], "--hub: plain http"),
        (["--hub", "https://hub.example.org:abc"], "--hub: the port must be a number"),
        (["--hub", "https://hub.example.org:99999"], "--hub: the port must be a number"),
        (["--port", "70000"], "--port: must be from 1 to 65535"),
        (["--ae-title", "A\\B"], "--ae-title: invalid AE title"),
        (["--allow-ae", "WAY-TOO-LONG-AE-TITLE"], "--allow-ae: invalid AE title"),
        (["--pacs", "A@h:104", "--pacs", "B@h:104"], "--pacs: 'pacs' is used twice"),
    ],
)
def test_init_checks_every_option_before_it_writes_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: list[str], named: str
) -> None:
    write_key_pair(generate_keys("hub"), tmp_path / "hubkeys")
    folder = tmp_path / "s"
    args = _init_args(folder, tmp_path / "hubkeys" / "hub.pub")
    assert main([*args, *bad]) == 2
    err = capsys.readouterr().err
    assert f"usreview: error: {named}" in err and "site.toml" not in err
    assert not folder.exists()
    assert main(args) == 0  # corrected: nothing in the way
    assert load_config(folder / "site.toml").name == "clinic"


def test_a_failure_removes_what_init_wrote_and_only_that(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import usreview.site.atrest

    write_key_pair(generate_keys("hub"), tmp_path / "hubkeys")
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "token").write_text("theirs\n")

    def broken(path: Path) -> None:
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(usreview.site.atrest, "generate_spool_key", broken)
    args = _init_args(folder, tmp_path / "hubkeys" / "hub.pub")
    assert main(args) == 1  # after the keys, the copies and the TLS pair were written
    assert sorted(p.name for p in folder.iterdir()) == ["token"]
    monkeypatch.undo()
    assert main(args) == 0


def test_init_refuses_a_file_in_the_way_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_key_pair(generate_keys("hub"), tmp_path / "hubkeys")
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "dicom-tls.key").write_text("someone's key\n")
    assert main(_init_args(folder, tmp_path / "hubkeys" / "hub.pub")) == 2
    assert f"{folder / 'dicom-tls.key'} exists" in capsys.readouterr().err
    assert [p.name for p in folder.iterdir()] == ["dicom-tls.key"]
    assert (folder / "dicom-tls.key").read_text() == "someone's key\n"


def test_init_copies_only_the_hubs_public_key_and_a_pem_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from usreview.site.dicomtls import create_certificate

    write_key_pair(generate_keys("hub"), tmp_path / "hubkeys")
    create_certificate(tmp_path / "hub.crt", tmp_path / "hub-tls.key", ["hub.example.org"])
    (tmp_path / "both.pem").write_bytes(
        (tmp_path / "hub.crt").read_bytes() + (tmp_path / "hub-tls.key").read_bytes()
    )
    (tmp_path / "junk.txt").write_text("junk\n")
    folder = tmp_path / "s"
    init = ["site", "init", "clinic", "--hub", "https://hub.example.org", "--dir", str(folder)]
    for option, path, message in [
        ("--hub-key", "hubkeys/hub.key", "give the hub's public key"),
        ("--hub-key", "junk.txt", "give the hub's public key"),
        ("--hub-key", "missing.pub", "cannot read"),
        ("--hub-cert", "junk.txt", "is not a PEM certificate"),
        ("--hub-cert", "hub-tls.key", "is not a PEM certificate"),
        ("--hub-cert", "both.pem", "also holds a private key"),
    ]:
        assert main([*init, option, str(tmp_path / path)]) == 2
        err = capsys.readouterr().err
        assert f"usreview: error: {option}: " in err and message in err
        assert not folder.exists()
    hub_files = ["--hub-key", str(tmp_path / "hubkeys" / "hub.pub")]
    assert main([*init, *hub_files, "--hub-cert", str(tmp_path / "hub.crt")]) == 0
    assert (folder / "hub.crt").read_bytes() == (tmp_path / "hub.crt").read_bytes()
    config = load_config(folder / "site.toml")
    assert config.load_hub_key().name == "hub"
    assert {(folder / n).stat().st_mode & 0o777 for n in ("hub.crt", "hub.pub")} == {0o644}


@pytest.mark.parametrize(
    "name", ["9clinic", "a" * 33, "-clinic", "Clinic", "clinic.a", "a" * 40, "clinic", "a" * 32]
)
def test_init_takes_the_site_names_the_hub_takes(tmp_path: Path, name: str) -> None:
    from usreview.hub.accounts import check_name
    from usreview.hub.errors import AccountError

    try:
        check_name(name)
    except AccountError:
        with pytest.raises(SiteConfigError, match="starting with a letter") as info:
            init_site(name, "https://hub.example.org", tmp_path / "s")
        assert info.value.setting == "site.name"
        assert not (tmp_path / "s").exists()
    else:
        site = init_site(name, "https://hub.example.org", tmp_path / "s")
        assert load_config(site.config).name == name


@pytest.mark.parametrize(
    ("old", "new", "setting"),
    [
        ("port = 11112", "port = 70000", "gateway.port"),
        ("port = 11112", 'port = "11112"', "gateway.port"),
        ('ae_title = "USREVIEW"', 'ae_title = "A\\\\B"', "gateway.ae_title"),
        ('["SCANNER1"]', '["WAY-TOO-LONG-AE-TITLE"]', "gateway.allowed_calling_ae_titles[0]"),
        ("port = 104", "port = 0", "pacs[0].port"),
        ('host = "10.0.0.5"', 'host = ""', "pacs[0].host"),
        ("backoff_max = 60.0", "backoff_max = 0.1", "upload.backoff_max"),
        ("wait = 30.0", "wait = 600", "results.wait"),
        ("min_free_mb = 1000", "min_free_mb = -5", "gateway.min_free_mb"),
        ("give_up_after_hours = 24.0", "give_up_after_hours = -1", "upload.give_up_after_hours"),
        ('bind = "0.0.0.0"', 'bind = "10.0.0.300"', "gateway.bind"),
        ('bind = "0.0.0.0"', 'bind = "gate way"', "gateway.bind"),
        ('bind = "0.0.0.0"', 'bind = ""', "gateway.bind"),
        ('url = "https://hub.example.org:8443"', 'url = "ftp://x"', "hub.url"),
        ("https://hub.example.org:8443", "https://hub.example.org:abc", "hub.url"),
        ("https://hub.example.org:8443", "https://hub.example.org:99999", "hub.url"),
        ("https://hub.example.org:8443", "https://[::1:8443", "hub.url"),
        ('name = "clinic"', 'name = "Clinic"', "site.name"),
        ("retired_keys = []", 'retired_keys = "keys/old.key"', "site.retired_keys"),
        ("retired_keys = []", 'retired_keys = ["keys/a.key", 3]', "site.retired_keys[1]"),
        (
            "retired_spool_keys = []",
            'retired_spool_keys = ["keys/a.key"]',  # and no folders.spool_key
            "folders.retired_spool_keys",
        ),
        (
            "retired_spool_keys = []",
            'retired_spool_keys = ["keys/a.key", ""]',
            "folders.retired_spool_keys[1]",
        ),
    ],
)
def test_bad_settings_are_named(site_dir: Path, old: str, new: str, setting: str) -> None:
    config = site_dir / "site.toml"
    _edit(config, old, new)
    with pytest.raises(SiteConfigError) as info:
        load_config(config)
    assert info.value.setting == setting
    assert setting in str(info.value)


@pytest.mark.parametrize(
    ("old", "new", "setting", "suggestion"),
    [
        ("min_free_mb = 1000", "min_free_MB = 20000", "gateway.min_free_MB", "gateway.min_free_mb"),
        ("backoff_max = 60.0", "backof_max = 5.0", "upload.backof_max", "upload.backoff_max"),
        ("[results]", "[result]", "result", "[results]"),
        ('host = "10.0.0.5"', 'hots = "10.0.0.5"', "pacs[0].hots", "pacs.host"),
        ("follow = true", "follow = true\nmin_free_mb = 5", "results.min_free_mb", "[gateway]"),
        ("[site]", 'spool = "elsewhere"\n[site]', "spool", "tables:"),
    ],
)
def test_unknown_settings_and_tables_are_named_with_the_closest_known_name(
    site_dir: Path, old: str, new: str, setting: str, suggestion: str
) -> None:
    # Before: each loaded with the default in force (min_free_mb 1000, backoff_max 60,
    # the results followed, the PACS's host missing was the only complaint).
    config = site_dir / "site.toml"
    _edit(config, old, new)
    with pytest.raises(SiteConfigError) as info:
        load_config(config)
    assert info.value.setting == setting
    message = str(info.value)
    assert f": {setting}: unknown " in message and suggestion in message, message


def test_every_setting_init_writes_is_known_and_hostnames_may_bind(site_dir: Path) -> None:
    config = site_dir / "site.toml"
    loaded = load_config(config)
    assert loaded.give_up_after_hours == 24.0 and loaded.bind == "0.0.0.0"
    _edit(config, 'bind = "0.0.0.0"', 'bind = "localhost"')
    assert load_config(config).bind == "localhost"  # resolved when the gateway starts
    _edit(config, 'bind = "localhost"', 'bind = "::1"')
    assert load_config(config).bind == "::1"


def test_a_bind_name_that_does_not_resolve_is_named_before_anything_listens(
    tmp_path: Path,
) -> None:
    # Before: the gateway built, then "Name or service not known" when it listened,
    # naming no setting.
    from usreview.site import Gateway
    from usreview.site.status import gateway_running

    write_key_pair(generate_keys("hub"), tmp_path / "hubkeys")
    site = init_site(
        "clinic",
        "http://127.0.0.1:9",
        tmp_path / "site",
        hub_public_key=tmp_path / "hubkeys" / "hub.pub",
        allowed_calling_ae_titles=["SCANNER"],
    )
    (tmp_path / "site" / "token").write_text("unused\n")
    (tmp_path / "site" / "token").chmod(0o600)
    _edit(site.config, 'bind = "0.0.0.0"', 'bind = "no-such-host.invalid"')
    with pytest.raises(SiteConfigError) as info:
        Gateway(load_config(site.config))
    assert info.value.setting == "gateway.bind"
    assert "gateway.bind: 'no-such-host.invalid' cannot be resolved" in str(info.value)
    assert not gateway_running(tmp_path / "site" / "state")  # the state lock released


def test_not_toml_and_missing(tmp_path: Path) -> None:
    with pytest.raises(SiteConfigError, match="site init"):
        load_config(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("[site\nname=")
    with pytest.raises(SiteConfigError, match="not a readable TOML"):
        load_config(tmp_path / "bad.toml")


def test_plain_http_only_on_loopback(site_dir: Path) -> None:
    config = site_dir / "site.toml"
    _edit(config, "https://hub.example.org:8443", "http://127.0.0.1:8000")
    assert load_config(config).hub_url == "http://127.0.0.1:8000"


def test_token_file_checks(site_dir: Path) -> None:
    config = load_config(site_dir / "site.toml")
    with pytest.raises(SiteConfigError, match=r"hub\.token_file.*does not exist"):
        config.read_token()
    config.token_file.write_text("secret-token\n")
    os.chmod(config.token_file, 0o644)
    with pytest.raises(SiteConfigError, match="chmod 600"):
        config.read_token()
    os.chmod(config.token_file, 0o600)
    assert config.read_token() == "secret-token"


def test_missing_hub_key_is_named(tmp_path: Path) -> None:
    init_site("clinic", "https://hub.example.org", tmp_path / "s")
    config = load_config(tmp_path / "s" / "site.toml")
    with pytest.raises(SiteConfigError, match=r"hub\.public_key"):
        config.load_hub_key()


def test_retired_keys_load_newest_first_and_a_missing_one_is_named(site_dir: Path) -> None:
    config = load_config(site_dir / "site.toml")
    assert config.retired_private_keys == () and config.load_retired_private_keys() == ()
    older, old = generate_keys("clinic"), generate_keys("clinic")
    write_key_pair(older, site_dir / "keys" / "1")
    write_key_pair(old, site_dir / "keys" / "2")
    _edit(
        site_dir / "site.toml",
        "retired_keys = []",
        'retired_keys = [\n  "keys/2/clinic.key",\n  "keys/1/clinic.key",\n]',
    )
    config = load_config(site_dir / "site.toml")
    assert config.retired_private_keys == (
        (site_dir / "keys/2/clinic.key").resolve(),
        (site_dir / "keys/1/clinic.key").resolve(),
    )
    loaded = config.load_retired_private_keys()
    assert [k.key_id for k in loaded] == [old.key_id, older.key_id]
    (site_dir / "keys/1/clinic.key").unlink()
    with pytest.raises(SiteConfigError, match=r"site\.retired_keys\[1\].*does not exist") as info:
        config.load_retired_private_keys()
    assert info.value.setting == "site.retired_keys[1]"


def test_a_gateway_with_a_missing_or_unreadable_retired_key_does_not_start(
    site_dir: Path,
) -> None:
    from usreview.site import Gateway

    config = site_dir / "site.toml"
    (site_dir / "token").write_text("not-a-real-token\n")
    (site_dir / "token").chmod(0o600)
    retired = site_dir / "keys" / "old" / "clinic.key"
    _edit(config, "retired_keys = []", 'retired_keys = ["keys/old/clinic.key"]')
    missing = subprocess.run(
        [*USREVIEW, "site", "gateway", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert f"site.retired_keys[0]: {retired} does not exist" in missing.stderr
    write_key_pair(generate_keys("clinic"), retired.parent)
    retired.chmod(0o644)
    with pytest.raises(SiteConfigError, match=r"chmod 600") as exposed:
        Gateway(load_config(config))
    retired.write_text("not a key\n")
    retired.chmod(0o600)
    with pytest.raises(SiteConfigError, match=str(retired)) as malformed:
        Gateway(load_config(config))
    assert exposed.value.setting == malformed.value.setting == "site.retired_keys[0]"
    retired.chmod(0)
    if os.geteuid() != 0:  # root reads any file
        with pytest.raises(SiteConfigError, match="permission denied"):
            Gateway(load_config(config))


def test_parse_pacs() -> None:
    assert parse_pacs("ORTHANC@127.0.0.1:4242") == PacsDestination(
        "pacs", "ORTHANC", "127.0.0.1", 4242
    )
    assert parse_pacs("main=PACS1@pacs.local:104").name == "main"
    with pytest.raises(SiteConfigError, match="--pacs"):
        parse_pacs("PACS1@host")


def test_cli_init_prints_the_public_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        [
            "site",
            "init",
            "clinic",
            "--hub",
            "https://hub.example.org",
            "--dir",
            str(tmp_path / "s"),
            "--allow-ae",
            "SCANNER",
            "--pacs",
            "ORTHANC@127.0.0.1:4242",
        ]
    )
    assert status == 0
    out, err = capsys.readouterr()
    assert "--allow-ae" not in err  # scanners are named: no note
    pub = tmp_path / "s" / "keys" / "clinic.pub"
    assert str(pub) in out
    assert load_public_keys(pub).name == "clinic"
    assert main(["site", "status", "--config", str(tmp_path / "s" / "site.toml")]) == 0
    assert "0 instance(s)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "recorded",
    [
        '{"last_upload": {"at": 1e20}, "uploads": 3}',
        '{"last_upload": {"at": NaN}, "last_result": {"at": Infinity, "id": 4}}',
        '{"errors": ["oops", {"at": "noon", "where": "upload", "message": "x"}]}',
        '{"last_upload": "x", "last_result": [1], "errors": {"a": 1}}',
        '{"hub": "unreachable", "hub_since": "noon", "held": [1], "given_up": "x", '
        '"results_follower": {"state": "failed", "at": "noon"}, "errors": [{"count": "x"}]}',
        "[1, 2]",
        "{not json",
    ],
)
def test_site_status_survives_a_damaged_status_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], recorded: str
) -> None:
    # Before: OverflowError, ValueError or AttributeError tracebacks.
    init_site("clinic", "https://hub.example.org", tmp_path / "s")
    state = tmp_path / "s" / "state"
    state.mkdir(exist_ok=True)
    (state / "status.json").write_text(recorded)
    config = str(tmp_path / "s" / "site.toml")
    assert main(["site", "status", "--config", config]) == 0
    out = capsys.readouterr().out
    assert out.startswith("site          clinic -> https://hub.example.org")
    assert "errors        " in out and "Traceback" not in out
    if "1e20" in recorded or "NaN" in recorded:
        assert "last ?" in out  # a time that is not one
    assert main(["site", "status", "--config", config, "--json"]) == 0
    json.loads(capsys.readouterr().out)  # strict JSON: no NaN or Infinity


def test_cli_init_without_scanners_says_the_gateway_refuses_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["site", "init", "clinic", "--hub", "https://hub.example.org", "--dir"]
    assert main([*argv, str(tmp_path / "s")]) == 0
    err = capsys.readouterr().err
    assert "no --allow-ae, so the gateway will refuse every scanner" in err
    assert "gateway.allowed_calling_ae_titles" in err


def test_cli_init_names_dir_when_it_is_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: exit 1, "plain.dcm/keys/clinic.key: Not a directory".
    plain = tmp_path / "plain.dcm"
    plain.write_bytes(b"not a folder")
    for where in (plain, plain / "site"):
        argv = ["site", "init", "clinic", "--hub", "https://hub.example.org", "--dir"]
        assert main([*argv, str(where), "--allow-ae", "S"]) == 2
        err = capsys.readouterr().err
        assert f"--dir {where}: {plain} is a file, not a folder" in err and err.count("\n") == 1
    assert plain.read_bytes() == b"not a folder"


def test_cli_bad_config_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    init_site("clinic", "https://hub.example.org", tmp_path / "s")
    _edit(tmp_path / "s" / "site.toml", "port = 11112", "port = -1")
    assert main(["site", "status", "--config", str(tmp_path / "s" / "site.toml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "gateway.port" in err


def test_backoff_doubles_to_the_cap_and_resets() -> None:
    backoff = Backoff(0.5, 4.0, jitter=0.2, rng=lambda: 0.0)
    assert [backoff.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_backoff_jitter_stays_in_range() -> None:
    backoff = Backoff(1.0, 1.0, jitter=0.25)
    delays = [backoff.next_delay() for _ in range(200)]
    assert all(0.75 <= d <= 1.0 for d in delays)
    assert len(set(delays)) > 100
    with pytest.raises(ValueError):
        Backoff(2.0, 1.0)


def test_site_exports_are_pinned() -> None:
    import usreview.site
    import usreview.site.errors as errors

    assert usreview.site.__all__ == sorted(usreview.site.__all__)
    assert {"Gateway", "SiteConfig", "Spool", "init_site", "load_config"} <= set(
        usreview.site.__all__
    )
    for name in usreview.site.__all__:
        assert hasattr(usreview.site, name)
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.SiteError)
        assert name in (errors.__doc__ or "")


def test_cli_rotate_spool_key_seals_with_a_new_key_and_keeps_the_old_one(
    site_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = site_dir / "site.toml"
    before = load_config(config)
    assert main(["site", "rotate-spool-key", "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    after = load_config(config)
    assert after.spool_key is not None and after.spool_key.name.startswith("spool-")
    assert out == f"new spool key {after.spool_key}; {config} seals with it\n"
    assert "restart the gateway" in err
    assert oct(after.spool_key.stat().st_mode & 0o777) == "0o600"
    old = () if before.spool_key is None else (before.spool_key,)
    assert after.retired_spool_keys == (*old, *before.retired_spool_keys)
