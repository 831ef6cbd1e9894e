"""Watch diffusion write in the browser, racing the AR baseline: a local Gradio page.

    python demo.py                       # results/final-model (+ results/ar-baseline) on http://127.0.0.1:7860
    python demo.py --checkpoint results/checkpoint-1500 --baseline none --port 8000
    python demo.py --pause 0             # no slow motion: frames as fast as they compute
    python demo.py --host 0.0.0.0        # let other machines in (warns; nothing is ever shared publicly)

Generate streams decoding.generation_steps -- the loop generate.py runs -- one frame per forward
pass: masks grey, this step's commits outlined orange, committed tokens coloured by confidence.
Beside it the AR baseline (decoding.ar_steps) writes the same number of tokens left to right.
Both run in this process one after the other, each on its own clock (compute seconds); the page
interleaves the two clocks, so the race is shown as if they ran side by side, slowed so a
diffusion step lasts about --pause seconds. Every control on the page is a config.GenConfig field,
built from the dataclass, so a new generate.py flag appears here by itself.
"""

import dataclasses
import html
import ipaddress
import os
import re
import sys
import time

import torch

from config import BOUNDS, CHOICES, DemoConfig, GenConfig, UsageError, cli, field_help, parse

PAGE_SKIP = ("checkpoint", "prompt", "template", "num_samples", "show_steps", "animate", "out")  # set by the page itself
MODES = ("prompt", "template")
DIFFUSION_COLOR, AR_COLOR = "#2563eb", "#ea580c"
TYPES = {"int": int, "float": float, "str": str, "bool": bool}


# ---------------------------------------------------------------------------------------------
# The page's controls: one per GenConfig field, and back to a GenConfig
# ---------------------------------------------------------------------------------------------


def page_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(GenConfig) if f.name not in PAGE_SKIP]


def field_type(f: dataclasses.Field) -> type:
    """int, float, bool or str (any other annotation is edited as text)."""
    typ = TYPES.get(f.type, str) if isinstance(f.type, str) else f.type
    return typ if typ in (int, float, bool, str) else str


def controls(gr) -> list:
    """A component per page field: dropdown for a choice, checkbox for a bool, slider for a number
    bounded by 0 and 1, a number box otherwise; labelled with its flag, the field's comment as help."""
    helps, choices, bounds = field_help(GenConfig), CHOICES["GenConfig"], BOUNDS["GenConfig"]
    out = []
    for f in page_fields():
        kw = dict(label=f.name.replace("_", "-"), info=helps.get(f.name) or None, value=f.default,
                  elem_id=f"gc-{f.name}", min_width=200)
        typ = field_type(f)
        if f.name in choices:
            out.append(gr.Dropdown(choices=list(choices[f.name]), **kw))
        elif typ is bool:
            out.append(gr.Checkbox(**kw))
        elif typ in (int, float) and re.fullmatch(r"[\[(]0, 1[\])]", bounds.get(f.name, "")):
            out.append(gr.Slider(0, 1, step=0.01, **kw))
        elif typ in (int, float):
            out.append(gr.Number(precision=0 if typ is int else None, **kw))
        else:
            out.append(gr.Textbox(**kw))
    return out


def coerce(f: dataclasses.Field, value):
    """A page value as the field's type, or a UsageError naming the flag."""
    typ, flag = field_type(f), "--" + f.name.replace("_", "-")
    if value is None or (typ is not str and isinstance(value, str) and not value.strip()):
        raise UsageError(f"{flag} needs a value")
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
        raise UsageError(f"{flag} must be {kind}, got {value!r}")


def page_config(mode: str, text: str, values, max_tokens: int) -> GenConfig:
    """The GenConfig of one request (mode: prompt | template), or a UsageError in one line."""
    if mode not in MODES:
        raise UsageError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    fields = page_fields()
    if len(values) != len(fields):
        raise UsageError(f"expected {len(fields)} settings ({', '.join(f.name for f in fields)}), got {len(values)}")
    kw = {f.name: coerce(f, v) for f, v in zip(fields, values)}
    text = text or ""
    if mode == "template" and not text.strip():
        raise UsageError("the template is empty: write text with [MASK] or [MASK:n] spans to fill, "
                         "e.g. The [MASK:4] of France is [MASK:3].")
    gc = GenConfig(**kw, **{mode: text}, num_samples=1, out="")
    for name in ("length", "steps", "block_size"):
        if getattr(gc, name) > max_tokens:
            raise UsageError(f"--{name.replace('_', '-')} {getattr(gc, name)} is more than this page allows "
                             f"(at most {max_tokens}: demo.py --max-tokens)")
    return gc


# ---------------------------------------------------------------------------------------------
# The race: diffusion steps and AR tokens interleaved by their own compute clocks
# ---------------------------------------------------------------------------------------------


def lane_html(kind: str, title: str, subtitle: str, stats: str, canvas: str, passes: int = 0, done: bool = False) -> str:
    return (f'<div class="lane {kind}"><div class="lane-head"><span class="lane-title">{title}</span>'
            f'<span class="lane-sub">{subtitle}</span></div>'
            f'<div class="stats" data-passes="{passes}" data-done="{int(done)}">{stats}</div>'
            f'<div class="canvas">{canvas}</div></div>')


def stats_text(passes: int, seconds: float, tokens: int, left: int, done: bool) -> str:
    if not done:
        return f"forward pass {passes} · {left} tokens left"
    rate = f"{tokens / seconds:,.0f} tokens/s" if seconds > 0 else "—"
    return f"<b>{passes}</b> forward passes · {seconds:.3f} s · {rate}"


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


def race(model, tokenizer, window: int, ar, gc: GenConfig, pause: float, names: tuple[str, str]):
    """Frames (diffusion lane, AR lane, chart, status) of one request, HTML each (None = unchanged).
    A bad prompt or template raises UsageError before the first frame."""
    from decoding import ar_steps, banned_ids, generation_steps, lengths, parse_template, prompt_ids
    from visualize import canvas_html, progress_svg

    mask_id = tokenizer.mask_token_id
    steps = generation_steps(model, tokenizer, gc, window, torch.Generator().manual_seed(gc.seed))
    t = time.perf_counter()
    first = next(steps)  # the first forward pass; bad input raises here, before any frame
    clock = {"d": time.perf_counter() - t, "a": 0.0}  # each lane's compute seconds
    if gc.template:
        prompt, total = [], parse_template(gc.template, tokenizer)[1].count(False)
        block = total
    else:
        prompt = prompt_ids(gc, tokenizer, window)
        total, block = lengths(gc, len(prompt), window)

    ar_note, ar_len, columns = "", 0, None
    if ar is None:
        ar_note = message_html("No AR baseline loaded: train one with <code>python baseline_ar.py</code> to race it.")
    elif gc.template:
        ar_note = message_html("The AR baseline writes left to right only, so it cannot fill a template: "
                               "its race is for prompts.")
    else:
        start = torch.tensor([[tokenizer.bos_token_id] + prompt])  # [1, T0]
        ar_len = min(total, ar.config.n_positions - start.shape[1])
        columns = ar_steps(ar, start, ar_len, gc, banned_ids(tokenizer), torch.Generator().manual_seed(gc.seed))
        if ar_len < total:
            ar_note = f" · stops at its {ar.config.n_positions}-position window"
    x_max = max(schedule_passes(gc, total, block), ar_len)

    # state of the two lanes
    conf_at = {}  # text position -> confidence of the diffusion token committed there
    row_d, kinds_d = [], []
    left = {"d": [total], "a": [ar_len]}  # tokens left after forward pass 0, 1, 2, ...
    done = {"d": False, "a": columns is None}
    written = []  # AR tokens

    def record(s) -> None:
        """Fold one diffusion Step into the lane: which text positions it committed or re-masked."""
        nonlocal row_d, kinds_d
        offset = s.text.shape[1] - (s.tokens.shape[1] - 2)  # canvas[1:-1] is the tail of the text
        new = {offset + j - 1: float(s.confidence[0, j]) for j in s.committed[0].nonzero().flatten().tolist()}
        conf_at.update(new)
        remasked = getattr(s, "remasked", None)  # [B, L] bool, where a decoding rule re-masks tokens
        back = set() if remasked is None else {offset + j - 1 for j in remasked[0].nonzero().flatten().tolist()}
        for pos in back:
            conf_at.pop(pos, None)
        row_d = s.text[0].tolist()
        kinds_d = [("remasked" if i in back else "mask") if t == mask_id else "new" if i in new
                   else "done" if i in conf_at else "fixed" for i, t in enumerate(row_d)]
        left["d"].append(s.masked_left + (0 if gc.template else total - (len(row_d) - len(prompt))))

    def diffusion_lane() -> str:
        kinds = [("done" if k == "new" else k) for k in kinds_d] if done["d"] else kinds_d
        passes = len(left["d"]) - 1
        stats = stats_text(passes, clock["d"], total, left["d"][-1], done["d"])
        canvas = canvas_html(row_d, kinds, [conf_at.get(i) for i in range(len(row_d))], tokenizer)
        return lane_html("diffusion", "Diffusion", names[0], stats, canvas, passes, done["d"])

    def ar_lane() -> str:
        if columns is None:
            return lane_html("ar", "AR baseline", names[1], "", ar_note, 0, True)
        row = prompt + written + [mask_id] * (ar_len - len(written))
        kinds = ["fixed"] * len(prompt) + ["done"] * len(written) + ["mask"] * (ar_len - len(written))
        if written and not done["a"]:
            kinds[len(prompt) + len(written) - 1] = "new"
        stats = stats_text(len(written), clock["a"], ar_len, left["a"][-1], done["a"]) + (ar_note if done["a"] else "")
        canvas = canvas_html(row, kinds, [None] * len(row), tokenizer)
        return lane_html("ar", "AR baseline", names[1], stats, canvas, len(written), done["a"])

    def chart() -> str:
        lines = {} if columns is None else {"AR": (left["a"], AR_COLOR)}
        lines["diffusion"] = (left["d"], DIFFUSION_COLOR)  # drawn last: on top where the two meet
        return progress_svg(lines, max(x_max, len(left["d"]) - 1, len(left["a"]) - 1), max(total, 1))

    def status() -> str:
        if done["d"] and done["a"]:
            return message_html("Done. Hover a token for the confidence it was committed with.")
        return message_html("writing…")

    record(first)
    speed = pause / max(clock["d"], 1e-4) if pause > 0 else 0.0  # wall seconds shown per compute second
    yield diffusion_lane(), ar_lane(), chart(), status()
    shown = clock["d"]  # race time of the last frame
    while not (done["d"] and done["a"]):
        # 1. advance the lane whose clock is behind: a diffusion step or an AR token
        lane = "d" if not done["d"] and (done["a"] or clock["d"] <= clock["a"]) else "a"
        t = time.perf_counter()
        item = next(steps if lane == "d" else columns, None)
        clock[lane] += time.perf_counter() - t
        if item is None:
            done[lane] = True
        elif lane == "d":
            record(item)
        else:
            written.append(int(item[0, 0]))
            left["a"].append(ar_len - len(written))
            done["a"] = len(written) == ar_len
        # 2. show the frame after as long as the race clock moved, slowed down (at most --pause)
        if speed:
            time.sleep(min(max(clock[lane] - shown, 0.0) * speed, pause))
        shown = max(shown, clock[lane])
        final = done["d"] and done["a"]  # the last frame carries both lanes: it is what an API call returns
        yield (diffusion_lane() if lane == "d" or final else None), (ar_lane() if lane == "a" or final else None), \
            chart(), status()


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


def build_app(model, tokenizer, tcfg, ar, dc: DemoConfig):
    """The page: text and mode, Generate, the two lanes, the chart, and every GenConfig control."""
    import gradio as gr

    from modeling import n_params
    from visualize import progress_svg

    names = (f"{model.config.model_type} · {n_params(model) / 1e6:.1f}M parameters · unmasks in parallel",
             f"{ar.config.model_type} · {n_params(ar) / 1e6:.1f}M parameters · one token per pass" if ar is not None
             else "not loaded")
    idle = message_html("Press <b>Generate</b> to watch the canvas fill.")
    empty = '<span class="hint">the canvas appears here</span>'
    empty_chart = progress_svg({}, 10, 10)

    def generate(mode, prompt, template, *values):
        try:
            gc = page_config(mode, prompt if mode == "prompt" else template, values, dc.max_tokens)
            for frame in race(model, tokenizer, tcfg.max_len, ar, gc, dc.pause, names):
                yield tuple(gr.skip() if part is None else part for part in frame)
        except UsageError as e:  # the message quotes what was typed: escaped
            yield (lane_html("diffusion", "Diffusion", names[0], "", empty),
                   lane_html("ar", "AR baseline", names[1], "", empty), empty_chart,
                   message_html(f"error: {html.escape(str(e))}", error=True))

    def switch(mode):
        return gr.update(visible=mode == "prompt"), gr.update(visible=mode == "template")

    with gr.Blocks(title="Watch diffusion write", analytics_enabled=False) as app:
        gr.Markdown("## Watch diffusion write\n"
                    "A masked language model trained at every masking rate starts from a fully masked canvas and "
                    "fills it a few tokens per forward pass; the AR baseline beside it writes one token per pass. "
                    f"Model: `{dc.checkpoint}` (window {tcfg.max_len} tokens).")
        with gr.Row():
            mode = gr.Radio(list(MODES), value="prompt", label="mode", scale=1, min_width=160, elem_id="mode")
            prompt = gr.Textbox(value="The history of", label="prompt", placeholder="text the model continues",
                                scale=5, elem_id="prompt", info="kept fixed at the start; empty = unprompted")
            template = gr.Textbox(value="The [MASK:4] of France is [MASK:3].", label="template", visible=False,
                                  scale=5, elem_id="template", info="fixed text with [MASK:n] spans to fill")
            go = gr.Button("Generate", variant="primary", scale=1, min_width=140, elem_id="generate")
        status = gr.HTML(idle, elem_id="status")
        with gr.Row(equal_height=True):
            lane_d = gr.HTML(lane_html("diffusion", "Diffusion", names[0], "", empty), elem_id="diffusion-lane")
            lane_a = gr.HTML(lane_html("ar", "AR baseline", names[1], "", empty), elem_id="ar-lane")
        with gr.Row(elem_classes="chart-card"):
            chart = gr.HTML(empty_chart, elem_id="chart", scale=3)
            gr.HTML(legend_html(), scale=2)
        with gr.Accordion("Generation settings: the flags of generate.py", open=True), gr.Row():
            settings = controls(gr)
        mode.change(switch, mode, [prompt, template], api_name=False)
        go.click(generate, [mode, prompt, template, *settings], [lane_d, lane_a, chart, status], api_name="generate",
                 show_progress="hidden")
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


def main(argv=None) -> int:
    dc, _ = parse(DemoConfig, argv, __doc__)
    app = serve(dc)
    print(f"serving http://{dc.host}:{dc.port} (Ctrl+C stops)")
    app.block_thread()
    return 0


if __name__ == "__main__":
    sys.exit(cli(main))
