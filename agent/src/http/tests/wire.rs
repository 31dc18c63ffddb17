//! Real wire bytes: a recording proxy between curl 7.88.1 and nginx 1.22.1 or Python 3.11's
//! http.server, one segment per `recv` the proxy made (so a segment is what one syscall moved).
//! Regenerating them changes only dates and ports.

use super::Peer::{self, Client, Server};

/// curl GET of a static file from nginx: Content-Length body, keep-alive.
pub(super) const NGINX_GET: &[(Peer, &[u8])] = &[
    (
        Client,
        b"GET / HTTP/1.1\r\n\
        Host: 127.0.0.1:18099\r\n\
        User-Agent: curl/7.88.1\r\n\
        Accept: */*\r\n\
        \r\n",
    ),
    (
        Server,
        b"HTTP/1.1 200 OK\r\n\
        Server: nginx/1.22.1\r\n\
        Date: Sat, 21 Nov 2026 19:54:31 GMT\r\n\
        Content-Type: text/html\r\n\
        Content-Length: 57\r\n\
        Last-Modified: Sat, 21 Nov 2026 19:54:15 GMT\r\n\
        Connection: keep-alive\r\n\
        ETag: \"6b01f6e7-39\"\r\n\
        Accept-Ranges: bytes\r\n\
        \r\n\
        <!DOCTYPE html>\n\
        <html><body><h1>sonde</h1></body></html>\n",
    ),
];

/// curl -I: HEAD, the response announces a Content-Length but has no body.
pub(super) const NGINX_HEAD: &[(Peer, &[u8])] = &[
    (
        Client,
        b"HEAD / HTTP/1.1\r\n\
        Host: 127.0.0.1:18099\r\n\
        User-Agent: curl/7.88.1\r\n\
        Accept: */*\r\n\
        \r\n",
    ),
    (
        Server,
        b"HTTP/1.1 200 OK\r\n\
        Server: nginx/1.22.1\r\n\
        Date: Sat, 21 Nov 2026 19:54:31 GMT\r\n\
        Content-Type: text/html\r\n\
        Content-Length: 57\r\n\
        Last-Modified: Sat, 21 Nov 2026 19:54:15 GMT\r\n\
        Connection: keep-alive\r\n\
        ETag: \"6b01f6e7-39\"\r\n\
        Accept-Ranges: bytes\r\n\
        \r\n",
    ),
];

/// nginx `return 204`.
pub(super) const NGINX_204: &[(Peer, &[u8])] = &[
    (
        Client,
        b"GET /empty HTTP/1.1\r\n\
        Host: 127.0.0.1:18099\r\n\
        User-Agent: curl/7.88.1\r\n\
        Accept: */*\r\n\
        \r\n",
    ),
    (
        Server,
        b"HTTP/1.1 204 No Content\r\n\
        Server: nginx/1.22.1\r\n\
        Date: Sat, 21 Nov 2026 19:54:31 GMT\r\n\
        Connection: keep-alive\r\n\
        \r\n",
    ),
];

/// Conditional GET (If-None-Match) answered 304 Not Modified.
pub(super) const NGINX_304: &[(Peer, &[u8])] = &[
    (
        Client,
        b"GET / HTTP/1.1\r\n\
        Host: 127.0.0.1:18099\r\n\
        User-Agent: curl/7.88.1\r\n\
        Accept: */*\r\n\
        If-None-Match: \"6b01f6e7-39\"\r\n\
        \r\n",
    ),
    (
        Server,
        b"HTTP/1.1 304 Not Modified\r\n\
        Server: nginx/1.22.1\r\n\
        Date: Sat, 21 Nov 2026 19:54:31 GMT\r\n\
        Last-Modified: Sat, 21 Nov 2026 19:54:15 GMT\r\n\
        Connection: keep-alive\r\n\
        ETag: \"6b01f6e7-39\"\r\n\
        \r\n",
    ),
];

/// nginx with sub_filter: the length changes, so the body is chunked.
pub(super) const NGINX_CHUNKED: &[(Peer, &[u8])] = &[
    (
        Client,
        b"GET /chunked HTTP/1.1\r\n\
        Host: 127.0.0.1:18099\r\n\
        User-Agent: curl/7.88.1\r\n\
        Accept: */*\r\n\
        \r\n",
    ),
    (
        Server,
        b"HTTP/1.1 200 OK\r\n\
        Server: nginx/1.22.1\r\n\
        Date: Sat, 21 Nov 2026 19:54:31 GMT\r\n\
        Content-Type: text/html\r\n\
        Transfer-Encoding: chunked\r\n\
        Connection: keep-alive\r\n\
        \r\n\
        39\r\n\
        <!DOCTYPE html>\n\
        <html><body><h1>SONDE</h1></body></html>\n\
        \r\n\
        0\r\n\
        \r\n",
    ),
];

/// Two requests on one keep-alive connection (curl with two URLs).
pub(super) const NGINX_KEEPALIVE: &[(Peer, &[u8])] = &[
    (
        Client,
        b"GET / HTTP/1.1\r\n\
        Host: 127.0.0.1:18099\r\n\
        User-Agent: curl/7.88.1\r\n\
        Accept: */*\r\n\
        \r\n",
    ),
    (
        Server,
        b"HTTP/1.1 200 OK\r\n\
        Server: nginx/1.22.1\r\n\
        Date: Sat, 21 Nov 2026 19:54:31 GMT\r\n\
        Content-Type: text/html\r\n\
        Content-Length: 57\r\n\
        Last-Modified: Sat, 21 Nov 2026 19:54:15 GMT\r\n\
        Connection: keep-alive\r\n\
        ETag: \"6b01f6e7-39\"\r\n\
        Accept-Ranges: bytes\r\n\
        \r\n\
        <!DOCTYPE html>\n\
        <html><body><h1>sonde</h1></body></html>\n",
    ),
    (
        Client,
        b"GET /empty HTTP/1.1\r\n\
        Host: 127.0.0.1:18099\r\n\
        User-Agent: curl/7.88.1\r\n\
        Accept: */*\r\n\
        \r\n",
    ),
    (
        Server,
        b"HTTP/1.1 204 No Content\r\n\
        Server: nginx/1.22.1\r\n\
        Date: Sat, 21 Nov 2026 19:54:31 GMT\r\n\
        Connection: keep-alive\r\n\
        \r\n",
    ),
];

/// curl -0: an HTTP/1.0 request; nginx answers HTTP/1.1 with Connection: close.
pub(super) const NGINX_HTTP10: &[(Peer, &[u8])] = &[
    (
        Client,
        b"GET / HTTP/1.0\r\n\
        Host: 127.0.0.1:18099\r\n\
        User-Agent: curl/7.88.1\r\n\
        Accept: */*\r\n\
        \r\n",
    ),
    (
        Server,
        b"HTTP/1.1 200 OK\r\n\
        Server: nginx/1.22.1\r\n\
        Date: Sat, 21 Nov 2026 19:54:31 GMT\r\n\
        Content-Type: text/html\r\n\
        Content-Length: 57\r\n\
        Last-Modified: Sat, 21 Nov 2026 19:54:15 GMT\r\n\
        Connection: close\r\n\
        ETag: \"6b01f6e7-39\"\r\n\
        Accept-Ranges: bytes\r\n\
        \r\n\
        <!DOCTYPE html>\n\
        <html><body><h1>sonde</h1></body></html>\n",
    ),
];

/// Three GETs written at once, before any response; nginx answers in one write.
pub(super) const NGINX_PIPELINED: &[(Peer, &[u8])] = &[
    (
        Client,
        b"GET / HTTP/1.1\r\n\
        Host: 127.0.0.1:18080\r\n\
        User-Agent: pipeline-test\r\n\
        \r\n\
        GET /empty HTTP/1.1\r\n\
        Host: 127.0.0.1:18080\r\n\
        User-Agent: pipeline-test\r\n\
        \r\n\
        GET /page.txt HTTP/1.1\r\n\
        Host: 127.0.0.1:18080\r\n\
        User-Agent: pipeline-test\r\n\
        \r\n",
    ),
    (
        Server,
        b"HTTP/1.1 200 OK\r\n\
        Server: nginx/1.22.1\r\n\
        Date: Sat, 21 Nov 2026 19:54:31 GMT\r\n\
        Content-Type: text/html\r\n\
        Content-Length: 57\r\n\
        Last-Modified: Sat, 21 Nov 2026 19:54:15 GMT\r\n\
        Connection: keep-alive\r\n\
        ETag: \"6b01f6e7-39\"\r\n\
        Accept-Ranges: bytes\r\n\
        \r\n\
        <!DOCTYPE html>\n\
        <html><body><h1>sonde</h1></body></html>\n\
        HTTP/1.1 204 No Content\r\n\
        Server: nginx/1.22.1\r\n\
        Date: Sat, 21 Nov 2026 19:54:31 GMT\r\n\
        Connection: keep-alive\r\n\
        \r\n\
        HTTP/1.1 200 OK\r\n\
        Server: nginx/1.22.1\r\n\
        Date: Sat, 21 Nov 2026 19:54:31 GMT\r\n\
        Content-Type: text/plain\r\n\
        Content-Length: 57\r\n\
        Last-Modified: Sat, 21 Nov 2026 19:54:15 GMT\r\n\
        Connection: keep-alive\r\n\
        ETag: \"6b01f6e7-39\"\r\n\
        Accept-Ranges: bytes\r\n\
        \r\n\
        <!DOCTYPE html>\n\
        <html><body><h1>sonde</h1></body></html>\n",
    ),
];

/// curl POST with a chunked request body, nginx proxying to Python.
pub(super) const NGINX_CHUNKED_REQUEST: &[(Peer, &[u8])] = &[
    (
        Client,
        b"POST /items HTTP/1.1\r\n\
        Host: 127.0.0.1:18099\r\n\
        User-Agent: curl/7.88.1\r\n\
        Accept: */*\r\n\
        Transfer-Encoding: chunked\r\n\
        Content-Type: application/json\r\n\
        \r\n\
        1f\r\n\
        {\"name\":\"sonde\",\"kind\":\"agent\"}\r\n\
        0\r\n\
        \r\n",
    ),
    (
        Server,
        b"HTTP/1.1 201 Created\r\n\
        Server: nginx/1.22.1\r\n\
        Date: Sat, 21 Nov 2026 19:54:39 GMT\r\n\
        Content-Type: application/json\r\n\
        Content-Length: 15\r\n\
        Connection: keep-alive\r\n\
        \r\n\
        {\"received\":31}",
    ),
];

/// A request carrying traceparent and tracestate, and a query string.
pub(super) const NGINX_TRACED: &[(Peer, &[u8])] = &[
    (
        Client,
        b"GET /page.txt?lang=en&q=1 HTTP/1.1\r\n\
        Host: 127.0.0.1:18099\r\n\
        User-Agent: curl/7.88.1\r\n\
        Accept: */*\r\n\
        traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\
        tracestate: congo=t61rcWkgMzE,rojo=00f067aa0ba902b7\r\n\
        \r\n",
    ),
    (
        Server,
        b"HTTP/1.1 200 OK\r\n\
        Server: nginx/1.22.1\r\n\
        Date: Sat, 21 Nov 2026 19:54:39 GMT\r\n\
        Content-Type: text/plain\r\n\
        Content-Length: 57\r\n\
        Last-Modified: Sat, 21 Nov 2026 19:54:15 GMT\r\n\
        Connection: keep-alive\r\n\
        ETag: \"6b01f6e7-39\"\r\n\
        Accept-Ranges: bytes\r\n\
        \r\n\
        <!DOCTYPE html>\n\
        <html><body><h1>sonde</h1></body></html>\n",
    ),
];

/// python -m http.server: an HTTP/1.0 response, head and body in two writes.
pub(super) const PYTHON_GET: &[(Peer, &[u8])] = &[
    (
        Client,
        b"GET /index.html HTTP/1.1\r\n\
        Host: 127.0.0.1:18099\r\n\
        User-Agent: curl/7.88.1\r\n\
        Accept: */*\r\n\
        \r\n",
    ),
    (
        Server,
        b"HTTP/1.0 200 OK\r\n\
        Server: SimpleHTTP/0.6 Python/3.11.7\r\n\
        Date: Sat, 21 Nov 2026 19:54:31 GMT\r\n\
        Content-type: text/html\r\n\
        Content-Length: 57\r\n\
        Last-Modified: Sat, 21 Nov 2026 19:54:15 GMT\r\n\
        \r\n",
    ),
    (
        Server,
        b"<!DOCTYPE html>\n\
        <html><body><h1>sonde</h1></body></html>\n",
    ),
];

/// python -m http.server: 404 with an HTML body.
pub(super) const PYTHON_404: &[(Peer, &[u8])] = &[
    (
        Client,
        b"GET /missing HTTP/1.1\r\n\
        Host: 127.0.0.1:18099\r\n\
        User-Agent: curl/7.88.1\r\n\
        Accept: */*\r\n\
        \r\n",
    ),
    (
        Server,
        b"HTTP/1.0 404 File not found\r\n\
        Server: SimpleHTTP/0.6 Python/3.11.7\r\n\
        Date: Sat, 21 Nov 2026 19:54:31 GMT\r\n\
        Connection: close\r\n\
        Content-Type: text/html;charset=utf-8\r\n\
        Content-Length: 335\r\n\
        \r\n\
        <!DOCTYPE HTML>\n\
        <html lang=\"en\">\n\
        \x20   <head>\n\
        \x20       <meta charset=\"utf-8\">\n\
        \x20       <title>Error response</title>\n\
        \x20   </head>\n\
        \x20   <body>\n\
        \x20       <h1>Error response</h1>\n\
        \x20       <p>Error code: 404</p>\n\
        \x20       <p>Message: File not found.</p>\n\
        \x20       <p>Error code explanation: 404 - Nothing matches the given URI.</p>\n\
        \x20   </body>\n\
        </html>\n",
    ),
];

/// Expect: 100-continue against Python's BaseHTTPRequestHandler (HTTP/1.1).
pub(super) const PYTHON_EXPECT: &[(Peer, &[u8])] = &[
    (
        Client,
        b"POST /items HTTP/1.1\r\n\
        Host: 127.0.0.1:18099\r\n\
        User-Agent: curl/7.88.1\r\n\
        Accept: */*\r\n\
        Expect: 100-continue\r\n\
        Content-Type: application/json\r\n\
        Content-Length: 16\r\n\
        \r\n",
    ),
    (
        Server,
        b"HTTP/1.1 100 Continue\r\n\
        \r\n",
    ),
    (Client, b"{\"name\":\"sonde\"}"),
    (
        Server,
        b"HTTP/1.1 201 Created\r\n\
        Server: BaseHTTP/0.6 Python/3.11.7\r\n\
        Date: Sat, 21 Nov 2026 19:54:31 GMT\r\n\
        Content-Type: application/json\r\n\
        Content-Length: 15\r\n\
        \r\n",
    ),
    (Server, b"{\"received\":16}"),
];

/// A chunked response with chunk extensions and a trailer field (written by a Python script).
pub(super) const RAW_CHUNKED_TRAILERS: &[(Peer, &[u8])] = &[
    (
        Client,
        b"GET /stream HTTP/1.1\r\n\
        Host: 127.0.0.1:18099\r\n\
        User-Agent: curl/7.88.1\r\n\
        Accept: */*\r\n\
        \r\n",
    ),
    (
        Server,
        b"HTTP/1.1 200 OK\r\n\
        Content-Type: text/plain\r\n\
        Transfer-Encoding: chunked\r\n\
        Trailer: Expires\r\n\
        \r\n\
        7;name=value\r\n\
        Mozilla\r\n\
        9;quoted=\"a;b\"\r\n\
        Developer\r\n\
        7\r\n\
        Network\r\n\
        0\r\n\
        Expires: Wed, 21 Oct 2015 07:28:00 GMT\r\n\
        \r\n",
    ),
];

/// A response with neither Content-Length nor chunked coding: it ends when the server closes.
pub(super) const RAW_CLOSE: &[(Peer, &[u8])] = &[
    (
        Client,
        b"GET /stream HTTP/1.1\r\n\
        Host: 127.0.0.1:18099\r\n\
        User-Agent: curl/7.88.1\r\n\
        Accept: */*\r\n\
        \r\n",
    ),
    (
        Server,
        b"HTTP/1.1 200 OK\r\n\
        Content-Type: text/plain\r\n\
        Connection: close\r\n\
        \r\n\
        streamed until the server closes\n",
    ),
];
