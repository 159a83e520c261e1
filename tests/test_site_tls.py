"""DICOM TLS on the gateway's port, with dcmtk's storescu (+tla / +tls) as the scanner.

The site is made by ``usreview site init --dicom-tls`` as its people would; no hub is
needed (its URL points at a closed port, so what the scanner sends stays in the spool).
"""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.site_helpers import USREVIEW, copies, offline_site, sop_uid, start_gateway, storescu
from usreview.site import SiteConfigError, Spool, load_config
from usreview.site.dicomtls import server_context

pytestmark = pytest.mark.slow

if shutil.which("storescu") is None:
    pytest.fail("dcmtk's storescu is missing: apt-get install dcmtk", pytrace=False)

SOURCE = "bmode"


def _init(tmp_path: Path, *extra: str) -> tuple[Path, int]:
    return offline_site(tmp_path, *extra)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim")
    done = subprocess.run(
        [*USREVIEW, "simulate", SOURCE, "--out", str(out)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return Path(done.stdout.split()[0])


def _spooled(config: Path) -> set[str]:
    return {item.sop_instance_uid for item in Spool(load_config(config).spool).pending()}


def _client_certificate(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a scanner's certificate (clientAuth) signed by it: (ca, cert, key)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "clinic scanners CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "SCANNER")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.crt", folder / "scanner.crt", folder / "scanner.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    paths[2].chmod(0o600)
    return paths


def test_init_generates_a_private_key_and_a_config_that_uses_it(tmp_path: Path) -> None:
    config, _ = _init(tmp_path, "--dicom-tls-host", "gateway.clinic.example")
    site = load_config(config)
    assert site.tls_certificate == (tmp_path / "site" / "dicom-tls.crt").resolve()
    assert site.tls_private_key is not None and site.tls_private_key.stat().st_mode & 0o077 == 0
    cert = x509.load_pem_x509_certificate(site.tls_certificate.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "gateway.clinic.example" in names.get_values_for_type(x509.DNSName)
    assert server_context(site) is not None
    plain, _ = _init(tmp_path / "plain")
    assert load_config(plain).tls_certificate is None and server_context(load_config(plain)) is None


def test_half_a_tls_setting_is_named(tmp_path: Path) -> None:
    config, _ = _init(tmp_path, "--dicom-tls")
    text = config.read_text()
    config.write_text(text.replace('tls_private_key = "dicom-tls.key"', 'tls_private_key = ""'))
    with pytest.raises(SiteConfigError) as refused:
        load_config(config)
    assert refused.value.setting == "gateway.tls_private_key"
    config.write_text(text.replace('tls_client_ca = ""', 'tls_client_ca = "missing.crt"'))
    with pytest.raises(SiteConfigError) as refused:
        server_context(load_config(config))
    assert refused.value.setting == "gateway.tls_client_ca"


def test_storescu_over_tls_is_spooled_and_plain_dicom_is_refused(
    tmp_path: Path, image: Path
) -> None:
    config, port = _init(tmp_path, "--dicom-tls")
    cert = tmp_path / "site" / "dicom-tls.crt"
    files = copies(image, 30, tmp_path / "study")
    gateway = start_gateway(config, port, tmp_path / "gateway.log")
    try:
        # A client that connects and never starts its handshake holds up nobody.
        with socket.create_connection(("127.0.0.1", port)):
            run = storescu(port, files, options=["+tla", "+cf", str(cert)])
            assert run.returncode == 0 and len(run.succeeded) == len(files), run.output[-2000:]
        assert _spooled(config) == {sop_uid(p) for p in files}
        rate = len(files) / run.seconds
        # Not trusting the gateway's certificate, or not speaking TLS: refused, nothing kept.
        others = copies(image, 2, tmp_path / "other")
        untrusted = storescu(port, others, options=["+tla"])
        plain = storescu(port, others, timeout=60)
        assert untrusted.returncode != 0 and not untrusted.succeeded
        assert plain.returncode != 0 and not plain.succeeded
        assert _spooled(config) == {sop_uid(p) for p in files}
        assert "DICOM TLS" in (tmp_path / "gateway.log").read_text()
    finally:
        assert gateway.stop() == 0
    print(f"storescu over DICOM TLS: {rate:.0f} instances/s")


def test_a_client_ca_requires_the_scanners_certificate(tmp_path: Path, image: Path) -> None:
    config, port = _init(tmp_path, "--dicom-tls")
    ca, scanner_cert, scanner_key = _client_certificate(tmp_path)
    text = config.read_text().replace('tls_client_ca = ""', f'tls_client_ca = "{ca}"')
    config.write_text(text)
    cert = tmp_path / "site" / "dicom-tls.crt"
    files = copies(image, 3, tmp_path / "study")
    gateway = start_gateway(config, port, tmp_path / "gateway.log")
    try:
        anonymous = storescu(port, files[:1], options=["+tla", "+cf", str(cert)])
        assert anonymous.returncode != 0 and not anonymous.succeeded
        started = time.monotonic()
        run = storescu(
            port, files, options=["+tls", str(scanner_key), str(scanner_cert), "+cf", str(cert)]
        )
        assert run.returncode == 0 and len(run.succeeded) == len(files), run.output[-2000:]
        assert time.monotonic() - started < 30
        assert _spooled(config) == {sop_uid(p) for p in files}
    finally:
        assert gateway.stop() == 0
