//! WeChat Pay v3 platform certificates in the database: the `platform_certs` table
//! (migration 0011), one row per merchant and serial, written by whichever host
//! downloaded them and read by every host, so a restart or another host needs no network.
//!
//! The statements are the same on both backends. On SQLite the upsert is one autocommit
//! statement taken under the writer's lock, like the other writes outside a payment.

use async_trait::async_trait;

use super::statement::{required, storable, Columns, On, Sql, Statement};
use super::StoreError;

/// One stored platform certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PlatformCertRecord {
    /// The merchant it was downloaded for.
    pub mch_id: String,
    /// Its serial, upper-case hex without leading zeros.
    pub serial: String,
    /// The certificate, PEM.
    pub pem: String,
    /// From when WeChat Pay may sign with it (unix ms).
    pub effective_at: i64,
    /// When it expires (unix ms); never used after.
    pub expire_at: i64,
    /// The last download that contained it (unix ms).
    pub fetched_at: i64,
    /// Where it came from: `downloaded by {host}`.
    pub source: String,
}

/// Every column [`cert_row`] reads.
const COLUMNS: &str = "mch_id, serial, pem, effective_at, expire_at, fetched_at, source";

/// Inserts a certificate, or moves `fetched_at` (and `source`) of one already stored: the
/// certificate itself never changes under its serial.
fn upsert(c: &PlatformCertRecord) -> Statement<'_> {
    Statement::new(
        "INSERT INTO platform_certs (mch_id, serial, pem, effective_at, expire_at, fetched_at, source) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (mch_id, serial) DO UPDATE SET fetched_at = excluded.fetched_at, source = excluded.source",
    )
    .bind(storable(&c.mch_id))
    .bind(storable(&c.serial))
    .bind(storable(&c.pem))
    .bind(c.effective_at)
    .bind(c.expire_at)
    .bind(c.fetched_at)
    .bind(storable(&c.source))
}

/// The certificates of one merchant, or of all, by merchant and serial.
fn list(mch_id: Option<&str>) -> Statement<'_> {
    let mut st = Statement::build();
    st.push(&format!("SELECT {COLUMNS} FROM platform_certs"));
    if let Some(m) = mch_id {
        st.push(" WHERE mch_id = ").push_param(storable(m));
    }
    st.push(" ORDER BY mch_id, expire_at, serial");
    st
}

/// A row of [`COLUMNS`].
fn cert_row(r: &dyn Columns) -> Result<PlatformCertRecord, StoreError> {
    Ok(PlatformCertRecord {
        mch_id: required(r.text("mch_id")?, "mch_id")?,
        serial: required(r.text("serial")?, "serial")?,
        pem: required(r.text("pem")?, "pem")?,
        effective_at: required(r.int8("effective_at")?, "effective_at")?,
        expire_at: required(r.int8("expire_at")?, "expire_at")?,
        fetched_at: required(r.int8("fetched_at")?, "fetched_at")?,
        source: required(r.text("source")?, "source")?,
    })
}

/// The WeChat Pay v3 platform certificates downloaded from `/v3/certificates`, shared by
/// every host (every backend's, reached through [`Store::platform_certs`]).
#[async_trait]
pub trait PlatformCertStore: Send + Sync {
    /// Stores each certificate, or moves the `fetched_at` of one already stored.
    async fn store_platform_certs(&self, certs: &[PlatformCertRecord]) -> Result<(), StoreError>;
    /// The stored certificates of `mch_id` (of every merchant if `None`).
    async fn platform_certs(
        &self,
        mch_id: Option<&str>,
    ) -> Result<Vec<PlatformCertRecord>, StoreError>;
}

#[async_trait]
impl<S: Sql> PlatformCertStore for S {
    async fn store_platform_certs(&self, certs: &[PlatformCertRecord]) -> Result<(), StoreError> {
        for c in certs {
            self.execute(On::Write, &upsert(c)).await?;
        }
        Ok(())
    }

    async fn platform_certs(
        &self,
        mch_id: Option<&str>,
    ) -> Result<Vec<PlatformCertRecord>, StoreError> {
        self.fetch(On::Read, &list(mch_id), cert_row).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_merchants_certificates_are_one_key_range() {
        assert_eq!(
            list(Some("1900")).text,
            format!(
                "SELECT {COLUMNS} FROM platform_certs WHERE mch_id = $1 ORDER BY mch_id, expire_at, serial"
            )
        );
    }
}
