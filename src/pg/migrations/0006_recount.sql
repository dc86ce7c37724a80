-- A recount of a shared home (`ferry user recount`). A home's count is made once and then
-- kept by every change made through ferry; files put into the store by other means, or a
-- counter that erred (toward too much, see SECURITY.md), are seen only by a new walk. A walk
-- must not run while any node may change the home, so:
--
-- Each node says which homes it has sessions of, as a lease it renews while it does.
CREATE TABLE ferry_live_homes (
    home    text COLLATE "C" NOT NULL,
    node    text COLLATE "C" NOT NULL,
    expires timestamptz NOT NULL,
    PRIMARY KEY (home, node)
);
CREATE INDEX ferry_live_homes_expires ON ferry_live_homes (expires);

-- Recounts asked for, by user: the admin knows the user, the node that logs the user in
-- knows the home. That node drops the count (so it walks the home before the session goes
-- on) only when no other node holds the home live and no reservation of it is in flight.
CREATE TABLE ferry_recount_requests (
    user_name    text COLLATE "C" PRIMARY KEY,
    requested_at timestamptz NOT NULL DEFAULT now()
);
