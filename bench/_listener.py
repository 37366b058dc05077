"""The 'open' targets: listen on every (address, port) of a file, accept and close every connection.

`python -m bench._listener FILE MAX_SECONDS`: prints `ready N` once listening; stops after MAX_SECONDS,
when its stdin closes (the benchmark went away), or on SIGTERM. Address `0.0.0.0` (a wildcard) is only
accepted inside a benchmark's own network namespace, where the only interface is lo.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import sys
import time

from bench._support import ENV_NETNS, check_loopback


def main(argv: list[str]) -> int:
    spec, max_seconds = argv[0], float(argv[1])
    listeners: dict[int, socket.socket] = {}
    poller = select.epoll()
    with open(spec) as handle:
        for line in handle:
            host, port = line.split()
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if host == "0.0.0.0":
                if not os.environ.get(ENV_NETNS):
                    raise SystemExit("a wildcard listener only inside the benchmark's network namespace")
            else:
                check_loopback(host)
            sock.bind((host, int(port)))
            sock.listen(4096)
            listeners[sock.fileno()] = sock
            poller.register(sock.fileno(), select.EPOLLIN)
    stdin = sys.stdin.fileno()
    poller.register(stdin, select.EPOLLIN | select.EPOLLHUP)
    print(f"ready {len(listeners)}", flush=True)
    deadline = time.monotonic() + max_seconds
    accepted = 0
    while time.monotonic() < deadline:
        for fd, _events in poller.poll(1.0):
            if fd == stdin:
                print(f"accepted {accepted}", file=sys.stderr)
                return 0
            sock = listeners[fd]
            while True:
                try:
                    conn, _addr = sock.accept()
                except BlockingIOError:
                    break
                except OSError as exc:  # ECONNABORTED: the client gave up first; EMFILE: ours
                    if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        break
                    continue
                conn.close()
                accepted += 1
    print(f"accepted {accepted} (deadline)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
