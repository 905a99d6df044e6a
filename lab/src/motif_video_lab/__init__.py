"""motif-video-lab: the study of the small Motif-Video model, kept outside the product.

Procedural clips and captions (`procedural`), the small model's recipe and its components (`small_model`), the
prompt-following evaluator (`evaluation`, `motif-video-lab eval`) and the docs it regenerates (`reports`). It
depends on `motif_video`; `motif_video` never imports it.
"""

__version__ = "0.1.0"
