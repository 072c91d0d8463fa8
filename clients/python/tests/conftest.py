"""Fixtures: the real ``palisade`` binary on 127.0.0.1 ($PALISADE_BIN, default
target/debug/palisade) and HS256 tokens signed with its secret."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Optional
from urllib.request import Request, urlopen

import pytest

SECRET = "integration-test-secret-that-is-long-enough-0123456789"
ROOT = Path(__file__).resolve().parents[3]
BIN = os.environ.get("PALISADE_BIN", str(ROOT / "target" / "debug" / "palisade"))


def token(user_id: str, ttl_secs: int, **claims: object) -> str:
    """An HS256 token; ``claims`` are added (e.g. ``channels={"chat:*": ["subscribe"]}``)."""

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    now = int(time.time())
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"user_id": user_id, "iat": now, "exp": now + ttl_secs, **claims}).encode())
    sig = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


class Server:
    def __init__(self, overrides: Optional[dict[str, str]] = None) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="palisade-py-")
        keys = {
            "echo.listen": '"127.0.0.1:0"',
            "secure.listen": '"127.0.0.1:0"',
            "admin.listen": '"127.0.0.1:0"',
            "auth.leeway_secs": "0",
            "log.dir": json.dumps(os.path.join(self.dir.name, "log")),
            "log.level": '"info"',
            **(overrides or {}),
        }
        config = os.path.join(self.dir.name, "palisade.toml")
        with open(config, "w") as f:
            f.writelines(f"{k} = {v}\n" for k, v in keys.items())
        env = {k: v for k, v in os.environ.items() if k not in ("PALISADE_LOG_LEVEL", "PALISADE_LOG_DIR")}
        env["PALISADE_JWT_SECRET"] = SECRET
        self.proc = subprocess.Popen(
            [BIN, "--config", config], env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        found: dict[str, str] = {}
        ready = threading.Event()

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                m = re.match(r"palisade: (echo|secure|admin) listening on (?:[a-z]+://)?([^/\s]+)", line)
                if m:
                    found[m.group(1)] = m.group(2)
                    if len(found) == 3:
                        ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(15):
            self.proc.kill()
            raise RuntimeError("palisade did not print its addresses in time")
        self.secure, self.admin = found["secure"], found["admin"]
        self.url = f"ws://{self.secure}/"

    def admin_call(self, method: str, path: str) -> tuple[int, str]:
        with urlopen(Request(f"http://{self.admin}{path}", method=method), timeout=5) as r:
            return r.status, r.read().decode()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.dir.cleanup()


@pytest.fixture
def start_server() -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(overrides: Optional[dict[str, str]] = None) -> Server:
        s = Server(overrides)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()
