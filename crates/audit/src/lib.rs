//! Audit search and SIEM export over the ledger: the reviewer's record of each event
//! ([`record`], [`mapping`]), the query language ([`query`]) and its evaluation ([`scan`]), the
//! tantivy index and the indexer that follows the ledger ([`index`], [`indexer`]), and the export
//! formats ([`formats`]). Knows nothing of HTTP.

pub mod access;
pub mod formats;
pub mod index;
pub mod indexer;
pub mod keys;
pub mod mapping;
pub mod proof;
pub mod query;
pub mod record;
pub mod scan;
pub mod sinks;

pub use index::{AuditIndex, IndexError, MAX_PAGE, Page, SortOrder};
pub use indexer::{
    Indexer, IndexerError, IndexerOptions, MAX_RENAMED, Progress, clients_as_of, directory_of,
};
pub use query::{Expr, QueryError, parse};
pub use record::{AuditRecord, Category, ERASED, Outcome, REDACTED, Severity};
