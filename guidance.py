"""Classifier guidance: steer a generator toward a label with a noisy-input classifier p(y | x_t)
(train.py --task classify), after Nisonoff et al. 2024 ("Unlocking guidance for discrete
state-space diffusion and flow models") and Schiff et al. 2024 ("Simple guidance mechanisms for
discrete diffusion models", D-CBG). A new attribute then needs a small classifier, not a new
generator: it works on an unconditional generator as on a conditional one.

At every denoising step each masked position i's proposal is reweighted by the classifier's
verdict on the canvas with that candidate filled in (Bayes' rule for one position, the rest of
the canvas x_t as it stands):

    p_gamma(x_i = v | x_t)  is proportional to  p(x_i = v | x_t) * p(y | x_t with x_i = v) ** gamma

    guided(logits, scores, gamma) = logits + gamma * scores, scores [N, V] = log p(y | x_t with x_i = v)
    SCORES[mode](classifier, x, where, logits, y, k) -> scores          (decoding.GUIDES names them)
        exact   the classifier run on every canvas with one of the top-k candidates (by the
                generator's logits) of one masked position filled in: N * k classifier inputs,
                batched. A candidate outside the top k is scored as the canvas itself scores,
                log p(y | x_t): it is neither favoured nor penalised, so the proposal keeps its
                whole support (FUDGE instead drops every token outside its top k, which here
                leaves only the most frequent tokens to choose from and the text degenerates).
        taylor  first order (D-CBG's use_approx): log p(y | x_t with x_i = v) ~ log p(y | x_t)
                + g_i . (E_v - E_{x_i}), g = d log p(y | x_t) / d(input embeddings): one forward and
                one backward pass, every candidate of the vocabulary scored.
Differences from D-CBG, which guides MDLM's ancestral step: there "stay masked" is one of the
outcomes reweighted, here the sampler draws a token at every masked position and the order
(decoding.ORDERS) decides which are kept, so only the token proposal is reweighted; and D-CBG's
exact form scores all V candidates, here the top k (the rest get the canvas's own score). Its Taylor form takes the gradient with
respect to a one-hot input; through the embedding matrix E that is the same number, g_i . E_v.

The classifier reads the generator's canvas without its label column (a label-conditioned
generator's <label:NAME> token right after <s>); both share every other token id
(modeling.load_classifier checks).
"""

import torch

from modeling import autocast


def class_log_probs(classifier, x: torch.Tensor, y: int, batch_size: int = 512) -> torch.Tensor:
    """[M] log p(y | x) for canvases x [M, L] (<mask> wherever text is missing), in batches."""
    device = next(classifier.parameters()).device
    out = []
    with torch.no_grad(), autocast(device):
        for i in range(0, len(x), batch_size):
            logits = classifier(input_ids=x[i:i + batch_size].to(device)).logits.float()  # [b, C]
            out.append(logits.log_softmax(-1)[:, y].cpu())
    return torch.cat(out) if out else torch.zeros(0)  # [M]


def exact_scores(classifier, x, where, logits, y: int, k: int) -> torch.Tensor:
    """[N, V] log p(y | x with x_i = v) for the top-k candidates v of each of the N masked
    positions `where` [B, L] (row-major, the rows of logits [N, V]); every other v gets
    log p(y | x), the canvas as it stands (no evidence either way)."""
    N, V = logits.shape
    k = min(k, V)
    top = logits.topk(k, -1).indices  # [N, k]
    rows, cols = where.nonzero(as_tuple=True)  # [N]
    canvases = x[rows].repeat_interleave(k, 0)  # [N*k, L] one canvas per (position, candidate)
    canvases[torch.arange(N * k), cols.repeat_interleave(k)] = top.reshape(-1)
    logp = class_log_probs(classifier, canvases, y).view(N, k)  # [N, k]
    base = class_log_probs(classifier, x, y)[rows]  # [N] log p(y | x_t)
    return base[:, None].expand(N, V).clone().scatter_(1, top, logp)  # [N, V]


def taylor_scores(classifier, x, where, logits, y: int, k: int) -> torch.Tensor:
    """[N, V] first-order estimates of log p(y | x with x_i = v) for every v at the N masked
    positions `where` [B, L]: log p(y | x) + g_i . (E_v - E_{x_i}), one backward pass (k unused)."""
    table = classifier.get_input_embeddings().weight  # [V_c, H]
    device = table.device
    with torch.enable_grad():
        emb = table[x.to(device)].detach().requires_grad_(True)  # [B, L, H]
        logp = classifier(inputs_embeds=emb).logits.float().log_softmax(-1)[:, y]  # [B]
        (grad,) = torch.autograd.grad(logp.sum(), emb)  # [B, L, H]
    rows = where.nonzero(as_tuple=True)[0].to(device)  # [N]
    g = grad[where.to(device)].float()  # [N, H]
    here = (g * emb.detach()[where.to(device)].float()).sum(-1)  # [N] g_i . E_{x_i}
    scores = logp.detach()[rows, None] + g @ table.detach().float().T - here[:, None]  # [N, V_c]
    out = torch.full(logits.shape, float("-inf"))  # [N, V] the generator's label tokens get none
    out[:, :scores.shape[1]] = scores.cpu()
    return out


# --guide-mode: (classifier, canvas [B, L], masked positions [B, L], logits [N, V], y, k) -> scores [N, V]
SCORES = {"exact": exact_scores, "taylor": taylor_scores}


def guided(logits: torch.Tensor, scores: torch.Tensor, gamma: float) -> torch.Tensor:
    """[N, V] logits + gamma * log p(y | candidate): the proposal times p(y | ...)^gamma, in logits;
    gamma 0 changes nothing."""
    return logits + gamma * scores if gamma else logits


class Guide:
    """What the denoising loop needs to steer toward one label: the classifier, the label's index,
    gamma, the mode, k, and which canvas columns the classifier reads (all but a label column)."""

    def __init__(self, classifier, y: int, gamma: float, mode: str, k: int, label_column: int = 0):
        self.classifier, self.y, self.gamma, self.mode, self.k = classifier, y, gamma, mode, k
        self.label_column = label_column

    def __call__(self, logits: torch.Tensor, tokens: torch.Tensor, todo: torch.Tensor) -> torch.Tensor:
        """Guided logits [N, V] for the masked positions todo [B, L] of canvas tokens [B, L]. The
        scores are computed on the CPU copies (the classifier's passes move their own batches) and
        added where the logits live."""
        if not self.gamma:
            return logits
        keep = [c for c in range(tokens.shape[1]) if c != self.label_column or not self.label_column]
        scores = SCORES[self.mode](self.classifier, tokens[:, keep].cpu(), todo[:, keep].cpu(), logits.cpu(), self.y,
                                   self.k)
        return guided(logits, scores.to(logits.device), self.gamma)
