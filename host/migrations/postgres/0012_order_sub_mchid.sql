-- WeChat Pay v3 partner mode (issue 25 §2): an order of a service provider's account
-- names the sub-merchant it is for; a notification pays it only when it names the same
-- one. NULL for every other order (direct merchants, other providers).
ALTER TABLE orders ADD COLUMN sub_mchid TEXT;
