//! Push sinks: each configured receiver gets every event, in seq order, from its own durable
//! cursor, in batches, retried with backoff until it takes them. A sink runs in its own task
//! and reads the ledger like any follower, so a receiver that is down never slows a request or
//! loses an event: it catches up when it is back. Delivery is at least once (a batch whose
//! acknowledgement was lost is sent again); each event carries its `id` to dedupe on.

use crate::app::App;
use crate::config::SinkSection;
use anyhow::{Context, Result, anyhow, bail};
use futures::FutureExt;
use grantline_audit::formats::{ExportItem, Exporter, Format};
use grantline_audit::sinks::{SinkCursor, SinkStatus, hec, syslog, webhook};
use grantline_ledger::{Kind, Timestamp};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The directory of the sinks' cursor files.
pub fn cursor_dir(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("sinks")
}

/// How long one delivery may take before it counts as failed.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest wait between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A sink's state as the server sees it (for status and metrics).
#[derive(Debug, Clone, Default)]
pub struct Live {
    pub name: String,
    pub kind: String,
    pub status: SinkStatus,
}

/// Every running sink's state, shared with whoever reports on them.
pub type Board = Arc<Mutex<Vec<Live>>>;

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Whether the receiver has closed (or reset) the connection since the last batch: a syslog
/// receiver never writes, so a read that completes at once is the end of the connection.
/// Writing into such a connection succeeds into the kernel's buffer and is then lost, so a
/// connection a receiver or a load balancer closed while idle is opened again first.
fn closed_by_peer(c: &mut dyn Stream) -> bool {
    let mut buf = [0u8; 256];
    match c.read(&mut buf).now_or_never() {
        None => false,
        Some(Ok(0)) | Some(Err(_)) => true,
        // The receiver said something (none of the receivers we know does): not an end.
        Some(Ok(_)) => false,
    }
}

enum Transport {
    Syslog {
        header: syslog::Header,
        address: String,
        tls: Option<(
            tokio_rustls::TlsConnector,
            rustls::pki_types::ServerName<'static>,
        )>,
        conn: Option<Box<dyn Stream>>,
    },
    Hec {
        url: String,
        token: String,
        target: hec::Target,
    },
    Webhook {
        url: String,
        secret: Vec<u8>,
    },
}

/// The HTTP client of a HEC or webhook sink: no redirects followed; with `ca_file`, only the
/// CA certificates in it are trusted (a Splunk HEC with a private or self-signed certificate),
/// as for syslog over TLS; else the public roots.
fn http_client(s: &SinkSection, timeout: Duration) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .timeout(timeout);
    if let Some(f) = &s.ca_file {
        let pem = std::fs::read(f)
            .with_context(|| format!("sink {}: reading {}", s.name, f.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("sink {}: {}", s.name, f.display()))?;
        if certs.is_empty() {
            bail!("sink {}: {} holds no certificate", s.name, f.display());
        }
        b = b.tls_built_in_root_certs(false);
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    Ok(b.build()?)
}

/// One configured sink, ready to run.
pub struct Sink {
    pub name: String,
    pub kind: String,
    format: Format,
    kinds: Option<Vec<Kind>>,
    redact: bool,
    batch: u32,
    /// How long one delivery may take.
    timeout: Duration,
    transport: Transport,
    http: reqwest::Client,
}

fn tls_connector(
    s: &SinkSection,
    host: &str,
) -> Result<(
    tokio_rustls::TlsConnector,
    rustls::pki_types::ServerName<'static>,
)> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match &s.ca_file {
        Some(f) => {
            for cert in rustls::pki_types::CertificateDer::pem_file_iter(f)
                .with_context(|| format!("sink {}: reading {}", s.name, f.display()))?
            {
                roots
                    .add(cert.with_context(|| format!("sink {}: {}", s.name, f.display()))?)
                    .with_context(|| {
                        format!("sink {}: a certificate in {}", s.name, f.display())
                    })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("sink {}: TLS: {e}", s.name))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = s.server_name.clone().unwrap_or_else(|| host.to_string());
    let server_name = rustls::pki_types::ServerName::try_from(name.clone())
        .map_err(|_| anyhow!("sink {}: {name:?} is not a server name", s.name))?;
    Ok((
        tokio_rustls::TlsConnector::from(Arc::new(config)),
        server_name,
    ))
}

impl Sink {
    /// Builds a sink from its configuration (secrets read now).
    pub fn from_config(s: &SinkSection) -> Result<Sink> {
        s.check()?;
        let default_format = if s.kind == "syslog" { "cef" } else { "ocsf" };
        let format = Format::parse(s.format.as_deref().unwrap_or(default_format))
            .ok_or_else(|| anyhow!("sink {}: unknown format", s.name))?;
        let timeout = s.timeout_secs.map_or(DELIVERY_TIMEOUT, Duration::from_secs);
        let kinds =
            (!s.kinds.is_empty()).then(|| s.kinds.iter().filter_map(|k| Kind::parse(k)).collect());
        let hostname = s.hostname.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_string())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "grantline".into())
        });
        let transport = match s.kind.as_str() {
            "syslog" => {
                let address = s.address.clone().unwrap_or_default();
                let host = address
                    .rsplit_once(':')
                    .map(|(h, _)| h.trim_matches(['[', ']']))
                    .unwrap_or("");
                Transport::Syslog {
                    header: syslog::Header {
                        facility: s.facility.unwrap_or(13),
                        hostname,
                        app_name: s.app_name.clone().unwrap_or_else(|| "grantline".into()),
                        sd_id: syslog::DEFAULT_SD_ID.into(),
                    },
                    tls: if s.tls {
                        Some(tls_connector(s, host)?)
                    } else {
                        None
                    },
                    address,
                    conn: None,
                }
            }
            "splunk_hec" => Transport::Hec {
                url: format!(
                    "{}/services/collector/event",
                    s.url.clone().unwrap_or_default().trim_end_matches('/')
                ),
                token: s.http_secret()?.unwrap_or_default(),
                target: hec::Target {
                    host: hostname,
                    source: "grantline".into(),
                    sourcetype: s
                        .sourcetype
                        .clone()
                        .unwrap_or_else(|| format!("grantline:{}", format.as_str())),
                    index: s.index.clone(),
                },
            },
            "webhook" => Transport::Webhook {
                url: s.url.clone().unwrap_or_default(),
                secret: s.http_secret()?.unwrap_or_default().into_bytes(),
            },
            other => bail!("sink {}: unknown kind {other}", s.name),
        };
        Ok(Sink {
            name: s.name.clone(),
            kind: s.kind.clone(),
            format,
            kinds,
            redact: s.redact,
            batch: s.batch.unwrap_or(500).clamp(1, 10_000),
            timeout,
            transport,
            http: http_client(s, timeout)?,
        })
    }

    /// Drops a syslog sink's connection: the next batch opens another.
    fn disconnect(&mut self) {
        if let Transport::Syslog { conn, .. } = &mut self.transport {
            *conn = None;
        }
    }

    /// Sends one batch; `Ok` once the receiver has taken it.
    async fn deliver(&mut self, items: &[ExportItem]) -> Result<()> {
        let format = self.format;
        let http = &self.http;
        match &mut self.transport {
            Transport::Syslog {
                header,
                address,
                tls,
                conn,
            } => {
                let mut bytes = Vec::new();
                for item in items {
                    let msg = format.line(item);
                    bytes.extend(syslog::frame(&syslog::message(header, item, &msg)));
                }
                if conn.as_mut().is_some_and(|c| closed_by_peer(c.as_mut())) {
                    tracing::debug!(%address, "the syslog receiver closed the connection; opening another");
                    *conn = None;
                }
                if conn.is_none() {
                    let tcp = tokio::net::TcpStream::connect(address.as_str())
                        .await
                        .with_context(|| format!("connecting to {address}"))?;
                    tcp.set_nodelay(true)?;
                    *conn = Some(match tls {
                        Some((connector, name)) => Box::new(
                            connector
                                .connect(name.clone(), tcp)
                                .await
                                .with_context(|| format!("TLS with {address}"))?,
                        ),
                        None => Box::new(tcp),
                    });
                }
                let Some(c) = conn.as_mut() else {
                    bail!("no connection");
                };
                let sent = async {
                    c.write_all(&bytes).await?;
                    c.flush().await
                }
                .await;
                if let Err(e) = sent {
                    *conn = None;
                    return Err(anyhow!("writing to {address}: {e}"));
                }
                Ok(())
            }
            Transport::Hec { url, token, target } => {
                let events: Vec<serde_json::Value> = items
                    .iter()
                    .map(|i| hec::event(target, i.record.time, json(format, i)))
                    .collect();
                let r = http
                    .post(url.as_str())
                    .header("authorization", hec::authorization(token))
                    .header("content-type", "application/json")
                    .body(hec::body(&events))
                    .send()
                    .await
                    .map_err(|e| anyhow!("{}", e.without_url()))?;
                if r.status() == reqwest::StatusCode::PAYLOAD_TOO_LARGE {
                    return Err(TooLarge("HEC").into());
                }
                if !r.status().is_success() {
                    bail!("HEC answered {}", r.status());
                }
                Ok(())
            }
            Transport::Webhook { url, secret } => {
                let events: Vec<serde_json::Value> =
                    items.iter().map(|i| json(format, i)).collect();
                let body = webhook::body(&events);
                let now = Timestamp::now().0 / 1_000_000;
                let r = http
                    .post(url.as_str())
                    .header("content-type", "application/json")
                    .header(
                        webhook::SIGNATURE_HEADER,
                        webhook::signature(secret, now, body.as_bytes()),
                    )
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| anyhow!("{}", e.without_url()))?;
                if r.status() == reqwest::StatusCode::PAYLOAD_TOO_LARGE {
                    return Err(TooLarge("the webhook").into());
                }
                if !r.status().is_success() {
                    bail!("the webhook answered {}", r.status());
                }
                Ok(())
            }
        }
    }
}

/// A receiver refused a batch as too large (HTTP 413): smaller batches may pass.
#[derive(Debug, thiserror::Error)]
#[error("{0} answered 413 Payload Too Large")]
struct TooLarge(&'static str);

/// An item as the JSON a HEC or webhook receiver gets in `format`.
fn json(format: Format, item: &ExportItem) -> serde_json::Value {
    match format {
        Format::Jsonl => item.event(),
        Format::Ocsf => grantline_audit::formats::ocsf::record(item),
        Format::Ecs => grantline_audit::formats::ecs::record(item),
        // CEF is a line of text: as a JSON string.
        Format::Cef | Format::Csv => serde_json::Value::String(format.line(item)),
    }
}

/// Counts a failure of a sink — a delivery, or a read of the ledger it cannot get past (a
/// tampered row stops it there) — where `sinks status` and the metrics show it, and logs the
/// first and then each power of two.
fn failed(
    sink: &str,
    what: &str,
    e: &anyhow::Error,
    status: &mut SinkStatus,
    cursor: &SinkCursor,
    board: &Board,
) {
    status.failures += 1;
    status.last_error = Some(format!("{what}: {e:#}"));
    status.last_error_at = Some(Timestamp::now().to_string());
    if status.failures == 1 || status.failures.is_power_of_two() {
        tracing::warn!(sink = %sink, failures = status.failures, error = %format!("{e:#}"), "{what}; retrying");
    }
    let _ = cursor.save(status);
    update(board, sink, status);
}

fn update(board: &Board, name: &str, status: &SinkStatus) {
    if let Ok(mut b) = board.lock()
        && let Some(l) = b.iter_mut().find(|l| l.name == name)
    {
        l.status = status.clone();
    }
}

/// Where a sink starts: its cursor checked against the ledger as it is now, and the names of
/// users and clients as of the cursor (read from the ledger, whatever the audit index holds).
///
/// A ledger restored to an earlier point (`pg_restore`, point-in-time recovery) may end before
/// the cursor, or hold other events at its seq once new ones are appended: the sink would wait
/// for seqs it never sends, or skip the new events at seqs it had sent before. A cursor past
/// the head is brought back to it; one whose event is not the one delivered starts again from
/// the beginning (receivers tell events apart by id). Either is logged.
async fn resume(
    app: &App,
    name: &str,
    redact: bool,
    cursor: &SinkCursor,
    status: &mut SinkStatus,
) -> Result<Exporter> {
    let store = app.store();
    let head = store.head().await?;
    let head_seq = head.as_ref().map_or(0, |h| h.0);
    let moved = if status.seq > head_seq {
        tracing::warn!(sink = %name, cursor = status.seq, head = head_seq, "the sink's cursor is past the ledger's head (was the database restored?): it sends what is appended from the head on");
        status.seq = head_seq;
        status.hash = head.map(|h| h.1.to_hex());
        true
    } else if let Some(delivered) = status.hash.as_deref()
        && status.seq > 0
        && store
            .hash_at(status.seq)
            .await?
            .map(|h| h.to_hex())
            .as_deref()
            != Some(delivered)
    {
        tracing::error!(sink = %name, cursor = status.seq, "the ledger holds another event at the sink's cursor (was the database restored to another history?): every event is sent again from the first");
        status.seq = 0;
        status.hash = None;
        true
    } else {
        false
    };
    if moved {
        cursor.save(status)?;
    }
    let mut exporter = Exporter::new(app.keyring.clone(), Default::default(), redact);
    if status.seq > 0 {
        for r in store
            .read_kinds(&grantline_audit::mapping::NAME_KINDS, 0, status.seq)
            .await?
        {
            exporter.learn(&r).await?;
        }
    }
    Ok(exporter)
}

/// Runs one sink until `stop` is set.
async fn run(app: App, mut sink: Sink, stop: Arc<AtomicBool>, board: Board) {
    let cursor = SinkCursor::new(&cursor_dir(&app.data_dir), &sink.name);
    let mut status = match cursor.load() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(sink = %sink.name, error = %e, "sink cursor unreadable; the sink does not run");
            return;
        }
    };
    let mut exporter = loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match resume(&app, &sink.name, sink.redact, &cursor, &mut status).await {
            Ok(e) => break e,
            Err(e) => {
                failed(
                    &sink.name,
                    "sink cannot start reading the ledger",
                    &e,
                    &mut status,
                    &cursor,
                    &board,
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    update(&board, &sink.name, &status);
    let mut head = app.ledger.subscribe();
    let mut pending: Option<(Vec<ExportItem>, u64, String)> = None;
    // Whether the exporter learned names from events past the cursor that were not sent:
    // they must not name the events sent next.
    let mut ahead = false;
    while !stop.load(Ordering::SeqCst) {
        if ahead {
            match resume(&app, &sink.name, sink.redact, &cursor, &mut status).await {
                Ok(e) => {
                    exporter = e;
                    ahead = false;
                }
                Err(e) => {
                    failed(
                        &sink.name,
                        "sink cannot read the names again",
                        &e,
                        &mut status,
                        &cursor,
                        &board,
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        let (items, last, last_hash) = match pending.take() {
            Some(p) => p,
            None => {
                // Linked to the last event delivered: a ledger rewritten or gone back under
                // the sink is its failure, not events of another history sent on.
                let delivered = status
                    .hash
                    .as_deref()
                    .and_then(grantline_ledger::Hash::from_hex)
                    .filter(|_| status.seq > 0);
                let read = match delivered {
                    Some(h) => app.store().read_linked(status.seq, h, sink.batch).await,
                    None => app.store().read(status.seq, sink.batch).await,
                };
                let events = match read {
                    Ok(events) => events,
                    Err(e) => {
                        // The ledger no longer holds the event last delivered (restored or
                        // rewritten under the running sink): resumed as at a start, which
                        // brings the cursor back to the head or sends everything again. (A
                        // damaged row after it is the sink's failure until it is repaired.)
                        if matches!(e, grantline_store::StoreError::Corrupt { .. })
                            && let Some(h) = delivered
                            && matches!(app.store().hash_at(status.seq).await, Ok(at) if at != Some(h))
                        {
                            ahead = true;
                        }
                        failed(
                            &sink.name,
                            "sink cannot read the ledger",
                            &e.into(),
                            &mut status,
                            &cursor,
                            &board,
                        );
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                let Some((last, last_hash)) = events.last().map(|r| (r.seq(), r.hash.to_hex()))
                else {
                    // Caught up: a read that failed before (no batch waits to be delivered
                    // again, or this read would not have been made) is over, and the sink
                    // says so without waiting for the next event.
                    if status.failures > 0 {
                        tracing::info!(sink = %sink.name, after_failures = status.failures, "sink reading again");
                        status.failures = 0;
                        status.last_error = None;
                        let _ = cursor.save(&status);
                        update(&board, &sink.name, &status);
                    }
                    let _ = tokio::time::timeout(Duration::from_secs(1), head.changed()).await;
                    continue;
                };
                let mut items = Vec::with_capacity(events.len());
                let mut unopened = None;
                for r in &events {
                    let wanted = sink
                        .kinds
                        .as_ref()
                        .is_none_or(|k| k.contains(&r.envelope.kind()));
                    let res = if wanted {
                        exporter.item(r).await.map(|i| items.push(i))
                    } else {
                        exporter.learn(r).await
                    };
                    if let Err(e) = res {
                        unopened = Some(anyhow::Error::from(e).context(format!("seq {}", r.seq())));
                        break;
                    }
                }
                if let Some(e) = unopened {
                    failed(
                        &sink.name,
                        "sink cannot open an event",
                        &e,
                        &mut status,
                        &cursor,
                        &board,
                    );
                    ahead = true;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                (items, last, last_hash)
            }
        };
        let outcome = if items.is_empty() {
            Ok(())
        } else {
            match tokio::time::timeout(sink.timeout, sink.deliver(&items)).await {
                Ok(r) => r,
                Err(_) => {
                    // A syslog batch cut off mid-write leaves part of a frame on the
                    // connection: sending again on it would shift every frame after it.
                    sink.disconnect();
                    Err(anyhow!("not delivered in {} s", sink.timeout.as_secs()))
                }
            }
        };
        match outcome {
            Ok(()) => {
                status.seq = last;
                status.hash = Some(last_hash);
                status.delivered += items.len() as u64;
                if !items.is_empty() {
                    status.delivered_at = Some(Timestamp::now().to_string());
                }
                if status.failures > 0 {
                    tracing::info!(sink = %sink.name, after_failures = status.failures, "sink delivering again");
                }
                status.failures = 0;
                status.last_error = None;
                if let Err(e) = cursor.save(&status) {
                    tracing::error!(sink = %sink.name, error = %e, "sink cursor not saved; events after it will be sent again");
                }
                update(&board, &sink.name, &status);
            }
            Err(e) => {
                failed(
                    &sink.name,
                    "sink delivery failed",
                    &e,
                    &mut status,
                    &cursor,
                    &board,
                );
                // A receiver that refuses the batch as too large would refuse it for ever:
                // read again in batches half the size (down to one event, which is then
                // retried like any failure, its error saying so).
                if e.downcast_ref::<TooLarge>().is_some() && sink.batch > 1 {
                    sink.batch = (sink.batch / 2).max(1);
                    tracing::warn!(sink = %sink.name, batch = sink.batch, "the receiver refused a batch as too large; sending smaller ones");
                    // The names learned from the refused batch are of events after the ones
                    // sent next: start again from the names as of the cursor.
                    ahead = true;
                    continue;
                }
                pending = Some((items, last, last_hash));
                let backoff =
                    Duration::from_millis(250u64.saturating_mul(1 << status.failures.min(8)))
                        .min(MAX_BACKOFF);
                let until = tokio::time::Instant::now() + backoff;
                while tokio::time::Instant::now() < until && !stop.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// The running sinks: their tasks and the flag that stops them.
#[derive(Default)]
pub struct Sinks {
    pub board: Board,
    stop: Arc<AtomicBool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Sinks {
    /// Stops every sink (a delivery in flight finishes or times out first).
    pub async fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let tasks: Vec<_> = self
            .tasks
            .lock()
            .map(|mut t| t.drain(..).collect())
            .unwrap_or_default();
        for t in tasks {
            if tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .is_err()
            {
                tracing::warn!("a sink did not stop in time");
            }
        }
    }
}

impl App {
    /// Starts every configured sink.
    pub fn start_sinks(&self) -> Result<()> {
        for section in &self.config.audit.sinks {
            let sink = Sink::from_config(section)?;
            if let Ok(mut b) = self.sinks.board.lock() {
                b.push(Live {
                    name: sink.name.clone(),
                    kind: sink.kind.clone(),
                    status: SinkStatus::default(),
                });
            }
            let task = tokio::spawn(run(
                self.clone(),
                sink,
                self.sinks.stop.clone(),
                self.sinks.board.clone(),
            ));
            if let Ok(mut t) = self.sinks.tasks.lock() {
                t.push(task);
            }
        }
        Ok(())
    }
}
