"""Private cache servers for the tests: a redis-server and a memcached on free loopback ports.

Each runs from its Debian binary in a temporary directory, for one test
module, and is stopped at its end. A missing binary skips the tests that
need it, with the reason, except under CI=true where it fails them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass

import pytest

from conftest import IN_CI

STARTUP_TIMEOUT = 10.0  # seconds; either server starts in a few milliseconds


@dataclass
class CacheServer:
    host: str
    port: int
    process: subprocess.Popen
    unix_socket: str | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        # Killed: they keep nothing, and memcached takes a second to stop when asked.
        self.process.kill()
        self.process.wait(5)


def require_binary(name: str) -> str:
    """The path of ``name``; a skip (a failure under CI) when it is not installed."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not installed (Debian: apt-get install {name})"
        if IN_CI:
            pytest.fail(f"CI must run the cache tests: {reason}", pytrace=False)
        pytest.skip(reason)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_serving(server: CacheServer, hello: bytes, answer: bytes, log_path: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        try:
            with socket.create_connection((server.host, server.port), timeout=1) as conn:
                conn.sendall(hello)
                if conn.recv(100).startswith(answer):
                    return
        except OSError:
            time.sleep(0.02)
    server.stop()
    with open(log_path, encoding="utf-8", errors="replace") as log:
        pytest.fail(f"{server.process.args[0]} did not start:\n{log.read()}", pytrace=False)


def _start_logging_to(command: list[str], log_path: str) -> subprocess.Popen:
    """Start ``command`` with what it prints appended to its log.

    Not the test run's output: a server left behind by a test run that
    crashed would hold a pipe reading that output open.
    """
    with open(log_path, "ab") as log:
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)


def start_redis(directory: str) -> CacheServer:
    """A redis-server on a free port and a unix socket, persisting nothing, in ``directory``."""
    binary = require_binary("redis-server")
    port = free_port()
    log_path = os.path.join(directory, "redis.log")
    unix_socket = os.path.join(directory, "redis.sock")
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--dir", directory, "--logfile", log_path]
    command += ["--unixsocket", unix_socket, "--unixsocketperm", "700"]
    process = _start_logging_to(command, log_path)
    server = CacheServer("127.0.0.1", port, process, unix_socket)
    _wait_until_serving(server, b"PING\r\n", b"+PONG", log_path)
    return server


def start_memcached(directory: str) -> CacheServer:
    """A memcached on a free port (TCP only), logging into ``directory``."""
    binary = require_binary("memcached")
    port = free_port()
    log_path = os.path.join(directory, "memcached.log")
    command = [binary, "-p", str(port), "-l", "127.0.0.1", "-U", "0"]
    if os.geteuid() == 0:
        command += ["-u", "root"]  # memcached refuses to run as root unless told so
    process = _start_logging_to(command, log_path)
    server = CacheServer("127.0.0.1", port, process)
    _wait_until_serving(server, b"version\r\n", b"VERSION", log_path)
    return server


def start_sentinel(directory: str, master: CacheServer, service: str) -> CacheServer:
    """A Redis Sentinel on a free port watching ``master`` as ``service``."""
    binary = require_binary("redis-server")
    port = free_port()
    log_path = os.path.join(directory, "sentinel.log")
    config = os.path.join(directory, "sentinel.conf")  # Sentinel rewrites it: its own copy
    with open(config, "w", encoding="utf-8") as file:
        file.write(f"port {port}\nbind 127.0.0.1\ndir {directory}\nlogfile {log_path}\n")
        file.write(f"sentinel monitor {service} {master.host} {master.port} 1\n")
    process = _start_logging_to([binary, config, "--sentinel"], log_path)
    server = CacheServer("127.0.0.1", port, process)
    _wait_until_serving(server, b"PING\r\n", b"+PONG", log_path)
    return server
