"""Append-only tables: triggers that refuse UPDATE, DELETE, TRUNCATE and overwriting INSERTs.

The Merkle log makes tampering detectable; these triggers make it hard to do
by accident or through the ORM in the first place.

SQLite's `INSERT OR REPLACE` (and `REPLACE INTO`) removes the conflicting row without firing
DELETE triggers (unless `PRAGMA recursive_triggers` is on), so every append-only table also
refuses an INSERT whose unique key is already taken: the BEFORE INSERT trigger runs before the
conflict is resolved. PostgreSQL has no REPLACE; its `INSERT ... ON CONFLICT DO UPDATE` fires the
BEFORE UPDATE triggers, which refuse it.
"""

from django.db.backends.base.base import BaseDatabaseWrapper

APPEND_ONLY_TABLES = (
    "timestamps_logentry",
    "timestamps_lognode",
    "timestamps_checkpoint",
    "timestamps_timestamptoken",
)

# Every unique key of each table (any of them is a REPLACE conflict target), as SQL over NEW.
_UNIQUE_KEYS: dict[str, list[tuple[str, ...]]] = {
    "timestamps_logentry": [("index",)],
    "timestamps_lognode": [("key",)],
    "timestamps_checkpoint": [("id",), ("size", "key_id")],
    "timestamps_timestamptoken": [("id",), ("serial",), ("log_entry_id",)],
}

_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION modelcourt_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'table % is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
"""


HEAD_TABLE = "timestamps_loghead"

# Same size means the same tree: only an append may change the root (and the peaks).
_PG_HEAD_FUNCTION = """
CREATE OR REPLACE FUNCTION modelcourt_head_only_grows() RETURNS trigger AS $$
BEGIN
    IF TG_OP <> 'UPDATE' OR NEW.size < OLD.size OR (NEW.size = OLD.size AND (
        NEW.root_hash IS DISTINCT FROM OLD.root_hash OR NEW.frontier IS DISTINCT FROM OLD.frontier
    )) THEN
        RAISE EXCEPTION 'the log head only grows: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
"""


def _head_statements(vendor: str) -> list[str]:
    # The head may move forward (appends) but never back, never rewrite the tree at the same size,
    # and never disappear.
    if vendor == "postgresql":
        return [
            f"CREATE TRIGGER {HEAD_TABLE}_only_grows BEFORE UPDATE OR DELETE ON {HEAD_TABLE} "
            f"FOR EACH ROW EXECUTE FUNCTION modelcourt_head_only_grows()",
            f"CREATE TRIGGER {HEAD_TABLE}_no_truncate BEFORE TRUNCATE ON {HEAD_TABLE} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION modelcourt_refuse_change()",
        ]
    return [
        f"CREATE TRIGGER {HEAD_TABLE}_only_grows BEFORE UPDATE ON {HEAD_TABLE} WHEN NEW.size < OLD.size "
        "OR (NEW.size = OLD.size AND (NEW.root_hash IS NOT OLD.root_hash OR NEW.frontier IS NOT OLD.frontier)) "
        "BEGIN SELECT RAISE(ABORT, 'the log head only grows: UPDATE refused'); END",
        f"CREATE TRIGGER {HEAD_TABLE}_no_delete BEFORE DELETE ON {HEAD_TABLE} "
        "BEGIN SELECT RAISE(ABORT, 'the log head only grows: DELETE refused'); END",
        # The head is created once; a second INSERT can only be a REPLACE of the existing row.
        f"CREATE TRIGGER {HEAD_TABLE}_no_overwrite BEFORE INSERT ON {HEAD_TABLE} "  # noqa: S608 (constant names)
        f"WHEN EXISTS (SELECT 1 FROM {HEAD_TABLE}) "
        "BEGIN SELECT RAISE(ABORT, 'the log head only grows: overwriting INSERT refused'); END",
    ]


def _head_names(vendor: str) -> list[str]:
    if vendor == "postgresql":
        return [f"{HEAD_TABLE}_only_grows", f"{HEAD_TABLE}_no_truncate"]
    return [f"{HEAD_TABLE}_only_grows", f"{HEAD_TABLE}_no_delete", f"{HEAD_TABLE}_no_overwrite"]


def _key_taken(table: str) -> str:
    """SQLite condition: a row already holds one of NEW's unique keys."""
    clauses = []
    for columns in _UNIQUE_KEYS[table]:
        match = " AND ".join(f'"{column}" = NEW."{column}"' for column in columns)
        clauses.append(f"EXISTS (SELECT 1 FROM {table} WHERE {match})")  # noqa: S608 (constant names)
    return " OR ".join(clauses)


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
            *(
                f"CREATE TRIGGER {table}_no_{op.lower()} BEFORE {op} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, 'table {table} is append-only: {op} refused'); END"
                for op in ("UPDATE", "DELETE")
            ),
            f"CREATE TRIGGER {table}_no_overwrite BEFORE INSERT ON {table} WHEN {_key_taken(table)} "
            f"BEGIN SELECT RAISE(ABORT, 'table {table} is append-only: overwriting INSERT refused'); END",
        ]
    raise NotImplementedError(f"append-only triggers for {vendor}")


def _names(vendor: str, table: str) -> list[str]:
    if vendor == "postgresql":
        return [f"{table}_append_only", f"{table}_no_truncate"]
    return [f"{table}_no_update", f"{table}_no_delete", f"{table}_no_overwrite"]


def install(connection: BaseDatabaseWrapper) -> None:
    """Create (or re-create, in their current form) the triggers on every append-only table."""
    uninstall(connection)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(_PG_FUNCTION)
            cursor.execute(_PG_HEAD_FUNCTION)
        for table in APPEND_ONLY_TABLES:
            for statement in _statements(connection.vendor, table):
                cursor.execute(statement)
        for statement in _head_statements(connection.vendor):
            cursor.execute(statement)


def uninstall(connection: BaseDatabaseWrapper) -> None:
    """Drop the triggers (migrations backwards; test teardown that must empty the tables)."""
    pairs = [(table, name) for table in APPEND_ONLY_TABLES for name in _names(connection.vendor, table)]
    pairs += [(HEAD_TABLE, name) for name in _head_names(connection.vendor)]
    with connection.cursor() as cursor:
        for table, name in pairs:
            if connection.vendor == "postgresql":
                cursor.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
            else:
                cursor.execute(f"DROP TRIGGER IF EXISTS {name}")


def installed(connection: BaseDatabaseWrapper) -> bool:
    """Whether the triggers are present in their current form."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT count(*) FROM pg_trigger WHERE tgname = %s", [f"{APPEND_ONLY_TABLES[0]}_append_only"]
            )
        else:
            # the newest trigger: a database with only the older set answers False
            cursor.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name = %s",
                [f"{APPEND_ONLY_TABLES[0]}_no_overwrite"],
            )
        return bool(cursor.fetchone()[0])
