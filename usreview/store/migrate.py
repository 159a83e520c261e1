"""Bring an archive's existing tables up to the declared schema when it is opened.

``create_all`` makes missing tables but never changes an existing one, so columns added
to a table later (all nullable) are added here with ``ALTER TABLE ... ADD COLUMN``, and
indexes declared later with ``CREATE INDEX``; a process that opens the same archive at the
same moment may add one first, which is fine.
Studies stored before their ``kinds`` column existed get it from their instances, also when
an earlier upgrade stopped before it filled them.
"""

from __future__ import annotations

from sqlalchemy import Engine, inspect, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from usreview.store.database import writer
from usreview.store.errors import StorageError
from usreview.store.schema import Base, InstanceRow, StudyRow

__all__ = ["upgrade"]


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
