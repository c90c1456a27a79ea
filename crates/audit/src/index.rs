//! The tantivy index: its schema, documents built from [`AuditRecord`]s, queries compiled from
//! [`Expr`]s, and paged search in seq order.

use crate::query::{Expr, Field as Q, Value, to_v6};
use crate::record::AuditRecord;
use std::net::IpAddr;
use std::ops::Bound;
use std::path::Path;
use tantivy::collector::TopDocs;
use tantivy::query::{
    AllQuery, BooleanQuery, EmptyQuery, Occur, PhrasePrefixQuery, PhraseQuery, Query, RangeQuery,
    RegexQuery, TermQuery,
};
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STORED, Schema, TEXT, TextFieldIndexing, TextOptions,
    Value as _,
};
use tantivy::tokenizer::{LowerCaser, RawTokenizer, TextAnalyzer};
use tantivy::{Index, IndexReader, Order, ReloadPolicy, TantivyDocument, Term};

/// Bumped whenever the schema or the mapping changes: an index of another version is rebuilt.
pub const SCHEMA_VERSION: u32 = 4;

/// The most words the last word of a phrase ending in `*` may begin (see `compile`).
pub const MAX_PHRASE_EXPANSIONS: u32 = 1024;

/// What can go wrong with the index.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("audit index: {0}")]
    Tantivy(#[from] tantivy::TantivyError),
    #[error("audit index directory: {0}")]
    Directory(String),
    #[error("audit index holds a record that does not decode: {0}")]
    Record(String),
    #[error(
        "the audit index in {0} was built by another version of Grantline, and a running \
         process holds it: restart that server (it rebuilds the index on start), or stop it and \
         try again"
    )]
    HeldWithAnotherSchema(String),
    /// The index was moved aside by another process while this one opened it.
    #[error("the audit index in {0} was moved aside by another process while it was opened")]
    Moved(String),
    /// The query would cost more than a search may (what to narrow, for the reader).
    #[error("{0}")]
    TooBroad(String),
}

impl IndexError {
    /// Whether another writer (in this process or another) holds the index.
    pub fn is_lock_busy(&self) -> bool {
        matches!(
            self,
            IndexError::Tantivy(tantivy::TantivyError::LockFailure(..))
                | IndexError::HeldWithAnotherSchema(_)
                | IndexError::Moved(_)
        )
    }
}

/// An index no process writes, held by its writer's lock until dropped or removed.
pub struct Unused {
    dir: std::path::PathBuf,
    seq: u64,
    hash: Option<String>,
    current: bool,
    _writer: tantivy::IndexWriter<TantivyDocument>,
}

impl Unused {
    /// The last seq its commits hold.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The chain hash (hex) its cursor holds for [`Unused::seq`], if any.
    pub fn hash(&self) -> Option<&str> {
        self.hash.as_deref()
    }

    /// Whether it was written by this version of the index (another is rebuilt when opened).
    pub fn current(&self) -> bool {
        self.current
    }

    /// Removes the index. It is first renamed aside under its lock, so that a process opening
    /// the directory meanwhile finds either the whole index held or none (and builds its own),
    /// never one half deleted.
    pub fn remove(self) -> Result<(), IndexError> {
        // A name of its own (the process id alone repeats: 1 in every container).
        let mut name = self.dir.file_name().unwrap_or_default().to_os_string();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        name.push(format!(".removed-{}-{nanos}", std::process::id()));
        let aside = self.dir.with_file_name(name);
        std::fs::rename(&self.dir, &aside)
            .map_err(|e| IndexError::Directory(format!("{}: {e}", self.dir.display())))?;
        // Deleted under the lock: a process sweeping leftovers meanwhile finds it held.
        let removed = std::fs::remove_dir_all(&aside)
            .map_err(|e| IndexError::Directory(format!("{}: {e}", aside.display())));
        drop(self._writer);
        removed
    }
}

/// The index's fields.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fields {
    pub seq: Field,
    pub time: Field,
    pub kind: Field,
    pub category: Field,
    pub outcome: Field,
    pub severity: Field,
    pub actor: Field,
    pub user_id: Field,
    pub user_name: Field,
    pub user_email: Field,
    pub client_id: Field,
    pub client_name: Field,
    pub credential: Field,
    pub family: Field,
    pub grant: Field,
    pub resource: Field,
    pub tool: Field,
    pub scope: Field,
    pub error: Field,
    pub request: Field,
    pub trace: Field,
    pub user_agent: Field,
    pub id: Field,
    pub subject: Field,
    pub ip: Field,
    pub text: Field,
    pub record: Field,
    /// The names of the keyword fields a document has a value for (`tool:*`).
    pub present: Field,
}

const KEYWORD: &str = "keyword";

pub(crate) fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let kw = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(KEYWORD)
            .set_index_option(IndexRecordOption::Basic),
    );
    let k = |b: &mut tantivy::schema::SchemaBuilder, name: &str| b.add_text_field(name, kw.clone());
    let kind = k(&mut b, "kind");
    let category = k(&mut b, "category");
    let outcome = k(&mut b, "outcome");
    let severity = k(&mut b, "severity");
    let actor = k(&mut b, "actor");
    let user_id = k(&mut b, "user_id");
    let user_name = k(&mut b, "user_name");
    let user_email = k(&mut b, "user_email");
    let client_id = k(&mut b, "client_id");
    let client_name = k(&mut b, "client_name");
    let credential = k(&mut b, "credential_id");
    let family = k(&mut b, "family_id");
    let grant = k(&mut b, "grant_id");
    let resource = k(&mut b, "resource");
    let tool = k(&mut b, "tool");
    let scope = k(&mut b, "scope");
    let error = k(&mut b, "error_code");
    let request = k(&mut b, "request_id");
    let trace = k(&mut b, "trace_id");
    let user_agent = k(&mut b, "user_agent");
    let id = k(&mut b, "id");
    let subject = k(&mut b, "subject");
    let fields = Fields {
        seq: b.add_u64_field("seq", INDEXED | FAST | STORED),
        time: b.add_i64_field("time", INDEXED | FAST),
        kind,
        category,
        outcome,
        severity,
        actor,
        user_id,
        user_name,
        user_email,
        client_id,
        client_name,
        credential,
        family,
        grant,
        resource,
        tool,
        scope,
        error,
        request,
        trace,
        user_agent,
        id,
        subject,
        ip: b.add_ip_addr_field("ip", INDEXED | FAST),
        text: b.add_text_field("text", TEXT),
        record: b.add_text_field("record", STORED),
        present: b.add_text_field("present", kw),
    };
    (b.build(), fields)
}

fn register_tokenizers(index: &Index) {
    index.tokenizers().register(
        KEYWORD,
        TextAnalyzer::builder(RawTokenizer::default())
            .filter(LowerCaser)
            .build(),
    );
}

/// Search order: by seq (which is time order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortOrder {
    Asc,
    #[default]
    Desc,
}

/// One page of results and the cursor for the next (the last seq shown), if there may be more.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub records: Vec<AuditRecord>,
    pub next: Option<u64>,
}

/// The most results one page returns.
pub const MAX_PAGE: usize = 1000;

/// The seqs the first window of a search covers.
const FIRST_WINDOW: u64 = 1 << 16;

/// An open index: a reader for searches. The [`crate::Indexer`] holds its only writer.
#[derive(Clone)]
pub struct AuditIndex {
    pub(crate) index: Index,
    pub(crate) reader: IndexReader,
    pub(crate) fields: Fields,
    /// The last seq committed: searches walk back from it in windows.
    head: std::sync::Arc<std::sync::atomic::AtomicU64>,
    first_window: u64,
}

impl AuditIndex {
    /// An index in memory (tests, and `grantline audit search` against a ledger without one).
    pub fn in_memory() -> Result<AuditIndex, IndexError> {
        let (schema, fields) = schema();
        Self::wrap(Index::create_in_ram(schema), fields)
    }

    /// Opens the index in `dir`, creating it when absent. An index written with another
    /// schema is removed and created empty (it is rebuilt from the ledger) — unless another
    /// process (a server of the version before an upgrade) is writing it, which is
    /// [`IndexError::HeldWithAnotherSchema`] and leaves it alone.
    pub fn open(dir: &Path) -> Result<AuditIndex, IndexError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| IndexError::Directory(format!("{}: {e}", dir.display())))?;
        // Another process may move a stale index aside (see [`Unused::remove`]) while this one
        // looks at it: then the directory is gone, which is as good as held.
        Self::open_here(dir).map_err(|e| {
            if dir.exists() {
                e
            } else {
                IndexError::Moved(dir.display().to_string())
            }
        })
    }

    fn open_here(dir: &Path) -> Result<AuditIndex, IndexError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| IndexError::Directory(format!("{}: {e}", dir.display())))?;
        let (schema, fields) = schema();
        if dir.join("meta.json").exists() {
            match Index::open_in_dir(dir) {
                Ok(index) if index.schema() == schema => return Self::wrap(index, fields),
                Ok(index) => {
                    // Taking the writer's lock (and letting it go) tells whether anyone
                    // still writes this index; removing it under them would lose their work.
                    match index.writer_with_num_threads::<TantivyDocument>(1, 15 << 20) {
                        Ok(writer) => drop(writer),
                        Err(tantivy::TantivyError::LockFailure(..)) => {
                            return Err(IndexError::HeldWithAnotherSchema(
                                dir.display().to_string(),
                            ));
                        }
                        Err(e) => return Err(e.into()),
                    }
                    tracing::warn!(dir = %dir.display(), "audit index has another schema; rebuilding it")
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "audit index does not open; rebuilding it")
                }
            }
            Self::wipe(dir)?;
        }
        let index = Index::create_in_dir(dir, schema)?;
        Self::wrap(index, fields)
    }

    /// The index in `dir` with its writer's lock taken, when no process is writing it: a
    /// stale index another instance kept and left (see [`Unused`]). `None` when there is no
    /// index there or a process holds it.
    pub fn take_unused(dir: &Path) -> Result<Option<Unused>, IndexError> {
        if !dir.join("meta.json").exists() {
            return Ok(None);
        }
        let index = Index::open_in_dir(dir)?;
        let writer = match index.writer_with_num_threads::<TantivyDocument>(1, 15 << 20) {
            Ok(writer) => writer,
            Err(tantivy::TantivyError::LockFailure(..)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        // What the cursor does not name (none yet, another schema's) is at seq 0.
        let cursor = index
            .load_metas()?
            .payload
            .and_then(|p| serde_json::from_str::<serde_json::Value>(&p).ok());
        let seq = cursor.as_ref().and_then(|v| v["seq"].as_u64()).unwrap_or(0);
        let hash = cursor
            .as_ref()
            .and_then(|v| v["hash"].as_str().map(str::to_string));
        let current = index.schema() == schema().0
            && cursor
                .as_ref()
                .and_then(|v| v["schema"].as_u64())
                .is_none_or(|v| v == u64::from(SCHEMA_VERSION));
        Ok(Some(Unused {
            dir: dir.to_path_buf(),
            seq,
            hash,
            current,
            _writer: writer,
        }))
    }

    /// Removes the index files in `dir` (a rebuild starts from nothing).
    pub fn wipe(dir: &Path) -> Result<(), IndexError> {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| IndexError::Directory(format!("{}: {e}", dir.display())))?;
        for entry in entries.flatten() {
            let p = entry.path();
            let r = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            r.map_err(|e| IndexError::Directory(format!("{}: {e}", p.display())))?;
        }
        Ok(())
    }

    fn wrap(index: Index, fields: Fields) -> Result<AuditIndex, IndexError> {
        register_tokenizers(&index);
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let me = AuditIndex {
            index,
            reader,
            fields,
            head: Default::default(),
            first_window: FIRST_WINDOW,
        };
        // The cursor of the last commit names the newest seq held.
        let head = me
            .committed_payload()?
            .and_then(|p| serde_json::from_str::<serde_json::Value>(&p).ok())
            .and_then(|v| v["seq"].as_u64())
            .unwrap_or(0);
        me.set_head(head);
        Ok(me)
    }

    /// The payload of the last commit: the durable cursor.
    pub(crate) fn committed_payload(&self) -> Result<Option<String>, IndexError> {
        Ok(self.index.load_metas()?.payload)
    }

    /// Builds the document for a record.
    pub(crate) fn document(&self, r: &AuditRecord) -> TantivyDocument {
        let f = &self.fields;
        let mut d = TantivyDocument::default();
        d.add_u64(f.seq, r.seq);
        d.add_i64(f.time, r.time);
        d.add_text(f.kind, &r.kind);
        d.add_text(f.category, &r.category);
        d.add_text(f.outcome, &r.outcome);
        d.add_text(f.severity, &r.severity);
        d.add_text(f.actor, &r.actor);
        d.add_text(f.id, &r.id);
        let present = f.present;
        let opt = |d: &mut TantivyDocument, field: Field, v: &Option<String>| {
            if let Some(v) = v {
                d.add_text(field, v);
                d.add_text(present, field.field_id().to_string());
            }
        };
        opt(&mut d, f.user_id, &r.user_id);
        opt(&mut d, f.user_name, &r.user_name);
        opt(&mut d, f.user_email, &r.user_email);
        opt(&mut d, f.client_id, &r.client_id);
        opt(&mut d, f.client_name, &r.client_name);
        opt(&mut d, f.credential, &r.credential_id);
        for c in &r.other_credentials {
            d.add_text(f.credential, c);
        }
        if r.credential_id.is_none() && !r.other_credentials.is_empty() {
            d.add_text(present, f.credential.field_id().to_string());
        }
        opt(&mut d, f.family, &r.family_id);
        opt(&mut d, f.grant, &r.grant_id);
        opt(&mut d, f.resource, &r.resource);
        opt(&mut d, f.tool, &r.tool);
        opt(&mut d, f.error, &r.error_code);
        opt(&mut d, f.request, &r.request_id);
        opt(&mut d, f.trace, &r.trace_id);
        opt(&mut d, f.user_agent, &r.user_agent);
        for s in &r.scopes {
            d.add_text(f.scope, s);
        }
        if !r.scopes.is_empty() {
            d.add_text(present, f.scope.field_id().to_string());
        }
        for s in &r.subjects {
            d.add_text(f.subject, s);
        }
        if !r.subjects.is_empty() {
            d.add_text(present, f.subject.field_id().to_string());
        }
        if let Some(ip) = r
            .source_ip
            .as_deref()
            .and_then(|s| s.parse::<IpAddr>().ok())
        {
            d.add_ip_addr(f.ip, to_v6(ip));
        }
        d.add_text(f.text, r.text());
        d.add_text(
            f.record,
            serde_json::to_string(r).unwrap_or_else(|_| "{}".into()),
        );
        d
    }

    fn keyword_fields(&self, q: Q) -> Vec<Field> {
        let f = &self.fields;
        match q {
            Q::Kind => vec![f.kind],
            Q::Category => vec![f.category],
            Q::Outcome => vec![f.outcome],
            Q::Severity => vec![f.severity],
            Q::Actor => vec![f.actor],
            Q::User => vec![f.user_id, f.user_name, f.user_email],
            Q::Email => vec![f.user_email],
            Q::Client => vec![f.client_id, f.client_name],
            Q::Credential => vec![f.credential],
            Q::Family => vec![f.family],
            Q::Grant => vec![f.grant],
            Q::Resource => vec![f.resource],
            Q::Tool => vec![f.tool],
            Q::Scope => vec![f.scope],
            Q::Error => vec![f.error],
            Q::Request => vec![f.request],
            Q::Trace => vec![f.trace],
            Q::UserAgent => vec![f.user_agent],
            Q::Id => vec![f.id],
            Q::Subject => vec![f.subject],
            Q::Ip | Q::Time | Q::Seq => Vec::new(),
        }
    }

    /// Compiles a parsed query to a tantivy query.
    /// Refuses a prefix that begins more than `max` words of `field` in one segment.
    fn expansions_within(
        &self,
        field: tantivy::schema::Field,
        prefix: &str,
        max: u32,
    ) -> Result<(), IndexError> {
        let searcher = self.reader.searcher();
        for segment in searcher.segment_readers() {
            let inverted = segment.inverted_index(field)?;
            let mut words = inverted
                .terms()
                .range()
                .ge(prefix.as_bytes())
                .into_stream()
                .map_err(|e| IndexError::Directory(e.to_string()))?;
            let mut n = 0u32;
            while words.advance() && words.key().starts_with(prefix.as_bytes()) {
                n += 1;
                if n > max {
                    return Err(IndexError::TooBroad(format!(
                        "`{prefix}*` begins more than {max} words; give more of it, or search a \
                         field for it (tool:, credential:, …), which has no such bound"
                    )));
                }
            }
        }
        Ok(())
    }

    pub(crate) fn compile(&self, e: &Expr) -> Result<Box<dyn Query>, IndexError> {
        let f = &self.fields;
        Ok(match e {
            Expr::All => Box::new(AllQuery),
            Expr::And(v) => {
                let mut clauses = Vec::with_capacity(v.len() + 1);
                let mut positive = false;
                for e in v {
                    match e {
                        Expr::Not(inner) => clauses.push((Occur::MustNot, self.compile(inner)?)),
                        e => {
                            positive = true;
                            clauses.push((Occur::Must, self.compile(e)?));
                        }
                    }
                }
                if !positive {
                    clauses.push((Occur::Must, Box::new(AllQuery)));
                }
                Box::new(BooleanQuery::new(clauses))
            }
            Expr::Or(v) => {
                let mut clauses = Vec::with_capacity(v.len());
                for e in v {
                    clauses.push((Occur::Should, self.compile(e)?));
                }
                Box::new(BooleanQuery::new(clauses))
            }
            Expr::Not(inner) => Box::new(BooleanQuery::new(vec![
                (Occur::Must, Box::new(AllQuery) as Box<dyn Query>),
                (Occur::MustNot, self.compile(inner)?),
            ])),
            Expr::Text { tokens, prefix } => {
                let terms: Vec<Term> = tokens
                    .iter()
                    .map(|t| Term::from_field_text(f.text, t))
                    .collect();
                match (terms.len(), prefix) {
                    (0, _) => Box::new(EmptyQuery),
                    (1, false) => {
                        Box::new(TermQuery::new(terms[0].clone(), IndexRecordOption::Basic))
                    }
                    (1, true) => Box::new(RegexQuery::from_pattern(
                        &format!("(?s){}.*", regex_syntax::escape(&tokens[0])),
                        f.text,
                    )?),
                    (_, false) => Box::new(PhraseQuery::new(terms)),
                    (_, true) => {
                        // A phrase tries each word its last one begins, up to a number it is
                        // told: past it, matches would be left out without a word, so such a
                        // phrase is refused instead.
                        let last = tokens.last().map(String::as_str).unwrap_or_default();
                        self.expansions_within(f.text, last, MAX_PHRASE_EXPANSIONS)?;
                        let mut q = PhrasePrefixQuery::new(terms);
                        q.set_max_expansions(MAX_PHRASE_EXPANSIONS);
                        Box::new(q)
                    }
                }
            }
            Expr::Match(Q::Time, Value::Time(from, to)) => {
                let lo = from.map_or(Bound::Unbounded, |t| {
                    Bound::Included(Term::from_field_i64(f.time, t))
                });
                let hi = to.map_or(Bound::Unbounded, |t| {
                    Bound::Excluded(Term::from_field_i64(f.time, t))
                });
                if matches!((&lo, &hi), (Bound::Unbounded, Bound::Unbounded)) {
                    Box::new(AllQuery)
                } else {
                    Box::new(RangeQuery::new(lo, hi))
                }
            }
            Expr::Match(Q::Seq, Value::Seq(from, to)) => Box::new(RangeQuery::new(
                Bound::Included(Term::from_field_u64(f.seq, *from)),
                Bound::Included(Term::from_field_u64(f.seq, *to)),
            )),
            Expr::Match(Q::Ip, Value::Network(lo, hi)) => Box::new(RangeQuery::new(
                Bound::Included(Term::from_field_ip_addr(f.ip, *lo)),
                Bound::Included(Term::from_field_ip_addr(f.ip, *hi)),
            )),
            Expr::Match(q, Value::Term(t)) => {
                let clauses: Vec<(Occur, Box<dyn Query>)> = self
                    .keyword_fields(*q)
                    .into_iter()
                    .map(|field| {
                        (
                            Occur::Should,
                            Box::new(TermQuery::new(
                                Term::from_field_text(field, t),
                                IndexRecordOption::Basic,
                            )) as Box<dyn Query>,
                        )
                    })
                    .collect();
                one_of(clauses)
            }
            // Fields every record has: `field:*` is every record.
            Expr::Match(
                Q::Kind | Q::Category | Q::Outcome | Q::Severity | Q::Actor | Q::Id,
                Value::Prefix(p),
            ) if p.is_empty() => Box::new(AllQuery),
            Expr::Match(q, Value::Prefix(p)) => {
                let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
                for field in self.keyword_fields(*q) {
                    let query: Box<dyn Query> = if p.is_empty() {
                        Box::new(TermQuery::new(
                            Term::from_field_text(f.present, &field.field_id().to_string()),
                            IndexRecordOption::Basic,
                        ))
                    } else {
                        Box::new(RegexQuery::from_pattern(
                            &format!("(?s){}.*", regex_syntax::escape(p)),
                            field,
                        )?)
                    };
                    clauses.push((Occur::Should, query));
                }
                one_of(clauses)
            }
            Expr::Match(..) => Box::new(EmptyQuery),
        })
    }

    /// Searches: the records matching `e` in `order`, after `cursor` (the last seq of the
    /// previous page), at most `limit` (capped at [`MAX_PAGE`]).
    pub fn search(
        &self,
        e: &Expr,
        order: SortOrder,
        cursor: Option<u64>,
        limit: usize,
    ) -> Result<Page, IndexError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let f = self.fields;
        let query = self.compile(e)?;
        let searcher = self.reader.searcher();
        let ord = match order {
            SortOrder::Asc => Order::Asc,
            SortOrder::Desc => Order::Desc,
        };
        // The seqs still to search, inclusive, in the page's direction.
        let head = self.head();
        let (mut lo, mut hi) = match (order, cursor) {
            (SortOrder::Asc, Some(c)) => (c.saturating_add(1), u64::MAX),
            (SortOrder::Asc, None) => (0, u64::MAX),
            (SortOrder::Desc, Some(c)) => (0, c.saturating_sub(1)),
            (SortOrder::Desc, None) => (0, u64::MAX),
        };
        if cursor == Some(0) && order == SortOrder::Desc {
            return Ok(Page {
                records: Vec::new(),
                next: None,
            });
        }
        // Newest (or oldest) windows of seqs first, each twice the last: a broad query fills
        // its page from the first window without visiting its older matches; a narrow one
        // ends up searching everything, about once.
        let mut window = self.first_window;
        let mut hits = Vec::new();
        loop {
            let span = if head == 0 {
                (lo, hi)
            } else {
                match order {
                    SortOrder::Desc => {
                        let top = hi.min(head);
                        (top.saturating_sub(window - 1).max(lo), top)
                    }
                    SortOrder::Asc => (lo, lo.saturating_add(window - 1).min(hi)),
                }
            };
            let bounded = BooleanQuery::new(vec![
                (Occur::Must, query.box_clone()),
                (
                    Occur::Must,
                    Box::new(RangeQuery::new(
                        Bound::Included(Term::from_field_u64(f.seq, span.0)),
                        Bound::Included(Term::from_field_u64(f.seq, span.1)),
                    )),
                ),
            ]);
            let top =
                TopDocs::with_limit(limit + 1 - hits.len()).order_by_fast_field::<u64>("seq", ord);
            hits.extend(searcher.search(&bounded, &top)?);
            let done = head == 0
                || match order {
                    SortOrder::Desc => span.0 <= lo,
                    SortOrder::Asc => span.1 >= hi || span.1 >= head,
                };
            if hits.len() > limit || done {
                break;
            }
            match order {
                SortOrder::Desc => hi = span.0 - 1,
                SortOrder::Asc => lo = span.1 + 1,
            }
            window = window.saturating_mul(2);
        }
        let more = hits.len() > limit;
        let mut records = Vec::with_capacity(limit);
        for (_, addr) in hits.into_iter().take(limit) {
            let doc: TantivyDocument = searcher.doc(addr)?;
            records.push(self.stored(&doc)?);
        }
        let next = if more {
            records.last().map(|r| r.seq)
        } else {
            None
        };
        Ok(Page { records, next })
    }

    /// The same index searching windows of `n` seqs first (tests make it small, to walk many).
    pub fn with_first_window(mut self, n: u64) -> AuditIndex {
        self.first_window = n.max(1);
        self
    }

    /// The last seq the index holds (as committed), 0 when unknown.
    pub fn head(&self) -> u64 {
        self.head.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Records the last seq committed (the indexer, after each commit).
    pub(crate) fn set_head(&self, seq: u64) {
        self.head.store(seq, std::sync::atomic::Ordering::SeqCst);
    }

    pub(crate) fn stored(&self, doc: &TantivyDocument) -> Result<AuditRecord, IndexError> {
        let json = doc
            .get_first(self.fields.record)
            .and_then(|v| v.as_str())
            .ok_or_else(|| IndexError::Record("no stored record".into()))?;
        serde_json::from_str(json).map_err(|e| IndexError::Record(e.to_string()))
    }

    /// The record of one event, if indexed.
    pub fn get(&self, seq: u64) -> Result<Option<AuditRecord>, IndexError> {
        let page = self.search(
            &Expr::Match(Q::Seq, Value::Seq(seq, seq)),
            SortOrder::Asc,
            None,
            1,
        )?;
        Ok(page.records.into_iter().next())
    }

    /// Every record matching `e`, in seq order (erasure and directory restore).
    pub(crate) fn all(&self, e: &Expr) -> Result<Vec<AuditRecord>, IndexError> {
        let mut out = Vec::new();
        let mut cursor = None;
        loop {
            let page = self.search(e, SortOrder::Asc, cursor, MAX_PAGE)?;
            out.extend(page.records);
            match page.next {
                Some(n) => cursor = Some(n),
                None => return Ok(out),
            }
        }
    }

    /// How many documents the index holds (as of the last reload).
    pub fn len(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Whether the index holds no documents.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn one_of(mut clauses: Vec<(Occur, Box<dyn Query>)>) -> Box<dyn Query> {
    match clauses.len() {
        0 => Box::new(EmptyQuery),
        1 => clauses.remove(0).1,
        _ => Box::new(BooleanQuery::new(clauses)),
    }
}

impl AuditIndex {
    /// An index in memory holding exactly `records` (tests, and the benchmark's baseline).
    pub fn from_records(records: &[AuditRecord]) -> Result<AuditIndex, IndexError> {
        let index = Self::in_memory()?;
        let mut w: tantivy::IndexWriter<TantivyDocument> =
            index.index.writer_with_num_threads(1, 32 << 20)?;
        for r in records {
            w.add_document(index.document(r))?;
        }
        w.commit()?;
        index.reader.reload()?;
        index.set_head(records.iter().map(|r| r.seq).max().unwrap_or(0));
        Ok(index)
    }
}
