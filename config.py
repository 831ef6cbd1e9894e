"""Settings that several programs share, each field carrying its own rules.

    TrainConfig   train.py; saved as diffusion_config.json beside every checkpoint, so everything
                  that loads a checkpoint reads the window, prefix and masking settings from it
    GenConfig     generate.py, and every generation setting of evaluate.py, demo.py, bench.py and
                  the experiments
A config with one consumer lives with it (EvalConfig in evaluate.py, BenchConfig in bench.py, ...).

Every field is declared with flag(default, help, choices=..., min/max/above/below=...): its help,
choices and range sit on the field itself, so `--help` shows them (cli.parse makes one flag per
field) and a Settings subclass checks them whenever an instance is built -- a bad value is one line
`error: ...`, exit 2, before any work starts. Choices that are a registry (Registry("decoding",
"SAMPLERS")) are that dict's own keys, so a new sampler is a new choice by itself. A class's
`check(self)` holds the rules that tie several fields together.

Torch-free, like cli.py: `--help` and a bad flag answer without loading torch.
"""

import ast
import dataclasses
import functools
import json
import math
import os
import sys
from dataclasses import dataclass

from cli import UsageError, field_types, flag_name
from files import read_json, write_json

ROOT = os.path.dirname(os.path.abspath(__file__))
CONFIG_FILE = "diffusion_config.json"  # saved beside every checkpoint and result


# ---------------------------------------------------------------------------------------------
# Fields that carry their rules
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Registry:
    """Choices that are the keys of a registry dict (module.name), plus `extra` names. Read from
    the module when it is loaded, else from its source (the dict literal's keys), so `--help`
    lists them without importing torch."""
    module: str
    name: str
    extra: tuple = ()

    def __call__(self) -> tuple:
        loaded = sys.modules.get(self.module)
        keys = tuple(getattr(loaded, self.name)) if loaded is not None else source_keys(self.module, self.name)
        return self.extra + keys


@functools.cache
def source_keys(module: str, name: str) -> tuple:
    """The string keys of the dict literal assigned to `name` in ROOT/module.py."""
    with open(os.path.join(ROOT, module + ".py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets) and isinstance(node.value, ast.Dict):
            return tuple(k.value for k in node.value.keys)
    raise RuntimeError(f"{module}.py has no dict literal {name} (config.Registry reads its keys)")


def flag(default, help: str, choices=None, min=None, max=None, above=None, below=None, run: bool = False):
    """A dataclass field with its rules: help text, allowed values (a tuple or a Registry), and a
    range (min/max inclusive, above/below exclusive). run=True marks a GenConfig field that
    says how a run is done (where to write, how many samples), not how text is decoded."""
    lo = f"[{min}" if min is not None else f"({above}" if above is not None else "(-inf"
    hi = f"{max}]" if max is not None else f"{below})" if below is not None else "inf)"
    rng = f"{lo}, {hi}" if (min, max, above, below) != (None,) * 4 else ""
    meta = dict(help=help, choices=choices, min=min, max=max, above=above, below=below, range=rng, run=run)
    return dataclasses.field(default=default, metadata=meta)


def validate(cfg) -> None:
    """Types, choices, finite numbers and ranges of every field, then the class's own check()."""
    from cli import choices_of

    types = field_types(type(cfg))
    for f in dataclasses.fields(cfg):
        value, typ, m, name = getattr(cfg, f.name), types[f.name], f.metadata, flag_name(f.name)
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
            setattr(cfg, f.name, value)
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise UsageError(f"{name} must be {typ.__name__}, got {type(value).__name__} {value!r}")
        choices = choices_of(f)
        if choices is not None and value not in choices:
            raise UsageError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        if typ is float and not math.isfinite(value):
            raise UsageError(f"{name} must be a finite number, got {value}")
        if typ in (int, float) and not in_range(value, m):
            raise UsageError(f"{name} must be in {m['range']}, got {value}")
    if hasattr(cfg, "check"):
        cfg.check()


def in_range(value, meta) -> bool:
    return ((meta.get("min") is None or value >= meta["min"]) and (meta.get("max") is None or value <= meta["max"])
            and (meta.get("above") is None or value > meta["above"])
            and (meta.get("below") is None or value < meta["below"]))


class Settings:
    """The base of every config: a subclass is a dataclass whose every instance is checked by
    validate() as it is built."""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        dataclass(cls)

    def __post_init__(self):
        validate(self)


def parse_floats(text: str, flag_: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--{flag_} must be comma-separated numbers, got {text!r}")
    if any(not math.isfinite(v) for v in values):
        raise UsageError(f"--{flag_} must be finite numbers, got {text!r}")
    return values


def parse_ints(text: str, flag_: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--{flag_} must be comma-separated integers, got {text!r}")


def parse_names(text: str, flag_: str, options) -> list[str]:
    """'a,b' -> ['a', 'b'], each one of `options`; repeats dropped, order kept."""
    names = list(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    bad = [x for x in names if x not in options]
    if bad or not names:
        raise UsageError(f"--{flag_}: unknown {', '.join(bad) or '(empty)'} (choose from {', '.join(options)})")
    return names


def parse_rates(text: str, flag_: str) -> list[float]:
    """'0.1,0.5,1' -> masking rates, each in (0, 1]."""
    rates = parse_floats(text, flag_)
    if not rates or any(not 0.0 < t <= 1.0 for t in rates):
        raise UsageError(f"--{flag_} must be rates in (0, 1], got {text!r}")
    return rates


SCHEDULES = Registry("diffusion", "SCHEDULES")
LR_SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial",
                 "inverse_sqrt")  # transformers' SchedulerType names that need no extra arguments


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


class TrainConfig(Settings):
    # --- what to train ---------------------------------------------------------------------------
    task: str = flag("diffusion", "diffusion = a masked LM at every masking rate (the generator); classify = a "
                     "noisy-input classifier p(label | text masked at every rate) for generate.py --guide, trained "
                     "with the same masking (needs --labels; --model may be a generator's final-model to start from)",
                     choices=("diffusion", "classify"))

    # --- model -------------------------------------------------------------------------------
    model: str = flag("roberta-base", "a HF hub id (roberta-base, distilroberta-base, roberta-large, ...; needs "
                      "network), a local folder saved with save_pretrained, or 'scratch': a small model built from "
                      "--scratch-* with a tokenizer trained on the corpus (offline; --quick-test uses it)")
    scratch_arch: str = flag("modernbert", "architecture of a from-scratch model; ModernBERT (pre-LayerNorm, rotary "
                             "positions) leaves the unigram plateau within a minute on 2 CPU cores, where a small "
                             "post-LN RoBERTa sits on it for minutes", choices=Registry("modeling", "SCRATCH_ARCHS"))
    scratch_layers: int = flag(4, "transformer layers of a from-scratch model", min=1)
    scratch_hidden: int = flag(256, "hidden size of a from-scratch model", min=1)
    scratch_heads: int = flag(4, "attention heads of a from-scratch model", min=1)
    scratch_intermediate: int = flag(512, "MLP width of a from-scratch model", min=1)
    tokenizer_vocab_size: int = flag(4096, "byte-level BPE trained on the corpus (scratch only)", min=16, max=1_000_000)

    # --- data --------------------------------------------------------------------------------
    dataset: str = flag("embedded", "'embedded' = 106 English Wikipedia articles shipped inside the gensim wheel "
                        "(offline); a path = a .txt / .jsonl file or a folder of them; otherwise a HF hub dataset")
    dataset_config: str = flag("", "hub dataset config, e.g. wikitext-2-raw-v1")
    text_column: str = flag("text", "field holding the text in .jsonl files and hub datasets")
    max_len: int = flag(128, "window: tokens per block, <s> and </s> included", min=8)
    packing: str = flag("packed", "packed = documents joined by </s> into one stream cut into full blocks (long "
                        "documents); none = one document per block, cut to the window and padded with </s> (short "
                        "documents: the model learns where text ends). Either way a </s> inside a block is "
                        "masked and scored like text", choices=Registry("data", "PACKINGS"))
    val_fraction: float = flag(0.05, "share of blocks held out for evaluation: the stream's tail (packed), or "
                               "documents spread evenly over the corpus (none)", above=0, below=0.5)
    labels: str = flag("none", "labelled data: folders = --dataset is a folder with one subfolder per label "
                       "(each holding .txt/.jsonl/.csv/.parquet files; the subfolder's name is the label); column = "
                       "--label-column of each .jsonl/.csv/.parquet row or hub dataset row. With --task diffusion "
                       "the model reads a label token after <s>: a label-conditioned generator (generate.py --label)",
                       choices=("none", "folders", "column"))
    label_column: str = flag("label", "field holding each document's label with --labels column")
    label_dropout: float = flag(0.1, "share of training blocks whose label token is replaced by the null label, so "
                                "one model is both conditional and unconditional (classifier-free guidance)",
                                min=0, below=1)
    max_train_blocks: int = flag(0, "0 = all; cap for quick experiments on big corpora", min=0)
    cache_dir: str = flag(".cache", "tokenizer and tokenised-dataset cache (ignored by git)")

    # --- masking (the forward process) ---------------------------------------------------------
    mask_distribution: str = flag("levels", "how the masking rate is drawn: 'levels' = uniform over --mask-levels "
                                  "(the seed's 0.1..1.0); a schedule from diffusion.SCHEDULES = progress r ~ U(0, 1) "
                                  "masks the fraction schedule(r), the curve generate.py's --schedule follows, "
                                  "rescaled to [--mask-min, 1]", choices=Registry("diffusion", "SCHEDULES", ("levels",)))
    mask_levels: str = flag("0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0",
                            "rates for 'levels'; also the levels losses are reported at")
    mask_min: float = flag(0.1, "lowest rate a schedule distribution draws", above=0, max=1)
    per_sample_rate: bool = flag(False, "one rate per sequence instead of one per batch")
    antithetic: bool = flag(False, "MDLM's low-discrepancy draw (needs --per-sample-rate): one u per batch and "
                            "progress r_i = (u + i/B) mod 1, so each batch covers every rate evenly")
    prefix_mode: str = flag("variable", "leading tokens never masked (the prompt at generation): 'fixed' = always "
                            "--prefix-len; 'variable' = uniform in [0, --prefix-len] per sequence, so unprompted "
                            "generation and prompts of any length up to it are in distribution",
                            choices=("fixed", "variable", "none"))
    prefix_len: int = flag(16, "prefix length (fixed) or its maximum (variable), in tokens", min=0)
    loss_weighting: str = flag("mean", "'mean' = the seed's plain average over masked tokens; 'elbo' = MDLM's 1/t "
                               "weighting (t the fraction actually masked): in expectation the NLL bound itself",
                               choices=("mean", "elbo"))
    weighting_start: int = flag(0, "optimiser step from which --loss-weighting applies; the plain mean before it",
                                min=0)

    # --- optimisation --------------------------------------------------------------------------
    output_dir: str = flag("results", "checkpoint-N/, final-model/, metrics.jsonl, loss_by_level.png")
    max_steps: int = flag(2000, "optimiser steps", min=1)
    batch_size: int = flag(16, "sequences per device per step", min=1)
    grad_accum: int = flag(1, "gradient accumulation steps per optimiser step", min=1)
    learning_rate: float = flag(5e-5, "peak learning rate (AdamW)", above=0)
    weight_decay: float = flag(0.01, "AdamW weight decay", min=0)
    warmup_steps: int = flag(100, "linear warm-up to the peak learning rate", min=0)
    lr_scheduler: str = flag("linear", "learning-rate schedule after warm-up", choices=LR_SCHEDULERS)
    seed: int = flag(42, "fixes weight init, data order and every mask", min=0, max=2**32 - 1)

    # --- speed ---------------------------------------------------------------------------------
    masked_only_head: bool = flag(True, "apply the LM head only where loss is computed")
    precision: str = flag("auto", "auto = bf16 on a GPU that has it, else fp32", choices=("auto", "bf16", "fp16", "fp32"))
    fused_adamw: bool = flag(True, "fused AdamW kernel (CUDA and CPU); off = the per-tensor default")
    torch_compile: bool = flag(False, "torch.compile the model (slow start, faster steps on GPU)")
    num_workers: int = flag(0, "DataLoader workers (seeded seed + worker_id)", min=0, max=128)

    # --- logging, evaluation, checkpoints ------------------------------------------------------
    logging_steps: int = flag(50, "one log line (and a metrics.jsonl row) every N steps", min=1)
    eval_steps: int = flag(500, "held-out loss at every level + ELBO bound + fills every N steps", min=1)
    eval_batches: int = flag(8, "held-out batches per level per evaluation", min=1)
    elbo_blocks: int = flag(1024, "held-out blocks the ELBO bound is estimated on at each eval (0 = all)", min=0)
    elbo_draws: int = flag(4, "Monte Carlo draws per held-out block for the ELBO bound at each eval", min=2,
                         max=1024)
    save_steps: int = flag(500, "write checkpoint-N every N steps", min=1)
    save_total_limit: int = flag(3, "keep only the newest N checkpoints", min=1)
    log_format: str = flag("auto", "bar: a progress bar with the log lines above it; plain: the log lines alone (for "
                           "a file); auto: bar when stdout is a terminal, else plain", choices=("auto", "bar", "plain"))
    resume: bool = flag(False, "continue this folder's run from its newest good checkpoint")
    quick_test: bool = flag(False, "preset: small offline run on the embedded corpus (config.QUICK_TEST)")

    def levels(self) -> list[float]:
        return parse_rates(self.mask_levels, "mask-levels")

    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.max_len

    def token_budget(self) -> int:
        return self.max_steps * self.tokens_per_step()

    def check(self) -> None:
        self.levels()
        label = self.task == "diffusion" and self.labels != "none"  # the label token takes a place
        room = self.max_len - 3 - label
        if self.prefix_mode != "none" and self.prefix_len > room:
            raise UsageError(f"--prefix-len must be in [0, max_len - {3 + label} = {room}], got {self.prefix_len}")
        if self.scratch_hidden % self.scratch_heads:
            raise UsageError("--scratch-hidden must be divisible by --scratch-heads")
        if self.scratch_arch == "modernbert" and self.scratch_hidden // self.scratch_heads % 2:
            raise UsageError(f"--scratch-hidden / --scratch-heads = {self.scratch_hidden // self.scratch_heads}: "
                             f"ModernBERT's rotary positions need an even head dimension")
        if self.task == "classify" and self.labels == "none":
            raise UsageError("--task classify needs labelled data: --labels folders or --labels column")
        if self.label_column != "label" and self.labels != "column":
            raise UsageError("--label-column only applies with --labels column")
        if self.antithetic and not self.per_sample_rate:
            raise UsageError("--antithetic spreads the rates of one batch: it needs --per-sample-rate")


# --resume refuses a change to these: they fix the model's shape or the data it trains on (a new
# window re-packs the data, a new width cannot load the checkpoint's weights).
RESUME_FIXED = ("model", "scratch_arch", "scratch_layers", "scratch_hidden", "scratch_heads", "scratch_intermediate",
                "tokenizer_vocab_size", "dataset", "dataset_config", "text_column", "max_len", "val_fraction",
                "max_train_blocks")


# Offline preset: from-scratch ModernBERT (2 layers, hidden 128; modeling.n_params counts it) on
# the embedded Wikipedia articles, window 64, one masking rate per sequence. Chosen with
# experiments/recipe_probe.py (README "Choosing the quick-test recipe"): small models and many
# optimiser steps leave the unigram plateau soonest; per-sequence rates beat one rate per batch.
QUICK_TEST = dict(
    model="scratch",
    dataset="embedded",
    scratch_layers=2,
    scratch_hidden=128,
    scratch_heads=4,
    scratch_intermediate=256,
    max_len=64,
    per_sample_rate=True,
    max_steps=3000,
    batch_size=16,
    learning_rate=1e-3,
    warmup_steps=50,
    lr_scheduler="linear",
    logging_steps=250,
    eval_steps=500,
    save_steps=500,
    eval_batches=8,
)

# Sensible per-size defaults for real runs (tokens per step ~ 64 x 256 on one large GPU); two
# DataLoader workers prepare the next batches while the GPU runs this one.
MODEL_PRESETS = {
    "distilroberta-base": dict(batch_size=64, learning_rate=5e-5, num_workers=2),
    "roberta-base": dict(batch_size=64, learning_rate=5e-5, num_workers=2),
    "roberta-large": dict(batch_size=32, grad_accum=2, learning_rate=2e-5, num_workers=2),
}


def train_presets(flags: dict) -> dict:
    """Overrides under explicit flags: model-size preset <- --quick-test preset."""
    quick = QUICK_TEST if flags.get("quick_test") else {}
    model = flags.get("model", quick.get("model", TrainConfig.model))
    return {**MODEL_PRESETS.get(model, {}), **quick}


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------


class GenConfig(Settings):
    checkpoint: str = flag("results/final-model", "folder written by train.py", run=True)
    prompt: str = flag("", "text the generation continues (kept fixed, as the training prefix was)")
    template: str = flag("", "infill: fixed text with [MASK:n] spans to fill, e.g. 'A [MASK:5] is [MASK].'")
    length: int = flag(0, "new tokens to generate; 0 = fill the checkpoint's window after the prompt", min=0)
    steps: int = flag(12, "denoising steps (per block with --block-size)", min=1)
    schedule: str = flag("linear", "how fast masks are removed: diffusion.SCHEDULES, the curves training draws "
                         "rates from", choices=SCHEDULES)
    sampling: str = flag("nucleus", "how a token is drawn at a masked position (decoding.SAMPLERS); the decoding "
                         "defaults are experiments/speed_frontier.py's proposal: text-like variety below the seed's "
                         "generative perplexity, at the fewest forward passes", choices=Registry("decoding", "SAMPLERS"))
    k: int = flag(50, "top-k size", min=1)
    p: float = flag(0.95, "nucleus mass", above=0, max=1)
    temperature: float = flag(0.85, "softmax temperature; 0 = greedy argmax for any sampler, else at least 0.001 "
                              "(below that float32 logits overflow)", min=0, max=100)
    order: str = flag("random", "which predictions are committed first (decoding.ORDERS); random = the seed's rule, "
                      "which predicts only where it commits", choices=Registry("decoding", "ORDERS"))
    order_noise: float = flag(8.0, "Gumbel noise on a certainty order's scores, tau (T - s) / T at step s of T "
                              "(MaskGIT's annealing)", min=0)
    remdm: str = flag("conf", "ReMDM: each committed token goes back to <mask> with probability sigma, drawn "
                      "independently (decoding.REMDM; conf is ReMDM's own, conf-rescale this repo's variant)",
                      choices=Registry("decoding", "REMDM"))
    remdm_eta: float = flag(0.02, "ReMDM's eta: how many committed tokens go back (a probability scale; conf does "
                            "not read it)", min=0, max=1)
    label: str = flag("", "a label-conditioned model's label to write (its model card lists them); '' = the null "
                      "label, the model unconditional")
    cfg: float = flag(0.0, "classifier-free guidance weight w: logits = u + (w+1)(c - u); c sees the condition "
                      "(the --label and the prompt or template text), u sees none of it (the null label, the prompt "
                      "masked): one weight on the joint condition", min=0, max=100)
    guide: str = flag("", "classifier guidance: a noisy-input classifier (train.py --task classify) on this "
                      "model's tokenizer")
    guide_label: str = flag("", "the classifier's label to steer toward")
    guide_scale: float = flag(0.0, "gamma: each masked position's proposal times p(label | canvas with that "
                              "candidate)^gamma; 0 = unguided", min=0, max=100)
    guide_mode: str = flag("exact", "exact = the classifier run on the canvas with each of the top --guide-k "
                           "candidates of every masked position (the others scored as the canvas itself); taylor = "
                           "first order, one backward pass through the classifier's input embeddings, every candidate",
                           choices=Registry("decoding", "GUIDES"))
    guide_k: int = flag(8, "candidates per masked position that exact guidance scores", min=1, max=256)
    stop_at_eos: bool = flag(False, "let the model write </s> and cut each sample there (and stop writing blocks)")
    min_length: int = flag(0, "with --stop-at-eos: no </s> before this many generated tokens", min=0)
    canvas: str = flag("full", "full: always the whole window, masks beyond the text stay masked | fit: </s> right "
                       "after", choices=("full", "fit"))
    decode: str = flag("schedule", "which predictions each pass commits (decoding.DECODES): counts from --schedule, "
                       "or every confident one", choices=Registry("decoding", "DECODES"))
    threshold: float = flag(0.9, "confidence needed to commit with --decode threshold", above=0, max=1)
    factor: float = flag(1.0, "--decode factor (Fast-dLLM): commit the n most confident while the r-th has "
                         "confidence >= 1 - factor/(r+1)", above=0)
    block_size: int = flag(0, ">0: semi-autoregressive, denoise this many tokens at a time, left to right", min=0)
    cache: str = flag("none", "Fast-dLLM's block cache: prefix = keys/values before the block computed once per "
                      "block; dual = those after it too (approximate: they go stale as the block fills in)",
                      choices=Registry("decoding", "CACHE_SPANS", ("none",)))
    num_samples: int = flag(1, "samples generated together as one batch", min=1, run=True)
    seed: int = flag(0, "fixes every sampled token and every random remask", min=0, max=2**63 - 1, run=True)
    show_steps: bool = flag(False, "print the canvas after every step, masks drawn as █", run=True)
    animate: str = flag("", "write a GIF of the denoising history to this path", run=True)
    out: str = flag("results/generations.jsonl", "each run appends its config, samples and timing here", run=True)

    def check(self) -> None:
        if self.template and self.prompt:
            raise UsageError("--template and --prompt cannot be combined: put the prompt text in the template")
        if self.remdm in ("cap", "rescale", "conf-rescale") and self.remdm_eta == 0:
            raise UsageError(f"--remdm {self.remdm} needs --remdm-eta above 0")
        if bool(self.guide) != bool(self.guide_label):
            raise UsageError("--guide CLASSIFIER and --guide-label NAME go together")
        if self.guide_scale and not self.guide:
            raise UsageError("--guide-scale needs --guide CLASSIFIER and --guide-label NAME")
        if self.min_length and not self.stop_at_eos:
            raise UsageError("--min-length only applies with --stop-at-eos")
        check_temperature(self.temperature)


MIN_TEMPERATURE = 1e-3  # the lowest sampling temperature any script accepts (0 means greedy)


def check_temperature(t: float) -> None:
    """The temperature rule every sampling flag follows: 0 (greedy) or at least MIN_TEMPERATURE."""
    if 0 < t < MIN_TEMPERATURE:
        raise UsageError(f"--temperature must be 0 (greedy) or at least {MIN_TEMPERATURE:g}, got {t:g}")


# ---------------------------------------------------------------------------------------------
# Saving and reading configs
# ---------------------------------------------------------------------------------------------


def to_json(cfg) -> str:
    return json.dumps(dataclasses.asdict(cfg), indent=2, sort_keys=True)


def save_config(cfg, folder: str, name: str = CONFIG_FILE) -> str:
    """cfg as JSON in folder/name, written whole or not at all."""
    path = os.path.join(folder, name)
    write_json(path, json.loads(to_json(cfg)))
    return path


LEGACY_VALUES = {"mask_distribution": {"uniform": "linear"}}  # names used by earlier checkpoints


def load_train_config(checkpoint: str) -> TrainConfig:
    """The TrainConfig a checkpoint was trained with (unknown keys from newer versions ignored)."""
    path = os.path.join(checkpoint, CONFIG_FILE)
    if not os.path.isfile(path):
        raise UsageError(f"{checkpoint} has no {CONFIG_FILE}: not a checkpoint of this repo "
                         f"(make one with: python train.py --quick-test)")
    try:
        data = read_json(path)
    except ValueError as e:
        raise UsageError(f"{path} is not a valid config ({str(e).splitlines()[0][:120]}); "
                         f"the checkpoint is damaged: retrain or use another checkpoint")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    data = {k: LEGACY_VALUES.get(k, {}).get(v, v) if isinstance(v, str) else v for k, v in data.items() if k in names}
    try:
        return TrainConfig(**data)
    except (TypeError, UsageError) as e:
        raise UsageError(f"{path} is not a valid config ({e})")
