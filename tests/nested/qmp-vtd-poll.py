#!/usr/bin/env python3
"""Polls minivmm's x-query-vtd over QMP while an L1 runs (60-vfio).

Usage: qmp-vtd-poll.py SOCKET OUT.json DEVICE. Connects once the socket exists, negotiates,
and asks x-query-vtd every 0.3 s until minivmm closes the connection. Keeps in OUT.json the
answer in which DEVICE (the host address of a passed-through function) had the most
coalesced mappings: what the vIOMMU held for it while L1's DMA test ran.
"""
import json
import os
import socket
import sys
import time

sock_path, out_path, device = sys.argv[1:4]
deadline = time.time() + 900
while not os.path.exists(sock_path):
    if time.time() > deadline:
        sys.exit("qmp-vtd-poll: the QMP socket never appeared")
    time.sleep(0.2)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sock_path)
f = s.makefile("rwb")


def recv():
    while True:
        line = f.readline()
        if not line:
            return None
        msg = json.loads(line)
        if "event" not in msg:
            return msg


def execute(cmd):
    f.write(json.dumps({"execute": cmd}).encode() + b"\n")
    f.flush()
    return recv()


recv()  # greeting
execute("qmp_capabilities")
best = -1
polls = 0
while time.time() < deadline:
    try:
        r = execute("x-query-vtd")
    except OSError:
        break
    if r is None:
        break
    polls += 1
    for d in r.get("return", {}).get("devices", []):
        vfio = d.get("vfio") or {}
        if vfio.get("device") == device and len(d["mappings"]) > best:
            best = len(d["mappings"])
            with open(out_path, "w") as out:
                json.dump({"polls": polls, "device": d, "view": r["return"]}, out)
    time.sleep(0.3)
print(f"qmp-vtd-poll: {polls} answers, at most {best} mapped ranges for {device}")
