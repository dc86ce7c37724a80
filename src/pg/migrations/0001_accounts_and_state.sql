-- ferry's accounts and shared state (issue 15). Applied once, in the transaction that holds
-- the migration lock (src/pg/mod.rs). Leases expire on the database's clock, now().

-- Accounts: what `accounts::User` holds. Names sort by their bytes (COLLATE "C"), as Rust
-- sorts strings. Limits are bigint (the users file's integers stop at 2^63 - 1 too).
CREATE TABLE ferry_users (
    name          text COLLATE "C" PRIMARY KEY,
    password_hash text NOT NULL,
    home          text,
    read_only     boolean NOT NULL DEFAULT false,
    quota_bytes   bigint CHECK (quota_bytes >= 0),
    quota_files   bigint CHECK (quota_files >= 0),
    max_file_size bigint CHECK (max_file_size >= 0)
);

-- Ids of leases of every kind (reservations, count claims, name locks): never reused, so an
-- old id can never name a newer lease.
CREATE SEQUENCE ferry_lease_ids;

-- Each home's usage. `counted` is false until one holder has walked the home (under
-- `claim`, until `claim_expires`); the row is also what a reservation locks (FOR UPDATE),
-- so reservations of one home take turns on every node.
CREATE TABLE ferry_usage (
    home          text COLLATE "C" PRIMARY KEY,
    counted       boolean NOT NULL DEFAULT false,
    used_bytes    bigint NOT NULL DEFAULT 0 CHECK (used_bytes >= 0),
    used_files    bigint NOT NULL DEFAULT 0 CHECK (used_files >= 0),
    claim         bigint UNIQUE,
    claim_expires timestamptz
);

-- Room held for changes in flight, each a lease; the room reserved in a home is the sum over
-- its rows that have not expired.
CREATE TABLE ferry_reservations (
    id          bigint PRIMARY KEY,
    home        text COLLATE "C" NOT NULL,
    quota_bytes bigint,
    quota_files bigint,
    held_bytes  bigint NOT NULL CHECK (held_bytes >= 0),
    held_files  bigint NOT NULL CHECK (held_files >= 0),
    expires     timestamptz NOT NULL
);
CREATE INDEX ferry_reservations_home ON ferry_reservations (home, expires);
CREATE INDEX ferry_reservations_expires ON ferry_reservations (expires);

-- Names held by uploads in flight, each a lease. Keyed by the SHA-256 of (home, name): a
-- path may be 4096 bytes, more than a B-tree entry holds.
CREATE TABLE ferry_name_locks (
    lock_key bytea PRIMARY KEY,
    home     text NOT NULL,
    name     text NOT NULL,
    id       bigint NOT NULL UNIQUE,
    expires  timestamptz NOT NULL
);
CREATE INDEX ferry_name_locks_expires ON ferry_name_locks (expires);

-- Penalties per source (an address masked to its prefix, as text: "192.0.2.7/32").
-- `active` once the penalty passed the ban threshold, until `expires`.
CREATE TABLE ferry_penalties (
    source  text COLLATE "C" PRIMARY KEY,
    expires timestamptz NOT NULL,
    active  boolean NOT NULL,
    just_banned boolean NOT NULL DEFAULT false
);
CREATE INDEX ferry_penalties_expires ON ferry_penalties (expires);

-- Uploads kept for resuming, by key (indexed by its SHA-256: a key names a path, which may
-- be longer than a B-tree entry holds). `kept_at` is the keeper's clock (seconds and
-- nanoseconds since the epoch), as `PartialRecord` has it.
CREATE TABLE ferry_partials (
    key_digest   bytea PRIMARY KEY,
    key          text COLLATE "C" NOT NULL,
    home         text COLLATE "C" NOT NULL,
    path         text NOT NULL,
    len          bigint NOT NULL CHECK (len >= 0),
    handle       text NOT NULL,
    kept_secs    bigint NOT NULL,
    kept_nanos   integer NOT NULL
);
CREATE INDEX ferry_partials_home ON ferry_partials (home, kept_secs, kept_nanos);

-- A reservation in one round trip: lock the home's usage row (reservations of one home take
-- turns on every node), sum its live reservations, check the quota, insert. Each statement of
-- a volatile PL/pgSQL function takes a new snapshot, so the sum sees every reservation that
-- committed while this one waited for the lock. Returns the new id, or -1 if the home is not
-- counted, -2 over the byte quota, -3 over the file quota. A NULL quota is unlimited; adding
-- nothing never needs room (as state::memory decides).
CREATE FUNCTION ferry_reserve(p_home text, p_quota_bytes bigint, p_quota_files bigint,
                              p_bytes bigint, p_files bigint, p_ttl_us bigint)
RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    u ferry_usage%ROWTYPE;
    r_bytes numeric;
    r_files numeric;
    new_id bigint;
BEGIN
    SELECT * INTO u FROM ferry_usage WHERE home = p_home AND counted FOR UPDATE;
    IF NOT FOUND THEN
        RETURN -1;
    END IF;
    SELECT COALESCE(sum(held_bytes), 0), COALESCE(sum(held_files), 0) INTO r_bytes, r_files
        FROM ferry_reservations WHERE home = p_home AND expires > now();
    IF p_quota_bytes IS NOT NULL AND p_bytes > 0
       AND u.used_bytes::numeric + r_bytes + p_bytes > p_quota_bytes THEN
        RETURN -2;
    END IF;
    IF p_quota_files IS NOT NULL AND p_files > 0
       AND u.used_files::numeric + r_files + p_files > p_quota_files THEN
        RETURN -3;
    END IF;
    INSERT INTO ferry_reservations
        (id, home, quota_bytes, quota_files, held_bytes, held_files, expires)
        VALUES (nextval('ferry_lease_ids'), p_home, p_quota_bytes, p_quota_files, p_bytes,
                p_files, now() + p_ttl_us * interval '1 microsecond')
        RETURNING id INTO new_id;
    RETURN new_id;
END
$$;
