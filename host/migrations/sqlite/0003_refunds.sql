-- Refunds: the fen refunded so far on each order, and one row per applied refund.

ALTER TABLE orders ADD COLUMN refund_fee INTEGER NOT NULL DEFAULT 0;

-- A refund is applied to its order once: (out_trade_no, out_refund_no) is unique, so a
-- duplicate refund notification finds its row and changes nothing. Verified refunds that
-- cannot be applied (unknown or unpaid order, more than remains...) have no row here:
-- their notification is stored with verdict `refund_unapplied` and listed for ops.
CREATE TABLE refunds (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    out_trade_no    TEXT    NOT NULL,
    -- the merchant's refund number: out_refund_no (WeChat Pay), out_biz_no (Alipay)
    out_refund_no   TEXT    NOT NULL,
    -- the provider's refund id ('' when it gives none)
    refund_id       TEXT    NOT NULL,
    provider        TEXT    NOT NULL,
    account         TEXT    NOT NULL,
    -- fen refunded by this refund, and on the order after it
    amount          INTEGER NOT NULL CHECK (amount > 0),
    refunded_total  INTEGER NOT NULL,
    refunded_at     INTEGER,
    notification_id INTEGER NOT NULL,
    -- succeeded, or `no refund handler` when the type's plugin does not export refunds
    handler_status  TEXT    NOT NULL,
    handler_result  TEXT,
    handler_version TEXT,
    original_data   TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    UNIQUE (out_trade_no, out_refund_no)
);
