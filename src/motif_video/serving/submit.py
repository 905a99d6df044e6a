"""Accepting a job: everything between a parsed request and a committed row, in this order.

1. The Idempotency-Key, if any, is checked: the same key with the same request returns the job it made; with
   another request it is a 409.
2. The fields are parsed and resolved against the model's defaults; the server's limits apply.
3. A first-frame upload is checked by its bytes, then by its header's pixel count (before anything is decoded),
   then decoded and stored as `first_frame.png` in the job's folder: the client's file name is never used, and the
   folder is named by the job's random id.
4. The same validation as `motif-video generate` runs (the worker's `check`), with the job's own output path.
5. The job is committed, then the workers are woken. A failure anywhere before the commit removes the folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageOps

from motif_video import atomic
from motif_video.core.release import GenerationDefaults
from motif_video.core.video_read import to_rgb
from motif_video.serving.config import ServeSettings
from motif_video.serving.errors import ApiError
from motif_video.serving.schemas import check_limits, param_in_message, parse_request, resolve, settings_record
from motif_video.serving.store import QUEUED, DuplicateKey, Job, JobStore
from motif_video.serving.worker import FIRST_FRAME, VIDEO, Backend

MAX_KEY_CHARS = 255
KEY_HEADER = "Idempotency-Key"


def new_id() -> str:
    """A random job id: 128 bits, so ids can be neither guessed nor enumerated."""
    return "video_" + secrets.token_hex(16)


class Submitter:
    """Turns requests into committed jobs (see the module docstring for the order of the checks)."""

    def __init__(
        self,
        store: JobStore,
        videos: Path,
        limits: ServeSettings,
        backend: Backend,
        defaults: GenerationDefaults,
        wake: Callable[[], None],
    ) -> None:
        self.store, self.videos, self.limits, self.backend = store, videos, limits, backend
        self.defaults, self.wake = defaults, wake

    def submit(self, data: object, image: bytes | None, key: str | None) -> tuple[Job, bool]:
        """(the job, whether it is a replay of an earlier request with the same Idempotency-Key)."""
        if key is not None and (not key or len(key) > MAX_KEY_CHARS or not key.isprintable() or not key.isascii()):
            raise ApiError(400, f"{KEY_HEADER}: 1 to {MAX_KEY_CHARS} printable ASCII characters", KEY_HEADER)
        prompt, given = parse_request(data)
        settings = resolve(given, self.defaults, image is not None)
        check_limits(settings, set(data), self.limits)  # a dict: parse_request said so
        frame = None if image is None else self._first_frame(image)
        record = settings_record(settings)
        fingerprint = _fingerprint(prompt, record, image)
        if key is not None:
            earlier = self.store.by_key(key)
            if earlier is not None:
                return self._replay(earlier, fingerprint), True
        if self.store.counts()[QUEUED] >= self.limits.max_queued:
            raise ApiError(429, f"the queue is full ({self.limits.max_queued} jobs): retry later", None, "queue_full")

        job_id = new_id()
        folder = self.videos / job_id
        folder.mkdir(parents=True)
        try:
            image_path = None
            if frame is not None:
                image_path = folder / FIRST_FRAME
                with atomic.atomic_path(image_path) as tmp:
                    frame.save(tmp, format="PNG")
            try:
                self.backend.check(prompt, settings, image_path, folder / VIDEO)
            except ValueError as err:
                raise ApiError(400, str(err), param_in_message(str(err)), "invalid_value") from None
            job = self.store.create(job_id, prompt, record, frame is not None, key, fingerprint)
        except DuplicateKey as dup:  # another request with this key was committed between our check and ours
            shutil.rmtree(folder, ignore_errors=True)
            return self._replay(dup.job, fingerprint), True
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self.wake()
        return job, False

    def _replay(self, earlier: Job, fingerprint: str) -> Job:
        if earlier.fingerprint != fingerprint:
            raise ApiError(
                409,
                f"{KEY_HEADER} was used for another request ({earlier.id}): use a new key for new settings",
                KEY_HEADER,
                "idempotency_key_reused",
            )
        return earlier

    def _first_frame(self, data: bytes) -> Image.Image:
        limit = self.limits.max_upload_bytes
        if len(data) > limit:
            raise ApiError(413, f"image: {len(data)} bytes, over the limit of {limit}", "image", "too_large")
        try:
            with Image.open(io.BytesIO(data)) as im:
                pixels = im.width * im.height  # from the header: nothing is decoded yet
                if pixels > self.limits.max_image_pixels:
                    raise ApiError(
                        413,
                        f"image: {im.width}x{im.height} = {pixels} pixels, over the limit of "
                        f"{self.limits.max_image_pixels}",
                        "image",
                        "too_large",
                    )
                im.load()
                return to_rgb(ImageOps.exif_transpose(im))  # as `generate` reads a file: upright, alpha on white
        except ApiError:
            raise
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise ApiError(400, f"image: not a readable image ({err})", "image", "invalid_image") from None


def _fingerprint(prompt: str, settings: dict, image: bytes | None) -> str:
    digest = hashlib.sha256(json.dumps([prompt, settings], sort_keys=True).encode())
    digest.update(b"" if image is None else hashlib.sha256(image).digest())
    return digest.hexdigest()
