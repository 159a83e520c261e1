"""A site watches its certificates: ``site status`` shows until when each is valid, and
``--check`` warns a month before one expires and is critical a week before (an expired
pinned certificate stops every upload; an expired DICOM TLS one, every scanner)."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.site_helpers import site_hub_never_asked
from usreview.site import format_status, load_config, read_status
from usreview.site.status import CheckState, check_status


def _certificate(path: Path, days: float) -> float:
    """A self-signed certificate in ``path`` expiring in ``days``; its expiry (Unix time)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test hub")])
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    ends = now + dt.timedelta(days=days)
    made = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=400))
        .not_valid_after(ends)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(made.public_bytes(serialization.Encoding.PEM))
    return ends.timestamp()


def _check(config: Path) -> tuple[CheckState, str]:
    return check_status(read_status(load_config(config)), 3600)


def test_certificates_are_shown_and_checked_before_they_expire(tmp_path: Path) -> None:
    pinned = tmp_path / "hub.crt"
    _certificate(pinned, 200)
    config = site_hub_never_asked(tmp_path, hub_certificate=pinned)
    site_cert = config.parent / "hub.crt"  # the site's copy is what it pins
    status = read_status(load_config(config))
    (path, expires) = status.certificates["hub.certificate"]
    assert path == str(site_cert) and expires is not None
    assert abs(expires - (time.time() + 200 * 86400)) < 60
    assert status.to_dict()["certificates"]["hub.certificate"]["expires"] == expires
    until = time.strftime("%Y-%m-%d", time.gmtime(expires))
    assert f"certificate   hub.certificate ({site_cert}): valid until {until}" in format_status(
        status
    )
    assert "certificate" not in _check(config)[1].split("|")[0]  # not soon: not a problem

    cases = [(20, CheckState.WARNING, "expires in 20 day(s)"),
             (3, CheckState.CRITICAL, "expires in 3 day(s)"),
             (-2, CheckState.CRITICAL, "expired on ")]  # fmt: skip
    for days, state, says in cases:
        ends = _certificate(site_cert, days)
        found, line = _check(config)
        assert found >= state, line
        when = time.strftime("%Y-%m-%d", time.gmtime(ends))
        expected = f"the hub's pinned certificate (hub.certificate, {site_cert}) {says}"
        assert expected in line and when in line and "renew it" in line, line

    site_cert.write_text("not a certificate")
    assert read_status(load_config(config)).certificates["hub.certificate"][1] is None
    assert "the hub's pinned certificate (hub.certificate, " in _check(config)[1]
    assert "cannot be read" in _check(config)[1]


def test_a_gateway_without_tls_files_has_no_certificates(tmp_path: Path) -> None:
    config = site_hub_never_asked(tmp_path)
    assert read_status(load_config(config)).certificates == {}
    assert "certificate" not in format_status(read_status(load_config(config)))
