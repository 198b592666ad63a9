"""kvpoold's listener guard (daemon/listen_guard.c) where the tests of
test_raw_client.py do not take it: on a socket path near the 108 bytes a
Unix socket name may have (the new listener cannot be bound at <path>.<n>,
which would not fit, so it takes a shorter name in the same folder,
<dir>/.kvg<c><n>, or <dir>/.<c><n> for a short file name, c its first
character, before the rename over the socket file), and on the events socket, whose guard probes it with a
subscriber of its own.

The fault it mends is nng 1.5.2's (nanomsg/nng#1518): a peer that connects
and closes before the SP handshake is done stops the listener.

Then how long it goes on: more than 8 take-overs in one process (the cap it
had before), each counted in /metrics, with the guard's timings shortened
through KVPOOLD_GUARD_*_MS; where the descriptors run short (a lowered
RLIMIT_NOFILE) it says why it cannot mend now and the metrics say so, and
it takes over once they are freed (the limit raised again); at the limit
itself (EMFILE) it says that kvpoold is out of descriptors, and watches
again once they are back.

Needs $KVPOOL_BUILD/daemon/kvpoold, as test_raw_client.py.
"""
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import struct
import time

import pytest

from test_raw_client import METRICS, STATUS, Conn, bare_connects, first_answer, hello, start

# the guard's timings for tests (docs/operations.md §9): a check every
# 300 ms, bytes unread for 1 s, a probe that waits 500 ms: a take-over
# within about 2 s of the first client that got no answer, not 15-20 s
FAST = {"KVPOOLD_GUARD_EVERY_MS": "300", "KVPOOLD_GUARD_STUCK_MS": "1000", "KVPOOLD_GUARD_PROBE_MS": "500"}

# the guard's metrics of the request socket (docs/operations.md §7)
UNMENDED = 'kvpool_listener_unmended{socket="control"}'
GAVE_UP = 'kvpool_listener_guard_gave_up{socket="control"}'
TAKEN = 'kvpool_listener_takeovers_total{socket="control"}'


def metric(c, series):
    """The value of one series (name and labels as written) in the daemon's
    METRICS text, asked on c (after HELLO); None when it is not there."""
    body = c.ok(METRICS, struct.pack("<I", 0))
    (n,) = struct.unpack("<I", body[:4])
    for line in body[4:4 + n].decode().splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None



@contextlib.contextmanager
def daemon_on(tmp_path, folder, path, **kw):
    """A kvpoold (test_raw_client.start, kw passed on) on the request socket
    path, which lies under folder: yields (process, log path); then stops
    it, which must exit 0, and removes folder."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    p, logpath = start(tmp_path, path, **kw)
    try:
        yield p, logpath
    finally:
        if p.poll() is None:
            p.terminate()
        assert p.wait(timeout=10) == 0, logpath.read_text()
        shutil.rmtree(folder, ignore_errors=True)


def served(path, within):
    """first_answer with a shorter wait per try (0.5 s), (None, tries) when
    no new client got an answer within `within` seconds: each try that got
    none leaves nng a connection with unread bytes, which the guard counts."""
    return first_answer(path, within, per_try=0.5, pause=0.1, must=False)


@pytest.mark.parametrize("leaf", ["s.sock", "k.s"])
def test_a_socket_path_of_107_bytes_is_mended_too(tmp_path, leaf):
    # leaf "s.sock": the new listener goes on <dir>/.kvgs<n>; "k.s", for which
    # that would not fit either: <dir>/.k<n>
    base = f"/tmp/kvtest-guard-{os.getpid()}/"
    path = base + "d" * (107 - len(base) - len("/" + leaf)) + "/" + leaf
    assert len(path) == 107  # sun_path holds 108 bytes with the NUL: path.0 would not fit
    with daemon_on(tmp_path, base, path) as (p, logpath):
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


def test_the_events_socket_is_mended_too(tmp_path):
    # The events PUB listener has the same nng bug; its subscribers send
    # nothing once connected, so the guard probes it instead: every 10 s a
    # subscriber of the daemon's own must be attached within 3 s, or a new
    # listener takes the socket file.  A subscriber that comes after the
    # bare connects gets the shutdown event.
    d = f"/tmp/kvtest-evguard-{os.getpid()}"
    path, ev = d + "/s.sock", d + "/ev.sock"
    with daemon_on(tmp_path, d, path, events="ipc://" + ev) as (p, logpath):
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
    text = logpath.read_text()
    assert "the listener on " + ev + " stopped handing connections over" in text, \
        "the 20 bare connects did not stop nng's listener, or the guard did not see it: " + text
    assert "took over the socket file" in text, text


def test_more_than_8_take_overs_and_a_new_client_is_still_served(tmp_path):
    # The guard used to stop after 8 take-overs a process (KVD_GUARD_MAX),
    # leaving kvpoold deaf to new clients the 9th time its listener
    # stopped.  Now it takes over while the process has descriptors to
    # spare: 10 stops are mended, a new client is served after the last,
    # /metrics counts them, and a client connected before works throughout.
    d = f"/tmp/kvtest-guard10-{os.getpid()}"
    path, want = d + "/s.sock", 10
    with daemon_on(tmp_path, d, path, env=FAST) as (p, logpath):
        kept = Conn(path)
        hello(kept, "kept")
        for i in range(want):
            bare_connects(path, pid=p.pid)  # held stopped meanwhile: the listener stops every time
            c, stuck = served(path, within=15)
            assert c, f"stop {i + 1}: no new client was served within 15 s: " + logpath.read_text()
            assert stuck, f"stop {i + 1}: the bare connects did not stop nng's listener: " + logpath.read_text()
            c.close()
        text = logpath.read_text()
        assert text.count("took over the socket file") == want, text
        assert f"took over the socket file (take-over {want}; descriptors " in text, text
        assert "gives up" not in text and "could not take over" not in text, text
        c, stuck = served(path, within=5)
        assert c and stuck == 0, "a new client after the take-overs: " + text
        assert metric(c, TAKEN) == want
        assert metric(c, GAVE_UP) == 0
        assert metric(kept, TAKEN) == want
        c.close()
        kept.close()


def test_short_of_descriptors_the_guard_waits_and_takes_over_once_they_are_freed(tmp_path):
    # A take-over leaks a few descriptors for good, so the guard takes over
    # only under 3/4 of RLIMIT_NOFILE.  Live sessions count too, and leave:
    # so short of descriptors it no longer gives up for good (it did, for
    # the life of the process): it says once, at error level, with the
    # count and the limit, that the stopped listener cannot be replaced
    # now, kvpool_listener_unmended is 1, and once descriptors are freed
    # (here: the daemon's soft limit raised back) it takes over at its next
    # check, a new client is served, and the gauge is 0 again.
    d = f"/tmp/kvtest-guardfd-{os.getpid()}"
    path = d + "/s.sock"
    with daemon_on(tmp_path, d, path, env=FAST) as (p, logpath):
        kept = Conn(path)
        hello(kept, "kept")
        soft, hard = resource.prlimit(p.pid, resource.RLIMIT_NOFILE)
        base = len(os.listdir(f"/proc/{p.pid}/fd"))
        # 3/4 of the limit is base + 14: room for a stop's leak or two
        # (each: its listener, the clients that got no answer, the probe:
        # about 6), not for many; only the soft limit (kvpoold raised it to
        # the hard one at start), which the daemon could raise again itself
        limit = (base + 14) * 4 // 3 + 1
        assert limit < soft
        resource.prlimit(p.pid, resource.RLIMIT_NOFILE, (limit, hard))
        for i in range(6):
            bare_connects(path, pid=p.pid)
            c, _ = served(path, within=5)
            if c:
                c.close()
            if "cannot be replaced now" in logpath.read_text():
                break
        text = logpath.read_text()
        assert "stopped handing connections over (" in text and "cannot be replaced now: descriptors " in text, text
        assert f" of limit {limit} open" in text, text
        assert "the listener guard tries again each check" in text, text
        assert "gives up" not in text and "could not take over" not in text, text
        assert metric(kept, UNMENDED) == 1, text
        assert metric(kept, GAVE_UP) == 0
        taken = metric(kept, TAKEN)
        assert taken == text.count("took over the socket file"), text
        c, _ = served(path, within=1.5)
        assert c is None, "the listener was not stopped: " + text

        resource.prlimit(p.pid, resource.RLIMIT_NOFILE, (soft, hard))  # descriptors freed
        c, _ = served(path, within=5)
        text = logpath.read_text()
        assert c, "no new client was served within 5 s of the limit raised: " + text
        assert "the listener guard recovered: descriptors allow it now, and a new listener on " + path in text, text
        assert text.count("cannot be replaced now") == 1, "said once, not each check: " + text
        assert metric(c, UNMENDED) == 0
        assert metric(c, GAVE_UP) == 0
        assert metric(c, TAKEN) == taken + 1
        assert metric(kept, UNMENDED) == 0
        c.close()
        c, stuck = served(path, within=5)
        assert c and stuck == 0, "a second new client: " + logpath.read_text()
        c.close()
        kept.close()


def test_out_of_descriptors_the_guard_says_so_and_watches_again_after(tmp_path):
    # At the descriptor limit itself the guard cannot list the connections
    # (opendir of /proc/self/fd gets EMFILE), nor can nng accept a new
    # client.  It used to say once, at info level, that it was "not
    # watching", and nothing when descriptors came back.  Now it says at
    # error level that kvpoold is out of descriptors and new clients get no
    # answer, kvpool_listener_unmended is 1; once descriptors are back it
    # says so, the gauge is 0, and it mends a stop again.
    d = f"/tmp/kvtest-guardemfile-{os.getpid()}"
    path = d + "/s.sock"
    with daemon_on(tmp_path, d, path, env=FAST) as (p, logpath):
        kept = Conn(path)
        hello(kept, "kept")
        assert metric(kept, UNMENDED) == 0
        soft, hard = resource.prlimit(p.pid, resource.RLIMIT_NOFILE)
        # the soft limit at the lowest free descriptor: every open gets
        # EMFILE, while those it has keep working; the least of a few looks,
        # since a scan of the guard's or the reaper's holds one a moment
        lowest_free = 1 << 30
        for _ in range(20):
            fds = {int(f) for f in os.listdir(f"/proc/{p.pid}/fd")}
            lowest_free = min(lowest_free, min(set(range(max(fds) + 2)) - fds))
            time.sleep(0.01)
        resource.prlimit(p.pid, resource.RLIMIT_NOFILE, (lowest_free, hard))
        deadline = time.time() + 5
        while "kvpoold is out of descriptors" not in logpath.read_text() and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(1)  # a few more checks: said once
        text = logpath.read_text()
        said = ("kvpoold is out of descriptors (EMFILE: all %d of its limit are open; the listener guard could not "
                "list the connections): new clients on %s get no answer" % (lowest_free, path))
        assert text.count(said) == 1, text
        assert "cannot list the connections" not in text, text
        assert metric(kept, UNMENDED) == 1, text
        assert metric(kept, GAVE_UP) == 0

        resource.prlimit(p.pid, resource.RLIMIT_NOFILE, (soft, hard))
        deadline = time.time() + 5
        while "kvpoold has descriptors again" not in logpath.read_text() and time.time() < deadline:
            time.sleep(0.1)
        text = logpath.read_text()
        assert "kvpoold has descriptors again after " in text, text
        assert "the listener guard watches " + path + " again" in text, text
        assert metric(kept, UNMENDED) == 0
        # and it watches: a stop is mended
        bare_connects(path, pid=p.pid)
        c, stuck = served(path, within=15)
        assert c, "no new client was served within 15 s: " + logpath.read_text()
        assert stuck, "the bare connects did not stop nng's listener: " + logpath.read_text()
        assert metric(c, TAKEN) == 1
        assert metric(c, UNMENDED) == 0
        c.close()
        kept.close()
