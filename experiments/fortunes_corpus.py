"""A corpus of short documents from Debian's `fortunes`: one folder per category.

    python experiments/fortunes_corpus.py                              # CATEGORIES -> data/fortunes
    python experiments/fortunes_corpus.py --categories zippy,startrek --out data/two
    python train.py --quick-test --dataset data/fortunes --packing none --output-dir results/fortunes

`apt-get install fortunes` puts one file per category in /usr/share/games/fortunes, each holding
texts separated by lines that hold `%`. This writes OUT/<category>/<category>.jsonl, one
{"text": ...} row per fortune (trailing white space trimmed, repeats dropped within and across the
chosen categories), and prints each category's documents and words. train.py's --dataset reads
every .jsonl under OUT; one subfolder per category is also the layout label-conditioned loaders
read (the label is the folder's name, as in sklearn's load_files and torchvision's ImageFolder).
Fortunes are short, so train with --packing none: one fortune per block, padded with </s>.
"""

import os
import sys

import repo_root  # noqa: F401  (first: puts the repo's modules on sys.path)

import json

from cli import UsageError, cli, parse
from config import Settings, flag, parse_names

# four styles a reader tells apart at a glance, most of each under 62 tokens (one window): dictionary
# entries, programmers' jokes, Star Trek lines signed with episode and stardate, and Zippy the
# Pinhead's capitalised non sequiturs (`python experiments/fortunes_corpus.py` counts them)
CATEGORIES = "definitions,computers,startrek,zippy"


class FortunesConfig(Settings):
    categories: str = flag(CATEGORIES, "comma-separated fortune files (categories) to take")
    source: str = flag("/usr/share/games/fortunes", "the fortune files: apt-get install fortunes")
    out: str = flag("data/fortunes", "one subfolder per category, each holding <category>.jsonl")


def split_fortunes(text: str) -> list[str]:
    """The texts of one fortune file: blocks between lines holding only `%`, trailing white space
    trimmed, empty ones dropped."""
    texts, lines = [], []
    for line in text.splitlines() + ["%"]:
        if line.strip() == "%":
            texts.append("\n".join(lines).rstrip())
            lines = []
        else:
            lines.append(line)
    return [t.strip("\n") for t in texts if t.strip()]


def available(source: str) -> tuple:
    """The categories in `source`: its files, less the index (.dat) and UTF-8 alias (.u8) files."""
    if not os.path.isdir(source):
        raise UsageError(f"no fortunes at {source}: apt-get install fortunes, or point --source at them")
    return tuple(sorted(n for n in os.listdir(source) if not n.endswith((".dat", ".u8"))
                        and os.path.isfile(os.path.join(source, n))))


def read_category(source: str, name: str) -> list[str]:
    try:
        with open(os.path.join(source, name), encoding="utf-8") as f:
            return split_fortunes(f.read())
    except UnicodeDecodeError:
        raise UsageError(f"{os.path.join(source, name)} is not UTF-8 text")


def write_corpus(fc: FortunesConfig, names: list[str]) -> dict:
    """Write every chosen category; {category: (documents, words)}."""
    from files import write_atomic

    stale = sorted(set(os.listdir(fc.out)) - set(names)) if os.path.isdir(fc.out) else []
    if stale:  # train.py would read them too
        raise UsageError(f"{fc.out} already holds {', '.join(stale)}, which --categories does not name: "
                         f"remove them or choose another --out")
    seen, counts = set(), {}
    for name in names:
        docs = [d for d in read_category(fc.source, name) if not (d in seen or seen.add(d))]
        if not docs:
            raise UsageError(f"{name} holds no new fortunes")
        write_atomic(os.path.join(fc.out, name, f"{name}.jsonl"),
                     "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs))
        counts[name] = (len(docs), sum(len(d.split()) for d in docs))
    return counts


def main(argv=None) -> int:
    fc, _ = parse(FortunesConfig, argv, __doc__)
    names = parse_names(fc.categories, "categories", available(fc.source))
    counts = write_corpus(fc, names)
    for name, (docs, words) in counts.items():
        print(f"{name:<16}{docs:>6} documents{words:>8} words")
    total = [sum(c[i] for c in counts.values()) for i in (0, 1)]
    print(f"{'total':<16}{total[0]:>6} documents{total[1]:>8} words -> {fc.out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli(main))
