"""`MotifVideoPipeline`: text-to-video, and image-to-video when `image=` is given, in one class.

Call arguments keep the names of diffusers' `MotifVideoPipeline` / `MotifVideoImage2VideoPipeline`, and the
result has `.frames`, so switching is a one-line change. With the same components, seed, Euler and APG it
gives the same frames as the reference (tested in fp32), and differs where the reference is wrong:
- the shift is explicit and static (15 T2V, 8 I2V) instead of whatever the scheduler config implies;
- any number of prompts x videos per prompt in I2V, with one image per prompt or one for all;
- the VAE runs in its own dtype (fp32 VAE under a bf16 transformer works); latents stay fp32 across steps;
- height/width must be multiples of 16 and frames 4k+1 (an error, never a silent floor);
- custom sigmas/timesteps, and UniPC / DPM-Solver as well as Euler.
Speed: conditional and unconditional passes run as one batched forward (`batch_guidance=True`), prompts are
padded only to the longest one (the transformer then trims padding), and everything that does not change
across steps (text and image tokens, conditioning channels, RoPE tables) is computed once.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from motif_video.core import encoders as conditioning
from motif_video.core import latent_space as latent_ops
from motif_video.core.flow import DEFAULT_SHIFT_I2V, DEFAULT_SHIFT_T2V, to_model_timestep
from motif_video.pipeline import inputs, lora
from motif_video.pipeline.guidance import GuidanceConfig, GuidanceState, combine
from motif_video.pipeline.schedule import resolve_sigmas, set_scheduler_sigmas, unshifted_scheduler

logger = logging.getLogger(__name__)

OFFICIAL_NEGATIVE_PROMPT = (
    "text overlay, graphic overlay, watermark, logo, subtitles, timestamp, broadcast graphics, UI elements, "
    "random letters, frozen pose, rigid, static expression, jerky motion, mechanical motion, discontinuous "
    "motion, flat framing, depthless, dull lighting, monotone, crushed shadows, blown-out highlights, shifting "
    "background, fading background, poor continuity, identity drift, deformation, flickering, ghosting, "
    "smearing, duplication, mutated proportions, inconsistent clothing, flat colors, desaturated, tonally "
    "compressed, poor background separation, exposure shift, uneven brightness, color balance shift"
)
OUTPUT_TYPES = ("np", "pil", "pt", "latent")
CALLBACK_TENSORS = ("latents", "prompt_embeds", "negative_prompt_embeds")


# `negative_prompt` left at this default means "the model's default negative prompt" (`GenerationDefaults`).
MODEL_DEFAULT_NEGATIVE = "<model default negative prompt>"


@dataclass(frozen=True)
class GenerationDefaults:
    """What a call uses when it does not say; official: 1280x736, 121 frames at 24 fps, 50 steps, shift 15 (T2V) /
    8 (I2V), the official negative prompt. A release stores its own (the small model: 64x64, shift 3, no negative)."""

    height: int = 736
    width: int = 1280
    num_frames: int = 121
    fps: int = 24
    num_inference_steps: int = 50
    shift_t2v: float = DEFAULT_SHIFT_T2V
    shift_i2v: float = DEFAULT_SHIFT_I2V
    negative_prompt: str = OFFICIAL_NEGATIVE_PROMPT
    noise_correlation: float = 0.0  # between latent frames of the starting noise (`latents.correlate_frames`)


@dataclass
class MotifVideoPipelineOutput:
    """`frames`: (B, F, H, W, 3) float array for "np", lists of PIL images for "pil", (B, F, 3, H, W) tensor
    for "pt", or normalised latents (B, 16, F', H/8, W/8) for "latent"."""

    frames: Any

    def __getitem__(self, index: int) -> Any:
        return (self.frames,)[index]


class MotifVideoPipeline:
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

    # ----------------------------------------------------------------- devices and memory modes
    @property
    def device(self) -> torch.device:
        """Where the transformer runs (the execution device)."""
        if self._device is not None:
            return self._device
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> MotifVideoPipeline:
        """Everything on `device` (the text encoder stays on CPU if `enable_text_encoder_on_cpu` was called)."""
        if self._offloader is not None or self._block_offload is not None:
            raise ValueError("this pipeline uses an offload mode; build a fresh pipeline to move it with .to()")
        device = torch.device(device) if device is not None else self.device
        for name in ("transformer", "vae", "text_encoder"):
            module = getattr(self, name)
            if module is None:
                continue
            target = torch.device("cpu") if (name == "text_encoder" and self._text_encoder_on_cpu) else device
            if name == "transformer" and dtype is not None:
                module.to(device=target, dtype=dtype)
            else:
                module.to(target)
        self._device = device
        return self

    def enable_text_encoder_on_cpu(self) -> None:
        """Keep the text encoder on CPU (its outputs are moved to the execution device)."""
        self._text_encoder_on_cpu = True
        if self.text_encoder is not None:
            self.text_encoder.to("cpu")

    def enable_model_cpu_offload(self, device: torch.device | str = "cuda") -> None:
        """Only the component in use sits on `device`: text encoder -> transformer -> VAE."""
        from motif_video.pipeline.offload import ComponentOffloader

        modules = {
            n: m
            for n, m in (("text_encoder", self.text_encoder), ("transformer", self.transformer), ("vae", self.vae))
            if m is not None
        }
        if self._text_encoder_on_cpu:
            modules.pop("text_encoder", None)
        self._offloader = ComponentOffloader(modules, device)
        self._offloader.offload_all()
        self._device = torch.device(device)

    def enable_block_offload(self, device: torch.device | str = "cuda", prefetch: int = 1) -> None:
        """Transformer blocks stream from CPU one at a time (with prefetch); other components offloaded too."""
        from motif_video.pipeline.offload import enable_block_offload

        others = {n: m for n, m in (("text_encoder", self.text_encoder), ("vae", self.vae)) if m is not None}
        if self._text_encoder_on_cpu:
            others.pop("text_encoder", None)
        from motif_video.pipeline.offload import ComponentOffloader

        self._offloader = ComponentOffloader(others, device)
        self._offloader.offload_all()
        self._block_offload = enable_block_offload(self.transformer, device, prefetch=prefetch)
        self._device = torch.device(device)

    def enable_fp8(self) -> None:
        """FP8 weight-only transformer (torchao); roughly halves its weight memory versus bf16."""
        from motif_video.pipeline.quantization import quantize_fp8_weight_only

        quantize_fp8_weight_only(self.transformer)

    def enable_vae_tiling(self) -> None:
        """Decode in overlapping spatial tiles (diffusers' Wan VAE tiling): lower peak memory."""
        self.vae.enable_tiling()

    def enable_vae_slicing(self) -> None:
        """Decode one video of the batch at a time."""
        self.vae.enable_slicing()

    @contextlib.contextmanager
    def _using(self, name: str) -> Iterator[None]:
        if self._offloader is not None and name in getattr(self._offloader, "components", {}):
            with self._offloader.use(name):
                yield
        else:
            yield

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
        with self._using("text_encoder"):
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
        with self._using("text_encoder"):
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
    ) -> MotifVideoPipelineOutput | tuple[Any]:
        """Generate videos. Returns `.frames` (see `MotifVideoPipelineOutput`).

        `image` switches to image-to-video: one image for every prompt, or a list with one per prompt.
        `shift` and `negative_prompt` default to the model's (`self.defaults`; official: 15 T2V / 8 I2V and the
        official negative prompt; `None` or "" is the empty prompt); so does `noise_correlation`, the correlation
        between latent frames of the starting noise (official 0: independent; a model trained with a correlated
        prior stores its own); `guidance_scale`, `guidance` ("apg" | "cfg" |
        "none" or a `GuidanceConfig`) and `apg_*` override the pipeline's guidance config. `first_frame_latent`:
        "sample" draws the first-frame latent from the VAE posterior with `generator` (the reference), "mode" takes
        its mode. `batch_guidance=False` runs conditional and unconditional passes as two forwards (less memory).
        """
        height = height or self.defaults.height
        width = width or self.defaults.width
        num_frames = num_frames or self.defaults.num_frames
        if num_inference_steps is None and sigmas is None and timesteps is None:
            num_inference_steps = self.defaults.num_inference_steps
        latent_ops.check_video_size(height, width, num_frames, *latent_ops.model_patch(self.transformer))
        if noise_correlation is None:
            noise_correlation = self.defaults.noise_correlation
        latent_ops.check_noise_correlation(noise_correlation)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if num_videos_per_prompt < 1:
            raise ValueError(f"num_videos_per_prompt must be >= 1, got {num_videos_per_prompt}")
        if first_frame_latent not in ("sample", "mode"):
            raise ValueError(f"first_frame_latent must be 'sample' or 'mode', got {first_frame_latent!r}")
        if hasattr(callback_on_step_end, "tensor_inputs"):  # diffusers' PipelineCallback objects
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        unknown = set(callback_on_step_end_tensor_inputs) - set(CALLBACK_TENSORS)
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs may name {CALLBACK_TENSORS}, got {sorted(unknown)}")
        if attention_kwargs and attention_kwargs.get("scale", 1.0) != 1.0:
            raise ValueError("attention_kwargs['scale'] (LoRA scale) is not supported yet")

        i2v = image is not None
        guide = self._resolve_guidance(guidance, guidance_scale, apg_eta, apg_norm_threshold, apg_momentum)
        if shift is None:
            shift = self.defaults.shift_i2v if i2v else self.defaults.shift_t2v
        shift = float(shift)
        if isinstance(negative_prompt, str) and negative_prompt == MODEL_DEFAULT_NEGATIVE:
            negative_prompt = self.defaults.negative_prompt
        schedule = resolve_sigmas(num_inference_steps, shift, sigmas, timesteps)
        num_steps = len(schedule)
        any_guidance = any(guide.active(i, num_steps) for i in range(num_steps))
        device, dtype = self.device, self.transformer.dtype

        # 1. text: prompts x videos, cond and uncond
        prompts = inputs.prompt_list(prompt, prompt_embeds)
        n_prompts = len(prompts) if prompts is not None else prompt_embeds.shape[0]
        batch = n_prompts * num_videos_per_prompt
        cond, cond_mask, uncond, uncond_mask = self._text_conditions(
            prompts,
            n_prompts,
            negative_prompt,
            prompt_embeds,
            prompt_attention_mask,
            negative_prompt_embeds,
            negative_prompt_attention_mask,
            any_guidance,
            max_sequence_length,
        )
        repeat = lambda x: None if x is None else x.repeat_interleave(num_videos_per_prompt, dim=0)  # noqa: E731
        cond, cond_mask, uncond, uncond_mask = map(repeat, (cond, cond_mask, uncond, uncond_mask))

        # 2. initial noise (drawn before the first-frame sample, as the reference)
        shape = latent_ops.latent_shape(batch, self.vae.config.z_dim, height, width, num_frames)
        if latents is None:
            latents = latent_ops.initial_noise(shape, generator, device, noise_correlation)
        else:
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents must have shape {shape} for this size and batch, got {tuple(latents.shape)}")
            latents = latents.to(device=device, dtype=torch.float32)

        # 3. image conditioning: each distinct image once, then mapped to its videos
        first_frames, image_embeds = None, None
        if i2v:
            if shape[2] < 2:
                raise ValueError("image-to-video needs at least 5 frames (2 latent frames): raise num_frames")
            images, index = inputs.image_list(image, n_prompts)
            frames = conditioning.preprocess_images(images, height, width)
            video_index = index.repeat_interleave(num_videos_per_prompt)
            image_generator = generator
            if isinstance(generator, list):  # one per video -> the first video of each image draws its sample
                image_generator = [generator[int((video_index == k).nonzero()[0])] for k in range(len(images))]
            with self._using("vae"):
                ff = latent_ops.encode_first_frames(self.vae, frames, image_generator, first_frame_latent == "sample")
            first_frames = ff[video_index.to(ff.device)]
            tokens = self.encode_image(frames)
            image_embeds = None if tokens is None else tokens[video_index.to(tokens.device)].to(device, dtype)
        channels = latent_ops.condition_channels(first_frames, shape, device, dtype)

        # 4. sampler
        scheduler = unshifted_scheduler(self.scheduler)
        step_timesteps = set_scheduler_sigmas(scheduler, schedule, device)
        model_sigmas = scheduler.sigmas.to(device=device, dtype=torch.float32)

        self.last_call = dict(
            task="i2v" if i2v else "t2v",
            height=height,
            width=width,
            num_frames=num_frames,
            num_inference_steps=num_steps,
            shift=shift,
            noise_correlation=float(noise_correlation),
            sigmas=[float(x) for x in schedule],
            custom_schedule=sigmas is not None or timesteps is not None,
            scheduler=type(scheduler).__name__,
            guidance=guide.to_dict(),
            negative_prompt=negative_prompt if negative_prompt_embeds is None else "<embeddings>",
            num_videos_per_prompt=num_videos_per_prompt,
            first_frame_latent=first_frame_latent if i2v else None,
            batch_guidance=batch_guidance,
            max_sequence_length=max_sequence_length,
            transformer_dtype=str(dtype),
            vae_dtype=str(next(self.vae.parameters()).dtype),
            device=str(device),
        )

        # 5. denoising loop (the batched cond|uncond text is built once, again only if a callback changes it)
        state = GuidanceState()
        self._interrupt = False
        joint = self._joint_text(cond, cond_mask, uncond, uncond_mask, image_embeds) if batch_guidance else None
        with self._using("transformer"), tqdm(total=num_steps, **self._progress_kwargs) as bar:
            for i, t in enumerate(step_timesteps):
                if self._interrupt:
                    break
                x = torch.cat([latents.to(dtype), channels], dim=1)
                model_t = to_model_timestep(model_sigmas[i]).expand(batch)
                forward = functools.partial(self._forward, attention_kwargs=attention_kwargs)
                if not guide.active(i, num_steps):
                    v_cond, v_uncond = forward(x, model_t, cond, cond_mask, image_embeds), None
                elif joint is not None:
                    v_cond, v_uncond = forward(torch.cat([x, x]), torch.cat([model_t, model_t]), *joint).chunk(2)
                else:
                    v_cond = forward(x, model_t, cond, cond_mask, image_embeds)
                    v_uncond = forward(x, model_t, uncond, uncond_mask, image_embeds)
                velocity = combine(v_cond.float(), None if v_uncond is None else v_uncond.float(), guide, state)
                latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
                if callback_on_step_end is not None:
                    local = dict(latents=latents, prompt_embeds=cond, negative_prompt_embeds=uncond)
                    out = callback_on_step_end(self, i, t, {k: local[k] for k in callback_on_step_end_tensor_inputs})
                    out = out or {}
                    latents = out.get("latents", latents).to(torch.float32)
                    if "prompt_embeds" in out or "negative_prompt_embeds" in out:
                        cond = out.get("prompt_embeds", cond)
                        uncond = out.get("negative_prompt_embeds", uncond)
                        if joint is not None:
                            joint = self._joint_text(cond, cond_mask, uncond, uncond_mask, image_embeds)
                bar.update()

        # 6. decode
        if output_type == "latent":
            video = latents
        else:
            video = self.decode(latents, output_type, vae_batch_size)
        if not return_dict:
            return (video,)
        return MotifVideoPipelineOutput(frames=video)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, output_type: str = "np", vae_batch_size: int | None = None) -> Any:
        """Normalised latents (B, 16, F', h, w) -> frames in `output_type`, decoded in the VAE's own dtype."""
        from diffusers.video_processor import VideoProcessor

        with self._using("vae"):
            vae_param = next(self.vae.parameters())
            z = latent_ops.denormalize_latents(self.vae, latents.to(vae_param.device, vae_param.dtype))
            chunk = vae_batch_size or z.shape[0]
            pieces = [self.vae.decode(z[i : i + chunk], return_dict=False)[0] for i in range(0, z.shape[0], chunk)]
            video = torch.cat(pieces)
        return VideoProcessor(vae_scale_factor=latent_ops.VAE_SPATIAL).postprocess_video(video, output_type=output_type)

    # ----------------------------------------------------------------- helpers
    def _forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        mask: torch.Tensor,
        image: torch.Tensor | None,
        attention_kwargs: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """One transformer call: x (B, 33, F', h, w), t (B,) on 0..1000, text (B, L, D) -> velocity (B, 16, ...)."""
        return self.transformer(
            hidden_states=x,
            timestep=t,
            encoder_hidden_states=text,
            encoder_attention_mask=mask,
            image_embeds=image,
            attention_kwargs=attention_kwargs,
            return_dict=False,
        )[0]

    @staticmethod
    def _joint_text(
        cond: torch.Tensor,
        cond_mask: torch.Tensor,
        uncond: torch.Tensor | None,
        uncond_mask: torch.Tensor | None,
        image_embeds: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
        """[cond; uncond] text (2B, L, D), mask and image tokens for one batched guidance forward."""
        if uncond is None:
            return None
        length = max(cond.shape[1], uncond.shape[1])
        c, cm = conditioning.pad_text(cond, cond_mask, length)
        u, um = conditioning.pad_text(uncond, uncond_mask, length)
        image2 = None if image_embeds is None else torch.cat([image_embeds, image_embeds])
        return torch.cat([c, u]), torch.cat([cm, um]), image2

    def _resolve_guidance(
        self,
        guidance: GuidanceConfig | str | None,
        scale: float | None,
        eta: float | None,
        norm_threshold: float | None,
        momentum: float | None,
    ) -> GuidanceConfig:
        if isinstance(guidance, GuidanceConfig):
            base = guidance
        elif guidance is None:
            base = self.guidance
        else:
            base = self.guidance
            if guidance != base.method:  # plain CFG means uncond + s (cond - uncond)
                base = base.replace(method=guidance, original_formulation=guidance == "apg")
        return base.replace(scale=scale, eta=eta, norm_threshold=norm_threshold, momentum=momentum)

    def _text_conditions(
        self,
        prompts: list[str] | None,
        n_prompts: int,
        negative_prompt: str | list[str] | None,
        prompt_embeds: torch.Tensor | None,
        prompt_mask: torch.Tensor | None,
        negative_embeds: torch.Tensor | None,
        negative_mask: torch.Tensor | None,
        need_uncond: bool,
        max_sequence_length: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        device, dtype = self.device, self.transformer.dtype
        negatives = None
        if need_uncond and negative_embeds is None:
            negatives = inputs.negative_list(negative_prompt, n_prompts)
        if negatives is not None and (self.text_encoder is None or self.tokenizer is None):
            raise ValueError(
                "guidance needs the negative prompt encoded, and this pipeline has no text encoder: pass "
                "negative_prompt_embeds (and its mask), or guidance='none'"
            )
        texts = (prompts or []) + (negatives or [])
        encoded = self.encode_prompt(texts, max_sequence_length) if texts else None

        if prompts is not None:
            cond, cond_mask = encoded[0][:n_prompts], encoded[1][:n_prompts]
        else:
            cond = prompt_embeds.to(device=device, dtype=dtype)
            cond_mask = inputs.mask_or_ones(prompt_mask, cond)
        if not need_uncond:
            return cond, cond_mask, None, None
        if negative_embeds is not None:
            uncond = negative_embeds.to(device=device, dtype=dtype)
            uncond_mask = inputs.mask_or_ones(negative_mask, uncond)
            if uncond.shape[0] != n_prompts:
                raise ValueError(f"negative_prompt_embeds has batch {uncond.shape[0]}, prompts {n_prompts}")
        else:
            uncond, uncond_mask = encoded[0][-n_prompts:], encoded[1][-n_prompts:]
        return cond, cond_mask, uncond, uncond_mask
