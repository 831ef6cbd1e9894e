"""Showing a denoising history (decoding.Step lists): as text lines, an animated GIF, and HTML.

    render(tokens, tokenizer, mask_id, skip)   one canvas row as text, each mask drawn as █
    format_steps(history, tokenizer)           one line per step: --show-steps
    animate(history, tokenizer, path)          a GIF, one frame per step: --animate
    canvas_html(tokens, kinds, confidence, tokenizer)   one canvas row as coloured HTML: demo.py
    progress_svg(lines, x_max, y_max)          tokens left per forward pass, a small SVG chart: demo.py
"""

import html
import math
import os
import tempfile

from decoding import Step
from files import write_atomic
from tokens import banned_ids, row_texts

MASK_GLYPH = "█"
PART_GLYPH = "·"  # a token holding the first bytes of a character that a later token completes


def render(tokens: list[int], tokenizer, mask_id: int, skip: set) -> str:
    """Text of one canvas row with each mask drawn as █ (runs of text decoded together)."""
    pieces = row_texts(tokenizer, tokens, [t == mask_id for t in tokens])
    return "".join(MASK_GLYPH if t == mask_id else p for t, p in zip(tokens, pieces) if t not in skip)


def format_steps(history: list[Step], tokenizer) -> str:
    skip = set(banned_ids(tokenizer)) - {tokenizer.mask_token_id}
    lines = []
    for h in history:
        text = render(h.tokens[0].tolist(), tokenizer, tokenizer.mask_token_id, skip).replace("\n", " ")
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
        row = h.tokens[0].tolist()
        texts = row_texts(tokenizer, row, [t == mask_id for t in row])
        for pos, (t, text) in enumerate(zip(row, texts)):
            r, c = divmod(pos, cols)
            label = (text.strip()[:10] or "␣") if text else PART_GLYPH
            if t == mask_id and h.remasked is not None and h.remasked[0, pos]:
                color, label, fg = "#c0392b", "↺", "white"
            elif t == mask_id:
                color, label, fg = "#3b3b3b", MASK_GLYPH, "#9a9a9a"
            elif h.committed[0, pos]:
                color, fg = "#ff9f43", "black"
            elif fixed[pos]:
                color, fg = "#b8e994", "black"
            else:
                color, fg = "#a5c8f0", "black"
            ax.add_patch(plt.Rectangle((c + 0.03, r + 0.06), 0.94, 0.88, color=color))
            ax.text(c + 0.5, r + 0.5, label, ha="center", va="center", fontsize=7, color=fg)
        ax.set_title(f"block {h.block}, step {h.step}: {h.masked_left} masks left   "
                     f"(green: prompt/fixed, orange: committed now, blue: earlier, red: re-masked)", fontsize=10)

    anim = FuncAnimation(fig, draw, frames=len(history), interval=700)
    with tempfile.TemporaryDirectory() as tmp:  # the writer wants a file name; the GIF lands whole
        anim.save(os.path.join(tmp, "a.gif"), writer=PillowWriter(fps=1.5))
        with open(os.path.join(tmp, "a.gif"), "rb") as f:
            write_atomic(path, f.read())
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# HTML for demo.py (the page's stylesheet gives the classes their look)
# ---------------------------------------------------------------------------------------------

def confidence_color(conf: float) -> str:
    """Pale blue (unsure) to strong blue (sure): the background of a committed token."""
    return f"hsl(212 90% {94 - 36 * min(max(conf, 0.0), 1.0):.0f}%)"


def canvas_html(tokens: list[int], kinds: list[str], confidence: list, tokenizer) -> str:
    """One canvas row as HTML: a span per token, classed by kinds[i] ("fixed" prompt or template
    text, "mask", "new" = committed at this step, "done" = committed earlier, "remasked"), committed tokens
    coloured by confidence[i] (a probability, or None where unknown), each mask drawn as █, a token
    that holds the first bytes of a character drawn as · (the character shows on the token that
    completes it). A token's leading space stays outside its span, so highlights hug the words."""
    out = []
    texts = row_texts(tokenizer, tokens, [kind in ("mask", "remasked") for kind in kinds])
    for kind, conf, piece in zip(kinds, confidence, texts):
        if kind in ("mask", "remasked"):
            tip = "re-masked at this step" if kind == "remasked" else "masked"
            out.append(f'<span class="tok {kind}" title="{tip}">{MASK_GLYPH}</span>')
            continue
        body = piece.lstrip()
        space, style, tip = piece[:len(piece) - len(body)], "", ""
        if conf is not None and kind in ("new", "done"):
            style = f' style="background:{confidence_color(conf)}"'
            tip = f' title="confidence {conf:.2f}"'
        out.append(html.escape(space) + f'<span class="tok {kind}"{style}{tip}>{html.escape(body) or ("&nbsp;" if piece else PART_GLYPH)}</span>')
    return "".join(out)


def progress_svg(lines: dict[str, tuple[list[int], str]], x_max: int, y_max: int,
                 width: int = 560, height: int = 150) -> str:
    """A small step chart: for each name -> (tokens left after forward pass 0, 1, 2, ..., colour)
    one line, on axes fixed at [0, x_max] x [0, y_max] so the chart does not rescale while it fills."""
    left, right, top, bottom = 44, 12, 10, 30
    x_max, y_max = max(x_max, 1), max(y_max, 1)
    sx = lambda i: left + (width - left - right) * i / x_max  # noqa: E731
    sy = lambda v: top + (height - top - bottom) * (1 - v / y_max)  # noqa: E731
    parts = [(f'<svg class="progress" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
              f'aria-label="tokens left per forward pass" xmlns="http://www.w3.org/2000/svg">'),
             f'<line x1="{left}" y1="{sy(0)}" x2="{width - right}" y2="{sy(0)}" stroke="#9ca3af"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{sy(0)}" stroke="#9ca3af"/>']
    for x, anchor in ((0, "start"), (x_max, "end")):
        parts.append(f'<text x="{sx(x)}" y="{sy(0) + 14}" text-anchor="{anchor}">{x}</text>')
    for y in (0, y_max):
        parts.append(f'<text x="{left - 6}" y="{sy(y) + 4}" text-anchor="end">{y}</text>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 4}" text-anchor="middle">forward passes</text>')
    parts.append(f'<text x="12" y="{(top + sy(0)) / 2}" text-anchor="middle" '
                 f'transform="rotate(-90 12 {(top + sy(0)) / 2})">tokens left</text>')
    for name, (values, color) in lines.items():
        if not values:
            continue
        points = " ".join(f"{sx(i):.1f},{sy(v):.1f}" for i, v in enumerate(values))
        parts.append(f'<polyline class="line" data-name="{html.escape(name)}" data-points="{len(values) - 1}" '
                     f'points="{points}" fill="none" stroke="{color}" stroke-width="2"/>')
        if len(values) <= 40:  # a dot per pass while they can be told apart
            parts += [f'<circle cx="{sx(i):.1f}" cy="{sy(v):.1f}" r="2.5" fill="{color}"/>' for i, v in enumerate(values)]
    parts.append("</svg>")
    return "".join(parts)
