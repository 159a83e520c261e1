"""The site's configuration: init, loading, errors that name the setting; backoff."""

from __future__ import annotations

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
    with pytest.raises(SiteConfigError, match=r"hub\.url") as info:
        init_site("clinic", "http://hub.example.org", tmp_path / "b")
    assert info.value.setting == "hub.url"
    assert not (tmp_path / "b" / "site.toml").exists()


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
        ('url = "https://hub.example.org:8443"', 'url = "ftp://x"', "hub.url"),
        ('name = "clinic"', 'name = "Clinic"', "site.name"),
        ("retired_keys = []", 'retired_keys = "keys/old.key"', "site.retired_keys"),
        ("retired_keys = []", 'retired_keys = ["keys/a.key", 3]', "site.retired_keys[1]"),
    ],
)
def test_bad_settings_are_named(site_dir: Path, old: str, new: str, setting: str) -> None:
    config = site_dir / "site.toml"
    _edit(config, old, new)
    with pytest.raises(SiteConfigError) as info:
        load_config(config)
    assert info.value.setting == setting
    assert setting in str(info.value)


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
    out = capsys.readouterr().out
    pub = tmp_path / "s" / "keys" / "clinic.pub"
    assert str(pub) in out
    assert load_public_keys(pub).name == "clinic"
    assert main(["site", "status", "--config", str(tmp_path / "s" / "site.toml")]) == 0
    assert "0 instance(s)" in capsys.readouterr().out


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
