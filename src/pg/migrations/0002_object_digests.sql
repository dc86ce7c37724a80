-- The SHA-256 of committed objects in an object store (`--storage s3`), by the object's key
-- and the ETag the store gave it: object metadata is fixed before the digest is known, and
-- an object rewritten since has another ETag, so a stale row never vouches for new bytes.
-- Keyed by the key's SHA-256: a key may be longer than a B-tree entry holds.
CREATE TABLE ferry_object_digests (
    key_digest  bytea NOT NULL CHECK (length(key_digest) = 32),
    object_key  text COLLATE "C" NOT NULL,
    etag        text NOT NULL,
    sha256      bytea NOT NULL CHECK (length(sha256) = 32),
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key_digest, etag)
);
