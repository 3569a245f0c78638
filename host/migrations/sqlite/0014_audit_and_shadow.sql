-- Handler write audit and shadow runs (issue 26).

-- Every document write a handler made and every task it enqueued, written in the same
-- transaction as the payment, refund or task run it belongs to (so only what committed
-- is here), with the build that made it. Pruned after `[audit] keep_days`.
CREATE TABLE handler_writes (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    -- the order the call was about (NULL for a task run without one)
    out_trade_no    TEXT,
    -- the call: paid, refunded or task
    call_kind       TEXT    NOT NULL,
    notification_id INTEGER,
    out_refund_no   TEXT,
    task_id         INTEGER,
    -- type@version sha256:... [signed ...]
    build           TEXT    NOT NULL,
    -- the write's place among its call's writes, from 0
    seq             INTEGER NOT NULL,
    -- insert, set, merge, inc, delete, or task (an enqueued task)
    op              TEXT    NOT NULL,
    -- the document's collection (a task: its name)
    collection      TEXT    NOT NULL,
    -- the document's id (a task: its id)
    doc_id          TEXT    NOT NULL,
    -- the document before and after the write, JSON; NULL when absent
    before          TEXT,
    after           TEXT,
    created_at      INTEGER NOT NULL
);
CREATE INDEX handler_writes_order ON handler_writes (out_trade_no, id);
CREATE INDEX handler_writes_created ON handler_writes (created_at);

-- Shadow runs of a candidate build (`{type}.next.wasm`), counted per type and build
-- by every host that runs them.
CREATE TABLE shadow_summaries (
    plugin_type      TEXT    NOT NULL,
    candidate_sha256 TEXT    NOT NULL,
    candidate_build  TEXT    NOT NULL,
    serving_build    TEXT    NOT NULL,
    runs             INTEGER NOT NULL,
    same             INTEGER NOT NULL,
    different        INTEGER NOT NULL,
    failed           INTEGER NOT NULL,
    first_at         INTEGER NOT NULL,
    last_at          INTEGER NOT NULL,
    PRIMARY KEY (plugin_type, candidate_sha256)
);

-- The first differences and failures of each candidate build, readable: the call, and
-- the diff (outcomes and each differing write, both versions) as JSON.
CREATE TABLE shadow_differences (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    plugin_type      TEXT    NOT NULL,
    candidate_sha256 TEXT    NOT NULL,
    candidate_build  TEXT    NOT NULL,
    serving_build    TEXT    NOT NULL,
    out_trade_no     TEXT    NOT NULL,
    call_kind        TEXT    NOT NULL,
    notification_id  INTEGER,
    out_refund_no    TEXT,
    -- different or failed
    result           TEXT    NOT NULL,
    diff             TEXT    NOT NULL,
    created_at       INTEGER NOT NULL
);
CREATE INDEX shadow_differences_build ON shadow_differences (plugin_type, candidate_sha256, id);
