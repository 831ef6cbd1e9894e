"""Watch diffusion write in the browser, racing the AR baseline: a local Gradio page.

    python demo.py                       # results/final-model (+ results/ar-baseline) on http://127.0.0.1:7860
    python demo.py --checkpoint results/checkpoint-3000 --baseline none --port 8000
    python demo.py --pause 0             # no slow motion: frames as fast as they compute
    python demo.py --host 0.0.0.0        # let other machines in (warns; nothing is ever shared publicly)
    python demo.py --measure 5 --pause 0 # five races at the page's defaults through its API: each lane's seconds

Generate streams decoding.generation_steps -- the loop generate.py runs -- one frame per forward
pass: masks grey, this step's commits outlined orange, committed tokens coloured by confidence.
Beside it the AR baseline (decoding.ar_steps) writes the same number of tokens left to right.
Both run in this process one after the other, each on its own clock (compute seconds); the page
interleaves the two clocks, so the race is shown as if they ran side by side, slowed so a
diffusion step lasts about --pause seconds. Every control on the page is a config.GenConfig field,
built from the dataclass, so a new generate.py flag appears here by itself: --label (a choice of
the model's labels when it is label-conditioned), --cfg, and classifier guidance (--guide, a
classifier's folder, with --guide-label, --guide-scale, --guide-mode) among them.
"""

import dataclasses
import html
import ipaddress
import os
import sys
import time

from cli import UsageError, cli, field_types, help_text, parse
from config import GenConfig, flag, Settings


class DemoConfig(Settings):
    checkpoint: str = flag("results/final-model", "the diffusion model (train.py final-model)")
    baseline: str = flag("results/ar-baseline", "baseline_ar.py --output-dir, raced beside it when present; "
                         "'none' = no race")
    host: str = flag("127.0.0.1", "address to serve on; anything but loopback lets other machines in")
    port: int = flag(7860, "port to serve on", min=1, max=65535)
    pause: float = flag(0.15, "slow motion: a diffusion step stays about this many seconds on screen and the AR "
                        "baseline is slowed by the same factor, so a small fast model can be watched; 0 = full speed "
                        "(timings exclude it)", min=0, max=10)
    concurrency: int = flag(2, "requests generated at once; more wait in the queue", min=1)
    max_tokens: int = flag(1024, "most new tokens, steps, and denoising steps (blocks x steps) one request may ask "
                           "for", min=1, max=100_000)
    measure: int = flag(0, "serve, run this many races through the page's API (gradio_client) with the page's "
                        "default values, print each lane's wall time, and stop; 0 = serve for people", min=0)

    def check(self) -> None:
        if not self.host.strip() or any(c.isspace() for c in self.host):
            raise UsageError(f"--host must be an address or a name (127.0.0.1, 0.0.0.0, localhost), got {self.host!r}")


PAGE_SKIP = ("checkpoint", "prompt", "template", "num_samples", "show_steps", "animate", "out")  # set by the page itself
PAGE_PROMPT, PAGE_TEMPLATE = "The history of", "The [MASK:4] of France is [MASK:3]."  # what the page starts with
MODES = ("prompt", "template")
DIFFUSION_COLOR, AR_COLOR = "#2563eb", "#ea580c"


# ---------------------------------------------------------------------------------------------
# The page's controls: one per GenConfig field, and back to a GenConfig
# ---------------------------------------------------------------------------------------------


def page_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(GenConfig) if f.name not in PAGE_SKIP]


def control(gr, f: dataclasses.Field, choices=None):
    """A component for one GenConfig field: dropdown for a choice (its own, or `choices` the page
    knows, such as the model's labels), checkbox for a bool, slider for a number between 0 and 1, a
    number box otherwise; labelled with its flag, its help as info."""
    from cli import choices_of

    kw = dict(label=f.name.replace("_", "-"), info=help_text(f), value=f.default, elem_id=f"gc-{f.name}",
              min_width=200)
    typ, choices, m = field_types(GenConfig)[f.name], choices or choices_of(f), f.metadata
    if choices:
        return gr.Dropdown(choices=list(choices), **kw)
    if typ is bool:
        return gr.Checkbox(**kw)
    if typ in (int, float) and 0 in (m.get("min"), m.get("above")) and m.get("max") == 1:
        return gr.Slider(0, 1, step=0.01, **kw)
    if typ in (int, float):
        return gr.Number(precision=0 if typ is int else None, **kw)
    return gr.Textbox(**kw)


def page_choices(tokenizer) -> dict:
    """Choices the page knows beyond a field's own: a label-conditioned model's labels ('' = none)."""
    from tokens import labels_of

    labels = labels_of(tokenizer)
    return {"label": [""] + labels} if labels else {}


def coerce(f: dataclasses.Field, value):
    """A page value as the field's type, or a UsageError naming the flag."""
    typ, flag_ = field_types(GenConfig)[f.name], "--" + f.name.replace("_", "-")
    if value is None or (typ is not str and isinstance(value, str) and not value.strip()):
        raise UsageError(f"{flag_} needs a value")
    try:
        if typ is bool:
            if not isinstance(value, bool):
                raise ValueError
            return value
        if typ is int:
            number = float(value)
            if number != int(number):
                raise ValueError
            return int(number)
        return typ(value)
    except (TypeError, ValueError, OverflowError):
        kind = {bool: "true or false", int: "a whole number", float: "a number"}.get(typ, "text")
        raise UsageError(f"{flag_} must be {kind}, got {value!r}")


def page_config(values: dict, max_tokens: int, window: int | None = None) -> GenConfig:
    """The GenConfig of one request, from the page's values by name (mode: prompt | template, the
    text of that mode, every page field), or a UsageError in one line. Its length, steps and
    denoising steps (blocks x steps, for a model of `window`) are each at most max_tokens."""
    mode = values.get("mode")
    if mode not in MODES:
        raise UsageError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    missing = [f.name for f in page_fields() if f.name not in values]
    if missing:
        raise UsageError(f"missing settings: {', '.join(missing)}")
    kw = {f.name: coerce(f, values[f.name]) for f in page_fields()}
    text = values.get(mode) or ""
    if not isinstance(text, str):
        raise UsageError(f"the {mode} must be text, got {type(text).__name__}")
    if mode == "template" and not text.strip():
        raise UsageError("the template is empty: write text with [MASK] or [MASK:n] spans to fill, "
                         "e.g. The [MASK:4] of France is [MASK:3].")
    gc = GenConfig(**kw, **{mode: text}, num_samples=1, out="")
    for name in ("length", "steps", "block_size"):
        if getattr(gc, name) > max_tokens:
            raise UsageError(f"--{name.replace('_', '-')} {getattr(gc, name)} is more than this page allows "
                             f"(at most {max_tokens}: demo.py --max-tokens)")
    length = gc.length or (window or 2) - 2
    blocks = -(-length // gc.block_size) if gc.block_size else 1
    if blocks * gc.steps > max_tokens:
        raise UsageError(f"{blocks} blocks x --steps {gc.steps} = {blocks * gc.steps:,} denoising steps is more than "
                         f"this page allows (at most {max_tokens}: demo.py --max-tokens)")
    return gc


# ---------------------------------------------------------------------------------------------
# The race: diffusion steps and AR tokens interleaved by their own compute clocks
# ---------------------------------------------------------------------------------------------


def lane_html(kind: str, title: str, subtitle: str, stats: str, canvas: str, passes: int = 0, done: bool = False,
              seconds: float = 0.0) -> str:
    return (f'<div class="lane {kind}"><div class="lane-head"><span class="lane-title">{title}</span>'
            f'<span class="lane-sub">{subtitle}</span></div>'
            f'<div class="stats" data-passes="{passes}" data-done="{int(done)}" data-seconds="{seconds:.6f}">{stats}'
            f'</div><div class="canvas">{canvas}</div></div>')


def stats_text(passes: int, seconds: float, tokens: int, left: int, done: bool) -> str:
    """A lane's forward passes and its own wall time so far (the slow motion excluded)."""
    if not done:
        return f"forward pass {passes} · {left} tokens left · {seconds:.3f} s"
    rate = f"{tokens / seconds:,.0f} tokens/s" if seconds > 0 else "—"
    return f"<b>{passes}</b> forward passes · <b>{seconds:.3f} s</b> · {rate}"


def message_html(text: str, error: bool = False) -> str:
    return f'<div class="message{" error" if error else ""}">{text}</div>'


def schedule_passes(gc: GenConfig, total: int, block: int) -> int:
    """Forward passes schedule decoding makes for `total` tokens in blocks of `block`: one per
    step whose mask count drops (the loop skips the others). An estimate for threshold decoding."""
    from diffusion import mask_counts

    sizes = [block] * (total // block) + ([total % block] if total % block else [])
    if gc.decode != "schedule":
        return len(sizes)
    return sum(sum(a > b for a, b in zip(c, c[1:])) for c in (mask_counts(gc.schedule, n, gc.steps) for n in sizes))


class Race:
    """One request's frames: the diffusion loop (decoding.generation_steps) and the AR baseline
    (decoding.ar_steps), each on its own compute clock; whichever clock is behind advances next,
    so the page shows the two as if they ran side by side. A bad prompt or template raises
    UsageError in the constructor, before the first frame."""

    def __init__(self, model, tokenizer, window: int, ar, gc: GenConfig, names: tuple[str, str]):
        import torch

        from decoding import generation_steps, ignored, label_window, lengths, parse_template, prompt_ids

        self.tok, self.gc, self.names, self.mask_id = tokenizer, gc, names, tokenizer.mask_token_id
        # a control moved off its default that no chosen rule reads: said when done, as generate.py warns
        self.notes = ignored([gc], {f.name: getattr(gc, f.name) for f in page_fields()
                                    if getattr(gc, f.name) != f.default})
        self.steps = generation_steps(model, tokenizer, gc, window, torch.Generator().manual_seed(gc.seed))
        t = time.perf_counter()
        first = next(self.steps)  # the first forward pass; bad input raises here
        self.clock = {"d": time.perf_counter() - t, "a": 0.0}  # each lane's compute seconds
        if gc.template:
            self.prompt, self.total = [], parse_template(gc.template, tokenizer)[1].count(False)
            self.block = self.total
        else:
            room = label_window(tokenizer, window)  # a label-conditioned model's label takes a place
            self.prompt = prompt_ids(gc, tokenizer, room)
            self.total, self.block = lengths(gc, len(self.prompt), room)
        self.conf_at, self.row, self.kinds = {}, [], []  # diffusion lane: confidence per text position
        self.written, self.left = [], {"d": [self.total], "a": []}  # AR tokens; tokens left after each pass
        self.columns, self.ar_len, self.ar_note = self.ar_lane_start(ar)
        self.left["a"].append(self.ar_len)
        self.done = {"d": False, "a": self.columns is None}
        self.x_max = max(schedule_passes(gc, self.total, self.block), self.ar_len)
        self.record(first)

    def ar_lane_start(self, ar):
        """(the AR baseline's column iterator or None, tokens it writes, a note for its lane)."""
        import torch

        from decoding import ar_steps
        from tokens import banned_ids

        if ar is None:
            return None, 0, message_html("No AR baseline loaded: train one with <code>python baseline_ar.py</code> "
                                         "to race it.")
        if self.gc.template:
            return None, 0, message_html("The AR baseline writes left to right only, so it cannot fill a template: "
                                         "its race is for prompts.")
        start = torch.tensor([[self.tok.bos_token_id] + self.prompt])  # [1, T0]
        n = min(self.total, ar.config.n_positions - start.shape[1])
        columns = ar_steps(ar, start, n, self.gc, banned_ids(self.tok), torch.Generator().manual_seed(self.gc.seed))
        return columns, n, f" · stops at its {ar.config.n_positions}-position window" if n < self.total else ""

    def record(self, s) -> None:
        """Fold one diffusion Step into the lane: which text positions it committed or re-masked."""
        offset = s.text.shape[1] - (s.tokens.shape[1] - 2)  # canvas[1:-1] is the tail of the text
        new = {offset + j - 1: float(s.confidence[0, j]) for j in s.committed[0].nonzero().flatten().tolist()}
        self.conf_at.update(new)
        back = set() if s.remasked is None else {offset + j - 1 for j in s.remasked[0].nonzero().flatten().tolist()}
        for pos in back:
            self.conf_at.pop(pos, None)
        self.row = s.text[0].tolist()
        self.kinds = [("remasked" if i in back else "mask") if t == self.mask_id else "new" if i in new
                      else "done" if i in self.conf_at else "fixed" for i, t in enumerate(self.row)]
        self.left["d"].append(s.masked_left + (0 if self.gc.template else self.total - (len(self.row) - len(self.prompt))))

    def diffusion_lane(self) -> str:
        from visualize import canvas_html

        kinds = [("done" if k == "new" else k) for k in self.kinds] if self.done["d"] else self.kinds
        passes = len(self.left["d"]) - 1
        stats = stats_text(passes, self.clock["d"], self.total, self.left["d"][-1], self.done["d"])
        canvas = canvas_html(self.row, kinds, [self.conf_at.get(i) for i in range(len(self.row))], self.tok)
        return lane_html("diffusion", "Diffusion", self.names[0], stats, canvas, passes, self.done["d"], self.clock["d"])

    def ar_lane(self) -> str:
        from visualize import canvas_html

        if self.columns is None:
            return lane_html("ar", "AR baseline", self.names[1], "", self.ar_note, 0, True)
        n, todo = len(self.written), self.ar_len - len(self.written)
        row = self.prompt + self.written + [self.mask_id] * todo
        kinds = ["fixed"] * len(self.prompt) + ["done"] * n + ["mask"] * todo
        if self.written and not self.done["a"]:
            kinds[len(self.prompt) + n - 1] = "new"
        stats = stats_text(n, self.clock["a"], self.ar_len, self.left["a"][-1], self.done["a"])
        stats += self.ar_note if self.done["a"] else ""
        canvas = canvas_html(row, kinds, [None] * len(row), self.tok)
        return lane_html("ar", "AR baseline", self.names[1], stats, canvas, n, self.done["a"], self.clock["a"])

    def chart(self) -> str:
        from visualize import progress_svg

        lines = {} if self.columns is None else {"AR": (self.left["a"], AR_COLOR)}
        lines["diffusion"] = (self.left["d"], DIFFUSION_COLOR)  # drawn last: on top where the two meet
        x_max = max(self.x_max, len(self.left["d"]) - 1, len(self.left["a"]) - 1)
        return progress_svg(lines, x_max, max(self.total, 1))

    def status(self) -> str:
        if not (self.done["d"] and self.done["a"]):
            return message_html("writing…")
        race = ""
        if self.columns is not None and self.ar_len == self.total:
            d, a = self.clock["d"], self.clock["a"]
            first = "Diffusion" if d < a else "The AR baseline"
            race = (f"{first} finished first: diffusion {d:.3f} s, AR baseline {a:.3f} s for {self.total} tokens "
                    f"(each lane's own wall time, the slow motion excluded; AR / diffusion = {a / max(d, 1e-9):.2f}). ")
        notes = "".join(f"<br>note: {html.escape(n)}" for n in self.notes)
        return message_html(f"Done. {race}Hover a token for the confidence it was committed with.{notes}")

    def advance(self) -> str:
        """One forward pass of the lane whose clock is behind; returns that lane ("d" or "a")."""
        lane = "d" if not self.done["d"] and (self.done["a"] or self.clock["d"] <= self.clock["a"]) else "a"
        t = time.perf_counter()
        item = next(self.steps if lane == "d" else self.columns, None)
        self.clock[lane] += time.perf_counter() - t
        if item is None:
            self.done[lane] = True
        elif lane == "d":
            self.record(item)
        else:
            self.written.append(int(item[0, 0]))
            self.left["a"].append(self.ar_len - len(self.written))
            self.done["a"] = len(self.written) == self.ar_len
        return lane

    def frames(self, pause: float):
        """(diffusion lane, AR lane, chart, status) HTML per frame (None = unchanged), slowed so a
        diffusion step stays about `pause` seconds on screen (0 = as fast as they compute)."""
        speed = pause / max(self.clock["d"], 1e-4) if pause > 0 else 0.0  # wall seconds per compute second
        yield self.diffusion_lane(), self.ar_lane(), self.chart(), self.status()
        shown = self.clock["d"]  # race time of the last frame
        while not (self.done["d"] and self.done["a"]):
            lane = self.advance()
            if speed:
                time.sleep(min(max(self.clock[lane] - shown, 0.0) * speed, pause))
            shown = max(shown, self.clock[lane])
            final = self.done["d"] and self.done["a"]  # the last frame carries both lanes: what an API call returns
            yield (self.diffusion_lane() if lane == "d" or final else None), \
                (self.ar_lane() if lane == "a" or final else None), self.chart(), self.status()


def race(model, tokenizer, window: int, ar, gc: GenConfig, pause: float, names: tuple[str, str]):
    """The frames of one request (Race); a bad prompt or template raises before the first."""
    return Race(model, tokenizer, window, ar, gc, names).frames(pause)


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------

CSS = """
.lane {border: 1px solid #e5e7eb; border-radius: 10px; padding: 12px 16px; background: #ffffff; min-height: 230px;}
.lane.diffusion {border-top: 4px solid #2563eb;} .lane.ar {border-top: 4px solid #ea580c;}
.lane-head {display: flex; align-items: baseline; gap: 10px; flex-wrap: wrap;}
.lane-title {font-weight: 700; font-size: 1.1rem;}
.lane.diffusion .lane-title {color: #1d4ed8;} .lane.ar .lane-title {color: #c2410c;}
.lane-sub {color: #6b7280; font-size: 0.85rem;}
.lane .stats {color: #374151; font-size: 0.9rem; margin: 2px 0 10px; min-height: 1.3em; font-variant-numeric: tabular-nums;}
.canvas {font-size: 16px; line-height: 2.05; color: #111827; white-space: pre-wrap; overflow-wrap: anywhere;}
.tok {border-radius: 3px; padding: 3px 0;}
.tok.fixed {background: #dcfce7; color: #14532d; font-weight: 600;}
.tok.mask, .tok.remasked {display: inline-block; width: 0.85em; height: 1.1em; margin: 0 1px; padding: 0;
  vertical-align: -0.2em; overflow: hidden; line-height: 1.1em; color: transparent; background: #d1d5db;}
.tok.remasked {background: #f87171;}
.tok.new {box-shadow: 0 0 0 2px #f97316; font-weight: 600;}
.hint {color: #9ca3af;}
.message {color: #374151; font-size: 0.92rem; padding: 6px 2px;}
.message.error {background: #fef2f2; border: 1px solid #fecaca; color: #991b1b; padding: 8px 12px; border-radius: 8px;}
.chart-card {border: 1px solid #e5e7eb; border-radius: 10px; padding: 8px 12px; background: #ffffff;}
.chart-card svg {max-width: 100%; height: auto;}
.chart-card svg text {font-size: 11px; fill: #6b7280;}
.legend {display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); gap: 2px 14px; font-size: 0.9rem;
  color: #374151; line-height: 1.9; padding-top: 8px;}
.legend .swatch {display: inline-block; width: 22px; height: 3px; vertical-align: middle; margin-right: 4px;}
"""


def legend_html() -> str:
    from visualize import MASK_GLYPH, confidence_color

    ramp = "".join(f'<span class="tok done" style="background:{confidence_color(c)}">&nbsp;&nbsp;</span>'
                   for c in (0.1, 0.4, 0.7, 1.0))
    return ('<div class="legend">'
            '<span><span class="tok fixed">text</span> prompt or template text (fixed)</span>'
            f'<span><span class="tok mask">{MASK_GLYPH}</span> masked</span>'
            '<span><span class="tok new">word</span> committed at this step</span>'
            f'<span>confidence: low {ramp} high</span>'
            f'<span><span class="tok remasked">{MASK_GLYPH}</span> re-masked</span>'
            f'<span><span class="swatch" style="background:{DIFFUSION_COLOR}"></span>diffusion</span>'
            f'<span><span class="swatch" style="background:{AR_COLOR}"></span>AR baseline</span>'
            '</div>')


def lane_names(model, ar) -> tuple[str, str]:
    """Each lane's subtitle: the model's kind, its size and how it writes."""
    from modeling import n_params

    return (f"{model.config.model_type} · {n_params(model) / 1e6:.1f}M parameters · unmasks in parallel",
            f"{ar.config.model_type} · {n_params(ar) / 1e6:.1f}M parameters · one token per pass" if ar is not None
            else "not loaded")


def build_app(model, tokenizer, tcfg, ar, dc: DemoConfig):
    """The page: text and mode, Generate, the two lanes, the chart, and every GenConfig control.
    Every input is registered by name (`add`): the handler reads its values by name, and the API
    takes them in the order they were added, so a new control is one `add` where it is laid out."""
    import gradio as gr

    from visualize import progress_svg

    names = lane_names(model, ar)
    empty = '<span class="hint">the canvas appears here</span>'
    empty_lanes = (lane_html("diffusion", "Diffusion", names[0], "", empty),
                   lane_html("ar", "AR baseline", names[1], "", empty), progress_svg({}, 10, 10))
    inputs = {}  # name -> component, in API order

    def add(name: str, component):
        inputs[name] = component
        return component

    def generate(*values):
        try:
            gc = page_config(dict(zip(inputs, values)), dc.max_tokens, tcfg.max_len)
            for frame in race(model, tokenizer, tcfg.max_len, ar, gc, dc.pause, names):
                yield tuple(gr.skip() if part is None else part for part in frame)
        except UsageError as e:  # the message quotes what was typed: escaped
            yield (*empty_lanes, message_html(f"error: {html.escape(str(e))}", error=True))

    with gr.Blocks(title="Watch diffusion write", analytics_enabled=False) as app:
        gr.Markdown("## Watch diffusion write\n"
                    "A masked language model trained at every masking rate starts from a fully masked canvas and "
                    "fills it a few tokens per forward pass; the AR baseline beside it writes one token per pass. "
                    f"Model: `{dc.checkpoint}` (window {tcfg.max_len} tokens).")
        with gr.Row():
            mode = add("mode", gr.Radio(list(MODES), value="prompt", label="mode", scale=1, min_width=160,
                                        elem_id="mode"))
            prompt = add("prompt", gr.Textbox(value=PAGE_PROMPT, label="prompt", scale=5, elem_id="prompt",
                                              placeholder="text the model continues",
                                              info="kept fixed at the start; empty = unprompted"))
            template = add("template", gr.Textbox(value=PAGE_TEMPLATE, label="template",
                                                  visible=False, scale=5, elem_id="template",
                                                  info="fixed text with [MASK:n] spans to fill"))
            go = gr.Button("Generate", variant="primary", scale=1, min_width=140, elem_id="generate")
        status = gr.HTML(message_html("Press <b>Generate</b> to watch the canvas fill."), elem_id="status")
        with gr.Row(equal_height=True):
            lane_d = gr.HTML(empty_lanes[0], elem_id="diffusion-lane")
            lane_a = gr.HTML(empty_lanes[1], elem_id="ar-lane")
        with gr.Row(elem_classes="chart-card"):
            chart = gr.HTML(empty_lanes[2], elem_id="chart", scale=3)
            gr.HTML(legend_html(), scale=2)
        known = page_choices(tokenizer)
        with gr.Accordion("Generation settings: the flags of generate.py", open=True), gr.Row():
            for f in page_fields():
                add(f.name, control(gr, f, known.get(f.name)))
        mode.change(lambda m: (gr.update(visible=m == "prompt"), gr.update(visible=m == "template")), mode,
                    [prompt, template], api_name=False)
        # preprocess=False: the values reach page_config as sent, so a bad one (k "inf", p a list) is
        # one message on the page, never a component's exception with a generic error
        go.click(generate, list(inputs.values()), [lane_d, lane_a, chart, status], api_name="generate",
                 show_progress="hidden", preprocess=False)
    return app


# ---------------------------------------------------------------------------------------------
# Serving
# ---------------------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_models(dc: DemoConfig):
    """(model, tokenizer, train config, AR baseline or None); a UsageError before anything is served."""
    from transformers.utils import logging as hf_logging

    from modeling import load_baseline, load_checkpoint

    hf_logging.disable_progress_bar()
    model, tokenizer, tcfg = load_checkpoint(dc.checkpoint)
    ar = None
    if dc.baseline != "none" and not os.path.exists(dc.baseline):
        print(f"note: no AR baseline at {dc.baseline}, the page shows diffusion alone "
              f"(train one with: python baseline_ar.py --checkpoint {dc.checkpoint} --output-dir {dc.baseline})")
    elif dc.baseline != "none":
        ar = load_baseline(dc.baseline, tokenizer, dc.checkpoint, tcfg.max_len)[0].to(model.device)
    return model, tokenizer, tcfg, ar


def warm_up(model, tokenizer, tcfg, ar) -> None:
    """One forward pass of each model, so the first race's clocks do not include first-call costs."""
    import torch

    from decoding import ar_steps, generation_steps

    gc = GenConfig(length=1, steps=1, out="")
    next(generation_steps(model, tokenizer, gc, tcfg.max_len, torch.Generator().manual_seed(0)))
    if ar is not None:
        next(ar_steps(ar, torch.tensor([[tokenizer.bos_token_id]]), 1, gc, [], torch.Generator().manual_seed(0)))


def serve(dc: DemoConfig):
    """Load the models and start the page in the background; returns the running app (close() stops it)."""
    model, tokenizer, tcfg, ar = load_models(dc)
    import gradio as gr  # after the models: a missing checkpoint is reported without waiting for it
    warm_up(model, tokenizer, tcfg, ar)
    if not is_loopback(dc.host):
        print(f"warning: serving on {dc.host}, not loopback: anyone who can reach this machine can use the page",
              file=sys.stderr)
    app = build_app(model, tokenizer, tcfg, ar, dc)
    app.queue(default_concurrency_limit=dc.concurrency)
    try:
        app.launch(server_name=dc.host, server_port=dc.port, share=False, prevent_thread_lock=True, quiet=True,
                   ssr_mode=False, mcp_server=False, footer_links=["api"], css=CSS,
                   theme=gr.themes.Default(primary_hue="blue"))
    except OSError as e:
        cause = str(e).splitlines()[0].split(". ")[0]  # gradio's advice after it names other knobs
        raise UsageError(f"cannot serve on {dc.host}:{dc.port} ({cause}); pick another --port")
    return app


def measure(dc: DemoConfig, app) -> list[tuple[float, float]]:
    """(diffusion seconds, AR seconds) of dc.measure races at the page's default values, read from
    the lanes the page's API returns (the numbers a visitor sees)."""
    import re

    from gradio_client import Client

    client = Client(f"http://{dc.host}:{dc.port}/", verbose=False)
    values = ["prompt", PAGE_PROMPT, PAGE_TEMPLATE, *[f.default for f in page_fields()]]
    seconds = lambda lane: float(re.search(r'data-seconds="([0-9.]+)"', lane).group(1))  # noqa: E731
    races = []
    for i in range(dc.measure):
        lane_d, lane_a, _, status = client.predict(*values, api_name="/generate")
        races.append((seconds(lane_d), seconds(lane_a)))
        print(f"race {i + 1}: diffusion {races[-1][0]:.3f} s, AR baseline {races[-1][1]:.3f} s "
              f"(AR / diffusion {races[-1][1] / races[-1][0]:.2f})", flush=True)
    return races


def main(argv=None) -> int:
    dc, _ = parse(DemoConfig, argv, __doc__)
    app = serve(dc)
    if dc.measure:
        try:
            races = measure(dc, app)
        finally:
            app.close()
        wins = sum(d < a for d, a in races)
        print(f"diffusion finished first in {wins} of {len(races)} races (median AR / diffusion "
              f"{sorted(a / d for d, a in races)[len(races) // 2]:.2f})")
        return 0
    print(f"serving http://{dc.host}:{dc.port} (Ctrl+C stops)")
    app.block_thread()
    return 0


if __name__ == "__main__":
    sys.exit(cli(main))
