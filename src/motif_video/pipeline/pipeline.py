"""`MotifVideoPipeline`: text-to-video, and image-to-video when `image=` is given, in one class.

Call arguments keep the names of diffusers' `MotifVideoPipeline` / `MotifVideoImage2VideoPipeline`, and the
result has `.frames`, so switching is a one-line change. With the same components, seed, Euler and APG it
gives the same frames as the reference (tested in fp32), and differs where the reference is wrong:
- the shift is explicit and static (15 T2V, 8 I2V) instead of whatever the scheduler config implies;
- any number of prompts x videos per prompt in I2V, with one image per prompt or one for all;
- the VAE runs in its own dtype (fp32 VAE under a bf16 transformer works); latents stay fp32 across steps;
- height/width must be multiples of 16 and frames 4k+1 (an error, never a silent floor);
- custom sigmas/timesteps, and UniPC / DPM-Solver as well as Euler.
Speed: cond and uncond passes run as one batched forward (`batch_guidance=True`; on CUDA its encoder runs per
text length, mask-free: `model_function`), prompts are padded only to the longest one, and what does not change
across steps (text, image tokens, condition channels) is made once.

A call runs in phases, each in its own module: resolve and check the inputs (`inputs.plan_call`), encode text
and image (`encoding`), draw the starting noise, denoise (`sampler.denoise`, a function of tensors), decode.
Options can also come as one `GenerationSettings` (`pipe.generate(prompt, settings)`); memory modes live in
`memory.MemoryModes`; one video over several processes (`enable_parallel`) in `parallel.ParallelModes`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from motif_video.core import encoders as conditioning
from motif_video.core import latent_space as latent_ops
from motif_video.core.release import OFFICIAL_NEGATIVE_PROMPT as OFFICIAL_NEGATIVE_PROMPT  # re-exported
from motif_video.core.release import GenerationDefaults
from motif_video.pipeline import encoding, footprint, inputs, lora
from motif_video.pipeline.guidance import GuidanceConfig
from motif_video.pipeline.inputs import MODEL_DEFAULT_NEGATIVE, CallPlan
from motif_video.pipeline.memory import MemoryModes
from motif_video.pipeline.model_function import check_options, model_function
from motif_video.pipeline.parallel import ParallelModes
from motif_video.pipeline.sampler import Condition, StepEnd, denoise
from motif_video.pipeline.schedule import set_scheduler_sigmas, unshifted_scheduler
from motif_video.pipeline.settings import GenerationSettings
from motif_video.pipeline.step_cache import EncoderReuse, StepCache

logger = logging.getLogger(__name__)


@dataclass
class MotifVideoPipelineOutput:
    """`frames`: (B, F, H, W, 3) float array for "np", lists of PIL images for "pil", (B, F, 3, H, W) tensor
    for "pt", or normalised latents (B, 16, F', H/8, W/8) for "latent"."""

    frames: Any

    def __getitem__(self, index: int) -> Any:
        return (self.frames,)[index]


class MotifVideoPipeline(MemoryModes, ParallelModes):
    """Text/image-to-video with our transformer and the official text encoder, VAE and SigLIP processor."""

    def __init__(
        self,
        transformer: torch.nn.Module,
        vae: Any,
        scheduler: Any,
        text_encoder: torch.nn.Module | None = None,
        tokenizer: Any | None = None,
        feature_extractor: Any | None = None,
        guidance: GuidanceConfig | None = None,
        defaults: GenerationDefaults | None = None,
        source: str | None = None,
    ) -> None:
        self.transformer = transformer
        self.vae = vae
        self.scheduler = scheduler
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        self.guidance = guidance or GuidanceConfig()
        self.defaults = defaults or GenerationDefaults()
        self.source = source  # where the components were loaded from, for run records
        self._device: torch.device | None = None
        self._offloader: Any = None
        self._block_offload: Any = None
        self._text_encoder_on_cpu = False
        self._progress_kwargs: dict[str, Any] = {}
        self._interrupt = False
        self.last_call: dict[str, Any] = {}  # the resolved settings of the latest call (for run records)
        self.last_reuse: EncoderReuse | None = None  # the latest call's step reuse (`.calls` for FLOP counts)

    # ----------------------------------------------------------------- loading / saving
    @classmethod
    def from_pretrained(cls, path_or_hub_id: str, **kwargs: Any) -> MotifVideoPipeline:
        """Load an official release folder or hub id (`model_index.json` + component folders)."""
        from motif_video.pipeline.loading import load_pipeline

        return load_pipeline(cls, path_or_hub_id, **kwargs)

    @classmethod
    def from_components(cls, components: dict[str, Any], source: str | None = None) -> MotifVideoPipeline:
        """From a dict of components (diffusers' names; a diffusers `guider` object becomes our config)."""
        parts = dict(components)
        guider = parts.pop("guider", None)
        if guider is not None and not isinstance(guider, GuidanceConfig):
            guider = GuidanceConfig.from_diffusers_config({"_class_name": type(guider).__name__, **guider.config})
        return cls(**parts, guidance=guider, source=source)

    def save_pretrained(self, directory: str, **kwargs: Any) -> None:
        """Write the official release layout (diffusers can load it too)."""
        from motif_video.pipeline.loading import save_pipeline

        save_pipeline(self, directory, **kwargs)

    # ----------------------------------------------------------------- LoRA (see pipeline/lora.py)
    def load_lora_weights(self, path_or_dir: str, adapter_name: str = "default", scale: float = 1.0) -> None:
        """Add a LoRA adapter (peft or diffusers file) to the transformer; several named adapters add up."""
        lora.load_lora_weights(self, path_or_dir, adapter_name, scale)

    def set_lora_scale(self, scale: float, adapter_name: str = "default") -> None:
        lora.set_lora_scale(self, scale, adapter_name)

    def fuse_lora(self) -> None:
        """Merge the loaded adapters (at their scales) into the transformer weights and drop the LoRA layers."""
        lora.fuse_lora(self)

    def unload_lora_weights(self, adapter_name: str | None = None) -> None:
        """Remove one unfused adapter (or all): the transformer computes exactly what it did before loading."""
        lora.unload_lora_weights(self, adapter_name)

    def save_lora_weights(self, directory: str, adapter_name: str = "default") -> None:
        lora.save_lora_weights(self, directory, adapter_name)

    @property
    def components(self) -> dict[str, Any]:
        return dict(
            transformer=self.transformer,
            vae=self.vae,
            scheduler=self.scheduler,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            feature_extractor=self.feature_extractor,
        )

    # ----------------------------------------------------------------- progress
    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """tqdm options for the denoising bar, e.g. `disable=True`."""
        self._progress_kwargs = kwargs

    def interrupt(self) -> None:
        """Stop after the current step (call from a step-end callback); the partial result is decoded."""
        self._interrupt = True

    # ----------------------------------------------------------------- conditioning
    def encode_prompt(
        self,
        prompts: list[str],
        max_sequence_length: int = 512,
        dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts -> (embeds (B, L, D), mask (B, L) bool) on the execution device."""
        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError("this pipeline has no text encoder/tokenizer: pass prompt_embeds (and a mask) instead")
        with self.using("text_encoder"):
            return conditioning.encode_text(
                self.tokenizer,
                self.text_encoder,
                prompts,
                max_sequence_length,
                self.device,
                dtype or self.transformer.dtype,
            )

    def encode_image(self, frames: torch.Tensor) -> torch.Tensor | None:
        """First frames (N, 3, H, W) in [-1, 1] -> SigLIP tokens, or None without a vision tower."""
        tower = getattr(self.text_encoder, "vision_tower", None) if self.text_encoder is not None else None
        if tower is None or self.feature_extractor is None:
            logger.warning("no SigLIP vision tower/feature extractor: image-to-video runs without image tokens")
            return None
        with self.using("text_encoder"):
            return conditioning.siglip_tokens(tower, self.feature_extractor, frames, self.device)

    # ----------------------------------------------------------------- the call
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: Any | list[Any] | None = None,
        negative_prompt: str | list[str] | None = MODEL_DEFAULT_NEGATIVE,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        num_inference_steps: int | None = None,
        sigmas: list[float] | None = None,
        timesteps: list[float] | None = None,
        shift: float | None = None,
        noise_correlation: float | None = None,
        guidance_scale: float | None = None,
        guidance: GuidanceConfig | str | None = None,
        apg_eta: float | None = None,
        apg_norm_threshold: float | None = None,
        apg_momentum: float | None = None,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        first_frame_latent: str = "sample",
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end: Callable[..., dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | tuple[str, ...] = ("latents",),
        attention_kwargs: dict[str, Any] | None = None,
        max_sequence_length: int = 512,
        batch_guidance: bool = True,
        vae_batch_size: int | None = None,
        cache: str | StepCache | None = None,
        split_encoder: bool | str | None = None,
    ) -> MotifVideoPipelineOutput | tuple[Any]:
        """Generate videos. Returns `.frames` (see `MotifVideoPipelineOutput`).

        `image` switches to image-to-video: one image for every prompt, or a list with one per prompt.
        `shift` and `negative_prompt` default to the model's (`self.defaults`; official: 15 T2V / 8 I2V and the
        official negative prompt; `None` or "" is the empty prompt); so does `noise_correlation`, the correlation
        between latent frames of the starting noise (official 0: independent; a model trained with a correlated
        prior stores its own); `guidance_scale`, `guidance` ("apg" | "cfg" | "none" or a `GuidanceConfig`) and
        `apg_*` override the pipeline's guidance config. `first_frame_latent`: "sample" draws the first-frame
        latent from the VAE posterior with `generator` (the reference), "mode" takes its mode.
        `batch_guidance=False` runs conditional and unconditional passes as two forwards (less memory).
        `cache`: step reuse ("off", "ddt:N", "adaptive:T", ...; `step_cache.StepCache`), off by default;
        `split_encoder`: the guidance batch's encoder runs per text length without a key mask; None / "auto" (the
        default) on a CUDA device only, True / False to choose (`model_function`).
        The same options as one object: `generate(prompt, GenerationSettings(...))`.
        """
        # 1. resolve and check the inputs
        plan = inputs.plan_call(
            self.defaults,
            self.guidance,
            latent_ops.model_patch(self.transformer),
            prompt=prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt=negative_prompt,
            negative_prompt_embeds=negative_prompt_embeds,
            image=image,
            height=height,
            width=width,
            num_frames=num_frames,
            num_inference_steps=num_inference_steps,
            sigmas=sigmas,
            timesteps=timesteps,
            shift=shift,
            noise_correlation=noise_correlation,
            guidance=guidance,
            guidance_scale=guidance_scale,
            apg_eta=apg_eta,
            apg_norm_threshold=apg_norm_threshold,
            apg_momentum=apg_momentum,
            num_videos_per_prompt=num_videos_per_prompt,
            first_frame_latent=first_frame_latent,
            output_type=output_type,
            callback=callback_on_step_end,
            callback_tensors=callback_on_step_end_tensor_inputs,
            attention_kwargs=attention_kwargs,
            batch_guidance=batch_guidance,
            max_sequence_length=max_sequence_length,
        )
        inputs.check_generator(generator, plan.batch)
        check_options(cache, split_encoder, attention_kwargs)
        device, dtype = self.device, self.transformer.dtype
        self._check_parallel_call(plan)
        self._share(lambda: footprint.check_call(self.transformer, plan.height, plan.width, plan.num_frames, plan.batch,
                                                 plan.needs_uncond, dtype, device, self._ranks()))  # fmt: skip

        # 2. encode the text, draw the noise, encode the image (the noise first, as the reference draws it); under
        # `enable_parallel` on rank 0 only, then broadcast (`_share`)
        text, negative = self._share(
            lambda: encoding.text_conditions(self, plan, prompt_embeds, prompt_attention_mask,
                                             negative_prompt_embeds, negative_prompt_attention_mask)
        )  # fmt: skip
        latents = self._share(lambda: self._initial_latents(plan, latents, generator))
        first_frames, image_tokens = (
            self._share(lambda: encoding.image_conditions(self, plan, image, generator)) if plan.i2v else (None, None)
        )
        channels = latent_ops.condition_channels(first_frames, tuple(latents.shape), device, dtype)
        cond = Condition(*text, channels, image_tokens)
        uncond = None if negative is None else Condition(*negative, channels, image_tokens, branch="uncond")

        # 3. denoise
        scheduler = unshifted_scheduler(self.scheduler)
        set_scheduler_sigmas(scheduler, plan.sigmas, device)
        vae_dtype = next(self.vae.parameters()).dtype
        self.last_call = plan.record(
            scheduler=type(scheduler).__name__,
            transformer_dtype=str(dtype),
            vae_dtype=str(vae_dtype),
            device=str(device),
            **self._parallel_record(),
        )
        self._interrupt = False
        model, self.last_reuse = model_function(
            self.transformer, dtype, device, cache, split_encoder, self.defaults.step_cache,
            guided=uncond is not None and batch_guidance, attention_kwargs=attention_kwargs,
        )  # fmt: skip
        model = self._parallel_model(model)  # split over the guidance ranks under cfg=2
        with self.using("transformer"), tqdm(total=len(plan.sigmas), **self._bar_options()) as bar:
            step_end = self._step_end(plan, callback_on_step_end, bar.update)
            latents = denoise(
                model,
                latents,
                scheduler,
                cond,
                uncond,
                plan.guide,
                batch_guidance=batch_guidance,
                step_end=step_end,
                stop=lambda: self._interrupt,
            )

        if self.last_reuse is not None:
            self.last_call["cache"] = self.last_reuse.summary()

        # 4. decode (rank 0 only under `enable_parallel`: the others return None)
        video = latents if output_type == "latent" else None
        if video is None and self.is_main_rank:
            video = self.decode(latents, output_type, vae_batch_size)
        return MotifVideoPipelineOutput(frames=video) if return_dict else (video,)

    def generate(
        self, prompt: str | list[str], settings: GenerationSettings, image: Any | None = None, **kwargs: Any
    ) -> MotifVideoPipelineOutput | tuple[Any]:
        """Generate with one `GenerationSettings` (what `motif-video generate` runs): `prompt`, and `image` for
        image-to-video. Other keyword arguments of `__call__` (output_type, callbacks, ...) pass through; one that
        `settings` already sets (the seed stands for `generator`) is an error rather than a silent override."""
        options = settings.call_kwargs()
        both = sorted(set(options) & set(kwargs))
        if both:
            raise ValueError(f"{', '.join(both)}: set by `settings`, so not also as an argument")
        return self(prompt=prompt, image=image, **options, **kwargs)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, output_type: str = "np", vae_batch_size: int | None = None) -> Any:
        """Normalised latents (B, 16, F', h, w) -> frames in `output_type`, decoded in the VAE's own dtype."""
        from diffusers.video_processor import VideoProcessor

        with self.using("vae"):
            vae_param = next(self.vae.parameters())
            z = latent_ops.denormalize_latents(self.vae, latents.to(vae_param.device, vae_param.dtype))
            chunk = vae_batch_size or z.shape[0]
            pieces = [self.vae.decode(z[i : i + chunk], return_dict=False)[0] for i in range(0, z.shape[0], chunk)]
            video = torch.cat(pieces)
        return VideoProcessor(vae_scale_factor=latent_ops.VAE_SPATIAL).postprocess_video(video, output_type=output_type)

    # ----------------------------------------------------------------- the phases' helpers
    def _initial_latents(
        self, plan: CallPlan, latents: torch.Tensor | None, generator: torch.Generator | list[torch.Generator] | None
    ) -> torch.Tensor:
        """The starting noise (B, 16, F', h, w) in fp32 on the execution device: drawn, or the caller's `latents`."""
        shape = latent_ops.latent_shape(plan.batch, self.vae.config.z_dim, plan.height, plan.width, plan.num_frames)
        if latents is None:
            return latent_ops.initial_noise(shape, generator, self.device, plan.noise_correlation)
        if tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape} for this size and batch, got {tuple(latents.shape)}")
        return latents.to(device=self.device, dtype=torch.float32)

    def _step_end(self, plan: CallPlan, callback: Callable[..., dict] | None, advance: Callable[[], Any]) -> StepEnd:
        """The sampler's step-end hook: a diffusers-style `callback_on_step_end` (it may replace the latents and the
        text embeddings it was given), then `advance` (the progress bar)."""

        def step_end(
            i: int, t: torch.Tensor, latents: torch.Tensor, cond: Condition, uncond: Condition | None
        ) -> tuple[torch.Tensor, Condition, Condition | None]:
            if callback is not None:
                negative = None if uncond is None else uncond.text
                given = dict(latents=latents, prompt_embeds=cond.text, negative_prompt_embeds=negative)
                out = callback(self, i, t, {k: given[k] for k in plan.callback_tensors}) or {}
                latents = out.get("latents", latents).to(torch.float32)
                if "prompt_embeds" in out:
                    cond = cond.with_text(out["prompt_embeds"])
                if "negative_prompt_embeds" in out and uncond is not None:
                    uncond = uncond.with_text(out["negative_prompt_embeds"])
            advance()
            return latents, cond, uncond

        return step_end
