"""Motif-Video transformer: our implementation of the 2B text/image-to-video diffusion transformer.

Spec sheet (official 2B values; `config.py` has them as data):
- D = 12 heads x 128 = 1536. Patchify Conv3d (1, 2, 2) on 33 input channels (16 noisy latent, 16 first-frame
  latent, 1 first-frame mask); unpatchify Linear D -> 64 = 16 channels x 2 x 2.
- temb = MLP(sinusoid(t)), t on the 0..1000 scale; no pooled text vector. AdaLN-Zero everywhere.
- Context = [SigLIP image tokens (I2V only) ; text tokens]; a key mask covers text padding only.
- Global block order: 12 dual-stream (0-11) -> 16 encoder single-stream with Shared Cross-Attention
  (12-27) -> 8 DDT decoder single-stream (28-35). The decoder stream starts from a copy of the raw patch
  tokens; its context is the encoder's final video tokens (text dropped, no mask); both are updated.
- RoPE (3-D, theta 1e4, axes 16/56/56) rotates video tokens only; in the decoder only the decoder half.

Beyond the reference, with the same numbers:
- Trailing text padding is trimmed before the blocks; when every remaining key is valid no mask is passed,
  so fused attention kernels apply (`attention.py`).
- q/k/v projections fuse into one GEMM (`fuse_qkv_projections`), still loading the official unfused keys.
- RoPE tables are cached per latent grid.
- Training hooks: a TREAD `route`, a REPA feature tap (`repa_block`) returned explicitly, and `init_weights` that
  zeroes gates and output projections (a fresh model predicts 0). Activation checkpointing, compile and FSDP2
  are applied from outside (`training/parallel.py`).
- The forward is its phases, each callable alone (`phases.py`): `embed` -> `encode` -> `decode` -> `head`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from motif_video.models.blocks import DualStreamBlock, SingleStreamBlock
from motif_video.models.config import MotifVideoConfig
from motif_video.models.embeddings import ConditionEmbedding, ImageProjection, PatchEmbed, TextProjection
from motif_video.models.fused_linear import FusableProjections
from motif_video.models.modulation import AdaLNContinuous
from motif_video.models.phases import Embedded, PhaseOutput, run_phase
from motif_video.models.rope import RotaryEmbedding3D
from motif_video.models.routing import TokenRoute


@dataclass
class MotifVideoTransformerOutput:
    """sample: (B, C_out, F, H, W) flow velocity; repa_features: (B, N or K, D) when requested."""

    sample: torch.Tensor
    repa_features: torch.Tensor | None = None

    def to_tuple(self) -> tuple[torch.Tensor, ...]:
        return (self.sample,) if self.repa_features is None else (self.sample, self.repa_features)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.to_tuple()[index]


def trim_text_padding(text: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Drop trailing positions that no sample attends to; drop the mask when every kept key is valid.

    text: (B, L, E); mask: (B, L) with nonzero = valid. Masked keys get zero attention weight, and text
    tokens never mix except through attention, so this changes no output. One position is always kept.
    """
    if mask is None:
        return text, None
    mask = mask.to(torch.bool)
    positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    keep = max(int((mask * positions).amax()), 1)
    text, mask = text[:, :keep], mask[:, :keep]
    return text, (None if bool(mask.all()) else mask)


def context_key_mask(
    image_mask: torch.Tensor | None, text_mask: torch.Tensor | None, context: torch.Tensor, image_len: int
) -> torch.Tensor | None:
    """(B, Lc) bool key mask over the context [image_len image tokens; text]; None when neither part has a mask.
    image_mask: (B, Li), text_mask: (B, Lt), each None when all of its part is valid."""
    if image_mask is None and text_mask is None:
        return None
    b, lc = context.shape[:2]
    image = context.new_ones(b, image_len, dtype=torch.bool) if image_mask is None else image_mask.bool()
    text = context.new_ones(b, lc - image_len, dtype=torch.bool) if text_mask is None else text_mask.bool()
    return torch.cat((image, text), dim=1)


@torch.no_grad()
def init_module(module: nn.Module, generator: torch.Generator | None = None) -> None:
    """The fresh-weight rule of one module (not its children): xavier-uniform Linears with zero bias, unit norms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight, generator=generator)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)) and module.weight is not None:
        nn.init.ones_(module.weight)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)


class MotifVideoTransformer(nn.Module):
    """The Motif-Video diffusion transformer. Build from a config, a preset or a checkpoint folder."""

    def __init__(self, config: MotifVideoConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        dim = c.hidden_size
        layout = c.cross_attention_layout
        self.x_embedder = PatchEmbed(c.in_channels, dim, c.patch_size, c.patch_size_t)
        self.context_embedder = TextProjection(c.text_embed_dim, dim)
        self.image_embedder = ImageProjection(c.image_embed_dim, dim) if c.image_embed_dim is not None else None
        self.time_text_embed = ConditionEmbedding(dim)
        self.rope = RotaryEmbedding3D(c.rope_axes_dim, c.rope_theta)
        heads = c.num_attention_heads
        self.transformer_blocks = nn.ModuleList(
            DualStreamBlock(dim, heads, c.mlp_ratio, c.qk_norm, layout if c.enable_text_cross_attention_dual else None)
            for _ in range(c.num_layers)
        )
        self.single_transformer_blocks = nn.ModuleList(
            SingleStreamBlock(
                dim,
                heads,
                c.mlp_ratio,
                c.qk_norm,
                layout if (c.enable_text_cross_attention_single and i < c.num_encoder_single_layers) else None,
            )
            for i in range(c.num_single_layers)
        )
        self.norm_out = AdaLNContinuous(dim)
        self.proj_out = nn.Linear(dim, c.patch_size_t * c.patch_size * c.patch_size * c.out_channels)

    # ------------------------------------------------------------------------------------------------
    # Construction and checkpoints
    # ------------------------------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> MotifVideoTransformer:
        """A freshly initialised model from a named preset (see `config.PRESETS`)."""
        from motif_video.models.config import get_preset

        model = cls(get_preset(name).replace(**overrides) if overrides else get_preset(name))
        model.init_weights()
        return model

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str, **kwargs: Any) -> MotifVideoTransformer:
        """Load a `transformer/` folder of the official release (see `checkpoint_io.load_transformer`)."""
        from motif_video.models.checkpoint_io import load_transformer

        return load_transformer(cls, path_or_hub_id, **kwargs)

    def save_pretrained(self, save_directory: str, **kwargs: Any) -> None:
        """Write `config.json` + safetensors in the official format (see `checkpoint_io.save_transformer`)."""
        from motif_video.models.checkpoint_io import save_transformer

        save_transformer(self, save_directory, **kwargs)

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Fresh initialisation (DiT recipe): xavier-uniform Linears, zeroed AdaLN modulation, output
        projection and cross-attention output, so a fresh model outputs zero velocity."""
        for module in self.modules():
            init_module(module, generator)
        conv = self.x_embedder.proj
        nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1), generator=generator)
        nn.init.zeros_(conv.bias)
        temb = self.time_text_embed.timestep_embedder
        nn.init.normal_(temb.linear_1.weight, std=0.02, generator=generator)
        nn.init.normal_(temb.linear_2.weight, std=0.02, generator=generator)
        zero = [self.norm_out.linear, self.proj_out]
        for block in [*self.transformer_blocks, *self.single_transformer_blocks]:
            zero += [m.linear for m in (getattr(block, n, None) for n in ("norm1", "norm1_context", "norm")) if m]
            if getattr(block, "cross_attn", None) is not None:
                zero.append(block.cross_attn.to_out[0])
            if hasattr(block, "cross_attn_out_proj"):
                zero.append(block.cross_attn_out_proj)
        for linear in zero:
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    # ------------------------------------------------------------------------------------------------
    # Conveniences expected by diffusers pipelines and trainers
    # ------------------------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.proj_out.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.proj_out.weight.device

    @contextmanager
    def cache_context(self, name: str) -> Iterator[None]:
        """diffusers pipelines wrap each forward in this; our model keeps no per-branch cache, so it only
        has to exist for `diffusers.MotifVideoPipeline(transformer=<ours>)` to run."""
        yield

    def fuse_qkv_projections(self) -> None:
        """One GEMM per q/k/v triple (and per k/v pair of diffusers-layout cross-attention)."""
        for module in self.modules():
            if isinstance(module, FusableProjections):
                module.fuse()

    def unfuse_qkv_projections(self) -> None:
        for module in self.modules():
            if isinstance(module, FusableProjections):
                module.unfuse()

    @property
    def blocks(self) -> list[nn.Module]:
        """All blocks in global index order (dual, encoder single, decoder)."""
        return [*self.transformer_blocks, *self.single_transformer_blocks]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------------------------------------
    # Forward: embed -> encoder -> DDT decoder -> head; each phase is callable alone
    # ------------------------------------------------------------------------------------------------
    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
        *,
        route: TokenRoute | None = None,
        repa_block: int | None = None,
        image_embeds_mask: torch.Tensor | None = None,
    ) -> MotifVideoTransformerOutput | tuple[torch.Tensor, ...]:
        """Predict the flow velocity v = eps - x0.

        hidden_states: (B, in_channels, F, H, W) latents [noisy | first-frame latent | mask];
        timestep: (B,) or scalar on the 0..1000 scale; encoder_hidden_states: (B, L, text_embed_dim);
        encoder_attention_mask: (B, L), nonzero = valid; image_embeds: (B, L_img, image_embed_dim).
        route: optional TREAD route (training); repa_block: global block index whose output video tokens
        are returned as `repa_features` (gathered like the route when the block lies inside it);
        image_embeds_mask: (B, L_img), zero = that sample has no image tokens (joint T2V/I2V training batches).
        With the defaults this is exactly the inference graph of the reference.
        """
        if attention_kwargs and float(attention_kwargs.get("scale", 1.0)) != 1.0:
            raise ValueError("attention_kwargs['scale'] (LoRA scale) is not supported by this model")
        emb = self.embed(
            hidden_states, timestep, encoder_hidden_states, encoder_attention_mask, image_embeds, image_embeds_mask
        )  # patches: (B, N, D), context: (B, Lc, D), temb: (B, D)
        encoded = self.encode(emb, route=route, repa_block=repa_block)  # video: (B, N, D)
        decoded = self.decode(emb, encoded.video, route=route, repa_block=repa_block)  # video: (B, N, D)
        sample = self.head(decoded.video, emb)  # (B, C_out, F, H, W)
        tap = encoded.repa_features if encoded.repa_features is not None else decoded.repa_features  # (B, N|K, D)
        result = MotifVideoTransformerOutput(sample, tap)
        return result if return_dict else result.to_tuple()

    def embed(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        image_embeds_mask: torch.Tensor | None = None,
    ) -> Embedded:
        """Patchify the latents, embed the time, project [image; text] into the context; RoPE tables and the
        context key mask for the blocks. Inputs as in `forward`."""
        self._check_inputs(
            hidden_states, encoder_hidden_states, encoder_attention_mask, image_embeds, image_embeds_mask
        )
        c, dtype = self.config, self.dtype
        b, _, f, h, w = hidden_states.shape
        grid = (f // c.patch_size_t, h // c.patch_size, w // c.patch_size)
        timestep = torch.as_tensor(timestep, device=hidden_states.device)
        timestep = timestep.reshape(-1).expand(b) if timestep.numel() == 1 else timestep.reshape(b)
        temb = self.time_text_embed(timestep)  # (B, D)
        text, text_mask = trim_text_padding(encoder_hidden_states, encoder_attention_mask)  # (B, Lt, E), (B, Lt)
        patches = self.x_embedder(hidden_states.to(dtype))  # (B, N, D)
        context = self.context_embedder(text.to(dtype))  # (B, Lt, D)
        image_len = 0 if image_embeds is None else image_embeds.shape[1]
        if image_embeds is not None:
            context = torch.cat((self.image_embedder(image_embeds.to(dtype)), context), dim=1)  # (B, Li + Lt, D)
        context_mask = context_key_mask(image_embeds_mask, text_mask, context, image_len)  # (B, Lc) or None
        rope = self.rope(grid, hidden_states.device)  # cos, sin: (N, Dh)
        return Embedded(patches, context, temb, rope, context_mask, text_mask, image_len, grid)

    def encode(self, emb: Embedded, *, route: TokenRoute | None = None, repa_block: int | None = None) -> PhaseOutput:
        """Dual-stream, then encoder single-stream blocks over (video, [image; text]) -> the final video tokens
        (the decoder's context) and the REPA tap when `repa_block` is an encoder block."""
        self._check_route(emb, route, repa_block)
        blocks = self.blocks[: self.config.num_encoder_blocks]
        x, _, tap = run_phase(blocks, 0, emb.patches, emb.context, emb, route, repa_block, decoder=False)
        return PhaseOutput(x, tap)

    def decode(
        self, emb: Embedded, encoded: torch.Tensor, *, route: TokenRoute | None = None, repa_block: int | None = None
    ) -> PhaseOutput:
        """DDT decoder: a new stream from the patch tokens with the encoder's video tokens (B, N, D) as its context
        (no text, no mask); both streams are updated, the first is returned, with the REPA tap when it lies here.
        Without decoder blocks the encoder's tokens pass through."""
        self._check_route(emb, route, repa_block)
        first = self.config.num_encoder_blocks
        if first == self.config.num_blocks:  # num_decoder_layers=0: the head reads the encoder's tokens
            return PhaseOutput(encoded)
        x, _, tap = run_phase(self.blocks[first:], first, emb.patches, encoded, emb, route, repa_block, decoder=True)
        return PhaseOutput(x, tap)

    def head(self, x: torch.Tensor, emb: Embedded) -> torch.Tensor:
        """x: (B, N, D) decoder tokens -> (B, C_out, F, H, W) velocity."""
        out = self.proj_out(self.norm_out(x, emb.temb))  # (B, N, C_out * pt * p * p)
        return self._unpatchify(out, emb.grid)

    def _check_route(self, emb: Embedded, route: TokenRoute | None, repa_block: int | None) -> None:
        c = self.config
        if route is not None:
            route.validate(emb.patches.shape[0], emb.patches.shape[1], c.num_blocks)
        if repa_block is not None and not 0 <= repa_block < c.num_blocks:
            raise ValueError(f"repa_block must be a global block index in [0, {c.num_blocks}), got {repa_block}")

    def _check_inputs(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None,
        image_embeds: torch.Tensor | None,
        image_embeds_mask: torch.Tensor | None,
    ) -> None:
        c = self.config
        if hidden_states.dim() != 5 or hidden_states.shape[1] != c.in_channels:
            raise ValueError(
                f"hidden_states must be (B, {c.in_channels}, F, H, W) latents, got {tuple(hidden_states.shape)}"
            )
        _, _, f, h, w = hidden_states.shape
        if h % c.patch_size or w % c.patch_size or f % c.patch_size_t:
            raise ValueError(
                f"latent grid (F={f}, H={h}, W={w}) must be divisible by the patch size "
                f"({c.patch_size_t}, {c.patch_size}, {c.patch_size}): use video height and width that are "
                f"multiples of {8 * c.patch_size}"
            )
        b = hidden_states.shape[0]
        if encoder_hidden_states.dim() != 3 or encoder_hidden_states.shape[::2] != (b, c.text_embed_dim):
            raise ValueError(
                f"encoder_hidden_states must be (B={b}, L, {c.text_embed_dim}), "
                f"got {tuple(encoder_hidden_states.shape)}"
            )
        if encoder_attention_mask is not None and encoder_attention_mask.shape != encoder_hidden_states.shape[:2]:
            raise ValueError(
                f"encoder_attention_mask must be (B, L) = {tuple(encoder_hidden_states.shape[:2])}, "
                f"got {tuple(encoder_attention_mask.shape)}"
            )
        if image_embeds is not None:
            if self.image_embedder is None:
                raise ValueError("image_embeds were given but this model has no image_embedder (image_embed_dim=None)")
            if image_embeds.dim() != 3 or image_embeds.shape[::2] != (b, c.image_embed_dim):
                raise ValueError(
                    f"image_embeds must be (B={b}, L_img, {c.image_embed_dim}), got {tuple(image_embeds.shape)}"
                )
        if image_embeds_mask is not None and image_embeds is None:
            raise ValueError("image_embeds_mask was given without image_embeds")
        if image_embeds_mask is not None and image_embeds_mask.shape != image_embeds.shape[:2]:
            raise ValueError(
                f"image_embeds_mask must be (B, L_img) = {tuple(image_embeds.shape[:2])}, got {image_embeds_mask.shape}"
            )

    def _unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        # x: (B, N, C*pt*p*p) -> (B, C, F, H, W); channel-major within each patch, as the reference.
        c = self.config
        pt, p = c.patch_size_t, c.patch_size
        x = x.reshape(x.shape[0], *grid, -1, pt, p, p)
        x = x.permute(0, 4, 1, 5, 2, 6, 3, 7)
        return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)
