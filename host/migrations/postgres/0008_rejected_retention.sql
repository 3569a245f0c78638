-- `[retention]` (issue 21): notifications rejected without ever verifying (verdict
-- 'rejected' and no order number; see store/retention.rs) are deleted `rejected_days`
-- after they arrived, oldest first, a bounded batch per statement. This index holds
-- those rows only, by arrival, so each batch is a short range scan, however many
-- notifications (or recent rejections) the table holds. A notification that verifies
-- never matches it, so a payment writes no entry here.
CREATE INDEX notifications_rejected_unverified ON notifications (received_at)
    WHERE verdict = 'rejected' AND out_trade_no IS NULL;
