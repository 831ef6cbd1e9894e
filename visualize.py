"""Showing a denoising history (decoding.Step lists): as text lines and as an animated GIF.

    render(tokens, tokenizer, mask_id, skip)   one canvas row as text, each mask drawn as █
    format_steps(history, tokenizer)           one line per step: --show-steps
    animate(history, tokenizer, path)          a GIF, one frame per step: --animate
"""

import math
import os

from decoding import Step, banned_ids

MASK_GLYPH = "█"


def render(tokens: list[int], tokenizer, mask_id: int, skip: set) -> str:
    """Text of one canvas row with each mask drawn as █ (runs of text decoded together)."""
    out, run = [], []
    for t in tokens:
        if t in skip:
            continue
        if t == mask_id:
            if run:
                out.append(tokenizer.decode(run))
                run = []
            out.append(MASK_GLYPH)
        else:
            run.append(t)
    if run:
        out.append(tokenizer.decode(run))
    return "".join(out)


def format_steps(history: list[Step], tokenizer) -> str:
    skip = set(banned_ids(tokenizer)) - {tokenizer.mask_token_id}
    lines = []
    for h in history:
        text = render(h.tokens[0].tolist(), tokenizer, tokenizer.mask_token_id, skip)
        back = int(h.remasked[0].sum()) if h.remasked is not None else 0
        again = f" ({back} re-masked)" if back else ""
        lines.append(f"[block {h.block} step {h.step:>2}] {h.masked_left:>3} masked{again} | {text}")
    return "\n".join(lines)


def animate(history: list[Step], tokenizer, path: str, cols: int = 16) -> None:
    """GIF of row 0's canvas: one frame per step, a grid of token cells (prompt/fixed text green,
    masks dark, committed this step orange, earlier commits blue, sent back to <mask> this step
    red). With several blocks each frame shows its own block's canvas."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.animation import FuncAnimation, PillowWriter

    mask_id = tokenizer.mask_token_id
    first = {}  # block -> its first step: what was fixed before the block's first commit
    for h in history:
        first.setdefault(h.block, h)
    L = max(h.tokens.shape[1] for h in history)
    rows = math.ceil(L / cols)
    fig, ax = plt.subplots(figsize=(cols * 0.95, rows * 0.42 + 0.9))
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.86)

    def draw(i):
        h = history[i]
        ax.clear()
        ax.set_xlim(0, cols)
        ax.set_ylim(rows, 0)
        ax.axis("off")
        start = first[h.block]
        fixed = (start.tokens[0] != mask_id) & ~start.committed[0]  # [L]
        for pos, t in enumerate(h.tokens[0].tolist()):
            r, c = divmod(pos, cols)
            if t == mask_id and h.remasked is not None and h.remasked[0, pos]:
                color, label, fg = "#c0392b", "↺", "white"
            elif t == mask_id:
                color, label, fg = "#3b3b3b", MASK_GLYPH, "#9a9a9a"
            elif h.committed[0, pos]:
                color, label, fg = "#ff9f43", tokenizer.decode([t]), "black"
            elif fixed[pos]:
                color, label, fg = "#b8e994", tokenizer.decode([t]), "black"
            else:
                color, label, fg = "#a5c8f0", tokenizer.decode([t]), "black"
            ax.add_patch(plt.Rectangle((c + 0.03, r + 0.06), 0.94, 0.88, color=color))
            ax.text(c + 0.5, r + 0.5, label.strip()[:10] or "␣", ha="center", va="center", fontsize=7, color=fg)
        ax.set_title(f"block {h.block}, step {h.step}: {h.masked_left} masks left   "
                     f"(green: prompt/fixed, orange: committed now, blue: earlier, red: re-masked)", fontsize=10)

    anim = FuncAnimation(fig, draw, frames=len(history), interval=700)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    anim.save(path, writer=PillowWriter(fps=1.5))
    plt.close(fig)
