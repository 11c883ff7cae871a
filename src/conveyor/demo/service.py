"""A Conveyor service on this machine, for the demo, benchmarks and tests: start, drive, stop.

``LocalService`` runs ``conveyor serve`` on 127.0.0.1 in its own process group and stops it with
SIGINT (the graceful path, as Ctrl-C), killing it only when it does not end in time. ``drive``
sends a bounded number of one-row predictions at a bounded concurrency.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

__all__ = ["LocalService", "Reply", "drive", "free_port"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class LocalService:
    config: Path  # the project's conveyor.yaml
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    log: Path | None = None
    cwd: Path | None = None  # where the service runs (default: the project's folder)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180) -> None:
        """``conveyor serve`` in its own process group; returns once ``/readyz`` answers 200."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "MLFLOW_", "BENTOML_"))}
        env.update(self.env)
        self.log = self.log or self.config.parent / f"serve-{self.port}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("w") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "conveyor", "--config", str(self.config), "serve", "--port", str(self.port)],
                cwd=self.cwd or self.config.parent,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the service exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            try:
                # Every worker must be ready: each new connection may reach another one.
                if all(httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200 for _ in range(8)):
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the service was not ready within {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self, timeout: float = 60) -> int | None:
        """A graceful stop (SIGINT, as Ctrl-C); killed if it does not end within ``timeout``."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
            raise

    def admin(self, method: str, path: str, token: str, body: dict | None = None) -> httpx.Response:
        return httpx.request(
            method, f"{self.url}/admin/{path}", json=body, timeout=120, headers={"Authorization": f"Bearer {token}"}
        )


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]
    key: str | None


def drive(
    url: str,
    token: str,
    rows: Sequence[dict],
    *,
    requests: int,
    concurrency: int = 8,
    keys: Sequence[str | None] = (None,),
    stop: Callable[[], bool] | None = None,
    check_every: int = 50,
    keepalive: bool = True,
) -> list[Reply]:
    """Up to ``requests`` one-row predictions at ``concurrency``; ends early once ``stop()`` is true
    (asked every ``check_every`` requests). Bounded in count; every reply is returned. Without
    ``keepalive`` each request opens a connection of its own (so several workers all get some)."""

    async def run() -> list[Reply]:
        replies: list[Reply] = []
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency if keepalive else 0)
        async with httpx.AsyncClient(
            base_url=url, timeout=60, limits=limits, headers={"Authorization": f"Bearer {token}"}
        ) as client:

            async def one(i: int) -> None:
                key = keys[i % len(keys)]
                response = await client.post("/predict", json={"rows": [rows[i % len(rows)]], "key": key})
                replies.append(Reply(response.status_code, response.json(), key))

            semaphore = asyncio.Semaphore(concurrency)

            async def limited(i: int) -> None:
                async with semaphore:
                    await one(i)

            sent = 0
            while sent < requests:
                batch = min(check_every, requests - sent)

                await asyncio.gather(*(limited(sent + i) for i in range(batch)))
                sent += batch
                if stop is not None and await asyncio.to_thread(stop):
                    break
        return replies

    return asyncio.run(run())
