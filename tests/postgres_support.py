"""A real PostgreSQL server for the session, and a fresh database per test (``db_url``).

The fixtures are registered by ``tests/conftest.py``, so that every test file shares one
server per test process (each file importing them used to start its own).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from usreview.demo import free_port


def _postgres_bindir() -> Path | None:
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1].parent
    postgres = shutil.which("postgres")
    return Path(postgres).parent if postgres else None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """Start ``postgres`` on a Unix socket in a private folder; yield a URL with ``{db}``."""
    bindir = _postgres_bindir()
    if bindir is None or not (bindir / "initdb").exists() or not (bindir / "pg_ctl").exists():
        pytest.fail(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: "
            "`make test` installs them (Debian package postgresql)",
            pytrace=False,
        )
    base = Path(tempfile.mkdtemp(prefix="usreview-pg-"))
    as_root = os.geteuid() == 0
    if as_root:
        user = pwd.getpwnam("postgres")
        os.chown(base, user.pw_uid, user.pw_gid)

    def run(*args: str | Path) -> None:
        cmd = [str(a) for a in args]
        if as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode:
            log = base / "log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            pytest.fail(f"{' '.join(cmd)} failed:\n{done.stdout}{done.stderr}{tail}")

    data = base / "data"
    port = free_port()
    # fsync=off: these tests check behaviour, not PostgreSQL's own durability.
    options = (
        f"-k {base} -p {port} -c listen_addresses='' -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off"
    )
    run(bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
        "--locale=C", "--no-sync")  # fmt: skip
    run(bindir / "pg_ctl", "-D", data, "-l", base / "log", "-w", "-t", "60", "-o", options,
        "start")  # fmt: skip
    try:
        yield f"postgresql+psycopg://postgres@/{{db}}?host={base}&port={port}"
    finally:
        run(bindir / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """``None`` (SQLite inside the archive root) or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield None
        return
    server: str = request.getfixturevalue("postgres_server")
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = create_engine(server.format(db="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        yield server.format(db=name)
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        admin.dispose()
