"""What a request may say and what a job looks like to a client.

* The request's fields ARE `GenerationSettings`' fields (the same names as `generate`'s flags with underscores),
  plus `prompt` and OpenAI's `size` ("WIDTHxHEIGHT", another way to give width and height). The pydantic model is
  made from the dataclass, so an option is still written once. `num_videos_per_prompt` is left out: one job is one
  video. Unknown fields are refused by name.
* `resolve` fills what a request leaves unset from the model's release defaults (`GenerationDefaults`, which hold
  the built-in ones where the release says nothing); the guider's scale, method and APG eta stay the model's. The
  job stores the resolved settings, so what it shows is what runs, even after the server restarts on another model.
* `job_view` is OpenAI's Video object (`id`, `object`, `status`, `progress`, `created_at`, `size`, `seconds`, ...)
  plus what only we have: `settings`, `task`, `attempts`, `timings`, and `error` as `{code, message}`.
"""

from __future__ import annotations

import re
import time
import typing
from collections.abc import Collection
from dataclasses import asdict, fields, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from motif_video.core.release import GenerationDefaults
from motif_video.pipeline.settings import GenerationSettings
from motif_video.serving.config import ServeSettings
from motif_video.serving.errors import ApiError, field_of
from motif_video.serving.store import Job

NOT_PER_REQUEST = ("num_videos_per_prompt",)
MAX_TEXT_CHARS = 4000  # prompt and negative prompt; the official T5Gemma2 context holds 512 tokens
ID_PATTERN = re.compile(r"^video_[0-9a-f]{32}$")
SIZE_PATTERN = r"^[0-9]{1,5}x[0-9]{1,5}$"


def _request_model() -> type[BaseModel]:
    hints = typing.get_type_hints(GenerationSettings)
    defs: dict[str, Any] = {
        "prompt": (str, Field(min_length=1, max_length=MAX_TEXT_CHARS, description="what the video shows")),
        "size": (str | None, Field(None, pattern=SIZE_PATTERN, description="WIDTHxHEIGHT, or give width and height")),
    }
    for f in fields(GenerationSettings):
        if f.name in NOT_PER_REQUEST:
            continue
        kind, extra = hints[f.name], {}
        if "choices" in f.metadata:
            kind = Literal[tuple(f.metadata["choices"])] | None
        if f.name == "negative_prompt":
            extra["max_length"] = MAX_TEXT_CHARS
        if f.name == "seed":
            extra.update(ge=0, lt=2**63)  # what torch.Generator.manual_seed takes
        defs[f.name] = (kind, Field(f.default, description=f.metadata["help"], **extra))
    config = ConfigDict(extra="forbid", allow_inf_nan=False)
    return create_model("VideoRequest", __config__=config, **defs)


VideoRequest = _request_model()


def parse_request(data: Any) -> tuple[str, GenerationSettings]:
    """A request body (a JSON object, or a form's fields) -> (prompt, the settings it asks for). ApiError naming
    the first bad field."""
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object of video settings", "body", "invalid_json")
    try:
        request = VideoRequest.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        param = field_of(first["loc"])
        if first["type"] == "extra_forbidden":
            allowed = ", ".join(VideoRequest.model_fields)
            raise ApiError(400, f"unknown field {param!r}: fields are {allowed}", param, "unknown_field") from None
        raise ApiError(400, f"{param}: {first['msg']}", param, "invalid_value") from None
    prompt = request.prompt.strip()
    if not prompt:
        raise ApiError(400, "prompt: must contain text", "prompt", "invalid_value")
    values = request.model_dump(exclude={"prompt", "size"})
    if request.size is not None:
        if request.width is not None or request.height is not None:
            raise ApiError(400, "size: give size or width and height, not both", "size", "invalid_value")
        values["width"], values["height"] = (int(v) for v in request.size.split("x"))
    return prompt, GenerationSettings(**values)


def resolve(settings: GenerationSettings, defaults: GenerationDefaults, image: bool) -> GenerationSettings:
    """Unset fields from the model's release defaults; the shift by task (I2V or T2V)."""
    pick = {
        "height": defaults.height,
        "width": defaults.width,
        "num_frames": defaults.num_frames,
        "steps": defaults.num_inference_steps,
        "negative_prompt": defaults.negative_prompt,
        "shift": defaults.shift_i2v if image else defaults.shift_t2v,
        "noise_correlation": defaults.noise_correlation,
    }
    return replace(settings, **{k: v for k, v in pick.items() if getattr(settings, k) is None})


def check_limits(settings: GenerationSettings, sent: Collection[str], limits: ServeSettings) -> None:
    """The server's per-request limits on resolved settings; `sent` (the request's field names) picks the one named."""
    if settings.steps is not None and settings.steps > limits.max_steps:
        raise ApiError(400, f"steps: at most {limits.max_steps} on this server, got {settings.steps}", "steps")
    pixels = settings.height * settings.width * settings.num_frames
    if pixels > limits.max_video_pixels:
        param = next((name for name in ("num_frames", "size", "height", "width") if name in sent), "num_frames")
        raise ApiError(
            400,
            f"{param}: width x height x frames = {settings.width}x{settings.height}x{settings.num_frames} = {pixels} "
            f"pixels, over this server's limit of {limits.max_video_pixels}",
            param,
            "too_large",
        )


def param_in_message(message: str) -> str | None:
    """The request field a validation message starts with or names (`height must be ...` -> height)."""
    aliases = {"num_inference_steps": "steps", "first frame": "image", "image": "image"}
    names = [*VideoRequest.model_fields, *aliases]
    hits = [(m.start(), n) for n in names for m in [re.search(rf"\b{re.escape(n)}\b", message)] if m]
    if not hits:
        return None
    name = min(hits)[1]
    return aliases.get(name, name)


def job_view(job: Job, model: str, fps: int, now: float | None = None) -> dict[str, Any]:
    """The Video object of `job`."""
    now = time.time() if now is None else now
    s = job.settings
    started, done = job.started_at, job.completed_at
    return {
        "id": job.id,
        "object": "video",
        "status": job.status,
        "progress": job.progress,
        "model": model,
        "prompt": job.prompt,
        "task": "i2v" if job.has_image else "t2v",
        "size": f"{s['width']}x{s['height']}",
        "seconds": f"{s['num_frames'] / fps:.3g}",
        "created_at": int(job.created_at),
        "started_at": None if started is None else int(started),
        "completed_at": None if done is None else int(done),
        "attempts": job.attempts,
        "timings": {
            "queued_s": round((started or now) - job.created_at, 3),
            "run_s": None if started is None else round((done or now) - started, 3),
        },
        "settings": s,
        "error": None if job.error is None else {"code": "generation_failed", "message": job.error},
    }


def settings_record(settings: GenerationSettings) -> dict[str, Any]:
    return asdict(settings)
