-- Cluster mode: each region's fencing epoch (the revision of its owner's lease). Every group
-- commit that touches a region advances it in the same transaction, and refuses to when a newer
-- owner has already moved it past the committer's lease.
CREATE TABLE region_epochs (
    region TEXT PRIMARY KEY,
    epoch BIGINT NOT NULL
);
