-- Drop links and API tokens (issue 15), shared by every node: a link made or a token revoked
-- through one node is in force through every node at its next request. Only hashes of
-- secrets are kept, as links.toml and tokens.toml keep them. Times a record carries
-- (created, expires) are whole seconds since the epoch, as the records have them; leases
-- (link uses) expire on the database's clock, now().

-- API tokens (`state::tokens::ApiToken`). `sha256` is the SHA-256 of the secret's 43
-- characters; a token is checked by id and that hash, compared in constant time by ferry.
CREATE TABLE ferry_api_tokens (
    id        bigint PRIMARY KEY CHECK (id BETWEEN 0 AND 4294967295),
    user_name text COLLATE "C" NOT NULL,
    name      text NOT NULL,
    scope     text NOT NULL CHECK (scope IN ('full', 'read-only')),
    sha256    bytea NOT NULL CHECK (length(sha256) = 32),
    created   bigint NOT NULL,
    expires   bigint
);
CREATE INDEX ferry_api_tokens_user ON ferry_api_tokens (user_name);

-- Drop links (`state::links::Link`). `token_sha256` is the SHA-256 of the whole token text.
-- The counters are changed only by statements that check their limit in the same statement
-- on the locked row, so nodes racing through one link never pass it; the CHECKs are a last
-- line should a statement ever be wrong.
CREATE TABLE ferry_links (
    id             bigint PRIMARY KEY CHECK (id BETWEEN 0 AND 4294967295),
    token_sha256   bytea NOT NULL CHECK (length(token_sha256) = 32),
    owner          text COLLATE "C" NOT NULL,
    folder         text NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('upload', 'download', 'download-folder')),
    created        bigint NOT NULL,
    expires        bigint,
    max_files      bigint CHECK (max_files >= 0),
    max_bytes      bigint CHECK (max_bytes >= 0),
    max_downloads  bigint CHECK (max_downloads >= 0),
    used_files     bigint NOT NULL DEFAULT 0 CHECK (used_files >= 0),
    used_bytes     bigint NOT NULL DEFAULT 0 CHECK (used_bytes >= 0),
    used_downloads bigint NOT NULL DEFAULT 0 CHECK (used_downloads >= 0),
    password       text,
    note           text,
    CHECK (max_files IS NULL OR used_files <= max_files),
    CHECK (max_bytes IS NULL OR used_bytes <= max_bytes),
    CHECK (max_downloads IS NULL OR used_downloads <= max_downloads)
);
CREATE INDEX ferry_links_owner ON ferry_links (owner);

-- Uploads through links in flight, each a lease (ids from ferry_lease_ids, never reused).
-- Tied to the link's id and token hash: a link made again under the same id never takes
-- them.
CREATE TABLE ferry_link_uses (
    id           bigint PRIMARY KEY,
    link_id      bigint NOT NULL,
    token_sha256 bytea NOT NULL,
    bytes        bigint NOT NULL CHECK (bytes >= 0),
    expires      timestamptz NOT NULL
);
CREATE INDEX ferry_link_uses_link ON ferry_link_uses (link_id, expires);
CREATE INDEX ferry_link_uses_expires ON ferry_link_uses (expires);
