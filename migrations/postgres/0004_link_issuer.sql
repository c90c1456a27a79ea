-- A link names the issuer that vouched for the subject: a subject is unique only within its
-- issuer (OIDC Core §2), so the same provider id pointed at another server (github.com, then
-- a GitHub Enterprise server whose numeric ids overlap) must not sign its people in as the
-- accounts the first one's subjects are linked to. Links made before this carry '' and are
-- claimed by the issuer of their next sign-in. The application role's grants on the table
-- (0003) stay.
ALTER TABLE user_links ADD COLUMN issuer TEXT NOT NULL DEFAULT '';
ALTER TABLE user_links ALTER COLUMN issuer DROP DEFAULT;
ALTER TABLE user_links DROP CONSTRAINT user_links_pkey;
ALTER TABLE user_links ADD PRIMARY KEY (provider, issuer, subject);
