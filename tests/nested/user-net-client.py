#!/usr/bin/env python3
"""L0's side of the user-net scenario: get PORT (read until the end, print the sha256 and
size) or put PORT (send N random bytes, half-close, wait for the close, print the sha256).
A connection the guest refused (passt then closes it with nothing sent) is tried again."""
import hashlib
import os
import socket
import sys
import time


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


def main():
    what, port = sys.argv[1], int(sys.argv[2])
    if what == "get":
        get(port)
    else:
        put(port, int(sys.argv[3]))


main()
