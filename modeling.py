"""Models: build or load a masked LM (and its AR baseline), run the LM head only where needed.

    load_pretrained(cls, name)       from_pretrained with a one-line error when offline / missing
    build_model(cfg, tokenizer, labels)   from-scratch model (cfg.model == "scratch") or a pretrained
                                     one: a masked LM (--task diffusion; label names in its config) or a
                                     sequence classifier (--task classify)
    load_checkpoint(path)            (model, tokenizer, TrainConfig) of a train.py checkpoint
    load_classifier(path, tokenizer) a --task classify checkpoint for guidance, on the generator's tokenizer
    masked_logits(model, ids, attn, where)   logits [N, V] at the N positions where `where` is True
    encoder_hidden(model, ids, rows)         generation's hidden states [N, H] at rows (fast_modernbert's
                                     forward for ModernBERT, the encoder's own otherwise)
    at_rows(x, rows)                         x [B, L(, H)] at a [B, L] mask or a [B, c] index, row-major
    masked_lm_loss(model, batch, ...)        per-token CE at masked positions, the training loss
    compile_model(model)                     torch.compile in place, keeping the masked-only head
    build_ar_model / ar_shape / load_baseline   the GPT-2-shaped AR baseline of equal size

The vocabulary projection (hidden -> V logits) is the single largest matmul of a small MLM, and
only masked positions carry loss; `masked_logits` runs the encoder on every position but the
head on masked ones alone. It knows the heads of RoBERTa, BERT, DistilBERT and ModernBERT;
any other architecture runs its full forward and the masked rows are picked out afterwards.
"""

import functools
import os
import socket
import sys
import urllib.parse

import torch
import torch.nn.functional as F

from cli import UsageError
from config import TrainConfig
from files import read_json
from tokens import bos_eos, fingerprint, fingerprint_matches


PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


@functools.cache
def hub_offline() -> str:
    """'' if the hub may be reached, else why not. HF_HUB_OFFLINE set: offline. Otherwise one TCP
    connection to the hub's endpoint (HF_ENDPOINT), 5 s at most; when it fails this process goes
    offline (HF_HUB_OFFLINE for huggingface_hub, transformers and datasets), so a hub name is read
    from the local cache or refused at once -- not after huggingface_hub's five retries with backoff.
    Behind a proxy (HTTPS_PROXY) the libraries connect as they would."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in PROXY_VARS):
        return ""
    url = urllib.parse.urlsplit(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=5).close()
        return ""
    except OSError as e:
        os.environ["HF_HUB_OFFLINE"] = "1"  # datasets reads it when imported; the constants below once imported
        constants.HF_HUB_OFFLINE = True
        if "datasets" in sys.modules:
            sys.modules["datasets"].config.HF_HUB_OFFLINE = True
        return f"{url.hostname} unreachable: {e.strerror or type(e).__name__}"


def load_pretrained(cls, name: str, **kwargs):
    """cls.from_pretrained(name) that turns 'no network' / 'no such folder' / 'not this kind of
    model' / a damaged file into one UsageError; a hub name is tried once (hub_offline), from the
    cache when the hub is out of reach."""
    offline = "" if os.path.isdir(name) else hub_offline()
    try:
        return cls.from_pretrained(name, **kwargs)
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
        where = "local folder" if os.path.isdir(name) else "hub model"
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        hint = ("" if os.path.isdir(name) or os.path.exists(name) else
                f"{'; ' + offline if offline else ''}; without network, train from scratch offline with "
                f"--model scratch (or --quick-test)")
        raise UsageError(f"cannot load {where} {name!r} as {cls.__name__.replace('Auto', '')} ({first}){hint}")


def autocast(device, precision: str = "auto"):
    """bf16 autocast on a GPU that has it, unless the run trains in fp32 (or fp16)."""
    if device.type == "cuda" and precision == "fp16":
        return torch.autocast("cuda", dtype=torch.float16)
    if device.type == "cuda" and precision in ("auto", "bf16") and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # shared (tied) tensors count once


def modernbert_config(cfg: TrainConfig, common: dict):
    from transformers import ModernBertConfig

    return ModernBertConfig(**common, max_position_embeddings=cfg.max_len, cls_token_id=common["bos_token_id"],
                            sep_token_id=common["eos_token_id"], global_attn_every_n_layers=1,
                            local_attention=cfg.max_len, embedding_dropout=0.0, mlp_dropout=0.0, attention_dropout=0.0)


def roberta_config(cfg: TrainConfig, common: dict):
    from transformers import RobertaConfig

    # RoBERTa offsets positions by pad_token_id + 1
    return RobertaConfig(**common, max_position_embeddings=cfg.max_len + common["pad_token_id"] + 1)


def bert_config(cfg: TrainConfig, common: dict):
    from transformers import BertConfig

    return BertConfig(**common, max_position_embeddings=cfg.max_len)


# --scratch-arch: name -> (TrainConfig, shared fields) -> a transformers config
SCRATCH_ARCHS = {"modernbert": modernbert_config, "roberta": roberta_config, "bert": bert_config}


def scratch_model_config(cfg: TrainConfig, tokenizer, **extra):
    common = dict(extra, vocab_size=len(tokenizer), hidden_size=cfg.scratch_hidden,
                  num_hidden_layers=cfg.scratch_layers, num_attention_heads=cfg.scratch_heads,
                  intermediate_size=cfg.scratch_intermediate, pad_token_id=tokenizer.pad_token_id,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return SCRATCH_ARCHS[cfg.scratch_arch](cfg, common)


def build_model(cfg: TrainConfig, tokenizer, labels: list[str] = ()):
    """The model to train: a masked LM (--task diffusion) or a sequence classifier over `labels`
    (--task classify), from scratch or from cfg.model. Label names go into the config (id2label),
    so a checkpoint names its labels; a pretrained start gets rows for added label tokens."""
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    auto = AutoModelForSequenceClassification if cfg.task == "classify" else AutoModelForMaskedLM
    names = dict(id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)}) if labels else {}
    if cfg.model == "scratch":
        torch.manual_seed(cfg.seed)  # weight init is the one place transformers uses the global RNG
        return auto.from_config(scratch_model_config(cfg, tokenizer, **names), attn_implementation="sdpa")
    if cfg.task == "classify":
        torch.manual_seed(cfg.seed)  # the classifier's new head is initialised while loading
    model = load_pretrained(auto, cfg.model, **names)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:  # label tokens added to its vocabulary
        model.resize_token_embeddings(len(tokenizer))
    limit = position_limit(model.config)
    if limit is not None and cfg.max_len > limit:
        raise UsageError(f"--max-len {cfg.max_len} exceeds {cfg.model}'s {limit} positions")
    return model


def position_limit(config) -> int | None:
    """The longest block a model's position embeddings cover (RoBERTa's are offset by pad_token_id + 1)."""
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        limit -= config.pad_token_id + 1
    return limit


# ---------------------------------------------------------------------------------------------
# LM head on selected positions only
# ---------------------------------------------------------------------------------------------

# class name -> (attribute of the encoder, function (model, hidden [N, H]) -> logits [N, V])
HEADS = {
    "RobertaForMaskedLM": ("roberta", lambda m, h: m.lm_head(h)),
    "XLMRobertaForMaskedLM": ("roberta", lambda m, h: m.lm_head(h)),
    "BertForMaskedLM": ("bert", lambda m, h: m.cls(h)),
    "ModernBertForMaskedLM": ("model", lambda m, h: m.decoder(m.head(h))),
    "DistilBertForMaskedLM": ("distilbert", lambda m, h: m.vocab_projector(
        m.vocab_layer_norm(m.activation(m.vocab_transform(h))))),
}


def at_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """x [B, L] or [B, L, H] at rows (a [B, L] mask or a [B, c] index), row-major: [N] or [N, H]."""
    if rows.dtype == torch.bool:
        return x[rows]
    if x.dim() == 2:
        return x.gather(1, rows).flatten()
    return x.gather(1, rows[..., None].expand(-1, -1, x.shape[-1])).flatten(0, 1)


def index_rows(mask: torch.Tensor, c: int) -> torch.Tensor:
    """[B, c] the first c positions of each row of mask [B, L], ascending (exactly c per row: a
    [B, c] index of the same rows at_rows picks, without a device sync)."""
    return mask.to(torch.int8).argsort(dim=-1, descending=True, stable=True)[:, :c]


def encoder_hidden(model, tokens: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Hidden states [N, H] at rows (a [B, L] mask or a [B, c] index, row-major) of the encoder
    under a model whose head HEADS knows, for a canvas without padding (generation):
    fast_modernbert's forward where it applies (the same numbers, less work per call), else the
    encoder's own."""
    import fast_modernbert

    if fast_modernbert.supports(model):
        return fast_modernbert.encode(model, tokens, rows=rows)
    hidden = getattr(model, HEADS[type(model).__name__][0])(input_ids=tokens).last_hidden_state  # [B, L, H]
    return at_rows(hidden, rows)


def head_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """Logits [N, V] of hidden states [N, H] through the LM head HEADS names: fast_modernbert's
    ops where its encoder applies (the same numbers, no module calls), else the head's modules."""
    import fast_modernbert

    if fast_modernbert.supports(model):
        return fast_modernbert.head(model, hidden)
    return HEADS[type(model).__name__][1](model, hidden)


def masked_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                  where: torch.Tensor, masked_only: bool = True) -> torch.Tensor:
    """Logits [N, V] at the N positions where `where` [B, L] is True (row-major order)."""
    head = HEADS.get(type(model).__name__) if masked_only else None
    if head is None:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # [B, L, V]
        return logits[where]  # [N, V]
    encoder = getattr(model, head[0])
    hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, L, H]
    return head[1](model, hidden[where])  # [N, V]


def compile_model(model, masked_only: bool = True) -> None:
    """torch.compile, in place, what masked_logits runs: the encoder when the head is known (its
    input is [B, L] every step, while the head's row count changes with every mask), else the
    whole model. In place keeps the class (HEADS finds it), the state-dict keys and
    save_pretrained; a torch.compile wrapper would hide the class and lose the masked-only head."""
    head = HEADS.get(type(model).__name__) if masked_only else None
    (getattr(model, head[0]) if head else model).compile()


def masked_lm_loss(model, input_ids, attention_mask, labels, mask_rate=None, weighting: str = "mean",
                   masked_only: bool = True):
    """(loss, per_token_ce [N], row_of_each [N]) over positions with a label.

    "mean": average CE over masked tokens (the seed's objective): a row counts by how many of its
            tokens are masked, so heavily masked rows dominate.
    "elbo": MDLM's 1/t weighting, sum_i (1/t_i) * sum_{masked in i} CE / sum_i n_i, with t_i = k_i/n_i
            the fraction of row i's n_i maskable positions actually masked (diffusion.realized_rates,
            what DiffusionCollator returns as mask_rate): row i adds n_i * (mean CE of its k_i masked
            tokens). Over k ~ U{1..n} its expectation is the per-token NLL bound that
            diffusion.elbo_terms estimates (tests/test_objectives.py checks it on every mask)."""
    where = labels != -100  # [B, L]
    logits = masked_logits(model, input_ids, attention_mask, where, masked_only)  # [N, V]
    ce = F.cross_entropy(logits.float(), labels[where], reduction="none")  # [N]
    rows = where.nonzero()[:, 0]  # [N] which sequence each masked token belongs to
    if weighting == "elbo":
        if mask_rate is None:
            raise ValueError("elbo weighting needs mask_rate")
        t = mask_rate.to(ce.device).float()  # [B]
        k = where.sum(1)  # [B] masked tokens per row
        n = torch.where(k > 0, torch.round(k / t.clamp(min=1e-9)), 0.0)  # [B] maskable positions: k / (k/n)
        loss = (ce / t[rows]).sum() / n.sum().clamp(min=1)
    else:
        loss = ce.mean()
    return loss, ce, rows


def training_loss(model, batch: dict, cfg: TrainConfig, step: int):
    """masked_lm_loss as cfg trains at optimiser step `step`: --loss-weighting from
    --weighting-start on, the plain mean before (DiffusionTrainer and recipe_probe.py)."""
    weighting = cfg.loss_weighting if step >= cfg.weighting_start else "mean"
    return masked_lm_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"], batch["mask_rate"],
                          weighting, cfg.masked_only_head)


# ---------------------------------------------------------------------------------------------
# Loading a train.py checkpoint
# ---------------------------------------------------------------------------------------------


def checkpoints_in(folder: str) -> list[str]:
    """The names of the train.py checkpoints in folder (checkpoint-N by step, then final-model)."""
    names = os.listdir(folder) if os.path.isdir(folder) else []
    found = [n for n in names if os.path.isfile(os.path.join(folder, n, "diffusion_config.json"))]
    step = lambda n: int(n[11:]) if n.startswith("checkpoint-") and n[11:].isdigit() else float("inf")  # noqa: E731
    return sorted(found, key=lambda n: (step(n), n))


def check_checkpoint(path: str) -> None:
    """A UsageError that says how to make one unless `path` holds a train.py checkpoint's files; a
    missing checkpoint beside others names those (training keeps only the newest --save-total-limit)."""
    if not os.path.isdir(path):
        parent = os.path.dirname(os.path.normpath(path)) or "."
        there = checkpoints_in(parent)
        if there:
            raise UsageError(f"no checkpoint at {path}; {parent} holds {', '.join(there)} (training keeps the newest "
                             f"--save-total-limit checkpoints)")
        raise UsageError(f"no checkpoint at {path}; make one with: python train.py --quick-test")
    missing = [f for f in ("config.json", "diffusion_config.json") if not os.path.isfile(os.path.join(path, f))]
    if not any(f.endswith((".safetensors", ".bin")) for f in os.listdir(path)):
        missing.append("model weights")
    if not any(os.path.isfile(os.path.join(path, f)) for f in ("tokenizer.json", "vocab.json", "vocab.txt")):
        missing.append("tokenizer")
    if missing:
        raise UsageError(f"incomplete checkpoint {path}: missing {', '.join(missing)} "
                         f"(was training interrupted? rerun python train.py --quick-test)")


def load_checkpoint(path: str, device: str | None = None):
    """(model, tokenizer, train_config) from a train.py checkpoint, or a UsageError that says
    how to make one."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from config import load_train_config

    check_checkpoint(path)
    cfg = load_train_config(path)
    if cfg.task != "diffusion":
        raise UsageError(f"{path} is a classifier (train.py --task {cfg.task}), not a generator: pass it to "
                         f"generate.py --guide, and a train.py --task diffusion checkpoint as --checkpoint")
    damaged = f"; the checkpoint in {path} is damaged: use another checkpoint or retrain"
    try:
        tokenizer = load_pretrained(AutoTokenizer, path)
        model = load_pretrained(AutoModelForMaskedLM, path)
    except UsageError as e:
        raise UsageError(f"{e}{damaged}")
    except Exception as e:  # a truncated safetensors or a broken config.json: each library has its own error
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
        raise UsageError(f"cannot load {path} ({type(e).__name__}{': ' + first if first else ''}){damaged}")
    check_tokenizer(path, tokenizer, model)
    check_weights(path, cfg, model)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), tokenizer, cfg


def check_weights(path: str, cfg: TrainConfig, model) -> None:
    """The window diffusion_config.json claims must fit the weights' positions, and the weights
    must be numbers: a claimed window of 4096 on a 32-position model, or nan weights, would give
    text that is silently wrong."""
    limit = position_limit(model.config)
    if limit is not None and cfg.max_len > limit:
        raise UsageError(f"{path}/diffusion_config.json says max_len {cfg.max_len}, but the model's weights hold "
                         f"{limit} positions: the files do not belong together; restore the checkpoint's own config")
    bad = next((n for n, p in model.named_parameters() if p.is_floating_point() and not torch.isfinite(p).all()), None)
    if bad is not None:
        raise UsageError(f"the weights in {path} are not finite ({bad}): saved after training diverged; use an "
                         f"earlier checkpoint or retrain")


def load_classifier(path: str, tokenizer, device=None):
    """(classifier, its label names) from a train.py --task classify checkpoint, for guiding a
    generator whose tokenizer is `tokenizer`: both must share every id but the generator's label
    tokens (tokens.vocab_without_labels), or a UsageError."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from config import load_train_config
    from tokens import vocab_without_labels

    check_checkpoint(path)
    cfg = load_train_config(path)
    if cfg.task != "classify":
        raise UsageError(f"--guide {path} is a {cfg.task} model, not a classifier: train one with "
                         f"python train.py --task classify --labels folders --dataset DIR --output-dir DIR")
    own = load_pretrained(AutoTokenizer, path)
    if vocab_without_labels(own) != vocab_without_labels(tokenizer):
        raise UsageError(f"--guide {path} reads another tokenizer than the generator ({len(own):,} vs "
                         f"{len(tokenizer):,} tokens, different ids): train the classifier on the generator's text "
                         f"with the same --tokenizer-vocab-size, or start it from the generator (--model FOLDER)")
    try:
        model = load_pretrained(AutoModelForSequenceClassification, path)
    except Exception as e:  # a truncated safetensors or a broken config.json
        raise UsageError(f"cannot load the classifier {path} ({type(e).__name__}); retrain it")
    check_tokenizer(path, own, model)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), names


def check_tokenizer(path: str, tokenizer, model) -> None:
    """The tokenizer beside the weights must be the one they were trained with: its fingerprint
    (vocabulary, merges, special tokens) against run.json (written by train.py), and in any case no
    id beyond the embedding rows. A foreign tokenizer would give silently wrong text and numbers."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise UsageError(f"the tokenizer in {path} has {len(tokenizer):,} tokens but the model has {rows:,} "
                         f"embedding rows: they do not belong together")
    others = {getattr(tokenizer, f"{n}_token_id") for n in ("unk", "pad", "bos", "eos", "cls", "sep")} - {None}
    if tokenizer.mask_token_id is None or tokenizer.mask_token_id in others:  # "mask_token": "<unk>" in its config
        raise UsageError(f"the tokenizer in {path} has no mask token of its own ({tokenizer.mask_token!r}): not the "
                         f"tokenizer this masked LM was trained with; restore the checkpoint's own tokenizer files")
    run = os.path.join(path, "run.json")
    if os.path.isfile(run):
        try:
            recorded = read_json(run)
        except ValueError as e:
            raise UsageError(f"{run} is damaged ({str(e).splitlines()[0][:80]}); restore it from the run's folder "
                             f"(run.json) or retrain")
        if not fingerprint_matches(recorded, tokenizer):
            raise UsageError(f"the tokenizer in {path} is not the one this model was trained with (fingerprint "
                             f"{fingerprint(tokenizer)[:8]}, {len(tokenizer):,} tokens, mask token "
                             f"{tokenizer.mask_token!r}); restore the checkpoint's own tokenizer files")


# ---------------------------------------------------------------------------------------------
# The AR baseline: a GPT-2 of the diffusion model's size
# ---------------------------------------------------------------------------------------------


def gpt2_param_count(vocab: int, n_positions: int, n_embd: int, n_layer: int, n_inner: int) -> int:
    """Parameters of GPT2LMHeadModel with tied embeddings (the LM head adds none)."""
    d = n_embd
    # per block: ln_1 + c_attn + attn c_proj + ln_2 = 4d^2 + 9d; c_fc + mlp c_proj = n_inner(2d + 1) + ...
    per_layer = 4 * d * d + 9 * d + n_inner * (2 * d + 1)
    return vocab * d + n_positions * d + n_layer * per_layer + 2 * d  # + ln_f


def ar_shape(target: int, vocab: int, n_positions: int, n_embd: int, n_layer: int,
             fixed_layers: bool = False, multiple: int = 32) -> tuple[int, int]:
    """(n_layer, n_inner) of a GPT-2 whose parameter count is nearest `target`: the given depth
    if an MLP between 1x and 8x the width fits (GPT-2 uses 4x), else the nearest depth that does."""
    depths = [n_layer] if fixed_layers else sorted(range(1, 4 * n_layer + 3), key=lambda L: (abs(L - n_layer), L))
    for L in depths:
        rest = target - gpt2_param_count(vocab, n_positions, n_embd, L, 0)
        inner = round(rest / (L * (2 * n_embd + 1)) / multiple) * multiple
        if n_embd <= inner <= 8 * n_embd:
            return L, inner
    raise UsageError(f"no GPT-2 of width {n_embd} with {'/'.join(map(str, depths[:3]))}... layers has "
                     f"~{target:,} parameters; set --n-layer and --n-inner")


def width_heads_depth(config) -> tuple[int, int, int]:
    """(hidden size, heads, layers) of an encoder config (BERT/RoBERTa/ModernBERT or DistilBERT names)."""
    get = lambda *names: next(getattr(config, n) for n in names if hasattr(config, n))  # noqa: E731
    return get("hidden_size", "dim"), get("num_attention_heads", "n_heads"), get("num_hidden_layers", "n_layers")


def build_ar_model(tokenizer, n_positions: int, n_embd: int, n_head: int, n_layer: int, n_inner: int, seed: int,
                   vocab_size: int | None = None):
    from transformers import AutoModelForCausalLM, GPT2Config

    bos, eos = bos_eos(tokenizer)
    # no dropout, as the from-scratch diffusion models have none
    cfg = GPT2Config(vocab_size=vocab_size or len(tokenizer), n_positions=n_positions, n_embd=n_embd,
                     n_layer=n_layer, n_head=n_head, n_inner=n_inner, resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0, bos_token_id=bos, eos_token_id=eos,
                     pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
                     tie_word_embeddings=True)
    torch.manual_seed(seed)  # weight init is the one place transformers uses the global RNG
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    model.loss_type = "ForCausalLM"  # shifted CE, what it falls back to anyway, minus a warning
    return model


def load_baseline(path: str, tokenizer, checkpoint: str, window: int):
    """(model, its ar_config.json as a dict) from baseline_ar.py's --output-dir (or its final-model)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = os.path.join(path, "final-model") if os.path.isdir(os.path.join(path, "final-model")) else path
    if not os.path.isfile(os.path.join(folder, "ar_config.json")):
        raise UsageError(f"no AR baseline at {path}; train one with: python baseline_ar.py --checkpoint "
                         f"{checkpoint} --output-dir {path}   (or pass --baseline none)")
    if fingerprint(load_pretrained(AutoTokenizer, folder)) != fingerprint(tokenizer):
        raise UsageError(f"the AR baseline at {path} uses a different tokenizer than {checkpoint}; "
                         f"retrain it with: python baseline_ar.py --checkpoint {checkpoint} --output-dir {path}")
    model = load_pretrained(AutoModelForCausalLM, folder)
    if model.config.n_positions < window:
        raise UsageError(f"the AR baseline at {path} has {model.config.n_positions} positions; the window is {window}")
    try:
        ar_cfg = read_json(os.path.join(folder, "ar_config.json"))
    except ValueError as e:
        raise UsageError(f"{folder}/ar_config.json is damaged ({str(e).splitlines()[0][:80]}); retrain the baseline")
    return model.eval(), ar_cfg


def load_scorer(name: str):
    """(causal LM, tokenizer) that judges samples for generative perplexity (hub id or folder)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        return load_pretrained(AutoModelForCausalLM, name).eval(), load_pretrained(AutoTokenizer, name)
    except UsageError as e:  # load_pretrained's hint is about training; say what helps here
        cause = str(e).split("; without network")[0]
        raise UsageError(f"--scorer: {cause}; omit --scorer to judge samples with the AR baseline")
