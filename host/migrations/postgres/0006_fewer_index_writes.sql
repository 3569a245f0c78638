-- Fewer index writes per notification (issue 12).
--
-- Every payment updates its order row and every notification its own row after storing
-- it. On PostgreSQL those updates change an indexed column (status, verdict), so they
-- are not HOT: each one writes a new entry into every index of the table. On SQLite
-- each index holding a changed column is written.

-- Prefixes of the console's paging indexes (0005), which serve the same lookups.
DROP INDEX orders_status_created;
DROP INDEX orders_user;

-- A notification is stored before its order number is known: the NULLs need no entry
-- (every lookup by order number names one).
DROP INDEX notifications_order;
CREATE INDEX notifications_order ON notifications (out_trade_no) WHERE out_trade_no IS NOT NULL;
