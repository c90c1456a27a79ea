-- A link names the issuer that vouched for the subject: a subject is unique only within its
-- issuer (OIDC Core §2), so the same provider id pointed at another server (github.com, then
-- a GitHub Enterprise server whose numeric ids overlap) must not sign its people in as the
-- accounts the first one's subjects are linked to. Links made before this carry '' and are
-- claimed by the issuer of their next sign-in.
CREATE TABLE user_links_by_issuer (
    provider TEXT    NOT NULL,
    issuer   TEXT    NOT NULL,
    subject  TEXT    NOT NULL,
    user_id  TEXT    NOT NULL,
    created  INTEGER NOT NULL,
    PRIMARY KEY (provider, issuer, subject)
);
INSERT INTO user_links_by_issuer (provider, issuer, subject, user_id, created)
    SELECT provider, '', subject, user_id, created FROM user_links;
DROP TABLE user_links;
ALTER TABLE user_links_by_issuer RENAME TO user_links;
CREATE INDEX user_links_user ON user_links (user_id);
