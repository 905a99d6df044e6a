"""`motif-video serve`: the service (`motif_video.serving`) over the same pipeline and checks as `generate`.

`GenerateBackend` is the `Backend` a worker runs: `GenerateSettings` (the server's model and memory-mode flags,
the same flags as `generate`) with each job's prompt, settings, first frame and output path put in, then
`GenerateSettings.validate` to check a request before it is queued, `build_pipeline` once per worker, and
`generate` to write each video and its settings JSON. `--device cuda:0,cuda:1` starts one worker per device.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from motif_video.cli.flags import add_settings_flags, settings_from_args
from motif_video.cli.generate import GenerateSettings, build_pipeline, default_model, generate
from motif_video.core.release import GenerationDefaults
from motif_video.env import serve_api_key_from_env
from motif_video.pipeline.settings import GenerationSettings
from motif_video.serving import ServeSettings, Service

PER_JOB = ("prompts", "image", "generation", "output")  # what each request brings; the rest is the server's


class GenerateBackend:
    """One worker's model, run through `motif-video generate`'s own functions."""

    def __init__(self, base: GenerateSettings) -> None:
        self.base = base
        self.device = base.device
        self.name = _model_name(base)
        self.defaults = release_defaults(base)
        self.fps = base.fps or self.defaults.fps
        self.pipe: Any = None

    def job_settings(
        self, prompt: str, settings: GenerationSettings, image: Path | None, output: Path
    ) -> GenerateSettings:
        image_arg = None if image is None else str(image)
        return replace(self.base, prompts=[prompt], generation=settings, image=image_arg, output=str(output))

    def check(self, prompt: str, settings: GenerationSettings, image: Path | None, output: Path) -> None:
        self.job_settings(prompt, settings, image, output).validate()

    def load(self) -> None:
        if self.pipe is None:  # loaded once; a second service in the same process (tests) reuses it
            self.pipe = build_pipeline(self.base)
            self.pipe.set_progress_bar_config(disable=True)

    def run(
        self,
        prompt: str,
        settings: GenerationSettings,
        image: Path | None,
        output: Path,
        on_step: Callable[[int], None],
    ) -> None:
        generate(self.job_settings(prompt, settings, image, output), self.pipe, on_step=on_step)


def release_defaults(settings: GenerateSettings) -> GenerationDefaults:
    """The model's generation defaults, read from its release index without loading it."""
    if settings.preset == "tiny":
        from motif_video.pipeline.tiny import TINY_DEFAULTS

        return GenerationDefaults(**TINY_DEFAULTS)
    from motif_video.core.release import read_defaults, read_index, resolve_folder

    return read_defaults(read_index(resolve_folder(settings.model or default_model())))


def _model_name(settings: GenerateSettings) -> str:
    """What clients see as `model`: a hub id as it is, a local folder by its name only (never a local path)."""
    if settings.preset is not None:
        return f"preset:{settings.preset}"
    source = settings.model or default_model()
    return source if not Path(source).exists() else Path(source).resolve().name


def backends(base: GenerateSettings) -> list[GenerateBackend]:
    """One backend per device of `--device` (comma-separated), each checked before anything loads."""
    devices = [d.strip() for d in base.device.split(",") if d.strip()] or ["auto"]
    made = []
    for device in devices:
        settings = replace(base, device=device)
        settings.validate()
        made.append(GenerateBackend(settings))
    return made


# ---------------------------------------------------------------------------------------------------- command
def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    """`motif-video serve`: the fields of `ServeSettings`, and `generate`'s model and memory-mode flags."""
    serve = sub.add_parser(
        "serve",
        help="serve video generation over HTTP (OpenAI-style Videos API, a job queue, a web page)",
        description="A video-generation service: POST /v1/videos queues a job (kept in DATA/jobs.sqlite3, so it "
        "survives a restart), GET /v1/videos/ID polls it, GET /v1/videos/ID/content downloads the mp4; the page "
        "at / does the same in a browser. A request's fields are generate's options (prompt, negative_prompt, "
        "width, height or size, num_frames, steps, seed, guidance_scale, ...); unset ones come from the model. "
        "Binds 127.0.0.1; any other --host needs --api-key (or MOTIF_VIDEO_API_KEY).",
    )
    add_settings_flags(serve, ServeSettings, {})
    add_settings_flags(serve, GenerateSettings, {}, skip=PER_JOB + ("parallel",))  # --parallel: generate's torchrun
    serve.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(ServeSettings, args)
    settings.api_key = settings.api_key or serve_api_key_from_env()
    settings.validate()
    base = settings_from_args(
        GenerateSettings,
        args,
        prompts=["check"],
        image=None,
        generation=GenerationSettings(),
        output="video.mp4",
        parallel=None,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    Service(settings, backends(base)).serve()
    return 0
