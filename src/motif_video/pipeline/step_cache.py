"""Step reuse built for the DDT architecture: the encoder's output is shared across adjacent denoising steps while
the DDT decoder runs at every step.

Why it fits this model: the encoder (dual and encoder single-stream blocks, 28 of 36 in the 2B model) reads the
text and hands the decoder one video-token summary as its context; that summary moves slowly from step to step.
The decoder starts from the current step's patch tokens and time embedding, so every step still answers to its
own latents (DDT, Wang et al., arXiv 2504.05741, shares the encoder's output across adjacent steps the same way).

Rules, as a string (`StepCache.parse`; `pipe(..., cache=...)`, `--cache`):
- "off" (the default, also None): no reuse; the pipeline calls the plain forward, the reference's numbers.
- "ddt:N": the encoder runs on every N-th call of a branch (its first call included). "ddt:1" runs it every
  time and gives exactly the frames of "off" (tested), which makes it the yardstick for the others.
- "adaptive:T": TeaCache / MagCache style (Liu et al., arXiv 2411.19108): the relative L1 change of the first
  block's modulated input (patch tokens under the time embedding's AdaLN) from one call to the next is summed
  since the encoder last ran; it runs again once the sum reaches T.
- "calibrated:T": the same sum, but of the change of the encoder's OUTPUT that this model showed when it was
  calibrated (`calibrate`: exact sampling of a few prompts, the relative L1 change per unit of t of each branch,
  stored with the model as `GenerationDefaults.step_cache`), predicted from where t is and how far it moved: the
  two branches' outputs can move at very different rates, which no input-side signal sees (docs/performance.md).
- options after a comma: "uncond=K" (guidance-aware: the unconditional branch uses K times the interval or
  threshold, so it is reused more), "warmup=W" (the first W calls of each branch always run the encoder, and
  the model; default 1, which the first call needs anyway).
- whole-step reuse, which also saves the decoder: "skip=S" runs the model (decoder, and the encoder where its
  rule says so) on one call in S of each branch and answers the others with that branch's last velocity
  ("order=0", the default) or its linear extrapolation in t from the last two computed velocities ("order=1",
  TaylorSeer-style). The encoder rule counts only the calls that ran the model. Encoder reuse caps at about
  1.9x at 720p (the decoder is ~half a forward); skipping whole steps is what goes past it. A call skips only
  when every branch in it may; "skip=1" (the default) is no whole-step reuse and exactly the frames without it.
  "steady=C" places the skips where this model is steady: a call may skip only while its branch's calibrated
  change (the curve of "calibrated:T", integrated over t since the model last ran) stays below C, so the first
  steps (where the unconditional branch moves 30-60% per step) and the last ones (4-13%) always run the model.
A branch whose text changed (a step-end callback edited it) runs the model and the encoder again.

`split=True` (`pipe(..., split_encoder=True)`, with or without a rule) runs the encoder once per group of videos
whose text has the same length (the [cond; uncond] halves of one prompt's guidance batch), each group with its
padding trimmed, so no encoder attention needs a key mask and fused kernels apply; the decoder, which has no
text, stays batched. Same numbers up to rounding.

What each fast mode costs in quality is measured by `benchmarks/bench_speed.py` and recorded in docs/performance.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from motif_video.core.context_parallel import token_sums
from motif_video.pipeline.sampler import Condition

CACHE_RULES = ("off", "ddt", "adaptive", "calibrated")
_OPTIONS = ("uncond", "warmup", "skip", "order", "steady")
_REAL_OPTIONS = ("uncond", "steady")


@dataclass(frozen=True)
class StepCache:
    """A reuse rule. `value`: the interval (ddt) or threshold (adaptive); `uncond`: its factor for the
    unconditional branch; `warmup`: first calls of a branch that always run the encoder."""

    rule: str = "off"
    value: float = 1.0
    uncond: float = 1.0
    warmup: int = 1
    skip: int = 1  # whole-step reuse: the model runs on one call in `skip` of a branch
    order: int = 0  # a skipped call's velocity: 0 the last one, 1 extrapolated linearly in t from the last two
    steady: float = 0.0  # > 0: skip only while the calibrated change since the model last ran is below this

    def __post_init__(self) -> None:
        if self.rule not in CACHE_RULES:
            raise ValueError(f"cache rule must be one of {', '.join(CACHE_RULES)}, got {self.rule!r}")
        if self.rule == "ddt" and (self.value < 1 or self.value != int(self.value)):
            raise ValueError(f"ddt:N needs a whole interval N >= 1, got {self.value:g}")
        if self.rule in ("adaptive", "calibrated") and self.value < 0:
            raise ValueError(f"{self.rule}:T needs a threshold T >= 0, got {self.value:g}")
        if self.uncond < 1 or self.warmup < 1:
            raise ValueError(f"uncond must be >= 1 and warmup >= 1, got {self.uncond:g} and {self.warmup}")
        if self.skip < 1 or self.order not in (0, 1) or self.steady < 0:
            raise ValueError(
                f"skip must be >= 1, order 0 or 1 and steady >= 0, got skip={self.skip}, order={self.order}, "
                f"steady={self.steady:g}"
            )

    @classmethod
    def parse(cls, text: str | StepCache | None) -> StepCache | None:
        """A rule from text ("ddt:2", "adaptive:0.3,uncond=2", ...); None or "off" -> None (no reuse)."""
        if text is None or isinstance(text, StepCache):
            return None if text is None or text.rule == "off" else text
        head, *options = [part.strip() for part in text.strip().lower().split(",")]
        rule, _, value = head.partition(":")
        if rule == "off" and not value and not options:
            return None
        if rule not in CACHE_RULES[1:] or not value:
            raise ValueError(
                f"cache must be off, ddt:N, adaptive:T or calibrated:T (options ,uncond=K ,warmup=W ,skip=S "
                f",order=0|1 ,steady=C), got {text!r}"
            )
        extra: dict[str, Any] = {}
        for option in options:
            name, _, number = option.partition("=")
            if name not in _OPTIONS or not number:
                raise ValueError(f"unknown cache option {option!r} in {text!r}: use {', '.join(_OPTIONS)}")
            if name not in _REAL_OPTIONS and not number.isdigit():
                raise ValueError(f"cache option {name} takes a whole number, got {option!r} in {text!r}")
            extra[name] = float(number) if name in _REAL_OPTIONS else int(number)
        try:
            return cls(rule, float(value), **extra)
        except (TypeError, ValueError) as error:
            raise ValueError(f"bad cache {text!r}: {error}") from None

    def __str__(self) -> str:
        extra = (f",uncond={self.uncond:g}" if self.uncond != 1 else "") + (
            f",warmup={self.warmup}" if self.warmup != 1 else ""
        )
        extra += (f",skip={self.skip}" if self.skip != 1 else "") + (f",order={self.order}" if self.order else "")
        extra += f",steady={self.steady:g}" if self.steady else ""
        return f"{self.rule}:{self.value:g}{extra}"

    def limit(self, branch: str) -> float:
        return self.value * (self.uncond if branch == "uncond" else 1.0)


@dataclass
class EncoderCall:
    """One branch of one model call: `rows` videos, `text_len` text tokens the model saw (after trimming),
    `image_len` image tokens, `encoder`: whether the encoder ran (else its output was reused), `model`: whether
    the model ran at all (else the whole step's velocity was reused: no transformer FLOPs)."""

    branch: str
    rows: int
    text_len: int
    image_len: int
    encoder: bool
    model: bool = True


@dataclass
class _Branch:
    encoded: torch.Tensor | None = None  # (b, N, D) the encoder's last output for this branch
    text: torch.Tensor | None = None  # the text it was computed with (identity: an edit forces a refresh)
    signal: torch.Tensor | None = None  # (b, N, D) the previous call's modulated first-block input
    t: float | None = None  # the previous call's time (0..1000)
    change: float = 0.0  # summed relative change since the encoder last ran
    calls: int = 0
    since: int = 0  # calls since the encoder last ran
    velocities: list[tuple[float, torch.Tensor]] = field(default_factory=list)  # last two (t, (b, 16, F', h, w))
    idle: int = 0  # calls answered without the model since it last ran

    def predict(self, t: float, order: int) -> torch.Tensor:
        """A skipped call's velocity at time t: the last one, or its linear extrapolation (order 1)."""
        t1, v1 = self.velocities[-1]
        if order == 0 or len(self.velocities) < 2 or self.velocities[0][0] == t1:
            return v1
        t0, v0 = self.velocities[0]
        return (v1.float() + (v1.float() - v0.float()) * ((t - t1) / (t1 - t0))).to(v1.dtype)


@dataclass
class EncoderReuse:
    """The sampler's model function with step reuse: latents (B, 16, F', h, w) fp32, t (B,) on 0..1000, a
    `Condition` -> velocity (B, 16, F', h, w). A "joint" condition is [cond; uncond] halves, each its own branch.
    `calls` records every branch of every call (for FLOP counts and the run record)."""

    transformer: Any
    rule: StepCache
    dtype: torch.dtype
    split: bool = False  # encode each branch of a guidance batch alone, its text trimmed: no key mask
    curve: dict[str, list[float]] | None = None  # the model's calibration (`calibrate`), for "calibrated:T"
    calls: list[EncoderCall] = field(default_factory=list)
    _state: dict[str, _Branch] = field(default_factory=dict)

    def __call__(self, latents: torch.Tensor, t: torch.Tensor, condition: Condition) -> torch.Tensor:
        model = self.transformer
        b = latents.shape[0]
        parts = (("cond", slice(0, b // 2)), ("uncond", slice(b // 2, b)))
        parts = parts if condition.branch == "joint" else ((condition.branch, slice(0, b)),)
        now = float(t.reshape(-1)[0])
        if self.rule.skip > 1:
            skipped = self._skip(parts, condition, now, latents.device)
            if skipped is not None:
                return skipped  # (B, 16, F', h, w) without running the model
        x = torch.cat([latents.to(self.dtype), condition.channels], dim=1)  # (B, 33, F', h, w)
        emb = model.embed(x, t, condition.text, condition.mask, condition.image)  # patches (B, N, D)
        signal = self._signal(emb) if self.rule.rule == "adaptive" else None  # (B, N, D)
        refresh = {name: self._decide(name, rows, condition.text, signal, now, emb) for name, rows in parts}
        if all(refresh.values()) and not self.split:
            video = model.encode(emb).video  # (B, N, D): exactly the plain forward's encoder pass
            for name, rows in parts:
                self._state[name].encoded = video[rows]
                self._record(name, rows.stop - rows.start, emb, True)
        else:
            for name, rows in parts:
                if refresh[name]:
                    self._state[name].encoded = self._encode(name, emb.rows(rows))  # (b, N, D)
                else:
                    self._record(name, rows.stop - rows.start, emb, False)
            video = torch.cat([self._state[name].encoded for name, _ in parts])  # (B, N, D)
        decoded = model.decode(emb, video).video  # (B, N, D)
        velocity = model.head(decoded, emb)  # (B, 16, F', h, w)
        if self.rule.skip > 1:
            for name, rows in parts:
                state = self._state[name]
                state.velocities = [*state.velocities[-1:], (now, velocity[rows].clone())]
                state.idle = 0
        return velocity

    def _skip(self, parts: tuple, condition: Condition, t: float, device: torch.device) -> torch.Tensor | None:
        """Whole-step reuse: every branch's predicted velocity (B, 16, F', h, w) when each may skip this call (it
        ran the model within the last `skip` calls, past its warm-up, with this text and batch), else None. A
        half of a joint call under guidance parallelism (`condition.peers`) skips only when the other half may
        too, as one process decides for the whole call."""
        states = [self._state.get(name) for name, _ in parts]
        may = all(self._may_skip(state, name, rows, condition.text, t) for state, (name, rows) in zip(states, parts))
        if condition.peers is not None:
            flag = torch.tensor([float(may)], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=condition.peers)
            may = bool(flag.item())
        if not may:
            return None
        for state, (name, rows) in zip(states, parts):
            state.idle += 1
            self.calls.append(EncoderCall(name, rows.stop - rows.start, 0, 0, encoder=False, model=False))
        return torch.cat([state.predict(t, self.rule.order) for state in states])

    def _may_skip(self, state: _Branch | None, name: str, rows: slice, text: torch.Tensor, t: float) -> bool:
        if state is None or not state.velocities or state.text is not text or state.calls < self.rule.warmup:
            return False
        if state.idle >= self.rule.skip - 1 or state.velocities[-1][1].shape[0] != rows.stop - rows.start:
            return False
        if self.rule.steady:
            t_model = state.velocities[-1][0]
            change = _rate(self.curve, name, (t_model + t) / 2) * abs(t_model - t) / 1000
            return change < self.rule.steady
        return True

    def _encode(self, name: str, emb: Any) -> torch.Tensor:
        """The encoder over a sub-batch (b, N, D); split: per group of rows with the same text length, so that
        each group needs no key mask."""
        if not self.split or emb.context_mask is None:
            self._record(name, emb.patches.shape[0], emb, True)
            return self.transformer.encode(emb).video
        positions = torch.arange(1, emb.context_mask.shape[1] + 1, device=emb.context_mask.device)
        last = (emb.context_mask * positions).amax(1)  # (b,) last valid context position per row
        video = torch.empty_like(emb.patches)  # (b, N, D)
        for length in last.unique():
            group = emb.rows((last == length).nonzero().flatten())
            video[last == length] = self.transformer.encode(group).video
            self._record(name, group.patches.shape[0], group, True)
        return video

    def _record(self, name: str, rows: int, emb: Any, encoder: bool) -> None:
        self.calls.append(EncoderCall(name, rows, emb.context.shape[1] - emb.image_len, emb.image_len, encoder))

    def _signal(self, emb: Any) -> torch.Tensor:
        """The first block's AdaLN-modulated patch tokens, (B, N, D): what the encoder's input changes by."""
        first = self.transformer.blocks[0]
        norm = first.norm1 if hasattr(first, "norm1") else first.norm
        sharded = hasattr(first, "unshard")  # FSDP2 (`enable_parallel(fsdp=True)`): gather the weights for this
        if sharded:
            first.unshard()
        try:
            return norm(emb.patches, emb.temb)[0].float()
        finally:
            if sharded:
                first.reshard()

    def _decide(
        self, name: str, rows: slice, text: torch.Tensor, signal: torch.Tensor | None, t: float, emb: Any
    ) -> bool:
        state = self._state.setdefault(name, _Branch())
        if self.rule.rule == "calibrated" and state.t is not None:
            state.change += _rate(self.curve, name, (state.t + t) / 2) * abs(state.t - t) / 1000
        state.t = t
        fresh = state.encoded is None or state.text is not text or state.calls < self.rule.warmup
        if signal is not None:
            now = signal[rows]
            if state.signal is not None and state.signal.shape == now.shape:
                # sums over the whole sequence: on a context-parallel transformer every rank takes the same decision
                moved, size = token_sums(self.transformer, emb, ((now - state.signal).abs(), state.signal.abs()))
                state.change += float(moved / size.clamp_min(1e-12))
            state.signal = now
        state.calls += 1
        state.since += 1
        limit = self.rule.limit(name)
        due = state.since >= limit if self.rule.rule == "ddt" else state.change >= limit  # adaptive, calibrated
        if fresh or due:
            state.text, state.since, state.change = text, 0, 0.0
            return True
        return False

    def __post_init__(self) -> None:
        if (self.rule.rule == "calibrated" or self.rule.steady) and not self.curve:
            raise ValueError(f"cache {str(self.rule)!r} needs the model's calibration (GenerationDefaults.step_cache)")

    def summary(self) -> dict[str, Any]:
        """For the run record: the rule, and per branch how many calls ran the encoder."""
        out: dict[str, Any] = {"rule": str(self.rule) + (", split encoder" if self.split else "")}
        for call in self.calls:
            ran, whole, total = out.get(call.branch, (0, 0, 0))
            out[call.branch] = (ran + call.encoder, whole + call.model, total + 1)
        for name, value in out.items():
            if isinstance(value, tuple):
                model = f", model on {value[1]}" if self.rule.skip > 1 else ""
                out[name] = f"encoder on {value[0]}{model} of {value[2]} calls"
        return out


def _rate(curve: dict[str, list[float]], branch: str, t: float) -> float:
    """The calibrated change of `branch`'s encoder output per 1000 of t, linear between the measured points."""
    ts, rates = curve["t"], curve[branch]
    pairs = sorted(zip(ts, rates))
    if t <= pairs[0][0]:
        return pairs[0][1]
    for (t0, r0), (t1, r1) in zip(pairs, pairs[1:]):
        if t <= t1:
            return r0 + (r1 - r0) * (t - t0) / max(t1 - t0, 1e-9)
    return pairs[-1][1]


@torch.no_grad()
def calibrate(pipe: Any, prompts: list[str], seed: int = 0, **call: Any) -> dict[str, list[float]]:
    """Measure how fast each branch's encoder output moves along t: exact sampling ("ddt:1") of `prompts` (video i
    from seed + i; `call`: other pipeline options), then per step the relative L1 change of the encoder's output
    (all videos pooled) over the change of t, times 1000. Returns {"t": midpoints, "cond": rates, "uncond": rates}
    (the unconditional branch's unguided steps take its last measured rate), to store as
    `GenerationDefaults.step_cache`."""
    seen: dict[str, list[tuple[float, torch.Tensor]]] = {"cond": [], "uncond": []}

    def step_end(p: Any, i: int, t: Any, tensors: dict) -> dict:  # after each step: the encoder outputs it made
        for name, state in p.last_reuse._state.items():
            if state.t is not None and (not seen[name] or seen[name][-1][0] != state.t):
                seen[name].append((state.t, state.encoded.float().clone()))
        return {}

    generators = [torch.Generator().manual_seed(seed + k) for k in range(len(prompts))]
    pipe(
        prompt=prompts, generator=generators, output_type="latent", cache="ddt:1", callback_on_step_end=step_end, **call
    )
    curves: dict[str, list[tuple[float, float]]] = {}
    for name, points in seen.items():
        curves[name] = [
            ((t0 + t1) / 2, float((b - a).abs().mean() / a.abs().mean()) * 1000 / max(abs(t0 - t1), 1e-9))
            for (t0, a), (t1, b) in zip(points, points[1:])
        ]
    ts = [t for t, _ in curves["cond"]]
    uncond = curves["uncond"] or curves["cond"]
    fill = {t: r for t, r in uncond}
    out = {"t": [round(t, 2) for t in ts], "cond": [round(r, 5) for _, r in curves["cond"]]}
    out["uncond"] = [round(fill.get(t, uncond[-1][1]), 5) for t in ts]
    return out
