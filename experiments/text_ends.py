"""Does generated text know where it ends? Unprompted samples with --stop-at-eos against held-out text.

    python experiments/text_ends.py --checkpoint results/fortunes/final-model --out-dir results/text_ends_fortunes
    python experiments/text_ends.py                  # the quick-test model: results/final-model
    python experiments/text_ends.py --order random   # another decoding order: it moves where samples end

Writes --num-samples unprompted samples with generate.py's decoding defaults (but --order,
--order-noise, --steps and --remdm, which move where samples end) and --stop-at-eos
(metrics.diffusion_row, the protocol evaluate.py scores with, which cuts each sample at its first
</s>) and sets where they end beside where the held-out blocks' text ends (metrics.reference_row
over every held-out block, its first </s> inside the frame): the share that ends inside the
window and the tokens before the end. With --packing none a held-out block is one document, so
its end is the document's length; in a packed stream it is where the document under way ends.

Writes to --out-dir: text_ends.png (both length histograms) and text_ends.json (the setting, both
summaries, every length, a few samples); prints both summaries and the ratio of the medians.
"""

import os
import sys

import repo_root  # noqa: F401  (first: puts the repo's modules on sys.path)

import dataclasses

from cli import cli, parse
from config import GenConfig, Registry, Settings, flag


class EndsConfig(Settings):
    checkpoint: str = flag("results/final-model", "the diffusion model (train.py final-model)")
    num_samples: int = flag(256, "unprompted samples, written together as one batch", min=1)
    order: str = flag(GenConfig.order, "which predictions are committed first, as generate.py --order",
                      choices=Registry("decoding", "ORDERS"))
    order_noise: float = flag(GenConfig.order_noise, "Gumbel noise on the order, as generate.py --order-noise", min=0)
    steps: int = flag(GenConfig.steps, "denoising steps, as generate.py --steps", min=1)
    remdm: str = flag(GenConfig.remdm, "ReMDM re-masking, as generate.py --remdm", choices=Registry("decoding", "REMDM"))
    seed: int = flag(0, "fixes every sampled token", min=0)
    out_dir: str = flag("results/text_ends", "text_ends.png / .json")


def summary(name: str, ends: dict) -> str:
    if not ends["ended"]:
        return f"{name}: {ends['rows']} rows, none ends inside the window"
    q1, _, q3 = ends["quartiles"]
    return (f"{name}: {ends['rows']} rows, {ends['share_ended']:.1%} end inside the window; those end after "
            f"a median {ends['median_length']:g} tokens (quartiles {q1:g}-{q3:g})")


def plot(held: dict, samples: dict, window: int, label: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8))
    bins = range(0, window - 1, 2)
    for ends, name, color in ((held, "held-out text", "gray"), (samples, "samples, --stop-at-eos", "crimson")):
        if not ends["ended"]:  # nothing to draw: say so in the legend
            ax.plot([], [], color=color, label=f"{name}: none of {ends['rows']} ends")
            continue
        ax.hist(ends["lengths"], bins=bins, density=True, alpha=0.5, color=color,
                label=f"{name}: {ends['share_ended']:.0%} of {ends['rows']} end, median {ends['median_length']:g}")
    ax.set(xlabel=f"tokens before the first </s> (rows that end inside the {window - 2}-token window)",
           ylabel="share of the rows that end", title=f"Where text ends ({label})")
    ax.legend(fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ec, _ = parse(EndsConfig, argv, __doc__)
    gc = GenConfig(stop_at_eos=True, order=ec.order, order_noise=ec.order_noise, steps=ec.steps, remdm=ec.remdm,
                   num_samples=ec.num_samples, seed=ec.seed, out="")
    from transformers.utils import logging as hf_logging

    from data import build_datasets
    from files import write_json
    from metrics import diffusion_row, reference_row
    from modeling import load_checkpoint

    hf_logging.disable_progress_bar()
    model, tokenizer, tcfg = load_checkpoint(ec.checkpoint)
    _, val = build_datasets(tcfg, tokenizer)
    blocks = val[:]["input_ids"]  # [M, L]
    held = reference_row(blocks, tokenizer, len(blocks), None)["ends"]
    row = diffusion_row(model, tokenizer, gc, tcfg.max_len, None, name="stop-at-eos")
    print(f"{tcfg.dataset} (--packing {tcfg.packing}), window {tcfg.max_len}; samples: {row['label']}")
    print(summary("held-out text", held))
    print(summary("samples", row["ends"]))
    if held["ended"] and row["ends"]["ended"]:
        print(f"median of the samples that end / held-out median: "
              f"{row['ends']['median_length'] / held['median_length']:.2f}")
    os.makedirs(ec.out_dir, exist_ok=True)
    paths = {ext: os.path.join(ec.out_dir, f"text_ends.{ext}") for ext in ("png", "json")}
    plot(held, row["ends"], tcfg.max_len, f"{tcfg.dataset}, --packing {tcfg.packing}", paths["png"])
    write_json(paths["json"], {"config": dataclasses.asdict(ec), "dataset": tcfg.dataset, "packing": tcfg.packing,
                               "window": tcfg.max_len, "setting": row["settings"], "label": row["label"],
                               "held_out": held, "samples": row["ends"], "texts": row["texts"]})
    for p in paths.values():
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(cli(main))
