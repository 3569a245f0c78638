-- The payment loop (issue 24): payments placed at the provider and refunds started there.

-- One row per order placed with `pay`: how the buyer pays (the request, kept so the
-- order can be placed again), and how the last attempt ended. An order without a row
-- was never placed by this host.
CREATE TABLE order_placements (
    out_trade_no TEXT    NOT NULL PRIMARY KEY,
    -- the `pay` object (method, openid, client_ip, ...), JSON
    pay          TEXT    NOT NULL,
    -- unix ms of the last placement the provider accepted; NULL if none was
    placed_at    INTEGER,
    -- why the last attempt failed (the provider's code and message); NULL after a success
    error        TEXT,
    attempts     INTEGER    NOT NULL,
    updated_at   INTEGER    NOT NULL
);

-- A refund started here, from the request until the provider settles it (then the
-- `refunds` row with the same numbers exists). `state`: requested (recorded, being
-- sent, or its outcome unknown), accepted (the provider took it and will notify),
-- failed (the provider refused it: nothing moved, its amount is free again).
CREATE TABLE refund_requests (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    out_trade_no  TEXT    NOT NULL,
    out_refund_no TEXT    NOT NULL,
    amount        INTEGER    NOT NULL CHECK (amount > 0),
    reason        TEXT,
    state         TEXT    NOT NULL,
    -- the provider's refund id, once it gave one
    refund_id     TEXT,
    error         TEXT,
    created_at    INTEGER    NOT NULL,
    updated_at    INTEGER    NOT NULL,
    UNIQUE (out_trade_no, out_refund_no)
);
