//! The client ID metadata document fetcher on its own: size and time limits, the resolver's
//! SSRF guard, and the cache.

use grantline_server::cimd::Fetcher;
use grantline_server::config::MetadataDocumentsSection;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Serves `/client.json` (a valid document for its own URL, padded to `pad` bytes, after
/// `delay`) and counts the fetches.
async fn serve(pad: usize, delay: Duration, cache: &'static str) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let url = format!("http://localhost:{port}/client.json");
    let body = serde_json::json!({
        "client_id": url, "client_name": "Doc", "redirect_uris": ["http://127.0.0.1:9/cb"],
        "token_endpoint_auth_method": "none", "padding": "x".repeat(pad),
    })
    .to_string();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().route(
        "/client.json",
        axum::routing::get(move || {
            let (body, counter) = (body.clone(), counter.clone());
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                (
                    [
                        ("content-type", "application/json"),
                        ("cache-control", cache),
                    ],
                    body,
                )
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, hits)
}

fn fetcher(allow_private: bool) -> Fetcher {
    Fetcher::new(MetadataDocumentsSection {
        allow_private_addresses: allow_private,
        allow_http: true,
        max_bytes: 2048,
        timeout_ms: 300,
        ..MetadataDocumentsSection::default()
    })
    .unwrap()
}

#[tokio::test]
async fn documents_are_cached_per_their_headers() {
    let (url, hits) = serve(0, Duration::ZERO, "max-age=60").await;
    let f = fetcher(true);
    assert_eq!(f.get(&url).await.unwrap().metadata.client_name, "Doc");
    f.get(&url).await.unwrap();
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the second answer came from the cache"
    );
    // no-store is kept the minimum all the same (each authorization request, which anyone
    // may send, would fetch it again); with no minimum it is fetched every time.
    let (url, hits) = serve(0, Duration::ZERO, "no-store").await;
    f.get(&url).await.unwrap();
    f.get(&url).await.unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 1, "kept the minimum");
    let no_minimum = Fetcher::new(MetadataDocumentsSection {
        allow_private_addresses: true,
        allow_http: true,
        min_cache_seconds: 0,
        ..MetadataDocumentsSection::default()
    })
    .unwrap();
    no_minimum.get(&url).await.unwrap();
    no_minimum.get(&url).await.unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 3, "fetched every time");
}

#[tokio::test]
async fn too_large_or_too_slow_documents_are_refused() {
    let f = fetcher(true);
    let (url, _) = serve(4096, Duration::ZERO, "max-age=60").await;
    let e = f.get(&url).await.unwrap_err();
    assert_eq!(e.code.as_str(), "invalid_client");
    assert!(
        e.description.contains("larger than 2048 bytes"),
        "{}",
        e.description
    );
    let (url, _) = serve(0, Duration::from_secs(3), "max-age=60").await;
    let started = std::time::Instant::now();
    let e = f.get(&url).await.unwrap_err();
    assert!(e.description.contains("fetch failed"), "{}", e.description);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the time limit held"
    );
}

#[tokio::test]
async fn a_name_that_resolves_to_an_internal_address_is_refused() {
    // `localhost` is a name, not a literal: only the guarded resolver can catch it.
    let (url, hits) = serve(0, Duration::ZERO, "max-age=60").await;
    let e = fetcher(false).get(&url).await.unwrap_err();
    assert!(e.description.contains("fetch failed"), "{}", e.description);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "nothing reached the internal server"
    );
}

#[tokio::test]
async fn redirects_are_not_followed() {
    // The document's URL answers with a redirect to a valid document elsewhere: refused, and the
    // target is never fetched (a redirect could lead the fetcher anywhere, past its SSRF guard).
    let (target, target_hits) = serve(0, Duration::ZERO, "no-store").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://localhost:{}/client.json",
        listener.local_addr().unwrap().port()
    );
    let app = axum::Router::new().route(
        "/client.json",
        axum::routing::get(move || {
            let target = target.clone();
            async move { (axum::http::StatusCode::FOUND, [("location", target)], "") }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let e = fetcher(true).get(&url).await.unwrap_err();
    assert!(
        e.description.contains("302") || e.description.to_lowercase().contains("redirect"),
        "{}",
        e.description
    );
    assert_eq!(
        target_hits.load(Ordering::SeqCst),
        0,
        "the redirect was not followed"
    );
}

/// A document that cannot be taken is not fetched again at every request (anyone may send
/// authorization requests naming it), and requests that arrive while it is being fetched wait
/// for that one fetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_kept_and_concurrent_requests_make_one_fetch() {
    let f = std::sync::Arc::new(fetcher(true));
    let (url, hits) = serve(4096, Duration::ZERO, "max-age=60").await;
    assert!(f.get(&url).await.is_err());
    let e = f.get(&url).await.unwrap_err();
    assert!(e.description.contains("larger than"), "{}", e.description);
    assert_eq!(hits.load(Ordering::SeqCst), 1, "the failure was kept");
    let (url, hits) = serve(0, Duration::from_millis(200), "max-age=60").await;
    let gets: Vec<_> = (0..5)
        .map(|_| {
            let (f, url) = (f.clone(), url.clone());
            tokio::spawn(async move { f.get(&url).await.map(|d| d.metadata.client_name) })
        })
        .collect();
    for g in gets {
        assert_eq!(g.await.unwrap().unwrap(), "Doc");
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "one fetch for five requests"
    );
}
