"""Append-only tables: triggers that refuse UPDATE, DELETE and TRUNCATE.

The Merkle log makes tampering detectable; these triggers make it hard to do
by accident or through the ORM in the first place.
"""

from django.db.backends.base.base import BaseDatabaseWrapper

APPEND_ONLY_TABLES = (
    "timestamps_logentry",
    "timestamps_lognode",
    "timestamps_checkpoint",
    "timestamps_timestamptoken",
)

_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION modelcourt_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'table % is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
"""


def _statements(vendor: str, table: str) -> list[str]:
    if vendor == "postgresql":
        return [
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION modelcourt_refuse_change()",
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION modelcourt_refuse_change()",
        ]
    if vendor == "sqlite":
        # SQLite has no TRUNCATE; its "DELETE FROM t" fires the delete trigger.
        return [
            f"CREATE TRIGGER {table}_no_{op.lower()} BEFORE {op} ON {table} "
            f"BEGIN SELECT RAISE(ABORT, 'table {table} is append-only: {op} refused'); END"
            for op in ("UPDATE", "DELETE")
        ]
    raise NotImplementedError(f"append-only triggers for {vendor}")


def _names(vendor: str, table: str) -> list[str]:
    if vendor == "postgresql":
        return [f"{table}_append_only", f"{table}_no_truncate"]
    return [f"{table}_no_update", f"{table}_no_delete"]


def install(connection: BaseDatabaseWrapper) -> None:
    """Create the triggers on every append-only table."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(_PG_FUNCTION)
        for table in APPEND_ONLY_TABLES:
            for statement in _statements(connection.vendor, table):
                cursor.execute(statement)


def uninstall(connection: BaseDatabaseWrapper) -> None:
    """Drop the triggers (migrations backwards; test teardown that must empty the tables)."""
    with connection.cursor() as cursor:
        for table in APPEND_ONLY_TABLES:
            for name in _names(connection.vendor, table):
                if connection.vendor == "postgresql":
                    cursor.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
                else:
                    cursor.execute(f"DROP TRIGGER IF EXISTS {name}")


def installed(connection: BaseDatabaseWrapper) -> bool:
    """Whether the triggers are present."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT count(*) FROM pg_trigger WHERE tgname = %s", [f"{APPEND_ONLY_TABLES[0]}_append_only"]
            )
        else:
            cursor.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name = %s",
                [f"{APPEND_ONLY_TABLES[0]}_no_update"],
            )
        return bool(cursor.fetchone()[0])
