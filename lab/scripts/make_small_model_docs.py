"""Regenerate lab/docs/small_model/{loss_curve.png, eval.md} from a training run and a `motif-video-lab eval` result.

    motif-video-lab eval --output outputs/eval-small          # writes outputs/eval-small/results.json
    python lab/scripts/make_small_model_docs.py --metrics runs/small/metrics.jsonl \
        --results outputs/eval-small/results.json

Needs matplotlib (pip install -e lab). The logic is motif_video_lab.reports.make_small_model_docs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "small_model"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metrics", required=True, help="the training run's metrics.jsonl")
    parser.add_argument("--results", required=True, help="results.json written by `motif-video-lab eval --output`")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"output folder (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    from motif_video_lab.reports import make_small_model_docs

    try:
        written = make_small_model_docs(args.metrics, args.results, args.out)
    except (OSError, ValueError) as err:
        print(f"make_small_model_docs: error: {err}", file=sys.stderr)
        return 2
    for path in written.values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
