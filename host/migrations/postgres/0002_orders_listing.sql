-- `paynotify orders list` / `GET /api/orders` page newest first by (created_at, out_trade_no)
-- with a cursor: this index makes each page a short range scan, however many orders exist.
CREATE INDEX orders_created ON orders (created_at, out_trade_no);
