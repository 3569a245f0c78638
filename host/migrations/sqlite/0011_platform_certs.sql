-- WeChat Pay v3 platform certificates (issue 25 §3): the ones downloaded from
-- /v3/certificates, kept here so every host shares them and a restart needs no network.
-- One row per merchant and certificate serial; a new download of the same certificate
-- only moves `fetched_at`.
CREATE TABLE platform_certs (
    mch_id       TEXT    NOT NULL,
    -- upper-case hex without leading zeros, as `Wechatpay-Serial` names it
    serial       TEXT    NOT NULL,
    pem          TEXT    NOT NULL,
    -- unix ms: WeChat's effective_time / expire_time, narrowed to the certificate's own
    effective_at INTEGER NOT NULL,
    expire_at    INTEGER NOT NULL,
    -- unix ms of the last download that contained it
    fetched_at   INTEGER NOT NULL,
    -- `downloaded`, and who downloaded it (`{hostname}:{pid}`)
    source       TEXT    NOT NULL,
    PRIMARY KEY (mch_id, serial)
);
