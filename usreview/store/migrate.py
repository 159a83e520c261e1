"""Bring an archive's existing tables up to the declared schema when it is opened.

``create_all`` makes missing tables but never changes an existing one, so columns added
to a table later (all nullable) are added here with ``ALTER TABLE ... ADD COLUMN``, and
indexes declared later with ``CREATE INDEX``; a process that opens the same archive at the
same moment may add one first, which is fine.
Studies stored before their ``kinds`` column existed get it from their instances, also when
an earlier upgrade stopped before it filled them.

Last, the archive records :data:`~usreview.store.schema.SCHEMA_VERSION` (table
``usreview_schema``). :func:`check_version` runs before anything else touches the index:
an archive upgraded by a newer usreview (a higher version) is refused, unchanged, instead
of being written by code that does not know its tables (after going back to an older
release, for example). An archive made before versions were recorded counts as older.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, inspect, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from usreview import __version__
from usreview.store.database import lock_schema, writer
from usreview.store.errors import SchemaVersionError, StorageError
from usreview.store.schema import (
    SCHEMA_VERSION,
    Base,
    InstanceRow,
    SchemaVersionRow,
    StudyRow,
)

__all__ = ["check_version", "upgrade"]


def check_version(engine: Engine) -> None:
    """Refuse an archive upgraded by a newer usreview, before anything changes it.

    Raises
    ------
    SchemaVersionError
        The archive records a schema version above :data:`SCHEMA_VERSION`.
    """
    if not inspect(engine).has_table(SchemaVersionRow.__tablename__):
        return  # new, or older than recorded versions: the upgrade records one
    with Session(engine) as session:
        row = session.get(SchemaVersionRow, 1)
        if row is not None and row.version > SCHEMA_VERSION:
            raise _too_new(row)


def upgrade(engine: Engine) -> None:
    """Add the declared columns and indexes that existing tables lack; fill the studies'
    kinds.

    Raises
    ------
    StorageError
        A missing column is not nullable (it cannot be added to rows that exist).
    """
    inspector = inspect(engine)
    added: list[str] = []
    for table in Base.metadata.sorted_tables:
        if not inspector.has_table(table.name):
            continue
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            if not column.nullable:
                raise StorageError(
                    f"the archive's table {table.name} lacks the required column "
                    f"{column.name}: it cannot be added automatically"
                )
            kind = column.type.compile(dialect=engine.dialect)
            try:
                with engine.begin() as connection:
                    connection.exec_driver_sql(
                        f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {kind}'
                    )
            except SQLAlchemyError:
                found = {c["name"] for c in inspect(engine).get_columns(table.name)}
                if column.name not in found:
                    raise
            added.append(f"{table.name}.{column.name}")
        indexes = {index["name"] for index in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name in indexes:
                continue
            try:
                index.create(engine, checkfirst=True)
            except SQLAlchemyError:
                if index.name not in {i["name"] for i in inspect(engine).get_indexes(table.name)}:
                    raise
    if inspector.has_table(StudyRow.__tablename__):
        _fill_study_kinds(engine)
    _record_version(engine)


def _record_version(engine: Engine) -> None:
    """Record :data:`SCHEMA_VERSION` unless the archive has it (never lower it)."""
    with Session(engine) as session:
        row = session.get(SchemaVersionRow, 1)
        if row is not None and row.version == SCHEMA_VERSION:
            return  # as usual: no write transaction
    with writer(engine).connect() as connection, connection.begin():
        lock_schema(connection)
        with Session(bind=connection) as session:
            row = session.get(SchemaVersionRow, 1)
            if row is not None and row.version > SCHEMA_VERSION:
                raise _too_new(row)  # a newer usreview upgraded it meanwhile
            if row is None or row.version < SCHEMA_VERSION:
                session.merge(
                    SchemaVersionRow(
                        id=1,
                        version=SCHEMA_VERSION,
                        written_by=__version__,
                        upgraded_at=datetime.now(UTC),
                    )
                )
                session.flush()


def _too_new(row: SchemaVersionRow) -> SchemaVersionError:
    return SchemaVersionError(
        f"the archive's index is at schema version {row.version} (upgraded by usreview "
        f"{row.written_by} on {row.upgraded_at:%Y-%m-%d}); this usreview ({__version__}) knows "
        f"version {SCHEMA_VERSION} and leaves it untouched: run usreview {row.written_by} or "
        "later, or restore the backup made before that upgrade"
    )


def _fill_study_kinds(engine: Engine) -> None:
    """Fill the kinds of studies that lack them: every opening looks (one query), so an
    upgrade stopped between adding the column and filling it is finished next time."""
    with Session(writer(engine)) as session, session.begin():
        missing = list(session.scalars(select(StudyRow.id).where(StudyRow.kinds.is_(None))))
        if not missing:
            return
        kinds: dict[int, set[str]] = {study: set() for study in missing}
        rows = session.execute(select(InstanceRow.study_id, InstanceRow.kinds))
        for study_id, values in rows:
            if study_id in kinds:
                kinds[study_id].update(values)
        for study_id, found in kinds.items():
            session.execute(
                update(StudyRow).where(StudyRow.id == study_id).values(kinds=sorted(found)),
                execution_options={"synchronize_session": False},
            )
