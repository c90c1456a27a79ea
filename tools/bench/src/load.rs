//! The lean load generator's HTTP client: one HTTP/1.1 keep-alive connection per simulated
//! client, straight on hyper, with no pool, cookie jar, redirect policy or header map to build
//! per request. On this 2-core machine the load generator shares the cores with the server it
//! measures, so what it spends is taken from the server; reqwest cost about a quarter of the
//! CPU of a `refresh` run (docs/performance.md). `--reqwest` keeps the old generator, to compare.

use anyhow::{Context, Result, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;

/// One connection to one URL: every request goes to its path (and query).
pub struct Conn {
    send: SendRequest<Full<Bytes>>,
    host: String,
    path: String,
}

impl Conn {
    /// Connects to the origin of `url` (plain `http://` only: the benches run on 127.0.0.1).
    pub async fn open(url: &str) -> Result<Conn> {
        let u = url::Url::parse(url).with_context(|| format!("bench URL {url}"))?;
        if u.scheme() != "http" {
            bail!("the lean load generator speaks plain http only, not {url}");
        }
        let host = u.host_str().context("bench URL without a host")?;
        let port = u.port_or_known_default().unwrap_or(80);
        let stream = tokio::net::TcpStream::connect((host, port))
            .await
            .with_context(|| format!("connecting to {host}:{port}"))?;
        stream.set_nodelay(true)?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let path = match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_string(),
        };
        Ok(Conn {
            send,
            host: format!("{host}:{port}"),
            path,
        })
    }

    /// POSTs `body` to the URL and reads the whole answer.
    pub async fn post(
        &mut self,
        content_type: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<(StatusCode, Bytes)> {
        let mut req = Request::post(&self.path)
            .header(header::HOST, &self.host)
            .header(header::CONTENT_TYPE, content_type);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(Full::new(body.into()))?;
        self.send.ready().await?;
        let resp = self.send.send_request(req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }
}
