"""A real ``redis-server`` on a free loopback port, for the edge-loop tests and the serving benchmarks."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis


def free_port() -> int:
    """A TCP port nobody listens on at the moment, on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """``redis-server`` in a folder of its own, with an append-only file (synced on every write by default)."""

    def __init__(self, folder: Path, port: int | None = None, fsync: str = "always") -> None:
        """Find the server; nothing starts yet.

        Args:
            folder: Its working folder (the append-only file).
            port: Its port (default: a free one).
            fsync: ``appendfsync``: ``always`` (every write on disk before the reply: nothing lost even on a
                power cut) or ``everysec`` (Redis's default, and ``make redis``'s).
        """
        executable = shutil.which("redis-server")
        if executable is None:
            msg = "redis-server is not installed: run 'make system-deps' (apt-packages.txt)"
            raise RuntimeError(msg)
        self.executable = executable
        self.folder = folder
        self.port = port or free_port()
        self.fsync = fsync
        self.process: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING (at most 10 s)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        command = [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)]
        command += ["--appendonly", "yes", "--appendfsync", self.fsync, "--save", "", "--protected-mode", "yes"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return self
            except redis.ConnectionError:
                time.sleep(0.05)
        self.stop()
        msg = f"redis-server did not answer on port {self.port} within 10 s"
        raise RuntimeError(msg)

    def client(self) -> redis.Redis:
        """A client of this server (text answers)."""
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True, socket_timeout=30)

    def stop(self) -> None:
        """Stop the server (its append-only file keeps what was written)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    @property
    def uri(self) -> str:
        """``host:port`` as ALO's solution metadata writes it."""
        return f"127.0.0.1:{self.port}"
