"""Generate videos to files: the library function behind `motif-video generate`.

`GenerateSettings` is one run: the prompts and the generation options (`GenerationSettings`, which the
pipeline takes as they are), plus what only a run has: where the model comes from, sampler, memory mode, dtype,
device, fps and the output file. The command line builds its flags from both dataclasses' fields. A run is
checked in full BEFORE any model is loaded, so bad input costs a second, not a model load; then the pipeline
runs (`run_pipeline`) and each video is written atomically (never half-written) with the settings and versions
as JSON beside it (`write_videos`). Several prompts or videos per prompt write `stem-<k>.<ext>` files.
`--parallel cp=P,cfg=G` under torchrun splits one call over the processes (`cli.launch`; the layout is checked
here with the rest, against torchrun's WORLD_SIZE).
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from motif_video import bounds, safe_read
from motif_video.cli.flags import add_settings_flags, settings_from_args
from motif_video.core.devices import check_device
from motif_video.core.video_io import check_output
from motif_video.env import torchrun_env
from motif_video.models.attention import BACKENDS
from motif_video.pipeline.compile import COMPILE_MODES
from motif_video.pipeline.parallel_layout import ParallelLayout, check_layout, video_tokens
from motif_video.pipeline.quantization import FP8_MODES
from motif_video.pipeline.settings import GenerationSettings, option

logger = logging.getLogger(__name__)

OFFICIAL_MODEL = "Motif-Technologies/Motif-Video-2B"
OFFLOAD_MODES = ("none", "model", "block")
SAMPLERS = ("euler", "unipc", "dpm++")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
VIDEO_SUFFIXES = (".mp4", ".gif", ".webm")
MAX_FPS = 1000.0
MAX_PROMPT_FILE_BYTES = 2**20


def local_patch(model: str | None) -> tuple[int, int]:
    """(spatial, temporal) patch of a local release's transformer, read from its config.json without loading it, so
    a size check before the load uses the model's own; the official (2, 1) for a hub id, the default model or a
    folder without that file (the pipeline checks again once the model is loaded)."""
    import json

    from motif_video.models.config import MotifVideoConfig

    default = (MotifVideoConfig.patch_size, MotifVideoConfig.patch_size_t)
    config = Path(model) / "transformer" / "config.json" if model else None
    if config is None or not config.is_file():
        return default
    try:
        stored = json.loads(config.read_text())
        return int(stored.get("patch_size", default[0])), int(stored.get("patch_size_t") or default[1])
    except (ValueError, TypeError, OSError):
        return default  # an unreadable config is reported by the load, with its own message


@dataclass
class GenerateSettings:
    """One `motif-video generate` run; `None` means the model's default (official: 24 fps)."""

    prompts: list[str] = field(metadata={"help": "text prompt; repeat for several prompts", "flag": "--prompt"})
    image: str | None = option(None, "first frame for image-to-video (png/jpg); used for every prompt")
    model: str | None = option(  # None with preset=None -> `default_model()`
        None,
        f"release folder or hub id (default: the shipped small model if any, else {OFFICIAL_MODEL})",
        group="source",
    )
    preset: str | None = option(
        None, "tiny: random tiny components built in memory (no download)", choices=("tiny",), group="source"
    )
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    sampler: str = option("euler", "flow sampler (default euler)", choices=SAMPLERS)
    fps: int | None = option(None, "frames per second of the file (default: the model's, official 24)")
    offload: str = option(
        "none",
        f"memory mode, one of {', '.join(OFFLOAD_MODES)}: none = all on the GPU; model = one component on the GPU "
        "at a time; block = transformer blocks streamed from CPU (default none)",
    )
    fp8: str | None = option(
        None,
        "FP8 transformer blocks (needs torchao): weights = weight-only storage (also --fp8 alone); dynamic / "
        "dynamic-tensor = FP8 compute, per-row / per-tensor scales (CUDA, compute capability >= 8.9)",
        choices=FP8_MODES,
        const="weights",
    )
    attention: str | None = option(
        None,
        "attention kernel: sdpa (PyTorch), flash (flash-attn) or sage (SageAttention; CUDA fp16/bf16) (default: "
        "$MOTIF_VIDEO_ATTENTION_BACKEND, else sdpa)",
        choices=BACKENDS,
    )
    compile: str | None = option(
        None,
        "torch.compile each transformer block (--compile); --compile cudagraphs also replays them as CUDA graphs "
        "(CUDA only; pays when shapes are static)",
        choices=COMPILE_MODES,
        const="blocks",
    )
    vae_tiling: bool = option(False, "decode the VAE in tiles (lower peak memory)")
    text_encoder_on_cpu: bool = option(False, "keep the text encoder on the CPU", flag="--text-encoder-cpu")
    dtype: str = option("auto", "float32, bfloat16 or float16 (default auto: bf16 on GPU, fp32 on CPU)")
    device: str = option("auto", "cpu, cuda or cuda:N (default auto: cuda if available)")
    output: str = option("video.mp4", "file (.mp4, .gif, .webm) or folder/ for PNG frames (default video.mp4)")
    parallel: str | None = option(
        None,
        "cp=P,cfg=G[,fsdp=1]: one video over P context x G (1 or 2) guidance processes started by torchrun; "
        "fsdp=1 also shards the transformer weights over the context ranks",
    )
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.fp8, bool):  # the API's old `fp8=True` (weight-only) keeps working
            self.fp8 = "weights" if self.fp8 else None

    def validate(self) -> None:
        """Every check that needs no model load; raises ValueError (TypeError for a wrong type) with what to change:
        the prompts, the options, the device, the output path, the model folder's files and configs, and whether
        the requested size fits in memory."""
        if not self.prompts:
            raise ValueError("no prompt: pass --prompt TEXT or --prompt-file FILE")
        for prompt in self.prompts:
            bounds.utf8("--prompt", prompt)
            if not prompt.strip():
                raise ValueError("empty prompt: every prompt must contain text")
        if self.model is not None and self.preset is not None:
            raise ValueError("pass either --model or --preset, not both")
        if self.preset is not None and self.preset != "tiny":
            raise ValueError(f"unknown preset {self.preset!r}: the only built-in preset is 'tiny'")
        self.generation.validate(local_patch(self.model))
        if self.offload not in OFFLOAD_MODES:
            raise ValueError(f"unknown offload mode {self.offload!r}: choose one of {', '.join(OFFLOAD_MODES)}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}: choose one of {', '.join(SAMPLERS)}")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}: choose auto, {', '.join(DTYPES)}")
        if self.fps is not None:
            bounds.real("--fps", self.fps, 0.0, MAX_FPS, lo_open=True)
        if self.image is not None:
            from motif_video.core.video_io import load_image

            load_image(self.image)  # readable now, not after the model load
        if not self.output.strip():
            raise ValueError("--output is empty: give a file name (video.mp4) or a new folder for PNG frames")
        out = Path(self.output)
        if not out.parent.is_dir():
            raise ValueError(f"output directory {out.parent} does not exist: create it or choose another --output")
        if out.suffix and out.suffix.lower() not in VIDEO_SUFFIXES:
            raise ValueError(f"unsupported output format {out.suffix!r}: use .mp4, .gif, .webm, or a folder for PNGs")
        for path in output_paths(self.output, len(self.prompts) * self.generation.num_videos_per_prompt):
            check_output(path)
        if (
            self.parallel is not None
            and ParallelLayout.parse(self.parallel).fsdp
            and (self.offload != "none" or self.fp8)
        ):
            raise ValueError("fsdp=1 already shards the weights: drop --offload / --fp8, or use them without fsdp=1")
        check_device(self.device)
        if self.offload != "none" and self.resolved_device().type != "cuda":
            raise ValueError(f"--offload {self.offload} moves weights between CPU and GPU: it needs --device cuda")
        self._check_fast_modes()
        self._check_model_and_memory()

    def _check_fast_modes(self) -> None:
        """--fp8, --attention and --compile against this environment, before any model load."""
        from motif_video.models.attention import available_backends
        from motif_video.pipeline.compile import compile_problem
        from motif_video.pipeline.quantization import fp8_problem

        device = self.resolved_device()
        if self.fp8 is not None:
            problem = fp8_problem(self.fp8, device)
            if problem is not None:
                raise ValueError(problem)
            if self.fp8 != "weights" and self.offload != "none":
                raise ValueError(f"--fp8 {self.fp8} keeps the transformer on the GPU: use --offload none")
            if self.fp8 == "dynamic" and self.resolved_dtype() != torch.bfloat16:
                raise ValueError("--fp8 dynamic (per-row scales) needs bf16 weights: use --dtype bfloat16 (or auto), "
                                 "or --fp8 dynamic-tensor")  # fmt: skip
        if self.attention is not None:
            if self.attention not in BACKENDS:
                raise ValueError(f"unknown --attention {self.attention!r}: choose one of {', '.join(BACKENDS)}")
            if self.attention not in available_backends():
                package = {"flash": "flash-attn", "sage": "sageattention"}[self.attention]
                raise ValueError(f"--attention {self.attention} needs `pip install {package}`, or use sdpa")
            if self.attention != "sdpa" and (device.type != "cuda" or self.resolved_dtype() == torch.float32):
                raise ValueError(f"--attention {self.attention} runs on CUDA in bf16/fp16 only: use sdpa here")
        if self.compile is not None:
            problem = compile_problem(self.compile, device)
            if problem is not None:
                raise ValueError(problem)

    def _check_model_and_memory(self) -> None:
        """A local release's files and configs (`core.release.check_release`), then the memory the size needs."""
        from motif_video.core.release import INDEX, GenerationDefaults, check_release
        from motif_video.models.config import get_preset
        from motif_video.pipeline.footprint import check_memory, weight_bytes

        source = None if self.preset else self.model if self.model is not None else default_model()
        folder = Path(source) if source is not None and Path(source).is_dir() else None
        defaults, config = GenerationDefaults(), get_preset("motif-video-2b")
        if self.preset == "tiny":
            from motif_video.pipeline.tiny import TINY_DEFAULTS

            defaults, config = GenerationDefaults(**TINY_DEFAULTS), get_preset("tiny")
        elif folder is not None and (folder / INDEX).is_file():
            from motif_video.core.release import read_defaults

            index, stored = check_release(folder)
            defaults, config = read_defaults(index), stored or config
        g = self.generation
        videos = len(self.prompts) * g.num_videos_per_prompt
        dtype_bytes = self.resolved_dtype().itemsize
        size = (g.height or defaults.height, g.width or defaults.width, g.num_frames or defaults.num_frames)
        self._check_parallel(config, size)
        layout = self.launch_layout()  # under torchrun each rank holds 1/(cp x cfg) of the activations (and with
        ranks, share = (1, 1) if layout is None else (layout.world, layout.cp if layout.fsdp else 1)  # fsdp=1, weights)
        check_memory(config, *size, videos, dtype_bytes=dtype_bytes, device=self.resolved_device(), ranks=ranks,
                     weights=weight_bytes(folder) // share, weights_on_device=self.offload == "none")  # fmt: skip

    def _check_parallel(self, config: Any, size: tuple[int, int, int]) -> None:
        """`--parallel` against torchrun's world size, the model's heads and the video's tokens (`check_layout`)."""
        world = torchrun_env()[1]
        if self.parallel is None:
            if world > 1:
                raise ValueError(
                    f"started as {world} processes (WORLD_SIZE={world}) without --parallel: pass --parallel "
                    f"cp={world} (or cfg=2 with cp={world // 2}) to split one video over them"
                )
            return
        layout = ParallelLayout.parse(self.parallel)
        if layout.world == 1 and world == 1:
            return  # cp=1,cfg=1 in one process: the plain path
        tokens = video_tokens(*size, (config.patch_size, config.patch_size_t or 1))
        guided = False if self.generation.guidance == "none" else None  # else known once the guider is loaded
        check_layout(layout, world, heads=config.num_attention_heads, tokens=tokens, guided=guided)
        if self.device.startswith("cuda:"):
            raise ValueError("under torchrun each process takes cuda:LOCAL_RANK: pass --device cuda (or auto)")
        if self.compile == "cudagraphs":  # collectives captured inside CUDA graphs are not tested here
            raise ValueError("--compile cudagraphs is not supported with --parallel: use --compile blocks")

    def launch_layout(self) -> ParallelLayout | None:
        """The `--parallel` layout when it spans processes; None for the plain path."""
        layout = None if self.parallel is None else ParallelLayout.parse(self.parallel)
        return layout if layout is not None and layout.world > 1 else None

    def as_record(self) -> dict[str, Any]:
        """Every field, the generation options among them, as one flat dict (what the run record stores)."""
        flat: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            flat.update(asdict(value) if f.name == "generation" else {f.name: value})
        return flat

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def resolved_dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if self.resolved_device().type == "cuda" else torch.float32
        return DTYPES[self.dtype]


def default_model() -> str:
    """The small model shipped in the package when it is there (offline), else the official release."""
    from motif_video.core.release import small_model_dir
    from motif_video.models.checkpoint_io import CheckpointError

    try:
        return str(small_model_dir())
    except CheckpointError:
        return OFFICIAL_MODEL


def build_pipeline(settings: GenerateSettings) -> Any:
    """Load (or build, for the tiny preset) the pipeline and apply the memory mode."""
    from motif_video.pipeline.loading import read_index, resolve_folder
    from motif_video.pipeline.pipeline import GenerationDefaults, MotifVideoPipeline

    dtype, device = settings.resolved_dtype(), settings.resolved_device()
    if settings.preset == "tiny":
        from motif_video.pipeline.tiny import TINY_DEFAULTS, build_tiny_components

        pipe = MotifVideoPipeline.from_components(build_tiny_components(seed=0), source="preset:tiny")
        pipe.defaults = GenerationDefaults(**TINY_DEFAULTS)
        pipe.transformer.to(dtype=dtype)
    else:
        source = settings.model if settings.model is not None else default_model()
        folder = resolve_folder(source)
        read_index(folder)  # a clear error for an incomplete folder before loading anything heavy
        pipe = MotifVideoPipeline.from_pretrained(str(folder), torch_dtype=dtype)
        pipe.source = source
    if settings.sampler != "euler":
        pipe.scheduler = _sampler(settings.sampler, pipe.scheduler)
    if settings.attention is not None:
        from motif_video.models.attention import set_attention_backend

        set_attention_backend(settings.attention)  # process-wide: every pipeline of this process
    if settings.fp8 == "weights":
        pipe.enable_fp8()
    if settings.vae_tiling:
        pipe.enable_vae_tiling()
    if settings.text_encoder_on_cpu:
        pipe.enable_text_encoder_on_cpu()
    if settings.offload == "model":
        pipe.enable_model_cpu_offload(device)
    elif settings.offload == "block":
        pipe.enable_block_offload(device)
    else:
        pipe.to(device)
    if settings.fp8 not in (None, "weights"):
        pipe.enable_fp8(settings.fp8)  # FP8 compute quantizes on the GPU
    if settings.compile is not None:
        from motif_video.pipeline.compile import compile_blocks

        compile_blocks(pipe.transformer, cudagraphs=settings.compile == "cudagraphs")
    return pipe


def _sampler(name: str, scheduler: Any) -> Any:
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    cls = {"unipc": UniPCMultistepScheduler, "dpm++": DPMSolverMultistepScheduler}[name]
    return cls(use_flow_sigmas=True, prediction_type="flow_prediction", num_train_timesteps=1000)


def output_paths(output: str, count: int) -> list[Path]:
    out = Path(output)
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{k}{out.suffix}") for k in range(count)]


def generate(
    settings: GenerateSettings, pipe: Any | None = None, on_step: Callable[[int], None] | None = None
) -> list[Path]:
    """Run `settings`; returns the written video paths (each with a settings JSON beside it). `on_step(done)` is
    called after each denoising step with the number of steps done; an exception it raises stops the run."""
    settings.validate()
    result = run_pipeline(settings, pipe, on_step)
    return [] if result.frames is None else write_videos(settings, result)


@dataclass
class Generated:
    """What `run_pipeline` made: the pipeline, its frames (None on the ranks that do not write) and timings."""

    pipe: Any
    frames: Any
    timings_s: dict[str, float]


def run_pipeline(
    settings: GenerateSettings, pipe: Any | None = None, on_step: Callable[[int], None] | None = None
) -> Generated:
    """Build (or take) the pipeline, enable the `--parallel` layout when it spans processes, and generate."""
    started = time.perf_counter()
    pipe = pipe if pipe is not None else build_pipeline(settings)
    layout = settings.launch_layout()
    if layout is not None and pipe.parallel_layout != layout:
        pipe.disable_parallel()
        pipe.enable_parallel(layout.cp, layout.cfg, bool(layout.fsdp))
    loaded = time.perf_counter()
    if pipe.is_main_rank:
        warn_unknown_words(pipe.tokenizer, settings.prompts)
    step_end = None if on_step is None else lambda _pipe, i, _t, _tensors: on_step(i + 1) or {}
    frames = pipe.generate(
        settings.prompts, settings.generation, image=settings.image, output_type="np", callback_on_step_end=step_end
    ).frames
    timings = dict(load=round(loaded - started, 3), generate=round(time.perf_counter() - loaded, 3))
    return Generated(pipe, frames, timings)


def write_videos(settings: GenerateSettings, result: Generated) -> list[Path]:
    """Each video atomically, with its run record (settings, resolved call, timings) as JSON beside it."""
    from motif_video.core.run_record import record_path_for, write_run_record
    from motif_video.core.video_io import export_video

    pipe, frames = result.pipe, result.frames
    resolved = pipe.last_call  # every sampling argument as the pipeline resolved it
    fps = settings.fps or pipe.defaults.fps
    paths = output_paths(settings.output, len(frames))
    per_video = settings.generation.num_videos_per_prompt
    for k, (path, video) in enumerate(zip(paths, frames)):
        export_video(video, path, fps=fps)
        record = dict(
            settings.as_record(),
            video_index=k,
            prompt=settings.prompts[k // per_video],
            model_source=pipe.source,
            resolved=resolved,
            fps=fps,
            timings_s=result.timings_s,
        )
        write_run_record(record_path_for(path), record)
        logger.info("wrote %s", path)
    return paths


def warn_unknown_words(tokenizer: Any, prompts: list[str]) -> None:
    """One warning per prompt with words the tokenizer cannot represent: the model sees only an unknown token
    there (a word-level vocabulary, like the shipped small model's, knows only the words it was trained on)."""
    from motif_video.pipeline.encoding import unknown_words

    for prompt in prompts:
        words = unknown_words(tokenizer, prompt)
        if words:
            listed = ", ".join(dict.fromkeys(words))
            logger.warning("the model's tokenizer does not know %s, so it reads an unknown token: %r", listed, prompt)


# ---------------------------------------------------------------------------------------------------- command
def add_generate_parser(sub: argparse._SubParsersAction) -> None:
    """`motif-video generate`: its flags are the fields of `GenerateSettings` and `GenerationSettings`."""
    gen = sub.add_parser(
        "generate",
        help="generate videos from text (or an image and text) and write them as mp4",
        description="Text-to-video, or image-to-video with --image. Unset sizes, frames, steps and fps come from "
        "the model (official: 1280x736, 121 frames, 50 steps, 24 fps). Each video is written with a JSON "
        "of the resolved settings beside it. Without --model it uses the small model shipped in the package "
        f"(offline, 64x64) when the package has one, else {OFFICIAL_MODEL}.",
    )
    gen.add_argument("--prompt-file", help="file with one prompt per line (blank lines and # comments skipped)")
    add_settings_flags(gen, GenerateSettings, {})
    gen.set_defaults(func=_generate)


def _read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompts or [])
    if args.prompt_file:
        lines = safe_read.read_text(args.prompt_file, "--prompt-file", MAX_PROMPT_FILE_BYTES).splitlines()
        prompts += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not prompts:
            raise ValueError(f"--prompt-file {args.prompt_file} holds no prompt (one per line; # starts a comment)")
    return prompts


def _generate(args: argparse.Namespace) -> int:
    if torchrun_env()[1] > 1:  # one of torchrun's processes
        from motif_video.cli.launch import run_launched

        return run_launched(lambda: settings_from_args(GenerateSettings, args, prompts=_read_prompts(args)))
    settings = settings_from_args(GenerateSettings, args, prompts=_read_prompts(args))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in generate(settings):
        print(path)
    return 0
