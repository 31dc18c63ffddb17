"""A plain HTTP/1.1 service with no tracing code, for sonde's integration tests.

GET  /status/<code>  answers with that status and a short body
GET  /bytes/<n>      answers with n bytes (Content-Length), written 1 MiB at a time
POST /upload         reads the body (Content-Length or chunked) and answers with its size
anything else        200 "ok"
Usage: python3 app.py PORT [--tls CERT KEY]   (--tls: HTTPS through Python's ssl module, i.e. OpenSSL)
"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def log_message(self, *args):
        pass

    def reply(self, code, body):
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return total
                total += len(self.rfile.read(size))
                self.rfile.readline()
        return len(self.rfile.read(int(self.headers.get("Content-Length", "0"))))

    def do_GET(self):
        if self.path.startswith("/status/"):
            code = int(self.path.split("/")[2].split("?")[0])
            self.reply(code, b"status %d\n" % code)
        elif self.path.startswith("/bytes/"):
            left = int(self.path.split("/")[2])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(left))
            self.end_headers()
            block = b"x" * (1 << 20)
            while left > 0:
                self.wfile.write(block[:left])
                left -= min(left, len(block))
        else:
            self.reply(200, b"ok\n")

    def do_POST(self):
        size = self.read_body()
        self.reply(200, b"received %d\n" % size)


server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
if sys.argv[2:3] == ["--tls"]:
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[3], sys.argv[4])
    server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
