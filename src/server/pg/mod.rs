//! `xetmount serve`'s metadata in PostgreSQL (`--catalog postgres://...`), for several
//! stateless replicas over one database. Every bucket's catalog lives in shared tables keyed
//! by bucket ([`catalog`]); a batch is one transaction that holds the bucket's head row
//! locked (`SELECT ... FOR UPDATE`), so two replicas never interleave batches of one bucket
//! and compare-and-swap expectations are checked against what the batch will replace.

pub mod cas_index;
pub mod catalog;
pub mod feed;
pub mod registry;
pub mod repos;

pub use cas_index::CasIndex;
pub use catalog::PgCatalog;
pub use registry::PgBuckets;
pub use repos::PgRepos;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};

use tokio_postgres::Row;

use crate::remote::{RemoteError, RemoteResult};

/// Connections each replica keeps open (PostgreSQL allows 100 by default).
pub const POOL_SIZE: usize = 8;

/// A pool of connections to the database at `url` (`postgres://user@host/db`, or
/// `host=/run/postgresql dbname=xet user=xetmount`); the error is one sentence.
pub async fn connect(url: &str) -> Result<Pool, String> {
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| format!("{url:?} is not a PostgreSQL connection string: {e}"))?;
    let manager = Manager::from_config(
        config,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(POOL_SIZE)
        .build()
        .map_err(|e| format!("cannot set up a PostgreSQL pool: {e}"))?;
    // Connect once now, so a wrong address or password is reported at start.
    drop(
        pool.get()
            .await
            .map_err(|e| format!("cannot connect to PostgreSQL at {url}: {e}"))?,
    );
    Ok(pool)
}

/// Serialises schema creation between replicas starting at once (`CREATE ... IF NOT EXISTS`
/// races otherwise).
pub(crate) const SCHEMA_LOCK: i64 = 0x7865_746d_6f75_6e74; // "xetmount"

/// Run `schema` (idempotent DDL) with the schema lock held.
pub(crate) async fn create_schema(pool: &Pool, schema: &str) -> Result<(), RemoteError> {
    let mut c = pool.get().await.map_err(db_err)?;
    let tx = c.transaction().await.map_err(db_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .await
        .map_err(db_err)?;
    tx.batch_execute(schema).await.map_err(db_err)?;
    tx.commit().await.map_err(db_err)
}

/// Parameters of a statement.
pub(crate) type Params<'a> = &'a [&'a (dyn tokio_postgres::types::ToSql + Sync)];

/// Run query `sql` on a pooled connection (its statement prepared once per connection).
pub(crate) async fn query(pool: &Pool, sql: &str, params: Params<'_>) -> RemoteResult<Vec<Row>> {
    let c = pool.get().await.map_err(db_err)?;
    let st = c.prepare_cached(sql).await.map_err(db_err)?;
    c.query(&st, params).await.map_err(db_err)
}

/// Run statement `sql` on a pooled connection; the rows it changed.
pub(crate) async fn execute(pool: &Pool, sql: &str, params: Params<'_>) -> RemoteResult<u64> {
    let c = pool.get().await.map_err(db_err)?;
    let st = c.prepare_cached(sql).await.map_err(db_err)?;
    c.execute(&st, params).await.map_err(db_err)
}

pub(crate) fn db_err(e: impl std::error::Error) -> RemoteError {
    // tokio-postgres says only "db error"; the server's message is the source.
    let mut text = e.to_string();
    if let Some(source) = e.source() {
        text = format!("{text}: {source}");
    }
    RemoteError::Other(format!("catalog database: {text}"))
}
