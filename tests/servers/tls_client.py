"""Keeps one TLS connection (Python's ssl, i.e. OpenSSL; certificate not checked) to
127.0.0.1:PORT and, for each line on stdin, sends `GET <line>` on it and prints the status line.

Usage: python3 tls_client.py PORT
"""
import socket
import ssl
import sys

context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
conn = context.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1]))))
replies = conn.makefile("rb")
for line in sys.stdin:
    conn.sendall(f"GET {line.strip()} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    status = replies.readline().decode().strip()
    length = 0
    while (header := replies.readline()) not in (b"\r\n", b""):
        if header.lower().startswith(b"content-length:"):
            length = int(header.split(b":")[1])
    replies.read(length)
    print(status, flush=True)
