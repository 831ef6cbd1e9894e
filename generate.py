"""Generate text by iterative unmasking: the reverse process of discrete text diffusion.

    python generate.py                                  # results/final-model, defaults below
    python generate.py --prompt "The history of" --schedule cosine --show-steps
    python generate.py --decode threshold --threshold 0.9
    python generate.py --block-size 32 --length 200     # longer than the window, block by block
    python generate.py --template "The [MASK:4] of France is [MASK:3]."   # infill
    python generate.py --animate results/denoise.gif

Start from `<s> prompt <mask> ... <mask> </s>`; at each step predict every masked position,
keep some predictions and leave the rest masked, until no mask is left.

Where things live: the flags are config.GenConfig; the loop, samplers and remasking rules are
decoding.py; the noise schedules (shared with training) are diffusion.SCHEDULES; --show-steps and
--animate are visualize.py. This file only wires them together.
"""

import dataclasses
import sys
import time

from cli import cli, given, parse  # noqa: E402
from config import GenConfig  # noqa: E402


def main(argv=None) -> int:
    gc, args = parse(GenConfig, argv, __doc__)
    from files import append_jsonl, check_output

    for flag_, path in (("--out", gc.out), ("--animate", gc.animate)):  # before the model loads
        if path:
            check_output(path, flag_)
    import torch
    from transformers.utils import logging as hf_logging

    from decoding import cut_at_eos, generate, ignored, setting_of
    from modeling import load_checkpoint
    from tokens import decode_text, token_ids
    from visualize import animate, format_steps

    for line in ignored([gc], given(args, GenConfig)):  # a flag no chosen rule reads: said, not refused
        print(f"warning: {line}", file=sys.stderr)
    hf_logging.disable_progress_bar()  # quiet by default: no weight-loading bars
    model, tokenizer, tcfg = load_checkpoint(gc.checkpoint)
    g = torch.Generator().manual_seed(gc.seed)

    t0 = time.time()
    ids, history, n_prompt = generate(model, tokenizer, gc, tcfg.max_len, g)
    seconds = time.time() - t0
    rows = cut_at_eos(ids, token_ids(tokenizer)["eos"], n_prompt) if gc.stop_at_eos else ids.tolist()
    texts = [decode_text(tokenizer, row, skip_special_tokens=True) for row in rows]

    if gc.show_steps:
        print(format_steps(history, tokenizer))
        print()
    for i, (text, row) in enumerate(zip(texts, rows)):
        total, kept = ids.shape[1] - n_prompt, len(row) - n_prompt
        kept = ("" if not gc.stop_at_eos else f" (cut at </s>: kept {kept} of {total} tokens)" if kept < total
                else f" (no </s>: all {total} tokens kept)")
        print(f"--- sample {i + 1}/{len(texts)}{kept} ---\n{text}")
    remasked = sum(int(h.remasked.sum()) for h in history if h.remasked is not None)  # ReMDM's, over every sample
    again = (f", {remasked} tokens sent back to <mask> and rewritten"
             if setting_of(gc).get("remdm", "none") != "none" else "")  # only where a chosen rule re-masks
    print(f"({len(history)} forward passes, {seconds:.2f}s for {len(texts)} sample(s){again})")
    if gc.animate:
        animate(history, tokenizer, gc.animate)
        print(f"wrote {gc.animate}")
    if gc.out:
        append_jsonl(gc.out, {"config": dataclasses.asdict(gc), "window": tcfg.max_len, "samples": texts,
                              "kept_tokens": [len(r) - n_prompt for r in rows],
                              "forward_passes": len(history), "remasked": remasked, "seconds": round(seconds, 3)})
    return 0


if __name__ == "__main__":
    sys.exit(cli(main))
