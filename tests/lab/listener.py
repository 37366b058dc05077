"""A TCP listener on the given ports (dual-stack), run inside a test network namespace.

Usage: python -m tests.lab.listener PORT [PORT ...]; prints "ready" once every port listens, then
accepts and closes connections until killed.
"""

from __future__ import annotations

import selectors
import socket
import sys


def main(ports: list[int]) -> None:
    selector = selectors.DefaultSelector()
    for port in ports:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("::", port))
        sock.listen(128)
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    print("ready", flush=True)
    while True:
        for key, _ in selector.select():
            listener = key.fileobj
            assert isinstance(listener, socket.socket)
            try:
                conn, _addr = listener.accept()
            except OSError:
                continue
            conn.close()


if __name__ == "__main__":
    main([int(p) for p in sys.argv[1:]])
