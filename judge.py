"""A judge of labelled text that never sees generated text: bag-of-words logistic regression,
trained on real text only (experiments/control_study.py scores samples with it).

It is deliberately a different kind of model from the guidance classifier (train.py --task
classify, a transformer on masked token ids): words, not tokens; one linear layer; trained on
clean text. A sample it labels as the target label reads, word for word, like real text of that
label, not like whatever fools the guidance classifier.

    words(text)                               lower-cased words and punctuation runs
    fit(texts, labels, names, ...) -> Judge   L2-regularised multinomial logistic regression (L-BFGS)
    Judge.predict(texts) -> [n] label ids;  Judge.accuracy(texts, labels)
"""

import math
import re
from collections import Counter
from dataclasses import dataclass

import torch

WORD = re.compile(r"[a-z0-9']+|[^\sa-z0-9']+")


def words(text: str) -> list[str]:
    """'Kirk: "Spock!"' -> ['kirk', ':', '"', 'spock', '!"']: words and runs of punctuation, so a
    signature ('--', ':') counts as much as a word."""
    return WORD.findall(text.lower())


def features(text: str) -> set[str]:
    """The words and word pairs of a text (presence, not counts)."""
    w = words(text)
    return set(w) | {f"{a} {b}" for a, b in zip(w, w[1:])}


@dataclass
class Judge:
    vocab: dict  # feature -> column
    weight: torch.Tensor  # [F, C]
    bias: torch.Tensor  # [C]
    names: list

    def matrix(self, texts: list[str]) -> torch.Tensor:
        x = torch.zeros(len(texts), len(self.vocab))  # [n, F]
        for i, t in enumerate(texts):
            cols = [self.vocab[f] for f in features(t) if f in self.vocab]
            x[i, cols] = 1.0
        return x

    def log_probs(self, texts: list[str]) -> torch.Tensor:
        return torch.log_softmax(self.matrix(texts) @ self.weight + self.bias, -1)  # [n, C]

    def predict(self, texts: list[str]) -> torch.Tensor:
        return self.log_probs(texts).argmax(-1)  # [n]

    def accuracy(self, texts: list[str], labels: list[int]) -> float:
        return float((self.predict(texts) == torch.tensor(labels)).float().mean()) if texts else math.nan


def fit(texts: list[str], labels: list[int], names: list[str], min_count: int = 2, l2: float = 1e-3,
        iterations: int = 300) -> Judge:
    """Logistic regression on word and word-pair presence; features seen in fewer than min_count
    training texts are dropped. Deterministic (zero start, full-batch L-BFGS)."""
    counts = Counter(f for t in texts for f in features(t))
    vocab = {f: i for i, f in enumerate(sorted(f for f, c in counts.items() if c >= min_count))}
    judge = Judge(vocab, torch.zeros(len(vocab), len(names), requires_grad=True),
                  torch.zeros(len(names), requires_grad=True), list(names))
    x, y = judge.matrix(texts), torch.tensor(labels)  # [n, F], [n]
    opt = torch.optim.LBFGS([judge.weight, judge.bias], max_iter=iterations, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ judge.weight + judge.bias, y) + l2 * judge.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    judge.weight, judge.bias = judge.weight.detach(), judge.bias.detach()
    return judge
