"""What a text encoder's states tell about each object: linear probes on the words of every object's phrase.

    python lab/scripts/probe_text_encoder.py --model runs/small/release [--model runs/other/release ...]

For every model, fresh linear heads are fitted on the frozen states of train-split captions (one and two objects,
every caption variant) and scored on held-out and train captions: from each object word's state, its object's
colour, shape, size and SLOT (where the object goes in the frame: centre for one object, else the side its relation
gives it, `small_model.text_pretraining`). A random encoder tells colour and shape from a word's own identity, but
not the slot (chance is about 50%): that is left for the transformer. Prints a markdown table.
"""

from __future__ import annotations

import argparse

from motif_video.training.text_tuning import load_text_encoder
from motif_video_lab.small_model.text_pretraining import HEADS, probe_accuracy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="release (or text_encoder/) folder")
    parser.add_argument("--captions", type=int, default=512, help="captions to fit on and to score (each)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        loaded = [(folder, *load_text_encoder(folder)) for folder in args.model]
    except ValueError as error:
        parser.error(str(error))
    heads = list(HEADS)
    print("| model | captions | " + " | ".join(heads) + " |")
    print("|---|---|" + "---:|" * len(heads))
    for folder, encoder, tokenizer in loaded:
        scores = probe_accuracy(encoder, tokenizer, ("heldout", "train"), count=args.captions, seed=args.seed)
        for split, accuracy in scores.items():
            cells = " | ".join(f"{100 * accuracy[h]:.1f}%" for h in heads)
            print(f"| {folder} | {'held-out' if split == 'heldout' else split} | {cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
