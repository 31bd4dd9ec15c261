//! What `serve` asks of a bucket's catalog beyond [`Catalog`]: the paged and indexed reads the
//! bucket API answers from. One interface over the SQLite catalog (one file per bucket) and
//! the PostgreSQL one (`pg::PgCatalog`, shared tables), so the routes do not care which.

use async_trait::async_trait;

use crate::remote::local::SqliteCatalog;
use crate::remote::{Catalog, Changes, Entry, RemoteResult};
use crate::server::pg::PgCatalog;

#[async_trait]
pub trait ServedCatalog: Catalog {
    /// Every file at `path` or below it (`""`: the whole tree), in path order.
    async fn files_under(&self, path: &str) -> RemoteResult<Vec<Entry>>;
    /// At most `limit` files at or below `path` after `after`, in path order (the cursor is a
    /// path, so every file that exists throughout a listing is seen exactly once).
    async fn files_page(&self, path: &str, after: &str, limit: usize) -> RemoteResult<Vec<Entry>>;
    /// At most `limit` entries of directory `dir` after `after`, in path order.
    async fn children_page(&self, dir: &str, after: &str, limit: usize)
        -> RemoteResult<Vec<Entry>>;
    /// At most `limit` entries strictly below `dir`, of every kind, after `after`.
    async fn tree_page(&self, dir: &str, after: &str, limit: usize) -> RemoteResult<Vec<Entry>>;
    /// Whether some entry's body is `hash`.
    async fn references(&self, hash: &str) -> RemoteResult<bool>;
    /// Whether some file is empty.
    async fn has_empty_file(&self) -> RemoteResult<bool>;
    /// The directories whose listings changed after revision `since`.
    async fn changes_since(&self, since: u64) -> RemoteResult<Changes>;
    /// Number of files and their total size (running totals, not a count).
    async fn totals(&self) -> RemoteResult<(u64, u64)>;
    /// Whether any file lies below directory `dir`.
    async fn has_file_under(&self, dir: &str) -> RemoteResult<bool>;
}

/// Both catalogs have these as inherent methods of the same names.
macro_rules! served_catalog {
    ($t:ty) => {
        #[async_trait]
        impl ServedCatalog for $t {
            async fn files_under(&self, path: &str) -> RemoteResult<Vec<Entry>> {
                <$t>::files_under(self, path).await
            }
            async fn files_page(
                &self,
                path: &str,
                after: &str,
                limit: usize,
            ) -> RemoteResult<Vec<Entry>> {
                <$t>::files_page(self, path, after, limit).await
            }
            async fn children_page(
                &self,
                dir: &str,
                after: &str,
                limit: usize,
            ) -> RemoteResult<Vec<Entry>> {
                <$t>::children_page(self, dir, after, limit).await
            }
            async fn tree_page(
                &self,
                dir: &str,
                after: &str,
                limit: usize,
            ) -> RemoteResult<Vec<Entry>> {
                <$t>::tree_page(self, dir, after, limit).await
            }
            async fn references(&self, hash: &str) -> RemoteResult<bool> {
                <$t>::references(self, hash).await
            }
            async fn has_empty_file(&self) -> RemoteResult<bool> {
                <$t>::has_empty_file(self).await
            }
            async fn changes_since(&self, since: u64) -> RemoteResult<Changes> {
                <$t>::changes_since(self, since).await
            }
            async fn totals(&self) -> RemoteResult<(u64, u64)> {
                <$t>::totals(self).await
            }
            async fn has_file_under(&self, dir: &str) -> RemoteResult<bool> {
                <$t>::has_file_under(self, dir).await
            }
        }
    };
}

served_catalog!(SqliteCatalog);
served_catalog!(PgCatalog);
