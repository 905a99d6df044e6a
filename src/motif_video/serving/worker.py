"""Workers: one thread per device, each loading its pipeline once and running one job at a time.

* The model is not ours to build here: a `Backend` (the command line's `generate` path, handed in by `cli.serve`)
  checks settings, loads the pipeline and writes a video with its settings JSON beside it, atomically.
* A worker claims the oldest queued job, runs it with a step callback that records progress (0-95% over the
  denoising steps; decoding and writing take the rest) and that stops the run when the job was deleted, then marks
  it completed or failed. Only the attempt that claimed a job can finish it (`JobStore`), so it finishes once.
* A job that dies with the process stays `in_progress` in the store; the next start puts it back in the queue, and
  rerunning it rewrites the same files atomically (same settings, same seed, same video).
* A worker whose model fails to load reports it in `state` (and /healthz); the jobs wait in the queue.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from motif_video.atomic import TMP_SUFFIX
from motif_video.core.release import GenerationDefaults
from motif_video.pipeline.settings import GenerationSettings
from motif_video.serving.store import Job, JobStore

logger = logging.getLogger(__name__)

VIDEO = "video.mp4"  # in videos/<job id>/, with its settings JSON (video.json) beside it
FIRST_FRAME = "first_frame.png"
DENOISE_SHARE = 95  # percent of the progress bar the denoising steps fill
IDLE_POLL_S = 0.5  # a worker also looks at the queue this often without being woken


class Backend(Protocol):
    """What a worker needs from a model; `cli.serve.GenerateBackend` is the one over `motif-video generate`."""

    name: str  # shown as the jobs' `model`
    device: str
    defaults: GenerationDefaults  # the release's, for settings a request leaves unset
    fps: int

    def check(self, prompt: str, settings: GenerationSettings, image: Path | None, output: Path) -> None:
        """The settings validation of `generate`, without a model; ValueError naming what to change."""

    def load(self) -> None:
        """Build the pipeline (once, in the worker's thread)."""

    def run(
        self,
        prompt: str,
        settings: GenerationSettings,
        image: Path | None,
        output: Path,
        on_step: Callable[[int], None],
    ) -> None:
        """Generate `output` and its settings JSON; call `on_step(done)` after each denoising step."""


class JobGone(Exception):
    """The running job was deleted (or is no longer this attempt's): stop at this step."""


class Stopping(Exception):
    """The service is shutting down: leave the job `in_progress`, so the next start requeues it."""


class Worker(threading.Thread):
    """Runs queued jobs on one backend until `stop` is set; `wake` tells it a job was queued."""

    def __init__(
        self, store: JobStore, videos: Path, backend: Backend, wake: threading.Event, stop: threading.Event
    ) -> None:
        super().__init__(name=f"motif-video-worker-{backend.device}", daemon=True)
        self.store, self.videos, self.backend, self.wake, self.stop = store, videos, backend, wake, stop
        self.state, self.error, self.job_id = "loading", None, None

    def run(self) -> None:
        try:
            self.backend.load()
        except Exception as err:  # reported by /healthz; the queue waits for a working server
            logger.exception("worker %s: the model did not load", self.backend.device)
            self.state, self.error = "failed", f"{type(err).__name__}: {err}"
            return
        self.state = "ready"
        while not self.stop.is_set():
            job = self.store.claim()
            if job is None:
                self.wake.wait(IDLE_POLL_S)
                self.wake.clear()
                continue
            self.state, self.job_id = "busy", job.id
            try:
                self.run_job(job)
            except Stopping:
                logger.info(
                    "worker %s: stopped during %s; it is requeued at the next start", self.backend.device, job.id
                )
                return
            finally:
                self.state, self.job_id = "ready", None

    def run_job(self, job: Job) -> None:
        folder = self.videos / job.id
        settings = GenerationSettings(**job.settings)
        image = folder / FIRST_FRAME if job.has_image else None
        logger.info("worker %s: %s attempt %d: %r", self.backend.device, job.id, job.attempts, job.prompt)
        for leftover in folder.glob(f".*{TMP_SUFFIX}*"):  # a half-written file of a killed earlier attempt
            leftover.unlink(missing_ok=True)
        try:
            self.backend.run(job.prompt, settings, image, folder / VIDEO, self._progress(job, settings.steps or 1))
        except Stopping:
            raise
        except JobGone:
            shutil.rmtree(folder, ignore_errors=True)
            logger.info("worker %s: %s was deleted while running", self.backend.device, job.id)
            return
        except Exception as err:
            logger.exception("worker %s: %s failed", self.backend.device, job.id)
            if not self.store.fail(job, f"{type(err).__name__}: {err}") and self.store.status(job.id) is None:
                shutil.rmtree(folder, ignore_errors=True)
            return
        if not self.store.complete(job) and self.store.status(job.id) is None:
            shutil.rmtree(folder, ignore_errors=True)  # deleted between its last step and now

    def _progress(self, job: Job, steps: int) -> Callable[[int], None]:
        last = [-1]

        def on_step(done: int) -> None:
            if self.stop.is_set():
                raise Stopping
            percent = min(DENOISE_SHARE, DENOISE_SHARE * done // steps)
            if percent != last[0]:
                last[0] = percent
                if not self.store.set_progress(job, percent):
                    raise JobGone(job.id)
            elif self.store.status(job.id) is None:
                raise JobGone(job.id)

        return on_step
