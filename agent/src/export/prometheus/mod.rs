//! The Prometheus endpoint (`--prometheus-listen`): `GET /metrics` renders the current metrics in
//! the text format on each scrape. Served by hyper on the export runtime; a slow or hostile
//! client holds one task and its connection, nothing else.

mod text;

use std::{convert::Infallible, net::SocketAddr, sync::atomic::Ordering, time::Duration};

use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;

pub use text::{CONTENT_TYPE, metric_name, render};

/// A client that sends no complete request head in this time is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[error("--prometheus-listen {addr}: cannot listen")]
pub struct ListenError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// Binds `addr` (a start-up error when taken) and serves scrapes until the task is aborted.
pub async fn serve(addr: SocketAddr, metrics: Metrics) -> Result<(SocketAddr, JoinHandle<()>), ListenError> {
    let listener = TcpListener::bind(addr).await.map_err(|source| ListenError { addr, source })?;
    let local = listener.local_addr().map_err(|source| ListenError { addr, source })?;
    tracing::info!(address = %local, "serving Prometheus metrics at /metrics");
    let task = tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of fds and the like: wait rather than spin.
                    tracing::warn!(error = %e, "Prometheus endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let metrics = metrics.clone();
                    async move { Ok::<_, Infallible>(respond(&request, &metrics)) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "Prometheus endpoint: connection ended with an error");
                }
            });
        }
    });
    Ok((local, task))
}

fn respond<B>(request: &Request<B>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &'static str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
        response
    };
    match (request.method(), request.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            metrics.own_sources().metrics_export.scrapes.fetch_add(1, Ordering::Relaxed);
            reply(StatusCode::OK, CONTENT_TYPE, render(&metrics.collect()))
        }
        (&Method::GET, "/") => {
            reply(StatusCode::OK, "text/plain; charset=utf-8", "sonde: metrics at /metrics\n".into())
        }
        (_, "/metrics") => {
            reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", "GET only\n".into())
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found; metrics are at /metrics\n".into(),
        ),
    }
}
