"""The routes: OpenAI's Videos API over the job store, the page at /, and /healthz.

    POST   /v1/videos                 JSON, or a form: multipart with `image` (or OpenAI's `input_reference`) for I2V
    GET    /v1/videos                 newest first, `limit` (1-100, default 20), `after` (an id), `order`
    GET    /v1/videos/{id}            status, progress, timings, settings, error
    GET    /v1/videos/{id}/content    the mp4 once completed (Range requests: 206 partial content)
    DELETE /v1/videos/{id}            cancels a queued or running job and removes its files
    GET    /healthz                   the workers' state and the queue; 503 while no worker can run jobs
    GET    /                          the page (plain HTML and JavaScript)

Ids in paths are looked up in the store; a path is only ever built from an id that is there.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from motif_video.serving.config import ServeSettings
from motif_video.serving.errors import ApiError, install_handlers
from motif_video.serving.schemas import ID_PATTERN, job_view
from motif_video.serving.security import BodyLimit, bearer_check
from motif_video.serving.store import COMPLETED, Job, JobStore
from motif_video.serving.submit import KEY_HEADER, Submitter
from motif_video.serving.worker import VIDEO
from motif_video.version import __version__

IMAGE_FIELDS = ("image", "input_reference")  # ours, and OpenAI's name for the reference image
MAX_FORM_FIELDS = 32
MAX_FIELD_BYTES = 64 * 1024


@dataclass
class AppContext:
    """What the routes use: the store and submitter, where the videos are, and how to describe them."""

    store: JobStore
    submitter: Submitter
    settings: ServeSettings
    videos: Path
    model: str
    fps: int
    health: Callable[[], dict[str, Any]]


def create_app(ctx: AppContext) -> FastAPI:
    app = FastAPI(title="motif-video serve", version=__version__, docs_url=None, redoc_url=None)
    install_handlers(app)
    app.add_middleware(BodyLimit, limit=ctx.settings.max_request_bytes)
    api = APIRouter(prefix="/v1", dependencies=[Depends(bearer_check(ctx.settings.api_key))])
    page = resources.files("motif_video.serving").joinpath("page.html").read_text(encoding="utf-8")

    def view(job: Job) -> dict[str, Any]:
        return job_view(job, ctx.model, ctx.fps)

    def find(video_id: str) -> Job:
        job = ctx.store.get(video_id) if ID_PATTERN.match(video_id) else None
        if job is None:
            raise ApiError(404, f"no video {video_id!r}", "video_id", "not_found")
        return job

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        health = ctx.health()
        return JSONResponse(health, status_code=200 if health["status"] != "error" else 503)

    @api.post("/videos")
    async def create(request: Request) -> JSONResponse:
        data, image = await _read_body(request)
        key = request.headers.get(KEY_HEADER)
        job, replayed = await run_in_threadpool(ctx.submitter.submit, data, image, key)
        return JSONResponse(view(job), headers={"Idempotent-Replayed": "true"} if replayed else None)

    @api.get("/videos")
    def list_videos(
        limit: int = Query(20, ge=1, le=100), after: str | None = None, order: Literal["asc", "desc"] = "desc"
    ) -> dict[str, Any]:
        try:
            jobs, more = ctx.store.page(limit, after, newest_first=order == "desc")
        except LookupError:
            raise ApiError(400, f"after: no video {after!r}", "after", "invalid_value") from None
        data = [view(job) for job in jobs]
        first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
        return {"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": more}

    @api.get("/videos/{video_id}")
    def get(video_id: str) -> dict[str, Any]:
        return view(find(video_id))

    @api.get("/videos/{video_id}/content")
    def content(video_id: str) -> FileResponse:
        job = find(video_id)
        if job.status != COMPLETED:
            message = f"video {job.id} is {job.status}: its content is there once it is completed"
            raise ApiError(409, message, "video_id", "video_not_ready")
        path = ctx.videos / job.id / VIDEO
        if not path.is_file():
            raise ApiError(404, f"video {job.id} has no content file", "video_id", "not_found")
        return FileResponse(path, media_type="video/mp4", filename=f"{job.id}.mp4", content_disposition_type="inline")

    @api.delete("/videos/{video_id}")
    def delete(video_id: str) -> dict[str, Any]:
        job = find(video_id)
        if ctx.store.delete(job.id) is not None:
            shutil.rmtree(ctx.videos / job.id, ignore_errors=True)  # a running job's worker also cleans up
        return {"id": job.id, "object": "video.deleted", "deleted": True}

    app.include_router(api)
    return app


async def _read_body(request: Request) -> tuple[Any, bytes | None]:
    """(the fields, the first-frame bytes or None) of a JSON or multipart body; ApiError for anything else."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            return json.loads(await request.body()), None
        except (ValueError, UnicodeDecodeError) as err:
            raise ApiError(400, f"body: not valid JSON ({err})", "body", "invalid_json") from None
    if kind not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise ApiError(
            415,
            f"Content-Type {kind or 'missing'}: send application/json, or a form (multipart/form-data for an image)",
            "Content-Type",
            "unsupported_media_type",
        )
    try:
        form = await request.form(
            max_files=len(IMAGE_FIELDS), max_fields=MAX_FORM_FIELDS, max_part_size=MAX_FIELD_BYTES
        )
    except ApiError:
        raise
    except Exception as err:  # starlette's MultiPartException and malformed bodies
        raise ApiError(400, f"body: not a readable multipart form ({err})", "body", "invalid_form") from None
    data: dict[str, Any] = {}
    image = None
    try:
        for name, value in form.multi_items():
            if value == "":  # an empty form field (or file input) means "not set"
                continue
            if name in data or (image is not None and name in IMAGE_FIELDS):
                raise ApiError(400, f"{name}: given more than once", name, "duplicate_field")
            if isinstance(value, UploadFile):
                if name not in IMAGE_FIELDS:
                    raise ApiError(
                        400, f"{name}: only {' or '.join(IMAGE_FIELDS)} may be a file", name, "unexpected_file"
                    )
                content = await value.read()
                if content or value.filename:  # a form's empty file input sends neither: "no image"
                    image = content
            elif name in IMAGE_FIELDS:
                raise ApiError(400, f"{name}: must be a file upload", name, "invalid_value")
            else:
                data[name] = value
    finally:
        await form.close()
    if image is not None and not image:
        raise ApiError(400, "image: the uploaded file is empty", "image", "invalid_image")
    return data, image
