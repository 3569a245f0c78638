-- The web console (`/console`): sign-in sessions, and indexes for its keyset-paged lists.

-- One row per signed-in browser. The cookie holds a random session id; only its SHA-256
-- is stored, so a copy of the database does not sign anyone in. Every host process
-- sharing the database sees the same sessions, and signing out deletes the row.
CREATE TABLE console_sessions (
    id_hash    TEXT    PRIMARY KEY,
    -- the per-session token every console form posts back (anti cross-site request)
    csrf_token TEXT    NOT NULL,
    created_at BIGINT  NOT NULL,
    expires_at BIGINT  NOT NULL
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);

-- Filtered order pages, newest first by (created_at, out_trade_no): each filter's index
-- ends with the paging key, so a page is a short range scan whatever the table's size.
CREATE INDEX orders_status_page ON orders (status, created_at, out_trade_no);
CREATE INDEX orders_type_page ON orders (type, created_at, out_trade_no);
CREATE INDEX orders_user_page ON orders (user_id, created_at, out_trade_no);
-- Notification pages by provider, task pages by status and the tasks of one order.
CREATE INDEX notifications_provider ON notifications (provider, id);
CREATE INDEX tasks_status_id ON tasks (status, id);
CREATE INDEX tasks_order ON tasks (out_trade_no);
