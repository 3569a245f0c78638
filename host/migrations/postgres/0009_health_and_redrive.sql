-- Faults (issue 29 §3, §4).

-- `/readyz` proves the database commits by rewriting this one row (see store/ready.rs):
-- a read would succeed on a read-only server or one in recovery.
CREATE TABLE health (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    checked_at BIGINT  NOT NULL
);

-- Lease of the job that processes again notifications left `received` (see stuck.rs):
-- no re-drive of the notification before this time (unix ms); NULL = never claimed.
-- Not indexed: the job finds its rows through `notifications_verdict` (verdict, id), and
-- an unindexed column keeps the lease's updates HOT.
ALTER TABLE notifications ADD COLUMN redrive_after BIGINT;
