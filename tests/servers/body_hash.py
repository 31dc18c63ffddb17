"""What arrived, request by request: an HTTP/1.1 server that reads each request's head and body
(Content-Length or chunked) itself, byte for byte, and answers with JSON: the request's target,
the sha256 of its body as received, and every `traceparent` header line's value. For sonde's
header-propagation tests, which check that writing a header changes nothing else.

Usage: python3 body_hash.py PORT
"""
import hashlib
import json
import socket
import sys
import threading


class Conn:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError
        self.buf += data

    def line(self):
        while b"\n" not in self.buf:
            self.fill()
        line, self.buf = self.buf.split(b"\n", 1)
        return line.rstrip(b"\r")

    def exactly(self, n):
        while len(self.buf) < n:
            self.fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data


def serve(sock):
    conn = Conn(sock)
    try:
        while True:
            request_line = conn.line()
            headers = []
            while True:
                line = conn.line()
                if not line:
                    break
                name, _, value = line.partition(b":")
                headers.append((name.strip().lower(), value.strip()))
            fields = dict(headers)
            body = hashlib.sha256()
            if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
                while True:
                    size = int(conn.line().split(b";")[0], 16)
                    if size == 0:
                        while conn.line():
                            pass
                        break
                    body.update(conn.exactly(size))
                    conn.exactly(2)
            else:
                body.update(conn.exactly(int(fields.get(b"content-length", b"0"))))
            reply = json.dumps({
                "target": request_line.split(b" ")[1].decode(),
                "sha256": body.hexdigest(),
                "traceparents": [v.decode() for n, v in headers if n == b"traceparent"],
            }).encode()
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(reply), reply))
    except (EOFError, ConnectionError):
        pass
    finally:
        sock.close()


def main():
    listener = socket.create_server(("127.0.0.1", int(sys.argv[1])))
    while True:
        sock, _ = listener.accept()
        threading.Thread(target=serve, args=(sock,), daemon=True).start()


main()
