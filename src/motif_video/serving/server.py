"""The service as one object: the data folder, the store, the workers and the app, started and stopped together.

    DATA/serve.lock          held while a service runs (a second service on the same folder refuses to start)
    DATA/jobs.sqlite3        the job store (`store.py`)
    DATA/videos/<job id>/    first_frame.png (I2V), video.mp4 and video.json (the settings, as `generate` writes)

At start: jobs a dead process left `in_progress` go back to the queue, folders without a job (an upload whose
request died before its commit) are removed, then one worker per backend (device) starts loading its model while
the app already accepts jobs.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from motif_video.serving.app import AppContext, create_app
from motif_video.serving.config import ServeSettings
from motif_video.serving.schemas import ID_PATTERN
from motif_video.serving.store import JobStore
from motif_video.serving.submit import Submitter
from motif_video.serving.worker import Backend, Worker

logger = logging.getLogger(__name__)

LOCK_FILE = "serve.lock"
VIDEOS = "videos"


class Service:
    """`start()` -> the app (workers running); `stop()`; `serve()` does both around uvicorn."""

    def __init__(self, settings: ServeSettings, backends: Sequence[Backend]) -> None:
        if not backends:
            raise ValueError("a service needs at least one backend (one per device)")
        settings.validate()
        self.settings, self.backends = settings, list(backends)
        self.folder = Path(settings.data)
        self.videos = self.folder / VIDEOS
        self.store: JobStore | None = None
        self.workers: list[Worker] = []
        self._wake, self._stop = threading.Event(), threading.Event()
        self._lock_fd: int | None = None

    def start(self) -> FastAPI:
        self.videos.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        self.store = JobStore(self.folder)
        requeued = self.store.requeue_running()
        if requeued:
            logger.info("requeued %d job(s) a previous run left running: %s", len(requeued), ", ".join(requeued))
        self._remove_orphans(self.store.ids())
        first = self.backends[0]
        submitter = Submitter(self.store, self.videos, self.settings, first, first.defaults, self._wake.set)
        ctx = AppContext(self.store, submitter, self.settings, self.videos, first.name, first.fps, self.health)
        app = create_app(ctx)
        self.workers = [Worker(self.store, self.videos, b, self._wake, self._stop) for b in self.backends]
        for worker in self.workers:
            worker.start()
        return app

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the workers (a running job stops at its next step and is requeued at the next start)."""
        self._stop.set()
        self._wake.set()
        for worker in self.workers:
            worker.join(timeout)
        if self.store is not None:
            self.store.close()
            self.store = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def serve(self) -> None:
        import uvicorn

        app = self.start()
        try:
            logger.info("serving %s on http://%s:%d/", self.backends[0].name, self.settings.host, self.settings.port)
            uvicorn.run(app, host=self.settings.host, port=self.settings.port, log_level="info")
        finally:
            self.stop()

    def health(self) -> dict[str, Any]:
        workers = [
            {"device": w.backend.device, "state": w.state, "job": w.job_id, "error": w.error} for w in self.workers
        ]
        states = {w["state"] for w in workers}
        status = "ok" if states & {"ready", "busy"} else "loading" if "loading" in states else "error"
        counts = self.store.counts() if self.store is not None else {}
        return {"status": status, "model": self.backends[0].name, "workers": workers, "jobs": counts}

    def _take_lock(self) -> None:
        fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the kernel drops it when the process dies, even on kill -9
        except OSError:
            os.close(fd)
            raise ValueError(
                f"another motif-video serve is using {self.folder}: stop it or choose another --data"
            ) from None
        self._lock_fd = fd

    def _remove_orphans(self, ids: set[str]) -> None:
        for entry in self.videos.iterdir():
            if ID_PATTERN.match(entry.name) and entry.name not in ids:
                shutil.rmtree(entry, ignore_errors=True)
