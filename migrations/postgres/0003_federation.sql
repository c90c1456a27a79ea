-- Federation, outside the ledger (like user_credentials). `user_links` finds the user an
-- upstream identity (provider, subject) signs in as: the ledger's `user.linked` carries the
-- subject sealed, so this row is the lookup; erasure deletes it. `upstream_tokens` keeps each
-- user's upstream access and refresh tokens sealed under the user's personal-data key (a
-- JSON `Sealed` value): erasing the key makes them unreadable, and erasure deletes the row.
--
-- Least-privilege setup (see 0001):
--   GRANT SELECT, INSERT, UPDATE, DELETE ON user_links, upstream_tokens TO grantline_app;
CREATE TABLE user_links (
    provider TEXT   NOT NULL,
    subject  TEXT   NOT NULL,
    user_id  TEXT   NOT NULL,
    created  BIGINT NOT NULL,
    PRIMARY KEY (provider, subject)
);
CREATE INDEX user_links_user ON user_links (user_id);

CREATE TABLE upstream_tokens (
    user_id    TEXT   NOT NULL,
    provider   TEXT   NOT NULL,
    sealed     TEXT   NOT NULL,
    expires_at BIGINT,
    updated    BIGINT NOT NULL,
    PRIMARY KEY (user_id, provider)
);
