-- Faults (issue 29 §3, §4).

-- `/readyz` proves the database commits by rewriting this one row (see store/ready.rs):
-- a read would succeed on a full disk or a read-only file.
CREATE TABLE health (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    checked_at INTEGER NOT NULL
);

-- Lease of the job that processes again notifications left `received` (see stuck.rs):
-- no re-drive of the notification before this time (unix ms); NULL = never claimed.
ALTER TABLE notifications ADD COLUMN redrive_after INTEGER;
