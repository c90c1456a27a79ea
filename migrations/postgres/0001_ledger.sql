-- Grantline ledger, PostgreSQL (production; several instances may share one database).
--
-- `events` and `checkpoints` are append-only: row triggers refuse UPDATE and DELETE, a
-- statement trigger refuses TRUNCATE, and every trigger is ENABLE ALWAYS so that
-- `SET session_replication_role = replica` does not silence it. Appenders serialise on a
-- transaction-level advisory lock so the chain stays linear across processes, and announce
-- new events with NOTIFY grantline_events.
--
-- Least privilege (run once as a superuser; the server then needs only INSERT and SELECT):
--
--   CREATE ROLE grantline_owner NOLOGIN;                -- owns the schema, runs migrations
--   CREATE ROLE grantline_migrator LOGIN PASSWORD '…' IN ROLE grantline_owner;
--   CREATE ROLE grantline_app LOGIN PASSWORD '…';       -- what `grantline serve` connects as
--   CREATE DATABASE grantline OWNER grantline_owner;
--   -- as grantline_migrator:  grantline migrate --database postgres://grantline_migrator@…/grantline
--   GRANT USAGE ON SCHEMA public TO grantline_app;
--   GRANT SELECT, INSERT ON events, checkpoints TO grantline_app;
--   GRANT SELECT, INSERT, DELETE ON subject_keys TO grantline_app;
--   GRANT SELECT, INSERT ON erased_subjects TO grantline_app;
--   GRANT SELECT ON _sqlx_migrations TO grantline_app;
--   GRANT USAGE ON SEQUENCE checkpoints_id_seq TO grantline_app;
--
-- Without UPDATE, DELETE or TRUNCATE privileges, and without ownership (an owner can drop
-- triggers), the application role cannot rewrite history even if it is compromised; the hash
-- chain and signed checkpoints then catch anyone who has more.

CREATE TABLE events (
    seq       BIGINT      PRIMARY KEY CHECK (seq > 0),
    id        UUID        NOT NULL UNIQUE,
    time      TIMESTAMPTZ NOT NULL,
    stream    TEXT        NOT NULL,
    version   BIGINT      NOT NULL CHECK (version > 0),
    kind      TEXT        NOT NULL,
    body      BYTEA       NOT NULL,
    prev_hash BYTEA       NOT NULL CHECK (octet_length(prev_hash) = 32),
    hash      BYTEA       NOT NULL CHECK (octet_length(hash) = 32),
    UNIQUE (stream, version)
);

CREATE TABLE checkpoints (
    id        BIGSERIAL   PRIMARY KEY,
    time      TIMESTAMPTZ NOT NULL,
    tree_size BIGINT      NOT NULL CHECK (tree_size >= 0),
    root      BYTEA       NOT NULL CHECK (octet_length(root) = 32),
    note      TEXT        NOT NULL,
    frontier  BYTEA       NOT NULL
);

CREATE INDEX checkpoints_tree_size ON checkpoints (tree_size);

CREATE FUNCTION grantline_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'grantline: % is append-only; % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION grantline_refuse_change();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION grantline_refuse_change();
CREATE TRIGGER checkpoints_append_only BEFORE UPDATE OR DELETE ON checkpoints
    FOR EACH ROW EXECUTE FUNCTION grantline_refuse_change();
CREATE TRIGGER checkpoints_no_truncate BEFORE TRUNCATE ON checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION grantline_refuse_change();

ALTER TABLE events ENABLE ALWAYS TRIGGER events_append_only;
ALTER TABLE events ENABLE ALWAYS TRIGGER events_no_truncate;
ALTER TABLE checkpoints ENABLE ALWAYS TRIGGER checkpoints_append_only;
ALTER TABLE checkpoints ENABLE ALWAYS TRIGGER checkpoints_no_truncate;

-- Per-subject keys for sealed personal data: deletable by design, never part of the ledger.
-- After `grantline user erase`, VACUUM subject_keys (as the owner) so the old tuple is gone
-- from the heap as well.
CREATE TABLE subject_keys (
    subject TEXT        PRIMARY KEY,
    key     BYTEA       NOT NULL CHECK (octet_length(key) = 32),
    created TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Subjects whose key was destroyed: no new key is ever created for them. Holds ids only.
CREATE TABLE erased_subjects (
    subject   TEXT        PRIMARY KEY,
    erased_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
