-- Sign-in credentials, outside the ledger: a password hash must never be in an append-only
-- log (it could be cracked offline for ever and could not be erased). The username is personal
-- data, so `grantline user erase` deletes the row. Mutable by design: password changes update it.
CREATE TABLE user_credentials (
    user_id       TEXT    PRIMARY KEY,
    username      TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    updated       INTEGER NOT NULL
);
