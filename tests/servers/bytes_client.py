"""Requests written the ways that header propagation must leave intact, each on a connection of its
own to tests/servers/body_hash.py, which reports what it received. Prints one JSON object: per case,
the sha256 of each body sent and the server's replies.

Usage: python3 bytes_client.py PORT
"""
import hashlib
import json
import random
import socket
import sys

port = int(sys.argv[1])
rng = random.Random(7)


def connect():
    return socket.create_connection(("127.0.0.1", port), timeout=20)


def replies(sock, n):
    """The next `n` replies' JSON bodies."""
    buf, out = b"", []
    while len(out) < n:
        while b"\r\n\r\n" not in buf:
            data = sock.recv(65536)
            if not data:
                raise EOFError("the server closed early")
            buf += data
        head, buf = buf.split(b"\r\n\r\n", 1)
        length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0].split(b":")[1])
        while len(buf) < length:
            buf += sock.recv(65536)
        out.append(json.loads(buf[:length]))
        buf = buf[length:]
    return out


def case(write, n=1):
    sock = connect()
    sent = write(sock)
    got = replies(sock, n)
    sock.close()
    return {"sent": sent, "replies": got}


def large_post(sock):
    body = rng.randbytes(1 << 20)
    sock.sendall(b"POST /large HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    return [hashlib.sha256(body).hexdigest()]


def chunked(sock):
    chunks = [rng.randbytes(n) for n in (1000, 70000, 3)]
    sock.sendall(b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    for c in chunks:
        sock.sendall(b"%x\r\n" % len(c) + c + b"\r\n")
    sock.sendall(b"0\r\n\r\n")
    return [hashlib.sha256(b"".join(chunks)).hexdigest()]


def pipelined(sock):
    bodies = [rng.randbytes(100) for _ in range(3)]
    sock.sendall(b"".join(
        b"POST /pipelined/%d HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (i, len(b)) + b
        for i, b in enumerate(bodies)))
    return [hashlib.sha256(b).hexdigest() for b in bodies]


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def with_traceparent(sock):
    sock.sendall(b"GET /has-traceparent HTTP/1.1\r\nHost: x\r\nTraceparent: %s\r\n\r\n" % TRACEPARENT.encode())
    return [hashlib.sha256(b"").hexdigest()]


def byte_by_byte(sock):
    for b in b"GET /byte-by-byte HTTP/1.1\r\nHost: x\r\n\r\n":
        sock.send(bytes([b]))
    return [hashlib.sha256(b"").hexdigest()]


print(json.dumps({
    "large_post": case(large_post),
    "chunked": case(chunked),
    "pipelined": case(pipelined, 3),
    "with_traceparent": case(with_traceparent),
    "byte_by_byte": case(byte_by_byte),
    "traceparent": TRACEPARENT,
}))
