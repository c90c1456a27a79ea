-- Grantline ledger, SQLite (the embedded default).
--
-- `events` is the source of truth and is append-only: UPDATE and DELETE are refused by the
-- triggers below. The hash chain and the signed checkpoints are what catch someone who goes
-- around these guard rails (for example by dropping a trigger): `grantline verify` reports it.
-- The connection runs in WAL mode with synchronous=FULL so an acknowledged append survives power loss.

CREATE TABLE events (
    seq       INTEGER PRIMARY KEY CHECK (seq > 0),   -- global position, 1, 2, 3 … no gaps
    id        BLOB    NOT NULL UNIQUE CHECK (length(id) = 16),  -- UUIDv7, SIEM dedupe key
    time      INTEGER NOT NULL,                       -- append time, µs since epoch, UTC
    stream    TEXT    NOT NULL,                       -- aggregate, e.g. family:…
    version   INTEGER NOT NULL CHECK (version > 0),   -- position within the stream
    kind      TEXT    NOT NULL,                       -- e.g. token.refreshed
    body      BLOB    NOT NULL,                       -- the whole event as CBOR: the hashed bytes
    prev_hash BLOB    NOT NULL CHECK (length(prev_hash) = 32),
    hash      BLOB    NOT NULL CHECK (length(hash) = 32),  -- blake3(tag ‖ prev_hash ‖ body)
    UNIQUE (stream, version)
);

CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'grantline: events is append-only; UPDATE refused');
END;

CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'grantline: events is append-only; DELETE refused');
END;

-- Signed checkpoints (C2SP tlog-checkpoint notes), append-only too. `frontier` lets the
-- appender resume the Merkle tree without re-reading every event.
CREATE TABLE checkpoints (
    id        INTEGER PRIMARY KEY,
    time      INTEGER NOT NULL,
    tree_size INTEGER NOT NULL CHECK (tree_size >= 0),
    root      BLOB    NOT NULL CHECK (length(root) = 32),
    note      TEXT    NOT NULL,
    frontier  BLOB    NOT NULL
);

CREATE INDEX checkpoints_tree_size ON checkpoints (tree_size);

CREATE TRIGGER checkpoints_no_update BEFORE UPDATE ON checkpoints
BEGIN
    SELECT RAISE(ABORT, 'grantline: checkpoints is append-only; UPDATE refused');
END;

CREATE TRIGGER checkpoints_no_delete BEFORE DELETE ON checkpoints
BEGIN
    SELECT RAISE(ABORT, 'grantline: checkpoints is append-only; DELETE refused');
END;

-- Per-subject keys for sealed personal data. Deliberately NOT append-only and never part of
-- the ledger: deleting a subject's row is how `grantline user erase` erases their data.
-- The connection sets secure_delete=ON so a deleted key is overwritten in the file.
CREATE TABLE subject_keys (
    subject TEXT    PRIMARY KEY,
    key     BLOB    NOT NULL CHECK (length(key) = 32),
    created INTEGER NOT NULL
);

-- Subjects whose key was destroyed: no new key is ever created for them. Holds ids only.
CREATE TABLE erased_subjects (
    subject   TEXT    PRIMARY KEY,
    erased_at INTEGER NOT NULL
);
