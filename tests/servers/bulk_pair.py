"""A TCP connection of this process to itself that carries bytes no parser knows, on command, and
an HTTP client whose request begins with a one-byte write. Commands, one per line on stdin, each
answered with a line on stdout once done:

  connect          open the connection (with `--connect-now` it is open before the first command,
                   e.g. before sonde starts)
  send N           send N MiB of random bytes from the client end; the server end reads them all
  close            close both ends (their fd numbers are free for the next connection)
  http PORT PATH   GET PATH from 127.0.0.1:PORT, writing the request's first byte alone, then the
                   rest 300 ms later; answers with the response's status line
  get PORT PATH    GET PATH from 127.0.0.1:PORT, reading the reply 64 KiB at a time until the
                   server closes; answers with the response's status line and the reply's size
"""

import random
import socket
import sys
import threading
import time

BLOCK = 64 * 1024
# A fixed binary first byte: the connection must not begin like an HTTP message by chance.
block = bytes([0x8F]) + random.Random(7).randbytes(BLOCK - 1)
pair = None


def connect():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    return client, server


def send(mib):
    client, server = pair
    want = mib * 1024 * 1024

    def drain():
        got = 0
        while got < want:
            chunk = server.recv(BLOCK)
            if not chunk:
                break
            got += len(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    for _ in range(want // BLOCK):
        client.sendall(block)
    reader.join()


def http(port, path):
    with socket.create_connection(("127.0.0.1", port)) as conn:
        request = f"GET {path} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n".encode()
        conn.sendall(request[:1])
        time.sleep(0.3)
        conn.sendall(request[1:])
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    return reply.split(b"\r\n", 1)[0].decode()


def get(port, path):
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n".encode())
        first = b""
        size = 0
        while chunk := conn.recv(BLOCK):
            if not first:
                first = chunk
            size += len(chunk)
    status = first.split(b"\r\n", 1)[0].decode()
    return f"{status} {size}"


if "--connect-now" in sys.argv:
    pair = connect()
print("ready", flush=True)
for line in sys.stdin:
    words = line.split()
    if words[0] == "connect":
        pair = connect()
        print("connected", flush=True)
    elif words[0] == "send":
        send(int(words[1]))
        print("sent", flush=True)
    elif words[0] == "close":
        for end in pair:
            end.close()
        pair = None
        print("closed", flush=True)
    elif words[0] == "http":
        print(http(int(words[1]), words[2]), flush=True)
    elif words[0] == "get":
        print(get(int(words[1]), words[2]), flush=True)
