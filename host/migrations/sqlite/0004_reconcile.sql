-- Leases of the jobs that call providers about unpaid orders (see store/claims.rs):
-- reconcile_after: no query of the order before this time (unix ms); NULL = never asked.
-- close_after: no close of the expired order at the provider before this time.
ALTER TABLE orders ADD COLUMN reconcile_after BIGINT;
ALTER TABLE orders ADD COLUMN close_after BIGINT;
