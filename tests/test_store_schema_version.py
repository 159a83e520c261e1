"""The archive's schema version: recorded when opened, and a newer archive left untouched.

An older usreview (after going back to an earlier release) must not add back what a newer
one removed, nor write rows without what a newer one requires: it refuses the archive,
with the versions in its message, and changes nothing. The declared tables are
fingerprinted so that changing them without raising ``SCHEMA_VERSION`` fails here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.dialects import sqlite

from usreview import __version__
from usreview.cli import main
from usreview.store import Archive, InstanceMetadata, SchemaVersionError
from usreview.store.schema import SCHEMA_VERSION, Base, SchemaVersionRow

#: The fingerprint of the declared tables at each schema version.
FINGERPRINTS = {1: "4eebaaebdbe4080a"}


def _declared_fingerprint() -> str:
    """Tables, columns (type, allowed values, nullability, keys) and indexes, as SQLite
    would make them."""
    import usreview.store.jobs_schema
    import usreview.store.results_schema
    import usreview.store.review_schema  # noqa: F401  (their tables join Base)

    dialect = sqlite.dialect()
    lines = []
    for table in sorted(Base.metadata.tables.values(), key=lambda t: t.name):
        for column in table.columns:
            keys = sorted(str(key.column) for key in column.foreign_keys)
            values = getattr(column.type, "enums", None)  # a CHECK constraint in the table
            lines.append(
                f"{table.name}.{column.name} {column.type.compile(dialect=dialect)} "
                f"values={values} null={column.nullable} pk={column.primary_key} fk={keys}"
            )
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            names = [c.name for c in index.columns]
            lines.append(f"{table.name} index {index.name} {names} unique={index.unique}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def test_changing_the_tables_raises_the_schema_version() -> None:
    found = _declared_fingerprint()
    assert FINGERPRINTS.get(SCHEMA_VERSION) == found, (
        f"the declared tables changed (fingerprint {found}): raise "
        f"usreview.store.schema.SCHEMA_VERSION to {max(FINGERPRINTS) + 1}, add an upgrade "
        f"step to usreview.store.migrate if adding nullable columns is not enough, and add "
        f"{{{max(FINGERPRINTS) + 1}: {found!r}}} to FINGERPRINTS"
    )


@contextmanager
def _index(db_url: str | None, root: Path) -> Iterator[Engine]:
    """The archive's index, reached around the archive."""
    url = db_url or f"sqlite:///{root / 'index.sqlite3'}"
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        yield engine
    finally:
        engine.dispose()


def _recorded(engine: Engine) -> tuple[int, str] | None:
    with engine.connect() as connection:
        row = connection.execute(text("SELECT version, written_by FROM usreview_schema")).first()
    return None if row is None else (row[0], row[1])


def test_a_new_archive_records_its_version(db_url: str | None, tmp_path: Path) -> None:
    root = tmp_path / "archive"
    Archive.open(db_url, root).close()
    with _index(db_url, root) as engine:
        assert _recorded(engine) == (SCHEMA_VERSION, __version__)
    Archive.open(db_url, root).close()  # again: still one row
    with _index(db_url, root) as engine:
        with engine.connect() as connection:
            count = connection.execute(text("SELECT count(*) FROM usreview_schema")).scalar()
        assert count == 1


def test_an_archive_from_before_versions_is_upgraded_and_recorded(
    db_url: str | None, tmp_path: Path
) -> None:
    root = tmp_path / "archive"
    with Archive.open(db_url, root) as archive:
        stored = archive.put("site-a", b"envelope", _metadata()).record
    with _index(db_url, root) as engine, engine.begin() as connection:
        connection.execute(text("DROP TABLE usreview_schema"))
        connection.execute(text('ALTER TABLE series DROP COLUMN "manufacturer"'))
    with Archive.open(db_url, root) as archive:
        assert archive.get("site-a", stored.sop_instance_uid) == stored
    with _index(db_url, root) as engine:
        assert _recorded(engine) == (SCHEMA_VERSION, __version__)
        assert "manufacturer" in {c["name"] for c in inspect(engine).get_columns("series")}


def test_an_archive_of_a_newer_usreview_is_refused_and_left_untouched(
    db_url: str | None, tmp_path: Path
) -> None:
    root = tmp_path / "archive"
    with Archive.open(db_url, root) as archive:
        archive.put("site-a", b"envelope", _metadata())
    # A newer usreview dropped a column and said so.
    with _index(db_url, root) as engine, engine.begin() as connection:
        connection.execute(text('ALTER TABLE series DROP COLUMN "manufacturer"'))
        connection.execute(
            text("UPDATE usreview_schema SET version = :v, written_by = '9.1.0'"),
            {"v": SCHEMA_VERSION + 1},
        )
    with pytest.raises(SchemaVersionError) as refused:
        Archive.open(db_url, root)
    message = str(refused.value)
    assert f"schema version {SCHEMA_VERSION + 1} (upgraded by usreview 9.1.0" in message
    assert f"this usreview ({__version__}) knows version {SCHEMA_VERSION}" in message
    assert "run usreview 9.1.0 or later" in message
    with _index(db_url, root) as engine:  # nothing added back, nothing lowered
        assert "manufacturer" not in {c["name"] for c in inspect(engine).get_columns("series")}
        assert _recorded(engine) == (SCHEMA_VERSION + 1, "9.1.0")


def test_the_hub_commands_say_so_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from usreview.hub.api.settings import open_archive
    from usreview.hub.state import open_state

    state = open_state(tmp_path / "state").root
    with open_archive(state) as archive, archive._engine.begin() as connection:
        connection.execute(SchemaVersionRow.__table__.update().values(version=SCHEMA_VERSION + 1))
    capsys.readouterr()
    for command in ([], ["conflicts"]):  # [] is "usreview hub": refused before starting
        assert main(["hub", *command, "--state", str(state)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("usreview: error: the archive's index is at schema version "), err
        assert err.count("\n") == 1, err
    assert not (state / "jupyterhub.sqlite").exists() and not (state / "proxy.pid").exists()


def _metadata() -> InstanceMetadata:
    return InstanceMetadata(
        sop_instance_uid="1.2.3.4.1",
        study_instance_uid="1.2.3.4",
        series_instance_uid="1.2.3.4.0",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.6.1",
        kinds=["bmode"],
        plaintext_sha256="0" * 64,
        size=8,
    )
