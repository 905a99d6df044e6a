"""Helpers for the `motif-video serve` tests: a service on 127.0.0.1 in this process or in a child process."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from motif_video.serving import ServeSettings, Service

PROMPT = "a large red circle moves to the left slowly on a black background."
HOST = "127.0.0.1"  # the tests never bind or connect anywhere else


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], Any], timeout: float = 60.0, every: float = 0.05, what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"{what} not reached in {timeout} s")


@contextlib.contextmanager
def running_service(data: Path, backend: Any, **settings: Any) -> Iterator[tuple[str, Service]]:
    """A Service on a free local port, served by uvicorn in a thread; (base url, service)."""
    port = free_port()
    service = Service(ServeSettings(host=HOST, port=port, data=str(data), **settings), [backend])
    app = service.start()
    server = uvicorn.Server(uvicorn.Config(app, host=HOST, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 30, what="server start")
        yield f"http://{HOST}:{port}", service
    finally:
        server.should_exit = True
        thread.join(30)
        service.stop()


def wait_done(client: httpx.Client, video_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """The job once it is completed or failed."""

    def done() -> dict[str, Any] | None:
        job = client.get(f"/v1/videos/{video_id}").json()
        return job if job["status"] in ("completed", "failed") else None

    return wait_for(done, timeout, what=f"{video_id} finished")


class ServeProcess:
    """`python -m motif_video serve` as a child process on a free local port."""

    def __init__(self, data: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")
        cmd = [sys.executable, "-m", "motif_video", "serve", "--host", HOST, "--port", str(self.port)]
        self.log = open(data.parent / f"serve-{self.port}.log", "w")  # noqa: SIM115 (closed in kill/stop)
        self.proc = subprocess.Popen(
            [*cmd, "--data", str(data), *args], env=env, stdout=self.log, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"serve exited with {self.proc.returncode}: {Path(self.log.name).read_text()[-2000:]}"
                )
            try:
                return httpx.get(self.url + "/healthz", timeout=2).json()["status"] == "ok"
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout, every=0.2, what="serve ready")

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed or closed by the process itself."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self.log.close()
