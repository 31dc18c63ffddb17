"""Processes and threads that leave a request unanswered and vanish, so that the next process or
thread given the same id can be checked for inheriting it (tests/tests/churn.rs).

Usage: python3 reuse.py PORT MODE [CALL_PORT]
- vanish: accept one connection, read its request, exit without answering (no close() call:
  the kernel closes the socket at exit).
- call-then-serve: call 127.0.0.1:CALL_PORT once (GET /newcomer-call) from the main thread, then
  answer every request 200 (one per connection).
- thread-reuse: a thread accepts a connection, reads its request and exits without answering; the
  next thread started with the same thread id (forced through /proc/sys/kernel/ns_last_pid, root
  only) calls CALL_PORT (GET /thread-call). Prints `reused TID` or `not reused`.
"""
import os
import socket
import sys
import threading

port, mode = int(sys.argv[1]), sys.argv[2]
listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port))
listener.listen(16)
kept = []


def call(path):
    s = socket.create_connection(("127.0.0.1", int(sys.argv[3])))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: callee\r\nConnection: close\r\n\r\n".encode())
    while s.recv(65536):
        pass
    s.close()


def read_and_vanish():
    while True:
        conn, _ = listener.accept()
        if conn.recv(65536):
            kept.append(conn)  # never answered, never closed
            return
        conn.close()  # a probe that only checked the port is open


if mode == "vanish":
    read_and_vanish()
    os._exit(0)

if mode == "call-then-serve":
    call("/newcomer-call")
    while True:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
        conn.close()

if mode == "thread-reuse":
    first = threading.Thread(target=read_and_vanish)
    first.start()
    first.join()
    old_tid = first.native_id
    for _ in range(50):
        reused = []

        def second():
            if threading.get_native_id() == old_tid:
                reused.append(True)
                call("/thread-call")

        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(old_tid - 1))
        t = threading.Thread(target=second)
        t.start()
        t.join()
        if reused:
            print(f"reused {old_tid}", flush=True)
            break
    else:
        print("not reused", flush=True)
    threading.Event().wait()
