"""kvpoold's listener guard (daemon/listen_guard.c) where the tests of
test_raw_client.py do not take it: on a socket path near the 108 bytes a
Unix socket name may have (the new listener cannot be bound at <path>.<n>,
which would not fit, so it takes a shorter name in the same folder,
<dir>/.kvg<c><n>, or <dir>/.<c><n> for a short file name, c its first
character, before the rename over the socket file), and on the events socket, whose guard probes it with a
subscriber of its own.

The fault it mends is nng 1.5.2's (nanomsg/nng#1518): a peer that connects
and closes before the SP handshake is done stops the listener.

Needs $KVPOOL_BUILD/daemon/kvpoold, as test_raw_client.py.
"""
import json
import os
import shutil
import signal
import socket
import struct
import time

import pytest

from test_raw_client import STATUS, Conn, bare_connects, first_answer, hello, start


@pytest.mark.parametrize("leaf", ["s.sock", "k.s"])
def test_a_socket_path_of_107_bytes_is_mended_too(tmp_path, leaf):
    # leaf "s.sock": the new listener goes on <dir>/.kvgs<n>; "k.s", for which
    # that would not fit either: <dir>/.k<n>
    base = f"/tmp/kvtest-guard-{os.getpid()}/"
    path = base + "d" * (107 - len(base) - len("/" + leaf)) + "/" + leaf
    assert len(path) == 107  # sun_path holds 108 bytes with the NUL: path.0 would not fit
    os.makedirs(os.path.dirname(path), exist_ok=True)
    p, logpath = start(tmp_path, path)
    try:
        kept = Conn(path)
        hello(kept, "kept")
        bare_connects(path, pid=p.pid)  # held stopped meanwhile: the listener stops every time
        c, stuck = first_answer(path, why=logpath.read_text)
        assert stuck, "the 20 bare connects did not stop nng's listener: " + logpath.read_text()
        assert json.loads(c.ok(STATUS, struct.pack("<I", 0))[4:])["pools"]
        assert json.loads(kept.ok(STATUS, struct.pack("<I", 0))[4:])["pools"]
        text = logpath.read_text()
        assert "took over the socket file" in text, text
        assert "could not take over" not in text, text
        folder = os.path.dirname(path)  # the new listener's name was renamed over the socket file
        assert not os.path.exists(f"{folder}/.kvg{leaf[0]}1") and not os.path.exists(f"{folder}/.{leaf[0]}1")
        c.close()
        kept.close()
    finally:
        p.terminate()
        assert p.wait(timeout=10) == 0, logpath.read_text()
        shutil.rmtree(base, ignore_errors=True)


def test_the_events_socket_is_mended_too(tmp_path):
    # The events PUB listener has the same nng bug; its subscribers send
    # nothing once connected, so the guard probes it instead: every 10 s a
    # subscriber of the daemon's own must be attached within 3 s, or a new
    # listener takes the socket file.  A subscriber that comes after the
    # bare connects gets the shutdown event.
    d = f"/tmp/kvtest-evguard-{os.getpid()}"
    os.makedirs(d, exist_ok=True)
    path, ev = d + "/s.sock", d + "/ev.sock"
    p, logpath = start(tmp_path, path, events="ipc://" + ev)
    try:
        bare_connects(ev, pid=p.pid)  # the daemon held stopped meanwhile: they stop nng's listener every time
        time.sleep(10 + 3 + 3 + 2)  # a probe period, its wait, a check, slack
        sub = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sub.settimeout(5)
        sub.connect(ev)
        sub.sendall(b"\x00SP\x00" + struct.pack(">H", 0x21) + b"\x00\x00")  # SUB0
        hs = b""
        while len(hs) < 8:
            hs += sub.recv(8 - len(hs))
        assert hs[:4] == b"\x00SP\x00" and struct.unpack(">H", hs[4:6])[0] == 0x20, hs
        time.sleep(0.5)
        p.send_signal(signal.SIGTERM)
        got = b""
        try:
            while len(got) < 9 + 56:
                chunk = sub.recv(9 + 56 - len(got))
                if not chunk:
                    break
                got += chunk
        except socket.timeout:
            pass
        assert len(got) == 9 + 56, f"the subscriber got {len(got)} bytes: " + logpath.read_text()
        assert got[0] == 1 and struct.unpack("<IHH", got[9:17]) == (0x3145564B, 1, 4)  # SHUTDOWN
        sub.close()
    finally:
        if p.poll() is None:
            p.terminate()
        assert p.wait(timeout=10) == 0, logpath.read_text()
        shutil.rmtree(d, ignore_errors=True)
    text = logpath.read_text()
    assert "the listener on " + ev + " stopped handing connections over" in text, \
        "the 20 bare connects did not stop nng's listener, or the guard did not see it: " + text
    assert "took over the socket file" in text, text
