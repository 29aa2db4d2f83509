#!/usr/bin/env python3
"""Drives minivmm's QMP socket with the real qemu.qmp client (PyPI), for vmm/tests/qmp.rs.

Usage: qmp_client.py SOCKET CONSOLE_FILE. Runs against the ticker payload (it writes '.' to
COM1 steadily and powers off on the ACPI power button). Prints one "OK ..." line per check
and "QMP-CLIENT-PASS" at the end; any failure raises (non-zero exit).
"""
import asyncio
import json
import os
import socket
import sys

from qemu.qmp import EventListener, ExecuteError, QMPClient


def console_size(path):
    return os.path.getsize(path)


async def event(listener, name, timeout=10):
    while True:
        ev = await asyncio.wait_for(listener.get(), timeout)
        if ev["event"] == name:
            return ev


def raw_client(path, payload):
    """A hostile client: sends payload, returns what it got until the server closed."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    got = b""
    s.sendall(payload)
    while True:
        b = s.recv(65536)
        if not b:
            break
        got += b
    s.close()
    return got


async def main(sock, console):
    # Malformed and oversized input close that client only.
    got = raw_client(sock, b'{"execute": ]\n')
    assert b'"QMP"' in got and b"GenericError" in got, got
    print("OK malformed JSON: error reply, then closed")
    got = raw_client(sock, b'{"execute": "' + b"a" * (70 * 1024))
    assert b"longer than" in got, got
    print("OK oversized message: error reply, then closed")

    qmp = QMPClient("minivmm-test")
    await qmp.connect(sock)
    g = qmp.greeting
    assert g is not None and "qemu" in g.QMP.version, g
    print("OK greeting and negotiation:", json.dumps(g.QMP.version))

    st = await qmp.execute("query-status")
    assert st == {"running": True, "status": "running"}, st
    ver = await qmp.execute("query-version")
    assert ver["package"].startswith("minivmm"), ver
    cpus = await qmp.execute("query-cpus-fast")
    assert len(cpus) == 2 and all(c["thread-id"] > 0 for c in cpus), cpus
    pci = await qmp.execute("query-pci")
    ids = [(d["id"]["vendor"], d["id"]["device"]) for d in pci[0]["devices"]]
    assert (0x1234, 0x11E8) in ids, ids
    cmds = {c["name"] for c in await qmp.execute("query-commands")}
    assert {"stop", "cont", "system_powerdown", "x-query-vtd"} <= cmds, cmds
    assert await qmp.execute("query-name") == {}
    print("OK queries: status, version, 2 vCPUs, edu on PCI, commands")

    try:
        await qmp.execute("no-such-command")
        raise AssertionError("an unknown command succeeded")
    except ExecuteError as e:
        assert e.error.error.class_ == "CommandNotFound", e
    try:
        await qmp.execute("stop", {"bogus": 1})
        raise AssertionError("a bad argument was accepted")
    except ExecuteError as e:
        assert e.error.error.class_ == "GenericError", e
    print("OK errors: CommandNotFound, GenericError")

    vtd = await qmp.execute("x-query-vtd")
    assert vtd["translation"] is False and isinstance(vtd["devices"], list), vtd
    hmp = await qmp.execute("human-monitor-command", {"command-line": "info status"})
    assert hmp == "VM status: running\r\n", hmp
    print("OK x-query-vtd and human-monitor-command")

    listener = EventListener()
    with qmp.listen(listener):
        await qmp.execute("stop")
        ev = await event(listener, "STOP")
        assert "timestamp" in ev, ev
        assert (await qmp.execute("query-status"))["status"] == "paused"
        # Paused means no guest-visible progress: the console stops growing.
        await asyncio.sleep(0.3)
        before = console_size(console)
        await asyncio.sleep(1.5)
        paused_growth = console_size(console) - before
        assert paused_growth == 0, f"the console grew by {paused_growth} bytes while paused"
        await qmp.execute("cont")
        await event(listener, "RESUME")
        before = console_size(console)
        await asyncio.sleep(1.5)
        running_growth = console_size(console) - before
        assert running_growth > 0, "the console did not grow after cont"
        print(f"OK stop/cont: STOP, 0 bytes in 1.5 s paused; RESUME, {running_growth} bytes in 1.5 s")

        await qmp.execute("system_powerdown")
        await event(listener, "POWERDOWN")
        sd = await event(listener, "SHUTDOWN")
        assert sd["data"] == {"guest": True, "reason": "guest-shutdown"}, sd
        print("OK system_powerdown: POWERDOWN, the guest powered off, SHUTDOWN", json.dumps(sd["data"]))
    await qmp.disconnect()
    print("QMP-CLIENT-PASS")


asyncio.run(main(sys.argv[1], sys.argv[2]))
