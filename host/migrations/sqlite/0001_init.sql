-- paynotify schema (SQLite). Times are unix milliseconds; JSON is stored as text.

CREATE TABLE orders (
    out_trade_no         TEXT    PRIMARY KEY NOT NULL,
    type                 TEXT    NOT NULL,
    provider             TEXT    NOT NULL,
    account              TEXT    NOT NULL,
    total_fee            INTEGER NOT NULL CHECK (total_fee > 0),
    user_id              TEXT    NOT NULL,
    custom               TEXT    NOT NULL DEFAULT '{}',
    -- -1 closed, 0 unpaid, 1 paid, 2 partially refunded, 3 refunded
    status               INTEGER NOT NULL DEFAULT 0,
    transaction_id       TEXT,
    pay_date             INTEGER,
    notify_date          INTEGER,
    handler_status       TEXT    NOT NULL DEFAULT 'pending',
    handler_result       TEXT,
    -- which build ran: "{type}@{version} sha256:{first 12 hex}"
    handler_version      TEXT,
    original_data        TEXT,
    paid_notification_id INTEGER,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL
);
CREATE INDEX orders_status_created ON orders (status, created_at);
CREATE INDEX orders_user ON orders (user_id);

-- Every notification received, stored before it is looked at.
CREATE TABLE notifications (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    provider     TEXT    NOT NULL,
    account      TEXT,
    received_at  INTEGER NOT NULL,
    remote_addr  TEXT,
    headers      TEXT    NOT NULL,
    body         BLOB    NOT NULL,
    truncated    INTEGER NOT NULL DEFAULT 0,
    verdict      TEXT    NOT NULL DEFAULT 'received',
    reason       TEXT,
    out_trade_no TEXT,
    processed_at INTEGER
);
CREATE INDEX notifications_order ON notifications (out_trade_no);
CREATE INDEX notifications_verdict ON notifications (verdict, id);

-- Handler documents: the `db` capability's collections.
CREATE TABLE documents (
    collection TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    data       TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (collection, id)
) WITHOUT ROWID;

-- The outbox: tasks enqueued by handlers, run after commit by the task worker.
CREATE TABLE tasks (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    plugin       TEXT    NOT NULL,
    name         TEXT    NOT NULL,
    payload      TEXT    NOT NULL,
    out_trade_no TEXT,
    provider     TEXT,
    account      TEXT,
    -- pending, running, done, dead
    status       TEXT    NOT NULL DEFAULT 'pending',
    attempts     INTEGER NOT NULL DEFAULT 0,
    run_at       INTEGER NOT NULL,
    -- a running task belongs to the worker holding this token until locked_until
    claim_token  TEXT,
    locked_until INTEGER,
    last_error   TEXT,
    errors       TEXT    NOT NULL DEFAULT '[]',
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);
CREATE INDEX tasks_due ON tasks (status, run_at);
