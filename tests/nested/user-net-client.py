#!/usr/bin/env python3
"""L0's side of the user-net scenario and benchmark: get PORT (read until the end, print the
sha256 and size), put PORT N (send N random bytes, half-close, wait for the close, print the
sha256) or bench PORT N (as put, printing MB/s from connect to the guest's close).
A connection the guest refused (passt then closes it with nothing sent) is tried again."""
import hashlib
import os
import socket
import sys
import time

RETRIES = 30


def connect(port):
    return socket.create_connection(("127.0.0.1", port), timeout=60)


def get(port):
    for _ in range(20):
        with connect(port) as s:
            h, n = hashlib.sha256(), 0
            while True:
                b = s.recv(1 << 16)
                if not b:
                    break
                h.update(b)
                n += len(b)
        if n:
            print(f"{n} {h.hexdigest()}")
            return
        time.sleep(1)
    sys.exit("no data from the guest")


def put(port, size):
    data = os.urandom(size)
    with connect(port) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        while s.recv(1 << 16):
            pass
    print(f"{size} {hashlib.sha256(data).hexdigest()}")


def bench(port, size):
    data = os.urandom(size)
    for _ in range(RETRIES):
        try:
            start = time.monotonic()
            with connect(port) as s:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
                while s.recv(1 << 16):
                    pass
            secs = time.monotonic() - start
            print(f"{size / secs / 1e6:.1f}")
            return
        except OSError:
            time.sleep(1)
    sys.exit("the guest never took the data")


def main():
    what, port = sys.argv[1], int(sys.argv[2])
    if what == "get":
        get(port)
    elif what == "bench":
        bench(port, int(sys.argv[3]))
    else:
        put(port, int(sys.argv[3]))


main()
