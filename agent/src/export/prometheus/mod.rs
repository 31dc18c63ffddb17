//! The Prometheus endpoint (`--prometheus-listen`): `GET /metrics` renders the current metrics in
//! the text format. Served by hyper on the export runtime, which also exports spans; so whoever
//! can reach the port must not be able to slow that down or grow sonde's memory:
//! - at most `MAX_CONNECTIONS` connections at once (more are closed on accept), one request per
//!   connection, each connection done within `CONNECTION_TIMEOUT` (a client that never reads its
//!   answer is cut off);
//! - the text is rendered on a blocking thread, at most once per `RENDER_EVERY`: scrapes within
//!   that time share one rendering.

pub(crate) mod text;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::TcpListener,
    sync::{Mutex, Semaphore},
    task::JoinHandle,
};

use crate::metrics::Metrics;

pub use text::{CONTENT_TYPE, metric_name, render};

/// A client that sends no complete request head in this time is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A whole connection (request and answer) takes at most this long.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Scrapers at once: Prometheus needs one; a few more for people and HA pairs.
const MAX_CONNECTIONS: usize = 8;
/// Scrapes closer together than this get the same text.
const RENDER_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
#[error("--prometheus-listen {addr}: cannot listen")]
pub struct ListenError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// The last rendering, shared by scrapes that come within `RENDER_EVERY` of it.
struct Rendered {
    metrics: Metrics,
    last: Mutex<Option<(Instant, Bytes)>>,
}

impl Rendered {
    async fn text(&self) -> Bytes {
        // A tokio mutex: a scrape that arrives during a rendering waits for it instead of making
        // its own.
        let mut last = self.last.lock().await;
        if let Some((at, text)) = last.as_ref()
            && at.elapsed() < RENDER_EVERY
        {
            return text.clone();
        }
        let metrics = self.metrics.clone();
        let text = tokio::task::spawn_blocking(move || Bytes::from(render(&metrics.collect())))
            .await
            .unwrap_or_else(|e| Bytes::from(format!("# rendering failed: {e}\n")));
        *last = Some((Instant::now(), text.clone()));
        text
    }
}

/// Binds `addr` (a start-up error when taken) and serves scrapes until the task is aborted.
pub async fn serve(addr: SocketAddr, metrics: Metrics) -> Result<(SocketAddr, JoinHandle<()>), ListenError> {
    let listener = TcpListener::bind(addr).await.map_err(|source| ListenError { addr, source })?;
    let local = listener.local_addr().map_err(|source| ListenError { addr, source })?;
    tracing::info!(address = %local, "serving Prometheus metrics at /metrics");
    let rendered = Arc::new(Rendered { metrics, last: Mutex::new(None) });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        let mut refused: u64 = 0;
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of fds and the like: wait rather than spin.
                    tracing::warn!(error = %e, "Prometheus endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                refused += 1;
                if refused.is_power_of_two() {
                    tracing::warn!(%peer, refused, max = MAX_CONNECTIONS, "Prometheus endpoint: too many connections, closing new ones");
                }
                continue;
            };
            let rendered = Arc::clone(&rendered);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let rendered = Arc::clone(&rendered);
                    async move { Ok::<_, Infallible>(respond(&request, &rendered).await) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service);
                match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "Prometheus endpoint: connection ended with an error");
                    }
                    Err(_) => tracing::debug!(%peer, "Prometheus endpoint: connection timed out"),
                }
                drop(slot);
            });
        }
    });
    Ok((local, task))
}

async fn respond<B>(request: &Request<B>, rendered: &Rendered) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &'static str, body: Bytes| {
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
        response
    };
    match (request.method(), request.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            rendered.metrics.own_sources().metrics_export.scrapes.fetch_add(1, Ordering::Relaxed);
            reply(StatusCode::OK, CONTENT_TYPE, rendered.text().await)
        }
        (&Method::GET, "/") => reply(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"sonde: metrics at /metrics\n"),
        ),
        (_, "/metrics") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"GET only\n"),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"not found; metrics are at /metrics\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;
    use crate::metrics::{MetricsOptions, own::OwnSources};

    fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    #[test]
    fn serves_scrapes_and_closes_connections_past_the_limit() {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let metrics = Metrics::new(MetricsOptions::default(), OwnSources::default());
        let (addr, task) = runtime.block_on(serve("127.0.0.1:0".parse().unwrap(), metrics)).unwrap();

        let answer = get(addr, "/metrics").unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("sonde_prometheus_scrapes_total"), "{answer}");
        assert!(answer.contains("connection: close"), "one request per connection: {answer}");
        assert!(get(addr, "/other").unwrap().starts_with("HTTP/1.1 404"));

        // Idle connections that send nothing take every slot: the next one is closed unanswered.
        let idle: Vec<_> =
            (0..MAX_CONNECTIONS).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(300));
        // Closed unread, the request makes the close a reset: either way, no answer.
        let refused = get(addr, "/metrics").unwrap_or_default();
        assert_eq!(refused, "", "past the limit: closed without an answer");
        drop(idle);
        std::thread::sleep(Duration::from_millis(300));
        assert!(get(addr, "/metrics").unwrap().starts_with("HTTP/1.1 200"), "slots freed");
        task.abort();
    }
}
