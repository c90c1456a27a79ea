//! Push sinks against real receivers: Debian's rsyslog (started here on a free port, writing
//! what it parsed to a file), a TLS syslog receiver, and local Splunk HEC and webhook
//! receivers that check the token and the signature (Splunk itself cannot run here). Each
//! receiver is down for a while first: the sink delivers every event once it is back, in
//! order, and resumes from its cursor after a restart.

mod common;

use common::*;
use grantline_audit::sinks::webhook;
use grantline_ledger::Append;
use grantline_server::Config;
use grantline_store::testing::{self, tool_call};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A port free now, for a receiver that starts later. Picked below Linux's ephemeral range
/// (32768–60999): a port the kernel hands out (`bind(0)`) may be given again as the source
/// port of any process's outgoing connection before the receiver binds it.
fn free_port() -> u16 {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id();
    (0..4000u32)
        .map(|i| 20_000 + (seed.wrapping_add(i.wrapping_mul(7919)) % 12_000) as u16)
        .find(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("a free port between 20000 and 32000")
}

fn with_sink(dir: &std::path::Path, sink: &str) -> Config {
    let mut c = config(dir, 0, 60);
    let extra: Config = toml::from_str(&format!("[audit]\n{sink}")).unwrap();
    c.audit.sinks = extra.audit.sinks;
    c
}

/// A webhook sink `hook` to a receiver on `port`, JSON lines, its secret in a file; `extra`
/// more of its settings (TOML lines).
fn webhook_sink(dir: &std::path::Path, port: u16, extra: &str) -> Config {
    let secret = dir.join("hook.secret");
    std::fs::write(&secret, "whsec-0123456789\n").unwrap();
    with_sink(
        dir,
        &format!(
            "[[audit.sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{port}/in\"\n\
             secret_file = \"{}\"\nformat = \"jsonl\"\n{extra}",
            secret.display()
        ),
    )
}

async fn wait_until(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "{what}: not within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn append(s: &Server, n: u64) {
    for i in 0..n {
        s.app
            .ledger
            .append(Append::new(vec![tool_call(i)]))
            .await
            .unwrap();
    }
}

async fn head(s: &Server) -> u64 {
    s.app.store().head().await.unwrap().map_or(0, |h| h.0)
}

fn board(s: &Server) -> grantline_audit::sinks::SinkStatus {
    s.app.sinks.board.lock().unwrap()[0].status.clone()
}

/// Debian's rsyslogd on `port`, writing each message it parsed as RFC 5424 to `out`.
fn rsyslog(dir: &std::path::Path, port: u16, out: &std::path::Path) -> Option<Child> {
    let bin = ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(bin) = bin else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true but rsyslogd is not installed (.ci/run installs Debian's rsyslog)");
        }
        eprintln!("skipping: rsyslogd is not installed (apt-get install rsyslog)");
        return None;
    };
    let conf = dir.join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            "global(workDirectory=\"{d}\")\nmodule(load=\"imtcp\")\n\
             input(type=\"imtcp\" port=\"{port}\" address=\"127.0.0.1\")\n\
             template(name=\"parsed\" type=\"string\" string=\"%protocol-version%|%msgid%|%structured-data%|%msg%\\n\")\n\
             *.* action(type=\"omfile\" file=\"{o}\" template=\"parsed\")\n",
            d = dir.display(),
            o = out.display()
        ),
    )
    .unwrap();
    Some(
        Command::new(bin)
            .args(["-n", "-f"])
            .arg(&conf)
            .arg("-i")
            .arg(dir.join("rsyslog.pid"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// The seqs in rsyslog's output, from each message's structured data.
fn syslog_seqs(out: &std::path::Path) -> Vec<u64> {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(4, '|');
            assert_eq!(parts.next(), Some("1"), "RFC 5424: {l}");
            let msgid = parts.next()?;
            let sd = parts.next()?;
            let msg = parts.next()?;
            assert!(
                msg.trim_start_matches('\u{feff}')
                    .starts_with("CEF:0|Grantline|"),
                "{l}"
            );
            assert!(
                msg.contains(&format!("|{msgid}|")),
                "MSGID is the kind: {l}"
            );
            let seq = sd.split("seq=\"").nth(1)?.split('"').next()?;
            seq.parse().ok()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_to_rsyslog_catches_up_in_order_and_resumes_from_its_cursor() {
    let db = testing::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let out = dir.path().join("received.log");
    let cfg = with_sink(
        dir.path(),
        &format!(
            "[[audit.sinks]]\nname = \"rsyslog\"\nkind = \"syslog\"\naddress = \"127.0.0.1:{port}\"\nbatch = 7\n"
        ),
    );
    let s = Server::start(&db, dir.path().to_path_buf(), cfg.clone()).await;
    append(&s, 40).await;
    // The receiver is down: the sink fails, says why, and keeps its place.
    wait_until("a failure recorded", 10, || board(&s).failures > 0).await;
    assert!(
        board(&s).last_error.unwrap().contains("connecting"),
        "{:?}",
        board(&s)
    );
    assert_eq!(board(&s).seq, 0);
    let Some(mut rs) = rsyslog(dir.path(), port, &out) else {
        return;
    };
    let want = head(&s).await;
    wait_until("every event at rsyslog", 30, || {
        syslog_seqs(&out).len() as u64 >= want
    })
    .await;
    assert_eq!(
        syslog_seqs(&out),
        (1..=want).collect::<Vec<_>>(),
        "each once, in order"
    );
    wait_until("the cursor at the head", 10, || board(&s).seq == want).await;
    assert!(board(&s).last_error.is_none());
    s.stop().await;

    // After a restart it resumes from the cursor: only what is new is sent.
    let cursor: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("sinks/rsyslog.json")).unwrap())
            .unwrap();
    assert_eq!(cursor["seq"], want);
    let s = Server::start(&db, dir.path().to_path_buf(), cfg).await;
    append(&s, 5).await;
    let want = head(&s).await;
    wait_until("the new events at rsyslog", 30, || {
        syslog_seqs(&out).len() as u64 >= want
    })
    .await;
    assert_eq!(syslog_seqs(&out), (1..=want).collect::<Vec<_>>());
    s.stop().await;
    let _ = rs.kill();
    let _ = rs.wait();
}

/// A syslog receiver over TLS with a certificate made here: reads octet-counted frames.
/// A TLS listener on a free port with a certificate for `localhost` from a CA of its own,
/// whose PEM is written in `dir`: `(listener, port, acceptor, CA file)`.
async fn tls_receiver(
    dir: &std::path::Path,
) -> (
    tokio::net::TcpListener,
    u16,
    tokio_rustls::TlsAcceptor,
    std::path::PathBuf,
) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server_config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    (listener, port, acceptor, ca)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_over_tls_with_a_private_ca() {
    let db = testing::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let (listener, port, acceptor, ca) = tls_receiver(dir.path()).await;
    let frames: Arc<Mutex<Vec<String>>> = Arc::default();
    let got = frames.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let got = got.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut tls = tls;
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let Ok(n) = tls.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    // Octet counting: "<len> <msg>"
                    while let Some(sp) = buf.iter().position(|b| *b == b' ') {
                        let len: usize = std::str::from_utf8(&buf[..sp]).unwrap().parse().unwrap();
                        if buf.len() < sp + 1 + len {
                            break;
                        }
                        let msg = String::from_utf8(buf[sp + 1..sp + 1 + len].to_vec()).unwrap();
                        got.lock().unwrap().push(msg);
                        buf.drain(..sp + 1 + len);
                    }
                }
            });
        }
    });
    let cfg = with_sink(
        dir.path(),
        &format!(
            "[[audit.sinks]]\nname = \"tls\"\nkind = \"syslog\"\naddress = \"127.0.0.1:{port}\"\ntls = true\n\
         ca_file = \"{}\"\nserver_name = \"localhost\"\nformat = \"jsonl\"\n",
            ca.display()
        ),
    );
    let s = Server::start(&db, dir.path().to_path_buf(), cfg).await;
    append(&s, 10).await;
    let want = head(&s).await;
    wait_until("every event over TLS", 20, || {
        frames.lock().unwrap().len() as u64 >= want
    })
    .await;
    let frames = frames.lock().unwrap().clone();
    for (i, f) in frames.iter().enumerate() {
        assert!(f.starts_with("<"), "{f}");
        assert!(f.contains(&format!("seq=\"{}\"", i + 1)), "{f}");
        let json = f.split('\u{feff}').nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["seq"], i as u64 + 1);
    }
    s.stop().await;
}

/// What a plain TCP syslog receiver saw: each complete octet-counted frame with the number
/// of the connection it came on, and any bytes that were not a frame.
#[derive(Default)]
struct Received {
    frames: Vec<(usize, String)>,
    malformed: Vec<String>,
    closed: Vec<usize>,
}

impl Received {
    fn seqs(&self) -> std::collections::BTreeSet<u64> {
        self.frames
            .iter()
            .filter_map(|(_, f)| {
                let v = f.split("seq=\"").nth(1)?.split('"').next()?;
                v.parse().ok()
            })
            .collect()
    }
}

/// A plain TCP syslog receiver (receive buffer kept small, so that a sender can be made to
/// wait). Connection `n` waits `wait(n)` before reading and, when `idle_close(n)`, closes
/// once nothing has arrived for half a second; a frame left incomplete at the end of a
/// connection is dropped, as a receiver does.
async fn tcp_syslog(
    wait: impl Fn(usize) -> Duration + Send + Sync + 'static,
    idle_close: impl Fn(usize) -> bool + Send + Sync + 'static,
) -> (u16, Arc<Mutex<Received>>) {
    use tokio::io::AsyncReadExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(16).unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Arc<Mutex<Received>> = Arc::default();
    let got = seen.clone();
    let (wait, idle_close) = (Arc::new(wait), Arc::new(idle_close));
    tokio::spawn(async move {
        for n in 0.. {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let (got, wait, idle_close) = (got.clone(), wait.clone(), idle_close.clone());
            tokio::spawn(async move {
                tokio::time::sleep(wait(n)).await;
                let mut buf = Vec::new();
                let mut chunk = [0u8; 65536];
                loop {
                    let read = if idle_close(n) {
                        match tokio::time::timeout(Duration::from_millis(500), tcp.read(&mut chunk))
                            .await
                        {
                            Ok(r) => r,
                            Err(_) => break,
                        }
                    } else {
                        tcp.read(&mut chunk).await
                    };
                    let k = match read {
                        Ok(0) | Err(_) => break,
                        Ok(k) => k,
                    };
                    buf.extend_from_slice(&chunk[..k]);
                    while let Some(sp) = buf.iter().position(|b| *b == b' ') {
                        let Some(len) = std::str::from_utf8(&buf[..sp])
                            .ok()
                            .and_then(|l| l.parse::<usize>().ok())
                        else {
                            let bad = String::from_utf8_lossy(&buf[..sp.min(80)]).into_owned();
                            got.lock().unwrap().malformed.push(bad);
                            buf.clear();
                            break;
                        };
                        if buf.len() < sp + 1 + len {
                            break;
                        }
                        let frame =
                            String::from_utf8_lossy(&buf[sp + 1..sp + 1 + len]).into_owned();
                        if !frame.starts_with('<') {
                            got.lock()
                                .unwrap()
                                .malformed
                                .push(frame.chars().take(80).collect());
                        } else {
                            got.lock().unwrap().frames.push((n, frame));
                        }
                        buf.drain(..sp + 1 + len);
                    }
                }
                got.lock().unwrap().closed.push(n);
            });
        }
    });
    (port, seen)
}

/// A receiver (or a load balancer in front of it) that closed an idle connection: writing the
/// next batch into it would succeed into the kernel's buffer and be lost, the cursor moving
/// past it. The sink sees the close and opens another connection first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_syslog_connection_closed_while_idle_is_opened_again_before_the_next_batch() {
    let db = testing::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let (port, seen) = tcp_syslog(|_| Duration::ZERO, |n| n == 0).await;
    let cfg = with_sink(
        dir.path(),
        &format!(
            "[[audit.sinks]]\nname = \"plain\"\nkind = \"syslog\"\naddress = \"127.0.0.1:{port}\"\nformat = \"jsonl\"\n"
        ),
    );
    let s = Server::start(&db, dir.path().to_path_buf(), cfg).await;
    append(&s, 5).await;
    let first = head(&s).await;
    wait_until("the first events, then the idle close", 20, || {
        let r = seen.lock().unwrap();
        r.seqs().len() as u64 >= first && r.closed.contains(&0)
    })
    .await;
    wait_until("the sink's cursor at the head", 10, || {
        board(&s).seq == first
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    append(&s, 5).await;
    let want = head(&s).await;
    wait_until("the new events on a new connection", 20, || {
        seen.lock().unwrap().seqs().len() as u64 >= want
    })
    .await;
    {
        let r = seen.lock().unwrap();
        assert_eq!(r.seqs(), (1..=want).collect(), "every event");
        assert!(
            r.frames
                .iter()
                .any(|(n, f)| *n == 1 && f.contains(&format!("seq=\"{want}\""))),
            "the new batch came on a second connection"
        );
        assert!(r.malformed.is_empty(), "{:?}", r.malformed);
    }
    s.stop().await;
}

/// A receiver that stopped reading: the delivery times out with part of a frame written. The
/// batch is sent again on a new connection, never after that part on the old one (which
/// would shift every frame after it out of its octet count).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_syslog_batch_that_times_out_mid_frame_is_sent_again_on_a_new_connection() {
    let db = testing::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    // The first connection reads nothing for 5 s; then everything until it is closed.
    let (port, seen) = tcp_syslog(
        |n| {
            if n == 0 {
                Duration::from_secs(5)
            } else {
                Duration::ZERO
            }
        },
        |_| false,
    )
    .await;
    let s = Server::start(
        &db,
        dir.path().to_path_buf(),
        with_sink(
            dir.path(),
            "[[audit.sinks]]\nname = \"x\"\nkind = \"syslog\"\naddress = \"127.0.0.1:1\"\n",
        ),
    )
    .await;
    // Enough events that one batch cannot fit in the sockets' buffers.
    append(&s, 6000).await;
    let want = head(&s).await;
    s.stop().await;
    let cfg = with_sink(
        dir.path(),
        &format!(
            "[[audit.sinks]]\nname = \"stall\"\nkind = \"syslog\"\naddress = \"127.0.0.1:{port}\"\nformat = \"jsonl\"\nbatch = 10000\ntimeout_secs = 2\n"
        ),
    );
    let s = Server::start(&db, dir.path().to_path_buf(), cfg).await;
    wait_until("every event, after the stall", 60, || {
        seen.lock().unwrap().seqs().len() as u64 >= want
    })
    .await;
    wait_until("the first connection's end", 20, || {
        seen.lock().unwrap().closed.contains(&0)
    })
    .await;
    {
        let r = seen.lock().unwrap();
        assert_eq!(r.seqs(), (1..=want).collect(), "every event");
        assert!(
            r.malformed.is_empty(),
            "frames out of step: {:?}",
            &r.malformed[..r.malformed.len().min(3)]
        );
        let on_first = r.frames.iter().filter(|(n, _)| *n == 0).count();
        assert!(
            on_first < want as usize,
            "the first connection was cut off mid-batch"
        );
        assert!(
            r.frames.iter().any(|(n, _)| *n > 0),
            "sent again on a new connection"
        );
    }
    assert!(board(&s).last_error.is_none() || board(&s).seq == want);
    s.stop().await;
}

/// A ledger restored to an earlier point: the sink's cursor may be past its head, or hold an
/// event the ledger no longer has at that seq. The sink notices at start, says so, and sends
/// what it must; it also names users as of its own place in the ledger, with the audit index
/// off (so no index can lend it the names).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_checks_its_cursor_against_a_restored_ledger_and_names_users_from_it() {
    let db = testing::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let (port, seen) = tcp_syslog(|_| Duration::ZERO, |_| false).await;
    let sink = |name: &str| {
        let mut c = with_sink(
            dir.path(),
            &format!(
                "[[audit.sinks]]\nname = \"{name}\"\nkind = \"syslog\"\naddress = \"127.0.0.1:{port}\"\nformat = \"ocsf\"\n"
            ),
        );
        c.audit.enabled = false;
        c
    };
    // The ledger as restored: some events, written before any sink ran.
    let s = Server::start(&db, dir.path().to_path_buf(), config(dir.path(), 0, 60)).await;
    append(&s, 3).await;
    let start = head(&s).await;
    s.stop().await;
    let cursors = dir.path().join("sinks");
    std::fs::create_dir_all(&cursors).unwrap();
    // "ahead": delivered up to seq 1,000 of a history the ledger no longer reaches.
    std::fs::write(cursors.join("ahead.json"), r#"{"seq": 1000, "hash": "ab"}"#).unwrap();
    let s = Server::start(&db, dir.path().to_path_buf(), sink("ahead")).await;
    // A tool call by the admin: exported with the admin's name, which only the ledger (the
    // bootstrap's user.created, before the cursor) can give the sink.
    let admin = s
        .app
        .credentials
        .by_username("admin")
        .await
        .unwrap()
        .unwrap()
        .user_id;
    let mut call = tool_call(7);
    if let grantline_ledger::Payload::ToolCalled(t) = &mut call.payload {
        t.user_id = Some(admin.clone());
    }
    call.actor = grantline_ledger::Actor::User { id: admin.clone() };
    s.app.ledger.append(Append::new(vec![call])).await.unwrap();
    let want = head(&s).await;
    wait_until("the new event, past the restored head", 20, || {
        seen.lock().unwrap().seqs().contains(&want)
    })
    .await;
    {
        let r = seen.lock().unwrap();
        // Only what is new: nothing of the restored history (the receiver had it), and
        // nothing skipped since the sink started (the server may append as it starts).
        let got = r.seqs();
        assert!(got.iter().all(|&q| q > start), "{got:?}");
        let first = *got.first().unwrap();
        assert_eq!(got, (first..=want).collect(), "{got:?}");
        let frame = &r.frames.last().unwrap().1;
        assert!(frame.contains(r#""name":"admin""#), "{frame}");
    }
    wait_until("the cursor at the head", 10, || board(&s).seq == want).await;
    s.stop().await;

    // "other": its cursor names an event that is not the one at that seq now.
    std::fs::write(
        cursors.join("other.json"),
        format!(r#"{{"seq": 3, "hash": "{}"}}"#, "00".repeat(32)),
    )
    .unwrap();
    seen.lock().unwrap().frames.clear();
    let s = Server::start(&db, dir.path().to_path_buf(), sink("other")).await;
    let want = head(&s).await;
    wait_until("every event again, from the first", 20, || {
        seen.lock().unwrap().seqs().len() as u64 >= want
    })
    .await;
    assert_eq!(seen.lock().unwrap().seqs(), (1..=want).collect());
    // Its own cursor now names the event it stands on: a restart sends nothing again.
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cursors.join("other.json")).unwrap()).unwrap();
    assert_eq!(saved["seq"], want);
    let at = s.app.store().hash_at(want).await.unwrap().unwrap();
    assert_eq!(saved["hash"], at.to_hex());
    s.stop().await;
    seen.lock().unwrap().frames.clear();
    let s = Server::start(&db, dir.path().to_path_buf(), sink("other")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(seen.lock().unwrap().frames.is_empty());
    s.stop().await;
}

/// A local HTTP receiver: answers `status()` to each request and keeps what `accept` says.
async fn receiver(
    port: u16,
    handle: impl Fn(&axum::http::HeaderMap, &[u8]) -> u16 + Send + Sync + 'static,
) {
    let handle = Arc::new(handle);
    let app = axum::Router::new().fallback(
        move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let handle = handle.clone();
            async move { axum::http::StatusCode::from_u16(handle(&headers, &body)).unwrap() }
        },
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splunk_hec_checks_the_token_and_gets_every_event_once_it_is_up() {
    let db = testing::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hec.token"), "hec-token-123\n").unwrap();
    let port = free_port();
    let cfg = with_sink(
        dir.path(),
        &format!(
            "[[audit.sinks]]\nname = \"splunk\"\nkind = \"splunk_hec\"\nurl = \"http://127.0.0.1:{port}\"\n\
         token_file = \"{}\"\nindex = \"security\"\nbatch = 9\n",
            dir.path().join("hec.token").display()
        ),
    );
    let s = Server::start(&db, dir.path().to_path_buf(), cfg).await;
    append(&s, 30).await;
    wait_until("a failure while HEC is down", 10, || board(&s).failures > 0).await;
    // What an operator's dashboard shows meanwhile: nothing delivered, the failures counted.
    let text = s.app.render_metrics(false).await.unwrap();
    let v = |name: &str| series(&text, name).unwrap_or_else(|| panic!("{name}:\n{text}"));
    assert_eq!(
        v(r#"grantline_sink_lag_events{sink="splunk"}"#),
        v("grantline_ledger_head_seq")
    );
    assert!(v(r#"grantline_sink_consecutive_failures{sink="splunk"}"#) >= 1.0);
    let seqs: Arc<Mutex<Vec<u64>>> = Arc::default();
    let got = seqs.clone();
    receiver(port, move |h, body| {
        if h.get("authorization").and_then(|v| v.to_str().ok()) != Some("Splunk hec-token-123") {
            return 401;
        }
        for line in std::str::from_utf8(body).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["index"], "security");
            assert_eq!(v["sourcetype"], "grantline:ocsf");
            assert!(v["time"].as_str().unwrap().contains('.'));
            got.lock()
                .unwrap()
                .push(v["event"]["unmapped"]["seq"].as_u64().unwrap());
        }
        200
    })
    .await;
    let want = head(&s).await;
    wait_until("every event at HEC", 30, || {
        seqs.lock().unwrap().len() as u64 >= want
    })
    .await;
    assert_eq!(*seqs.lock().unwrap(), (1..=want).collect::<Vec<_>>());
    wait_until("the sink's cursor at the head", 10, || {
        board(&s).seq >= want
    })
    .await;
    let text = s.app.render_metrics(false).await.unwrap();
    assert_eq!(
        series(&text, r#"grantline_sink_lag_events{sink="splunk"}"#),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        series(
            &text,
            r#"grantline_sink_consecutive_failures{sink="splunk"}"#
        ),
        Some(0.0)
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_batches_are_signed_and_retried_until_taken() {
    let db = testing::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // SAFETY of the test: the variable is read by this test's server only.
    unsafe { std::env::set_var("GL_TEST_WEBHOOK_SECRET", "whsec-0123456789") };
    let cfg = with_sink(
        dir.path(),
        &format!(
            "[[audit.sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{port}/in\"\n\
         secret_env = \"GL_TEST_WEBHOOK_SECRET\"\nformat = \"jsonl\"\nkinds = [\"tool.called\"]\nbatch = 4\n"
        ),
    );
    let s = Server::start(&db, dir.path().to_path_buf(), cfg).await;
    append(&s, 12).await;
    let seqs: Arc<Mutex<Vec<u64>>> = Arc::default();
    let refused = Arc::new(Mutex::new(0));
    let (got, n) = (seqs.clone(), refused.clone());
    receiver(port, move |h, body| {
        let sig = h
            .get(webhook::SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let now = grantline_ledger::Timestamp::now().0 / 1_000_000;
        if !webhook::verify(b"whsec-0123456789", sig, body, now, 300) {
            return 401;
        }
        // Down for its first three deliveries.
        let mut n = n.lock().unwrap();
        if *n < 3 {
            *n += 1;
            return 503;
        }
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        for e in v["events"].as_array().unwrap() {
            assert_eq!(e["kind"], "tool.called");
            got.lock().unwrap().push(e["seq"].as_u64().unwrap());
        }
        200
    })
    .await;
    wait_until("every tool call at the webhook", 30, || {
        seqs.lock().unwrap().len() >= 12
    })
    .await;
    let got = seqs.lock().unwrap().clone();
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "in order, once: {got:?}"
    );
    assert_eq!(got.len(), 12);
    assert_eq!(*refused.lock().unwrap(), 3);
    s.stop().await;
}

/// A receiver that refuses batches over its size limit with 413 would refuse the same batch
/// for ever: the sink sends smaller ones until they pass, and every event arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_refuses_a_batch_as_too_large_gets_smaller_ones() {
    let db = testing::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // SAFETY of the test: the variable is read by this test's server only.
    unsafe { std::env::set_var("GL_TEST_WEBHOOK_SECRET_413", "whsec-0123456789-413") };
    let cfg = with_sink(
        dir.path(),
        &format!(
            "[[audit.sinks]]\nname = \"small\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{port}/in\"\n\
         secret_env = \"GL_TEST_WEBHOOK_SECRET_413\"\nformat = \"jsonl\"\nkinds = [\"tool.called\"]\nbatch = 16\n"
        ),
    );
    let seqs: Arc<Mutex<Vec<u64>>> = Arc::default();
    let sizes: Arc<Mutex<Vec<usize>>> = Arc::default();
    let (got, refused) = (seqs.clone(), sizes.clone());
    receiver(port, move |_, body| {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        let events = v["events"].as_array().unwrap();
        if events.len() > 3 {
            refused.lock().unwrap().push(events.len());
            return 413;
        }
        for e in events {
            got.lock().unwrap().push(e["seq"].as_u64().unwrap());
        }
        200
    })
    .await;
    // The events are in the ledger before the sink reads it: its first batch holds them all.
    let s = Server::start(&db, dir.path().to_path_buf(), config(dir.path(), 0, 60)).await;
    append(&s, 12).await;
    s.stop().await;
    let s = Server::start(&db, dir.path().to_path_buf(), cfg).await;
    wait_until("every tool call, in smaller batches", 30, || {
        seqs.lock().unwrap().len() >= 12
    })
    .await;
    let got = seqs.lock().unwrap().clone();
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "in order, once: {got:?}"
    );
    assert_eq!(got.len(), 12);
    assert!(
        !sizes.lock().unwrap().is_empty(),
        "a batch was refused first"
    );
    s.stop().await;
}

/// A webhook (or HEC) behind a certificate of a private CA: `ca_file` is trusted for HTTPS
/// sinks as for syslog over TLS, and without it the same receiver is not trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_sink_trusts_the_private_ca_it_is_given() {
    let db = testing::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let (listener, port, acceptor, ca) = tls_receiver(dir.path()).await;
    let seqs: Arc<Mutex<Vec<u64>>> = Arc::default();
    let got = seqs.clone();
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let got = got.clone();
        async move {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            for e in v["events"].as_array().unwrap() {
                got.lock().unwrap().push(e["seq"].as_u64().unwrap());
            }
            axum::http::StatusCode::OK
        }
    });
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
            });
        }
    });
    // SAFETY of the test: the variable is read by this test's server only.
    unsafe { std::env::set_var("GL_TEST_TLS_WEBHOOK_SECRET", "whsec-0123456789") };
    let sink = |name: &str, ca_line: String| {
        with_sink(
            dir.path(),
            &format!(
                "[[audit.sinks]]\nname = \"{name}\"\nkind = \"webhook\"\nurl = \"https://localhost:{port}/in\"\n\
                 secret_env = \"GL_TEST_TLS_WEBHOOK_SECRET\"\nformat = \"jsonl\"\n{ca_line}"
            ),
        )
    };
    // Without the CA: the public roots do not vouch for it, and nothing is delivered.
    let s = Server::start(&db, dir.path().to_path_buf(), sink("public", String::new())).await;
    append(&s, 5).await;
    wait_until("a failed delivery", 10, || board(&s).failures > 0).await;
    assert!(seqs.lock().unwrap().is_empty());
    s.stop().await;
    let s = Server::start(
        &db,
        dir.path().to_path_buf(),
        sink("private", format!("ca_file = \"{}\"\n", ca.display())),
    )
    .await;
    let want = head(&s).await;
    wait_until("every event over HTTPS", 20, || {
        seqs.lock().unwrap().len() as u64 >= want
    })
    .await;
    assert_eq!(*seqs.lock().unwrap(), (1..=want).collect::<Vec<_>>());
    s.stop().await;
}

/// A sink that cannot read past a row (here one tampered with) stops before it, and says so
/// where an operator looks: `sinks status` and the failures gauge, not only a log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_sink_cannot_read_shows_as_its_failure() {
    let db = testing::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = webhook_sink(dir.path(), port, "batch = 4\n");
    let s = Server::start(&db, dir.path().to_path_buf(), cfg).await;
    append(&s, 12).await;
    let bad = head(&s).await - 1;
    testing::exec(
        &db,
        &format!(
            "DROP TRIGGER events_no_update; UPDATE events SET body = body || x'00' WHERE seq = {bad}"
        ),
    )
    .await;
    let seqs: Arc<Mutex<Vec<u64>>> = Arc::default();
    let got = seqs.clone();
    receiver(port, move |_, body| {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        for e in v["events"].as_array().unwrap() {
            got.lock().unwrap().push(e["seq"].as_u64().unwrap());
        }
        200
    })
    .await;
    wait_until("the sink's failure on its board", 30, || {
        board(&s)
            .last_error
            .is_some_and(|e| e.contains("cannot read the ledger"))
    })
    .await;
    let status = board(&s);
    assert!(status.failures > 0 && status.seq < bad, "{status:?}");
    assert!(seqs.lock().unwrap().iter().all(|&q| q < bad));
    let text = s.app.render_metrics(false).await.unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("grantline_sink_consecutive_failures{"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(!line.ends_with(" 0"), "{line}");
    s.stop().await;
}

/// A read of the ledger that failed and works again clears the sink's failure at once, on a
/// ledger with nothing new to deliver: a caught-up sink does not stay marked failing (and
/// alerting) until the next event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_works_again_clears_the_failure_without_a_new_event() {
    let db = testing::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = webhook_sink(dir.path(), port, "");
    receiver(port, |_, _| 200).await;
    let s = Server::start(&db, dir.path().to_path_buf(), cfg).await;
    append(&s, 3).await;
    let at = head(&s).await;
    wait_until("caught up", 30, || board(&s).seq == at).await;
    testing::exec(&db, "ALTER TABLE events RENAME TO events_away").await;
    wait_until("the read's failure on the board", 30, || {
        board(&s).failures > 0
    })
    .await;
    testing::exec(&db, "ALTER TABLE events_away RENAME TO events").await;
    wait_until("the failure cleared", 30, || {
        let b = board(&s);
        b.failures == 0 && b.last_error.is_none()
    })
    .await;
    assert_eq!(head(&s).await, at, "nothing new was appended");
    s.stop().await;
}
