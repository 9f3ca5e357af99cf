"""The PostgreSQL store's schema: its migrations, the fence and how a daemon
migrates at open (decisions 0144, 0145).

Every table is prefixed `reconciler_` (the database may hold other things) and
keyed by `shard` first, so the daemons of several shards share one database,
each seeing only its rows. `reconciler_schema` holds the version; migrations run
in one transaction under a transaction-scoped advisory lock, so daemons opening
at once migrate once, and a schema newer than the code's is refused.

The fence: a statement-level trigger on every state table reads the shard's
lease row `FOR SHARE` and refuses (SQLSTATE RC001) a write whose transaction
carries an older epoch (`reconciler.epoch`, set by each flush) than the lease's.
Reading the row FOR SHARE makes a takeover's `UPDATE ... SET epoch = epoch + 1`
wait for a flush in flight, and every flush after it fail.
"""

from __future__ import annotations

from typing import Any

import psycopg

from reconciler.store.base import StoreError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "STATE_TABLES", "migrate"]

STATE_TABLES = (
    "reconciler_resources",
    "reconciler_status",
    "reconciler_events",
    "reconciler_revisions",
    "reconciler_sources",
)
"""The tables of migration 1 (its fence's triggers); `reconciler_runs` (2) is fenced too."""

_FENCE = """
CREATE FUNCTION reconciler_fence() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    lease_shard text := coalesce(nullif(current_setting('reconciler.shard', true), ''), 'default');
    mine text := nullif(current_setting('reconciler.epoch', true), '');
    held bigint;
BEGIN
    SELECT epoch INTO held FROM reconciler_lease WHERE shard = lease_shard FOR SHARE;
    IF held IS NOT NULL AND held > coalesce(mine::bigint, 0) THEN
        RAISE EXCEPTION 'fenced: epoch %, lease is at %', coalesce(mine, 'none'), held
            USING ERRCODE = 'RC001';
    END IF;
    RETURN NULL;
END
$$;
""" + "".join(
    f"CREATE TRIGGER reconciler_fence BEFORE INSERT OR UPDATE OR DELETE ON {table} "
    "FOR EACH STATEMENT EXECUTE FUNCTION reconciler_fence();\n"
    for table in STATE_TABLES
)

MIGRATIONS: tuple[str, ...] = (
    # 1: the lease (election: reconciler.ha), the state tables, the fence. The
    # epoch column of each row says which leader wrote it (audit).
    """
    CREATE TABLE IF NOT EXISTS reconciler_lease (
        shard text PRIMARY KEY,
        holder text,
        address text,
        epoch bigint NOT NULL DEFAULT 0,
        expires_at timestamptz NOT NULL DEFAULT 'epoch',
        renewed_at timestamptz
    );
    CREATE TABLE reconciler_resources (
        shard text NOT NULL,
        id text NOT NULL,
        kind text NOT NULL,
        name text NOT NULL,
        spec_hash text,
        spec text,
        policy text,
        deps text NOT NULL DEFAULT '[]',
        created boolean,
        instance text NOT NULL DEFAULT '',
        epoch bigint,
        PRIMARY KEY (shard, id)
    );
    CREATE TABLE reconciler_status (
        shard text NOT NULL,
        id text NOT NULL,
        state text NOT NULL,
        last_transition double precision NOT NULL,
        last_error text,
        attempts integer NOT NULL DEFAULT 0,
        next_attempt double precision,
        epoch bigint,
        PRIMARY KEY (shard, id)
    );
    CREATE TABLE reconciler_events (
        shard text NOT NULL,
        seq bigint NOT NULL,
        ts double precision NOT NULL,
        id text NOT NULL,
        from_state text,
        to_state text NOT NULL,
        event text NOT NULL,
        reason text,
        instance text NOT NULL DEFAULT '',
        epoch bigint,
        PRIMARY KEY (shard, seq)
    );
    CREATE INDEX reconciler_events_by_id ON reconciler_events (shard, id, seq);
    CREATE TABLE reconciler_revisions (
        shard text NOT NULL,
        seq bigint GENERATED ALWAYS AS IDENTITY,
        revision text NOT NULL,
        applied_at double precision NOT NULL,
        epoch bigint,
        PRIMARY KEY (shard, seq)
    );
    CREATE TABLE reconciler_sources (
        shard text NOT NULL,
        source text NOT NULL,
        last_success double precision NOT NULL,
        epoch bigint,
        PRIMARY KEY (shard, source)
    );
    """
    + _FENCE,
    # 2: what providers remember between runs (a guard-less Command's last run,
    # `RunRecords`), shared so a new leader does not run it again (decision
    # 0151); fenced as the state tables are, so a deposed leader's is refused.
    """
    CREATE TABLE reconciler_runs (
        shard text NOT NULL,
        key text NOT NULL,
        record jsonb NOT NULL,
        epoch bigint,
        PRIMARY KEY (shard, key)
    );
    CREATE TRIGGER reconciler_fence BEFORE INSERT OR UPDATE OR DELETE ON reconciler_runs
    FOR EACH STATEMENT EXECUTE FUNCTION reconciler_fence();
    """,
    # 3: keys every daemon of the database shares: the digest key that stands for
    # secrets in stored specs and run-record names (decision 0156), so a new
    # leader's digests equal its predecessor's. Made once, never replaced.
    """
    CREATE TABLE reconciler_keys (
        name text PRIMARY KEY,
        key bytea NOT NULL CHECK (length(key) = 32)
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

_LOCK_KEY = 0x7265636F6E63  # "reconc": the advisory lock of migrations


def migrate(conn: psycopg.Connection[Any], where: str) -> int:
    """Bring the schema to SCHEMA_VERSION in one transaction under the advisory
    lock (a second daemon opening at once waits, then finds nothing to do);
    the version found. `where` names the database in errors (redacted)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute("CREATE TABLE IF NOT EXISTS reconciler_schema (version integer NOT NULL)")
        row = conn.execute("SELECT max(version) FROM reconciler_schema").fetchone()
        version = 0 if row is None or row[0] is None else int(row[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"state database {where} has schema {version}, newer than this "
                f"version's {SCHEMA_VERSION}: upgrade reconciler"
            )
        for number in range(version, SCHEMA_VERSION):
            conn.execute(MIGRATIONS[number].encode())
        if version < SCHEMA_VERSION:
            conn.execute("DELETE FROM reconciler_schema")
            conn.execute("INSERT INTO reconciler_schema VALUES (%s)", (SCHEMA_VERSION,))
    return version
