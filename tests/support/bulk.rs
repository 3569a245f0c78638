//! Bulk test data written straight into a test server's database: one
//! `INSERT … SELECT` generating the rows in the database itself (`generate_series` on
//! PostgreSQL, a recursive CTE on SQLite), so 100,000 orders take a second, not 100,000
//! API calls.

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};

/// A connection to a test database named by its paynotify URL (`sqlite://…`, or
/// `postgres://…?schema=NAME` with paynotify's own `schema` parameter).
pub enum Db {
    /// SQLite.
    Sqlite(sqlx::SqliteConnection),
    /// PostgreSQL, with `search_path` set to the test schema.
    Postgres(sqlx::PgConnection),
}

impl Db {
    /// Connects to the database of `url`.
    pub async fn connect(url: &str) -> Db {
        if url.starts_with("sqlite:") {
            let c = SqliteConnectOptions::from_str(url)
                .expect("sqlite url")
                .busy_timeout(std::time::Duration::from_secs(30))
                .connect()
                .await
                .expect("connect to the test SQLite database");
            return Db::Sqlite(c);
        }
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut schema = None;
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.strip_prefix("schema=") {
                Some(s) => schema = Some(s.to_owned()),
                None => kept.push(pair),
            }
        }
        let plain = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let mut options = PgConnectOptions::from_str(&plain).expect("postgres url");
        if let Some(s) = &schema {
            options = options.options([("search_path", s.as_str())]);
        }
        Db::Postgres(
            sqlx::PgConnection::connect_with(&options)
                .await
                .expect("connect to the test PostgreSQL database"),
        )
    }

    /// Runs a statement with no parameters.
    pub async fn execute(&mut self, sql: &str) -> u64 {
        match self {
            Db::Sqlite(c) => sqlx::query(sql).execute(c).await.map(|r| r.rows_affected()),
            Db::Postgres(c) => sqlx::query(sql).execute(c).await.map(|r| r.rows_affected()),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The query plan of `sql` (no parameters), one line per step: `EXPLAIN QUERY PLAN`
    /// on SQLite, `EXPLAIN` on PostgreSQL.
    pub async fn explain(&mut self, sql: &str) -> String {
        use sqlx::Row;
        match self {
            Db::Sqlite(c) => {
                let rows = sqlx::query(&format!("EXPLAIN QUERY PLAN {sql}"))
                    .fetch_all(c)
                    .await
                    .unwrap_or_else(|e| panic!("explain {sql}: {e}"));
                rows.iter()
                    .map(|r| r.get::<String, _>("detail"))
                    .collect::<Vec<_>>()
                    .join("\n")
            }
            Db::Postgres(c) => {
                let rows = sqlx::query(&format!("EXPLAIN {sql}"))
                    .fetch_all(c)
                    .await
                    .unwrap_or_else(|e| panic!("explain {sql}: {e}"));
                rows.iter()
                    .map(|r| r.get::<String, _>(0))
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        }
    }

    /// Refreshes the planner's statistics, as PostgreSQL's autovacuum would after a
    /// bulk load (SQLite keeps none unless asked, and is left as a fresh one is).
    pub async fn analyze(&mut self) {
        if let Db::Postgres(_) = self {
            self.execute("ANALYZE orders").await;
        }
    }

    /// True on PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        matches!(self, Db::Postgres(_))
    }

    /// The one number `sql` (no parameters) selects, e.g. a `COUNT(*)`.
    pub async fn number(&mut self, sql: &str) -> i64 {
        match self {
            Db::Sqlite(c) => sqlx::query_scalar::<_, i64>(sql).fetch_one(c).await,
            Db::Postgres(c) => sqlx::query_scalar::<_, i64>(sql).fetch_one(c).await,
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

/// The number of the `i`-th order [`seed_orders`] makes: `{prefix}{i:07}`.
pub fn seeded_order_no(prefix: &str, i: u64) -> String {
    format!("{prefix}{i:07}")
}

/// The `created_at` of the `i`-th seeded order: two orders per millisecond (so pages
/// cut through ties and the `out_trade_no` tie-break is exercised), all before `base`.
pub fn seeded_created_at(base: i64, i: u64) -> i64 {
    base + (i / 2) as i64
}

/// Inserts orders 1..=`n` numbered [`seeded_order_no`], created at
/// [`seeded_created_at`] from `base`: type `recharge` / `goods` / `vip` by `i % 3`,
/// user `bulk{i % 1000}`, amount `100 + i % 10000` fen, every fourth one paid.
pub async fn seed_orders(db: &mut Db, prefix: &str, n: u64, base: i64) -> u64 {
    assert!(
        prefix.chars().all(|c| c.is_ascii_alphanumeric()),
        "plain prefix"
    );
    let columns = "out_trade_no, type, provider, account, total_fee, user_id, custom, status, \
                   handler_status, created_at, updated_at";
    let sql = if db.is_postgres() {
        format!(
            "INSERT INTO orders ({columns}) \
             SELECT '{prefix}' || lpad(i::text, 7, '0'), \
                    CASE i % 3 WHEN 0 THEN 'recharge' WHEN 1 THEN 'goods' ELSE 'vip' END, \
                    'wechat-v2', 'default', \
                    100 + i % 10000, 'bulk' || (i % 1000), '{{}}', \
                    CASE WHEN i % 4 = 0 THEN 1 ELSE 0 END, \
                    CASE WHEN i % 4 = 0 THEN 'succeeded' ELSE 'pending' END, \
                    {base} + i / 2, {base} + i / 2 \
             FROM generate_series(1::bigint, {n}::bigint) AS i"
        )
    } else {
        format!(
            "WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < {n}) \
             INSERT INTO orders ({columns}) \
             SELECT '{prefix}' || printf('%07d', i), \
                    CASE i % 3 WHEN 0 THEN 'recharge' WHEN 1 THEN 'goods' ELSE 'vip' END, \
                    'wechat-v2', 'default', 100 + i % 10000, 'bulk' || (i % 1000), '{{}}', \
                    CASE WHEN i % 4 = 0 THEN 1 ELSE 0 END, \
                    CASE WHEN i % 4 = 0 THEN 'succeeded' ELSE 'pending' END, \
                    {base} + i / 2, {base} + i / 2 \
             FROM seq"
        )
    };
    db.execute(&sql).await
}

/// Closes the connection.
pub async fn close(db: Db) {
    let _ = match db {
        Db::Sqlite(c) => c.close().await,
        Db::Postgres(c) => c.close().await,
    };
}
