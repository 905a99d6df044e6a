"""Prompt-following evaluation: generate a fixed procedural prompt set and score every video from its pixels.

The library behind `motif-video-lab eval` (eval_command.py). For each split ("heldout": every prompt composes a
held-out attribute pair, "train": in-distribution scenes; procedural/dataset.py `eval_prompts`) and each mode:

    t2v   prompt = the scene's caption
    i2v   prompt = the caption, image = the scene's rendered first frame; colour, shape, size and background are
          then given away by the image, so motion (direction, speed, consistency) is what i2v measures
    t2i   still images from image captions (one latent frame): layout, colour, shape and size without time, a fast
          diagnostic of the spatial half of t2v; not part of "both"

Video i of a split is generated from `seed + i` (one generator per video, so a video does not depend on which
batch it lands in) and scored against the spec its caption states (procedural/evaluate.py `score_video`).
Tables are computed from the per-video checks, so a report reloaded from results.json gives the same table.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from motif_video_lab.procedural import (
    EvalPrompt,
    ScoreTable,
    VideoScore,
    eval_prompts,
    format_table,
    render,
    score_prompts,
    score_video,
)

logger = logging.getLogger(__name__)

SPLITS = ("heldout", "train")
MODES = ("t2v", "i2v")  # what mode "both" runs
ALL_MODES = (*MODES, "t2i")
RESULTS_NAME, TABLE_NAME = "results.json", "table.md"


@dataclass
class EvalSettings:
    """One evaluation run. `None` means the release's default (steps, guidance scale, size)."""

    model: str  # release folder or hub id
    splits: tuple[str, ...] = SPLITS
    num_prompts: int = 48  # per split; 48 = 6 x the 7 held-out pairs + 6
    steps: int | None = None
    guidance_scale: float | None = None
    guidance_stop: float | None = None  # fraction of steps guided (the noisiest first); None: the release's
    shift: float | None = None  # None: the release's (per mode)
    noise_correlation: float | None = None  # None: the release's
    seed: int = 0  # video i of a split is generated from seed + i
    mode: str = "t2v"  # t2v | i2v | t2i | both (= t2v and i2v)
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 8  # prompts per pipeline call (drops to 1 after a CUDA out-of-memory error)
    output: str | None = None  # folder for <mode>/<key>.mp4, results.json and table.md
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    prompt_seed: int = 0  # which fixed prompt set; keep 0 to compare models
    variant: str = "long"  # caption variant given as the prompt
    negative_prompt: str | None = None  # None: the pipeline's default

    @property
    def modes(self) -> tuple[str, ...]:
        return MODES if self.mode == "both" else (self.mode,)

    def validate(self) -> None:
        """Every check that needs no model; raises ValueError with what to change."""
        if not self.splits or len(set(self.splits)) != len(self.splits) or set(self.splits) - set(SPLITS):
            raise ValueError(f"splits must be distinct names from {SPLITS}, got {self.splits}")
        if self.mode not in (*ALL_MODES, "both"):
            raise ValueError(f"mode must be t2v, i2v, t2i or both, got {self.mode!r}")
        for name in ("num_prompts", "batch_size", "steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.guidance_stop is not None and not 0.0 < self.guidance_stop <= 1.0:
            raise ValueError(f"guidance_stop is a fraction of the steps in (0, 1], got {self.guidance_stop}")
        if self.output is not None and Path(self.output).is_file():
            raise ValueError(f"output {self.output} is a file: pass a folder")
        from motif_video.cli.generate import GenerateSettings
        from motif_video.pipeline.settings import GenerationSettings

        size = GenerationSettings(height=self.height, width=self.width, num_frames=self.num_frames)
        GenerateSettings(["eval"], model=self.model, device=self.device, dtype=self.dtype, generation=size).validate()


def column_name(split: str, mode: str) -> str:
    return f"{'held-out' if split == 'heldout' else split} {mode.upper()}"


@dataclass
class EvalReport:
    """settings: EvalSettings plus what the run resolved (steps, guidance_scale, height, width, num_frames, fps);
    videos: one dict per video (key, split, mode, prompt, seed, spec, checks, all_correct, details[, path])."""

    settings: dict[str, Any]
    videos: list[dict[str, Any]]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def modes(self) -> tuple[str, ...]:
        return MODES if self.settings["mode"] == "both" else (self.settings["mode"],)

    def table(self, split: str, mode: str, objects: int | None = None) -> ScoreTable:
        """The scores of one (split, mode); `objects`: only the prompts with that many objects."""
        scores = [
            VideoScore(v["checks"])
            for v in self.videos
            if v["split"] == split and v["mode"] == mode and objects in (None, len(v["spec"]["objects"]))
        ]
        return score_prompts(scores)

    @property
    def tables(self) -> dict[str, ScoreTable]:
        """Column name ("held-out T2V", ...) -> table, for every (split, mode) run; modes outer, splits inner."""
        return {column_name(s, m): self.table(s, m) for m in self.modes for s in self.settings["splits"]}

    def to_dict(self) -> dict[str, Any]:
        tables = {
            name: dict(counts=t.counts, videos=t.videos, all_correct=t.all_correct, overall=t.overall)
            for name, t in self.tables.items()
        }
        return dict(settings=self.settings, tables=tables, timings=self.timings, videos=self.videos)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalReport:
        return cls(dict(data["settings"], splits=tuple(data["settings"]["splits"])), data["videos"], data["timings"])

    @classmethod
    def load(cls, path: str | Path) -> EvalReport:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def save(self, folder: str | Path) -> Path:
        """Write results.json and table.md into `folder`; returns the results path."""
        root = Path(folder)
        root.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=1, default=_json_default, allow_nan=True)
        (root / RESULTS_NAME).write_text(text + "\n", encoding="utf-8")
        (root / TABLE_NAME).write_text(format_report(self) + "\n", encoding="utf-8")
        return root / RESULTS_NAME


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def run_eval(settings: EvalSettings, progress: bool = True, pipe: Any | None = None) -> EvalReport:
    """Generate and score every prompt of every split and mode; `pipe` replaces the loaded model (tests)."""
    settings.validate()
    started = time.perf_counter()
    pipe = pipe if pipe is not None else _load(settings)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)  # one bar over videos instead of one per call
    d = pipe.defaults
    size = dict(height=settings.height or d.height, width=settings.width or d.width)
    size["num_frames"] = settings.num_frames or d.num_frames
    resolved = dict(
        steps=settings.steps or d.num_inference_steps,
        guidance_scale=settings.guidance_scale if settings.guidance_scale is not None else pipe.guidance.scale,
        guidance_stop=settings.guidance_stop if settings.guidance_stop is not None else pipe.guidance.stop,
        fps=d.fps,
        model_source=getattr(pipe, "source", None),
        shift={
            m: settings.shift if settings.shift is not None else d.shift_i2v if m == "i2v" else d.shift_t2v
            for m in settings.modes
        },
        noise_correlation=(
            settings.noise_correlation if settings.noise_correlation is not None else d.noise_correlation
        ),
        **size,
    )
    report = EvalReport({**asdict(settings), **resolved}, [], {"load_s": round(time.perf_counter() - started, 3)})
    out = Path(settings.output) if settings.output is not None else None
    n = settings.num_prompts
    total = len(settings.modes) * len(settings.splits) * n
    batch = [settings.batch_size]  # shared with _generate, which drops it to 1 on out-of-memory
    with tqdm(total=total, desc="eval", unit="video", disable=not progress) as bar:
        for mode in settings.modes:
            for split in settings.splits:
                items = eval_prompts(split, n, settings.prompt_seed, variant=settings.variant, image=mode == "t2i",
                                     **size)  # fmt: skip
                generate_s = score_s = 0.0
                start = 0
                while start < len(items):
                    chunk = items[start : start + batch[0]]
                    t0 = time.perf_counter()
                    frames = _generate(pipe, chunk, start, mode, settings, resolved, batch)  # (B, F, H, W, 3)
                    t1 = time.perf_counter()
                    for offset, (item, video) in enumerate(zip(chunk, frames)):
                        report.videos.append(_score(item, video, mode, settings.seed + start + offset, out, d.fps))
                    generate_s, score_s = generate_s + t1 - t0, score_s + time.perf_counter() - t1
                    start += len(chunk)
                    bar.update(len(chunk))
                report.timings[f"{split} {mode} generate_s"] = round(generate_s, 3)
                report.timings[f"{split} {mode} score_s"] = round(score_s, 3)  # scoring and writing the mp4s
    report.timings["total_s"] = round(time.perf_counter() - started, 3)
    report.timings["s_per_video"] = round((report.timings["total_s"] - report.timings["load_s"]) / total, 3)
    if out is not None:
        report.save(out)
    return report


def _score(item: EvalPrompt, video: np.ndarray, mode: str, seed: int, out: Path | None, fps: int) -> dict[str, Any]:
    """video: (F, H, W, 3) float in [0, 1] -> the per-video result row; with `out`, also <out>/<mode>/<key>.mp4
    (.png for a still image)."""
    score = score_video(video, item.spec)
    row = dict(
        key=item.key,
        split=item.split,
        mode=mode,
        prompt=item.prompt,
        seed=seed,
        spec=item.spec.to_dict(),
        checks=score.checks,
        all_correct=score.all_correct,
        details=score.details,
    )
    if out is not None:
        from motif_video.atomic import atomic_path
        from motif_video.core.video_io import export_video, frames_to_uint8

        (out / mode).mkdir(parents=True, exist_ok=True)
        if len(video) == 1:  # t2i: a still image
            from PIL import Image

            path = out / mode / f"{item.key}.png"
            with atomic_path(path) as tmp:
                Image.fromarray(frames_to_uint8(video)[0]).save(tmp, format="PNG")
        else:
            path = export_video(video, out / mode / f"{item.key}.mp4", fps=fps)
        row["path"] = path.relative_to(out).as_posix()
    return row


def _load(settings: EvalSettings) -> Any:
    from motif_video.cli.generate import GenerateSettings, build_pipeline

    return build_pipeline(
        GenerateSettings(["eval"], model=settings.model, device=settings.device, dtype=settings.dtype)
    )


def _generate(
    pipe: Any, chunk: list[EvalPrompt], start: int, mode: str, settings: EvalSettings, resolved: dict, batch: list[int]
) -> np.ndarray:
    """One pipeline call for `chunk` -> frames (B, F, H, W, 3) float in [0, 1]; on CUDA out-of-memory, one
    prompt per call from then on (batch[0] = 1)."""
    kwargs: dict[str, Any] = dict(
        height=resolved["height"],
        width=resolved["width"],
        num_frames=1 if mode == "t2i" else resolved["num_frames"],
        num_inference_steps=resolved["steps"],
        guidance=pipe.guidance.replace(stop=resolved["guidance_stop"]),
        guidance_scale=resolved["guidance_scale"],
        output_type="np",
    )
    kwargs["shift"] = resolved["shift"][mode]
    kwargs["noise_correlation"] = resolved["noise_correlation"]
    if settings.negative_prompt is not None:
        kwargs["negative_prompt"] = settings.negative_prompt

    def call(items: list[EvalPrompt], first: int) -> np.ndarray:
        generators = [torch.Generator("cpu").manual_seed(settings.seed + first + k) for k in range(len(items))]
        image = None
        if mode == "i2v":  # the scene's own first frame, (H, W, 3) uint8, one per prompt
            shape = (resolved["num_frames"], resolved["height"], resolved["width"])
            image = [render(item.spec, *shape)[0] for item in items]
        frames = pipe(prompt=[item.prompt for item in items], image=image, generator=generators, **kwargs).frames
        return np.asarray(frames)

    try:
        return call(chunk, start)
    except torch.cuda.OutOfMemoryError:
        if len(chunk) == 1:
            raise
        logger.warning("out of memory with %d prompts per call: continuing one prompt at a time", len(chunk))
        torch.cuda.empty_cache()
        batch[0] = 1
        return np.concatenate([call([item], start + k) for k, item in enumerate(chunk)])


def heldout_failures(report: EvalReport, min_accuracy: float) -> list[str]:
    """One line per held-out table whose attribute accuracy is below `min_accuracy` (a fraction)."""
    if "heldout" not in report.settings["splits"]:
        return ["the held-out split was not evaluated"]
    failures = []
    for mode in report.modes:
        table = report.table("heldout", mode)
        if math.isnan(table.overall) or table.overall < min_accuracy:
            failures.append(
                f"held-out {mode.upper()} attribute accuracy {100 * table.overall:.1f}% is below the required "
                f"{100 * min_accuracy:.1f}% ({table.videos} videos)"
            )
    return failures


def _interval_text(settings: dict[str, Any]) -> str:
    stop = settings.get("guidance_stop", 1.0)  # results written before guidance_stop: every step
    return "" if stop >= 1.0 else f" on the first {100 * stop:.0f}% of steps"


def _shift_text(shift: Any) -> str:
    if isinstance(shift, dict):
        return ", ".join(f"{value:g} ({mode.upper()})" for mode, value in shift.items())
    return "default" if shift is None else f"{shift:g}"


def format_by_objects(report: EvalReport) -> str:
    """Markdown: attributes correct per (split, mode), for the one-object and the two-object prompts apart (a
    two-object prompt states about twice the attributes, so the pooled score leans on it)."""
    columns = [(s, m) for m in report.modes for s in report.settings["splits"]]
    lines = [
        "| prompts | " + " | ".join(column_name(s, m) for s, m in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for count, label in ((1, "one object"), (2, "two objects")):
        cells = []
        for split, mode in columns:
            table = report.table(split, mode, objects=count)
            cells.append("-" if not table.videos else f"{100 * table.overall:.1f}% ({table.videos})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


OBJECT_ATTRIBUTES = ("color", "shape", "size")


def confusion(report: EvalReport, split: str, mode: str) -> dict[str, dict[str, Counter]] | None:
    """attribute -> asked value -> Counter of what the evaluator read for the objects a prompt asked for ("none":
    no object matched it), over one (split, mode). None for results written before `details.matched` existed."""
    videos = [v for v in report.videos if v["split"] == split and v["mode"] == mode]
    if any("matched" not in v["details"] for v in videos):
        return None
    table: dict[str, dict[str, Counter]] = {a: {} for a in OBJECT_ATTRIBUTES}
    for video in videos:
        found = video["details"]["objects"]
        for asked, index in zip(video["spec"]["objects"], video["details"]["matched"]):
            for attribute in OBJECT_ATTRIBUTES:
                if asked.get(attribute) is None:
                    continue
                read = "none" if index is None else found[index][attribute]
                table[attribute].setdefault(asked[attribute], Counter())[read] += 1
    return table


def format_confusion(report: EvalReport, split: str = "heldout") -> str:
    """Markdown, one table per mode of `split`: for each colour, shape and size a prompt asked for, what was read."""
    parts = []
    for mode in report.modes:
        table = confusion(report, split, mode)
        if table is None or not any(table.values()):
            continue
        lines = [f"| {column_name(split, mode)} | asked (objects) | read as |", "|---|---|---|"]
        for attribute, rows in table.items():
            for asked, counts in sorted(rows.items()):
                read = " · ".join(f"{name} {n}" for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
                lines.append(f"| {attribute} | {asked} ({sum(counts.values())}) | {read} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def format_report(report: EvalReport) -> str:
    """Markdown: the attribute x (split, mode) table, the one- / two-object split, the held-out confusion (what was
    read for each colour, shape and size asked), one line of settings and timing."""
    s, t = report.settings, report.timings
    lines = [
        format_table(report.tables),
        "",
        "Attributes correct by the number of objects a prompt asks for (videos in brackets):",
        "",
        format_by_objects(report),
        "",
        f"Model `{s['model']}`; {s['num_prompts']} prompts per split ({s['variant']} captions, prompt set "
        f"{s['prompt_seed']}), {s['steps']} steps, shift {_shift_text(s.get('shift'))}, "
        f"noise correlation {s.get('noise_correlation', 0.0):g}, "
        f"guidance scale {s['guidance_scale']}{_interval_text(s)}, seed {s['seed']}, "
        f"{1 if s['mode'] == 't2i' else s['num_frames']}x{s['height']}x{s['width']}. {len(report.videos)} "
        f"{'images' if s['mode'] == 't2i' else 'videos'} in {t.get('total_s', 0):.1f} s "
        f"({t.get('s_per_video', 0):.2f} s/video after a {t.get('load_s', 0):.1f} s load).",
    ]
    confused = format_confusion(report) if "heldout" in s["splits"] else ""
    if confused:  # before the settings line
        lines[-1:-1] = ["What the evaluator read for each object a held-out prompt asked for:", "", confused, ""]
    return "\n".join(lines)
