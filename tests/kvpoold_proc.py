"""A kvpoold of its own for the Python tests and benchmarks that drive the
Python binding (tests/client/test_python.py, tests/gpu/python_cuda_check.py,
bench/attn/bench_graph.py, bench/client/bench_binding.py): the pools given
in a config file, no events socket, no metrics endpoint.

Not a test module (no test_ prefix): pytest does not collect it.
"""
import json
import os
import subprocess
import time


class Kvpoold:
    """start() it, use .url, stop() it (returns kvpoold's exit status)."""

    def __init__(self, folder, pools, exe=None):
        self.folder = str(folder)
        self.exe = exe or os.environ.get("KVPOOLD") or os.path.join(os.environ.get("KVPOOL_BUILD", "build"),
                                                                     "daemon", "kvpoold")
        self.pools = pools
        self.sock = os.path.join(self.folder, "kv.sock")  # a short folder: sun_path holds 108 bytes
        self.url = "ipc://" + self.sock
        self.log = os.path.join(self.folder, "kvpoold.log")
        self.proc = None

    def start(self, wait_s=30):
        """Starts kvpoold and waits for its socket; RuntimeError with its log
        if it exits first or the socket does not appear."""
        if not os.access(self.exe, os.X_OK):
            raise RuntimeError(f"{self.exe} is missing: build the project first")
        cfg = os.path.join(self.folder, "kvpoold.json")
        with open(cfg, "w") as f:
            json.dump({"pools": self.pools}, f)
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([self.exe, "--config", cfg, "--socket", self.url, "--events", "none",
                                          "--metrics", "none"], stdout=out, stderr=subprocess.STDOUT)
        end = time.monotonic() + wait_s
        while not os.path.exists(self.sock) and self.proc.poll() is None and time.monotonic() < end:
            time.sleep(0.05)
        if self.proc.poll() is not None or not os.path.exists(self.sock):
            self.stop()
            raise RuntimeError("kvpoold did not start:\n" + self.log_text())
        return self

    def log_text(self):
        with open(self.log) as f:
            return f.read()

    def stop(self, timeout=20):
        """SIGTERM, then its exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout=timeout)
