-- The web app's sessions, shared by every node so a cookie made through one works through
-- all. Keyed by the SHA-256 of the cookie (the server hashes it before it asks), so a copy
-- of this table opens no session. Both ends are on the database's clock.
CREATE TABLE ferry_web_sessions (
    key_hash       bytea PRIMARY KEY CHECK (length(key_hash) = 32),
    user_name      text COLLATE "C" NOT NULL,
    csrf           text NOT NULL,
    password_stamp bytea NOT NULL CHECK (length(password_stamp) = 32),
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    idle_until     timestamptz NOT NULL,
    ends_at        timestamptz NOT NULL
);
CREATE INDEX ferry_web_sessions_user ON ferry_web_sessions (user_name, created_at);
CREATE INDEX ferry_web_sessions_expiry ON ferry_web_sessions (LEAST(idle_until, ends_at));

-- Resumable (tus) uploads' records, so an upload created through one node is resumed
-- through any. `expires_ns` is the record's lease, nanoseconds since 1970 as the caller gives
-- it (the trait passes `now` in, and a record reads back exactly as it was written);
-- `kept_*` say what of it is kept as a partial (the partial index says where).
CREATE TABLE ferry_uploads (
    id          text COLLATE "C" PRIMARY KEY CHECK (length(id) = 22),
    owner_kind  text NOT NULL CHECK (owner_kind IN ('user', 'link')),
    owner_name  text COLLATE "C" NOT NULL,
    target      text NOT NULL,
    size        bigint NOT NULL CHECK (size >= 0),
    expected    bytea CHECK (length(expected) = 32),
    kept_len    bigint CHECK (kept_len >= 0),
    kept_sha256 bytea CHECK (length(kept_sha256) = 32),
    expires_ns  bigint NOT NULL,
    receipt     text,
    -- The node working on it (its live upload is open there), until `held_until` on the
    -- database's clock: one node at a time takes an upload up.
    holder      text,
    held_until  timestamptz,
    CHECK ((kept_len IS NULL) = (kept_sha256 IS NULL))
);
CREATE INDEX ferry_uploads_owner ON ferry_uploads (owner_kind, owner_name) WHERE receipt IS NULL;
CREATE INDEX ferry_uploads_expires ON ferry_uploads (expires_ns);
