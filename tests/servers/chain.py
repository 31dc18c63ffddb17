"""One service of a call chain, with no tracing code, for sonde's integration tests.

Usage: python3 chain.py PORT [--delay SECONDS] [--spawn] [DOWNSTREAM_BASE_URL ...]

GET /<anything>/<n> calls GET <downstream>/<n> on every downstream in turn (a new connection
each, as urllib does), then answers 200 — or 502 when a downstream failed. <n> travels down the
chain so a test can tell which request each span belongs to. Thread per request
(ThreadingHTTPServer): the thread that reads a request makes its calls — or, with --spawn, a
worker thread it starts for each call.
"""
import os
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

args = sys.argv[1:]
port = int(args.pop(0))
delay = 0.0
if args[:1] == ["--delay"]:
    delay = float(args[1])
    args = args[2:]
spawn = args[:1] == ["--spawn"]
if spawn:
    args = args[1:]
downstreams = args


# Downstreams over https:// are called without checking their (self-signed) certificate.
UNVERIFIED = ssl.create_default_context()
UNVERIFIED.check_hostname = False
UNVERIFIED.verify_mode = ssl.CERT_NONE


def fetch(url, failures):
    try:
        with urllib.request.urlopen(url, timeout=10, context=UNVERIFIED) as reply:
            reply.read()
    except (urllib.error.URLError, ConnectionError, OSError):
        failures.append(url)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        suffix = self.path.rstrip("/").rsplit("/", 1)[-1]
        failures = []
        for base in downstreams:
            if spawn:
                worker = threading.Thread(target=fetch, args=(f"{base}/{suffix}", failures))
                worker.start()
                worker.join()
            else:
                fetch(f"{base}/{suffix}", failures)
        status = 502 if failures else 200
        if delay:
            time.sleep(delay)
        body = f"{self.path} -> {status}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer.request_queue_size = 128
# CHAIN_BIND: the address to listen on (a network namespace's own, in the propagation tests).
server = ThreadingHTTPServer((os.environ.get("CHAIN_BIND", "127.0.0.1"), port), Handler)
# CHAIN_TLS="CERT KEY": serve HTTPS (Python's ssl, i.e. OpenSSL).
if os.environ.get("CHAIN_TLS"):
    cert, key = os.environ["CHAIN_TLS"].split()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
