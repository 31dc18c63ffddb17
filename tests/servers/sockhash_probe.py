"""Whether a socket in a SOCKHASH keeps FIONREAD and epoll readiness right on this kernel, found
without sonde: the map made and the socket enrolled through the raw bpf(2) syscall (ctypes, x86-64
numbers), so that `tests/tests/programs.rs` can hold `sonde check-kernel`'s verdict against it.

Prints two lines: `fionread N` (bytes reported of 4096 queued) and `readiness ok|missed`.
"""

import array
import ctypes
import fcntl
import select
import socket
import struct
import sys
import termios
import time

SYS_BPF = 321
BPF_MAP_CREATE, BPF_MAP_UPDATE_ELEM = 0, 2
BPF_MAP_TYPE_SOCKHASH = 18
ATTR_SIZE = 128

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr + bytes(ATTR_SIZE - len(attr)), ATTR_SIZE)
    r = libc.syscall(ctypes.c_long(SYS_BPF), ctypes.c_long(cmd), buf, ctypes.c_long(ATTR_SIZE))
    if r < 0:
        sys.exit(f"bpf({cmd}): errno {ctypes.get_errno()}")
    return r


def enrolled_pair():
    """A loopback pair whose client end is in a fresh SOCKHASH (the map fd is returned to keep it)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    map_fd = bpf(BPF_MAP_CREATE, struct.pack("IIIII", BPF_MAP_TYPE_SOCKHASH, 8, 4, 2, 0))
    key, value = ctypes.c_uint64(0), ctypes.c_uint32(client.fileno())
    bpf(BPF_MAP_UPDATE_ELEM, struct.pack("IIQQQ", map_fd, 0, ctypes.addressof(key), ctypes.addressof(value), 0))
    return client, server, map_fd


def fionread():
    client, server, _map = enrolled_pair()
    server.sendall(b"x" * 4096)
    deadline = time.monotonic() + 1
    while time.monotonic() < deadline:
        try:
            if len(client.recv(4096, socket.MSG_PEEK | socket.MSG_DONTWAIT)) == 4096:
                break
        except BlockingIOError:
            pass
        time.sleep(0.001)
    n = array.array("i", [-1])
    fcntl.ioctl(client.fileno(), termios.FIONREAD, n)
    return n[0]


def readiness():
    client, server, _map = enrolled_pair()
    ep = select.epoll()
    ep.register(client.fileno(), select.EPOLLIN | select.EPOLLET)
    for _ in range(200):
        server.sendall(b"x")
        if not ep.poll(1.0):
            return "missed"
        client.recv(1)
    return "ok"


print(f"fionread {fionread()}")
print(f"readiness {readiness()}")
