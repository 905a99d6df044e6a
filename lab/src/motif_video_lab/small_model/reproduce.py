"""Reproduce the shipped small model end to end: data -> VAE -> frozen text encoder -> shards -> transformer -> release.

Every step writes into `work_dir` and is skipped when its output is complete, so a killed run continues where it
stopped (the VAE and the transformer resume from their own checkpoints):

    data/videos, data/images     procedural train-split clips + manifests (`procedural.write_dataset`)
    data/prior-videos            the prior stage's own, mostly two-object clips (only with `prior_videos`)
    vae/                         the small Wan VAE trained on them (`small_model.vae`)
    release/                     tokenizer, text encoder (random, or pretrained on captions), VAE, scheduler, guider
                                 (`small_model.components`)
    shards/videos, shards/images `motif-video prepare` output (latents, text states, first frames, SigLIP tokens)
    shards/prior-videos          (only with `prior_videos`)
    teacher/                     the REPA scene teacher (only with `repa_teacher_steps`)
    run/                         `motif-video train` run of `small_recipe` (metrics.jsonl, checkpoints)
    release/transformer          the EMA transformer, the plan's guider settings, then model_index.json
                                 (release complete)

The transformer is the real architecture at toy width (`SMALL_TRANSFORMER`): dual-stream blocks, single-stream
blocks with Shared Cross-Attention and a DDT decoder, trained with our recipe: rectified flow, logit-normal t,
prompt dropout, joint T2V/I2V (first-frame channels and SigLIP tokens), EMA. The stages, each left out at 0 steps:

    images   still images from scratch (TREAD with `tread`, REPA with `repa_teacher_steps`)
    joint    images and videos interleaved (image, video, video), same options
    anneal   the same mix without TREAD at `anneal_lr`
    prior    videos only with frame-correlated noise (`ObjectiveConfig.noise_correlation`), which the release
             stores as its sampling default
    polish   the same at a lower lr, with a sharp (unblurred) first-frame condition

The defaults are the best model's: a frozen caption-pretrained text encoder, 5,000 image steps, 30,000 prior-stage
video steps, then 2,000 polish steps, no TREAD and no REPA (the README's "Small model" section has the measurements
behind each choice). REPA aligns to a teacher trained here on procedural frames (`small_model.scene_teacher`), since
no DINOv2 or V-JEPA can be downloaded here.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from motif_video.models.config import get_preset
from motif_video.training.objective import ObjectiveConfig
from motif_video.training.parallel import ParallelConfig
from motif_video.training.recipe import ModelSource, Recipe, Source, Stage
from motif_video.training.trainer import RouteConfig
from motif_video_lab.small_model.scene_teacher import small_repa

logger = logging.getLogger(__name__)

SMALL_TRANSFORMER = get_preset("motif-video-small")


@dataclass(frozen=True)
class SmallModelPlan:
    """Sizes and budgets of a reproduction; the defaults are the best model's (README)."""

    num_videos: int = 2000
    num_images: int = 4000
    vae_steps: int = 0  # 0: the VAE trainer's default budget (`small_model.vae`)
    image_steps: int = 5000  # stage 1: images only
    # Stages 2 (image, video, video) and 3 (the same mix, no TREAD, `anneal_lr`, and `anneal_shift` if > 1); a stage
    # with 0 steps is left out. The best model has neither: its video steps are all in stages 4-5 (README).
    joint_steps: int = 0
    anneal_steps: int = 0
    anneal_lr: float = 3e-4
    anneal_shift: float = 1.0  # on top of logit_mean: no further shift (2.0 with logit-normal(0, 1))
    # Stage 4: videos only, no TREAD, frame-correlated noise (the release samples with it), at `prior_lr`. The best
    # model's 30,000 video steps at 1e-3 (constant after 50 warmup steps): held-out T2V 81.8 / 84.0 / 85.2 / 88.3 /
    # 88.8% after 14,500 / 17,500 / 20,500 / 23,500 / 30,000 (README): the gain stops past about 23,500.
    prior_steps: int = 30000
    prior_lr: float = 1e-3
    noise_correlation: float = 0.9
    # Stage 5: the prior stage's videos and objective at `polish_lr`, with the first-frame condition sharp (no
    # timestep-aware blur: objects are 2-3 latent pixels wide, so the blur of 1 latent pixel at t = 1 hides their
    # shape). Measured from the 30,000-step model (48 held-out prompts, T2V / I2V): 88.8 / 84.9% before; 2,000 steps
    # at 2.5e-4 without blur 90.4 / 85.4%; 3,000 steps at 2.5e-4 with blur 89.0 / 84.2%. The best measured, though
    # within the noise of one evaluation (a few points).
    polish_steps: int = 2000
    polish_lr: float = 2.5e-4
    # TREAD routing (dual block 1 .. encoder block 5 at 50%) in stages 1-2. Off in the best model: at this size a
    # routed model is far worse on the full sequence it samples with (flow loss 0.46 unrouted vs 0.20 routed at
    # t = 0.6, samples unusable) unless an unrouted stage follows, and the best model trained unrouted throughout.
    tread: bool = False
    # The prior stage on its own clips, mostly two-object scenes (0: it reuses the videos of the other stages, 40%
    # two-object). Measured as a fine-tune of `runs/cen` on 3,000 such clips (`ablate_small_model.py --work
    # runs/two`): held-out T2V 51.9% -> 55.0 / 56.0 / 57.2 / 58.6% after 2,000 / 4,000 / 6,000 / 8,000 steps, binding
    # ratio (`attribute_binding.py`, colour, t = 0.95) 1.7 -> 2.2 / 2.5 / 2.7 / 3.1.
    prior_videos: int = 0
    prior_two_object_prob: float = 0.85
    # The frozen text encoder is pretrained on train-split captions for this many steps (`text_pretraining`): each
    # object's words then carry its colour, shape, size and side of the frame; 0: the random encoder (`runs/cen` and
    # every earlier run). Measured from scratch, random -> pretrained (README): T2I after 5,000 steps, held-out /
    # train 46.0 / 58.2% -> 58.6 / 70.2% (two-object held-out 33.6 -> 52.6%); those models after 1,500 / 3,000 /
    # 4,500 video steps, T2V 34.2 / 49.5% -> 48.3 / 57.1%, 34.4 / 52.3% -> 43.8 / 57.4%, 34.2 / 52.6% -> 48.8 / 63.8%.
    text_pretrain_steps: int = 500
    # REPA in stages 1-3 (off in the prior stage, as the report turns it off from stage 4) to a scene teacher trained
    # for this many steps (`small_model.scene_teacher`, in <work>/teacher); 0: no REPA. Measured on images from
    # scratch (README; pretrained text encoder, 5,000 steps, same seed and data): held-out / train T2I 58.6 / 70.2%
    # without, 78.6 / 82.7% with (colour 40.6 -> 90.6%, relation 68.3 -> 96.8%; flow loss 0.226 -> 0.197). Off by
    # default: the best model's image stage ran without it (online targets make a step 2.5-3x slower here) and
    # no REPA-started model has been trained on videos.
    repa_teacher_steps: int = 0
    video_batch: int = 16
    image_batch: int = 32
    lr: float = 1e-3
    # Training t ~ sigmoid(N(logit_mean, logit_std)) in every stage (then the anneal/prior shift). The words are
    # learned at high t, where x_t no longer shows the answer: measured on images (2,000 steps from scratch,
    # `text_sensitivity.py --image`, RMS velocity change at t = 0.8 for gray -> black / red -> blue / large ->
    # small): logit-normal(0, 1) 0.000 / 0.001 / 0.001, logit-normal(1.5, 1) 0.743 / 0.024 / 0.050. The full
    # reproduction with (1.0, 1.2) and anneal_shift 1 (`runs/cen`, 16,300 steps) scores held-out T2V / I2V 51.9% /
    # 58.1% and train 72.4% / 76.0%, against 39.8% / 43.2% and 44.5% / 44.2% with (0, 1) and shift 2.
    logit_mean: float = 1.0
    logit_std: float = 1.2
    # The release's guider: APG at `guidance_scale` (original formulation, v_cond + scale * d; the official release
    # uses 8 on every step) on the first `guidance_stop` of the steps, none after. Measured on the 14,500-video-step
    # model (README; 48 held-out prompts, T2V / I2V attributes correct): 8 on every step 75.4 / 77.8%; 0 / 1 / 2 / 4
    # on every step 63.9 / 81.8 / 82.1 / 81.3% T2V (I2V 81.1% at 1, 79.4% at 2); 3 / 4 / 6 / 8 on the first half
    # 82.3 / 82.3 / 81.3 / 81.6% T2V (I2V 81.1 / 83.7 / 84.0%); 4 on the first 70% 81.8 / 85.9%. Strong guidance late
    # in sampling draws small objects large (size 64.6% at 8 on every step, 91.7% at 2) and spoils half-finished
    # clips (`completion_by_noise.py`, 32 training clips, attributes correct from t0 = 1 / 0.4: 81.5 / 74.1% at 8,
    # 87.3 / 96.1% at 1).
    guidance_scale: float = 4.0
    guidance_stop: float = 0.7
    seed: int = 0

    def __post_init__(self) -> None:
        budgets = dict(image_steps=self.image_steps, joint_steps=self.joint_steps, anneal_steps=self.anneal_steps,
                       prior_steps=self.prior_steps, polish_steps=self.polish_steps)  # fmt: skip
        if min(budgets.values()) < 0 or not any(budgets.values()):
            raise ValueError(f"stage steps must be >= 0 with at least one stage > 0, got {budgets}")
        if self.prior_videos and not (self.prior_steps or self.polish_steps):
            raise ValueError(
                f"prior_videos={self.prior_videos} are the prior and polish stages' clips: set prior_steps or "
                "polish_steps too"
            )
        if self.guidance_scale < 0 or not 0.0 < self.guidance_stop <= 1.0:
            raise ValueError(f"guidance_scale must be >= 0 and guidance_stop in (0, 1], got {self.guidance_scale}, "
                             f"{self.guidance_stop}")  # fmt: skip
        if not 0.0 <= self.prior_two_object_prob <= 1.0:
            raise ValueError(f"prior_two_object_prob must be in [0, 1], got {self.prior_two_object_prob}")


def small_recipe(work_dir: Path, plan: SmallModelPlan) -> Recipe:
    images = Source(str(work_dir / "shards" / "images"), batch_size=plan.image_batch, shuffle_window=2048)
    videos = Source(str(work_dir / "shards" / "videos"), batch_size=plan.video_batch, shuffle_window=2048)
    prior_kind = "prior-videos" if plan.prior_videos else "videos"
    prior_videos = Source(str(work_dir / "shards" / prior_kind), batch_size=plan.video_batch, shuffle_window=2048)
    times = dict(logit_mean=plan.logit_mean, logit_std=plan.logit_std)
    objective = ObjectiveConfig(i2v_ratio=0.5, prompt_dropout=0.1, **times)
    # The anneal stage trains WITHOUT the TREAD route, as the model runs at inference: at this size (5 of 8 blocks
    # routed at 50%) a TREAD-only model is far worse on full sequences (measured: flow loss 0.46 unrouted vs 0.20
    # routed at t = 0.6, and its samples are unusable), at a lower lr. `anneal_shift` can shift t towards noise,
    # where sampling starts: logit-normal(0, 1) rarely trains there (t > 0.9: 1.4% of draws; median 0.67 at shift
    # 2); the default logit-normal(1, 1.2) already does (median 0.73, t > 0.9: 16%), so the default is no shift.
    anneal = ObjectiveConfig(i2v_ratio=0.5, prompt_dropout=0.1, shift=plan.anneal_shift, **times)
    # The prior stage fine-tunes on frame-correlated noise (objective.py): with independent noise this model decides
    # each latent frame's layout from that frame's own noise (measured: T2V and I2V give the same frames 1-4 for a
    # seed; consistency 0%), and a shared draw gives every frame the same starting layout. Videos only: an image has
    # one frame, so nothing to correlate.
    prior = ObjectiveConfig(i2v_ratio=0.5, prompt_dropout=0.1, shift=plan.anneal_shift,
                            noise_correlation=plan.noise_correlation, **times)  # fmt: skip
    polish = dataclasses.replace(prior, blur_max=0.0)
    mix = ("image", "video", "video")
    # TREAD: dual block 1 .. encoder block 5 at 50%; the decoder sees all tokens
    route = RouteConfig(start=1, end=6, ratio=0.5) if plan.tread else None
    repa = small_repa(work_dir / "teacher") if plan.repa_teacher_steps else None
    stages = [  # (name, steps, Stage options); a stage with 0 steps is left out
        ("images", plan.image_steps, dict(sources={"image": images}, lr=plan.lr, warmup_steps=100, route=route,
                                          objective=objective, repa=repa)),
        ("joint", plan.joint_steps, dict(sources={"image": images, "video": videos}, interleave=mix, lr=plan.lr,
                                         route=route, objective=objective, repa=repa)),
        ("anneal", plan.anneal_steps, dict(sources={"image": images, "video": videos}, interleave=mix,
                                           lr=plan.anneal_lr, route=None, objective=anneal, repa=repa)),
        ("prior", plan.prior_steps, dict(sources={"video": prior_videos}, lr=plan.prior_lr, warmup_steps=50,
                                         route=None, objective=prior)),
        ("polish", plan.polish_steps, dict(sources={"video": prior_videos}, lr=plan.polish_lr, warmup_steps=50,
                                           route=None, objective=polish)),
    ]  # fmt: skip
    return Recipe(
        model=ModelSource(preset="motif-video-small"),
        stages=tuple(Stage(name, steps, **options) for name, steps, options in stages if steps),
        seed=plan.seed,
        log_every=25,
        checkpoint_every=250,
        ema_decay=0.999,
        parallel=ParallelConfig(param_dtype="float32", activation_checkpointing=False),
        tensorboard=False,
        vae=str(work_dir / "release") if repa is not None else None,  # online REPA targets decode the latents
    )  # fmt: skip


def sampling_correlation(plan: SmallModelPlan) -> float:
    """The release's noise_correlation: the prior (and polish) stage's when there is one, else independent noise."""
    return plan.noise_correlation if plan.prior_steps or plan.polish_steps else 0.0


def reproduce(work_dir: str | Path, plan: SmallModelPlan | None = None, ship_to: str | Path | None = None) -> Path:
    """Run (or continue) every step; returns the complete release folder (copied to `ship_to` if given)."""
    from motif_video.data.prepare import prepare
    from motif_video.training.export import export_transformer
    from motif_video.training.metrics import MetricsWriter
    from motif_video.training.run import final_checkpoint, resume_step, run_recipe
    from motif_video_lab.procedural import write_dataset
    from motif_video_lab.small_model.components import build_release_components, finish_release
    from motif_video_lab.small_model.scene_teacher import scene_teacher_folder
    from motif_video_lab.small_model.vae import train_vae

    plan = plan or SmallModelPlan()
    work = Path(work_dir)
    data = work / "data"
    kinds = [("videos", plan.num_videos, 0, plan.seed, {}), ("images", 0, plan.num_images, plan.seed + 1, {})]
    if plan.prior_videos:
        kinds.append(("prior-videos", plan.prior_videos, 0, plan.seed + 2,
                      {"two_object_prob": plan.prior_two_object_prob}))  # fmt: skip
    for kind, videos, images, seed, options in kinds:
        if not (data / kind / "manifest.jsonl").is_file():
            logger.info("writing %s procedural %s", videos or images, kind)
            write_dataset(data / kind, videos, images, seed, **options)
    vae_dir = work / "vae"
    if not (vae_dir / "config.json").is_file():
        train_vae(vae_dir, seed=plan.seed, **({"steps": plan.vae_steps} if plan.vae_steps else {}))
    release = work / "release"
    if not (release / "vae" / "config.json").is_file():
        build_release_components(release, vae_dir, plan.seed, plan.text_pretrain_steps)
    for kind, *_ in kinds:  # prepare resumes per shard
        bucket = "1x64x64" if kind == "images" else "17x64x64"
        prepare(data / kind / "manifest.jsonl", release, work / "shards" / kind, bucket, samples_per_shard=500,
                seed=plan.seed, dtype="float32", image_tokens=True, device="auto")  # fmt: skip
    if plan.repa_teacher_steps:
        scene_teacher_folder(work / "teacher", plan.repa_teacher_steps, plan.seed)
    recipe = small_recipe(work, plan)
    run = work / "run"
    start = resume_step(recipe, run) if (run / "recipe.json").is_file() else None
    with MetricsWriter(run, resume_step=start, tensorboard=False) as writer:
        run_recipe(recipe, run, on_log=writer.log)
    final = final_checkpoint(recipe, work / "run")
    if final is None:
        raise RuntimeError(f"training in {work / 'run'} did not finish")
    exported = work / "transformer"
    export_transformer(final, exported, use_ema=True)  # always: a few MB, and the run may have gained stages
    finish_release(release, exported, defaults={"noise_correlation": sampling_correlation(plan)},
                   guidance=dict(scale=plan.guidance_scale, stop=plan.guidance_stop))  # fmt: skip
    if ship_to is not None:
        ship = Path(ship_to)
        tmp = ship.with_name(ship.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(release, tmp)
        shutil.rmtree(ship, ignore_errors=True)
        tmp.rename(ship)
        return ship
    return release


__all__ = ["SMALL_TRANSFORMER", "SmallModelPlan", "reproduce", "small_recipe"]
