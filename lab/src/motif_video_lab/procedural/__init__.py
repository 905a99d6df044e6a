"""Procedurally generated captioned clips (shapes on plain backgrounds) and a pixel-reading prompt-following scorer.

scene.py     vocabulary, SceneSpec, sample_scene, the held-out rule
captions.py  caption(spec, variant, phrasing) and parse_prompt(text)
render.py    render(spec, num_frames, height, width) -> (T, H, W, 3) uint8
dataset.py   write_dataset (media + manifest.jsonl for `motif-video prepare`), eval_prompts
evaluate.py  score_video, score_prompts, format_table

Everything here is numpy only, except `write_dataset`, which writes mp4 through motif_video.core.video_io.
"""

from motif_video_lab.procedural.captions import caption, parse_prompt
from motif_video_lab.procedural.dataset import EvalPrompt, eval_prompts, load_prompts, save_prompts, write_dataset
from motif_video_lab.procedural.evaluate import ScoreTable, VideoScore, format_table, score_prompts, score_video
from motif_video_lab.procedural.render import render
from motif_video_lab.procedural.scene import (
    BACKGROUNDS,
    COLORS,
    DIRECTIONS,
    HELDOUT_COLOR_DIRECTION,
    HELDOUT_COLOR_SHAPE,
    RELATIONS,
    SHAPES,
    SIZES,
    SPEEDS,
    ObjectPrompt,
    ObjectSpec,
    PromptSpec,
    SceneSpec,
    is_heldout,
    sample_scene,
)

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "DIRECTIONS",
    "HELDOUT_COLOR_DIRECTION",
    "HELDOUT_COLOR_SHAPE",
    "RELATIONS",
    "SHAPES",
    "SIZES",
    "SPEEDS",
    "EvalPrompt",
    "ObjectPrompt",
    "ObjectSpec",
    "PromptSpec",
    "SceneSpec",
    "ScoreTable",
    "VideoScore",
    "caption",
    "eval_prompts",
    "format_table",
    "is_heldout",
    "load_prompts",
    "parse_prompt",
    "render",
    "sample_scene",
    "save_prompts",
    "score_prompts",
    "score_video",
    "write_dataset",
]
