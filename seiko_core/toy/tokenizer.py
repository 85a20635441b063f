"""A CLIP BPE tokenizer built from the shapes vocabulary, loadable by ``CLIPTokenizer`` from local files.

CLIP's tokenizer is byte-level BPE with an end-of-word suffix ``</w>``. We write a ``vocab.json`` holding
the special tokens, every byte symbol (alone and with ``</w>``) and, for each caption word, the chain of
merges that builds it left to right, so every caption word becomes a single token and anything else
still tokenizes (into characters) instead of failing.
"""

from __future__ import annotations

import json
from pathlib import Path

from .dataset import all_words

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MODEL_MAX_LENGTH = 16  # longest caption is 13 tokens with BOS/EOS; CLIPTokenizer needs it set explicitly


def _byte_symbols() -> list[str]:
    """The 256 printable symbols byte-level BPE uses for bytes (GPT-2's table)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = keep[:]
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def _apply_merges(parts: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair merging as BPE does it: repeatedly join the adjacent pair of lowest rank."""
    parts = parts[:]
    while len(parts) > 1:
        pairs = [(ranks.get((a, b), None), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        pairs = [(r, i) for r, i in pairs if r is not None]
        if not pairs:
            break
        best = min(pairs)[0]
        out, i = [], 0
        while i < len(parts):
            if i + 1 < len(parts) and ranks.get((parts[i], parts[i + 1])) == best:
                out.append(parts[i] + parts[i + 1])
                i += 2
            else:
                out.append(parts[i])
                i += 1
        parts = out
    return parts


def build_vocab(words: list[str] | None = None) -> tuple[dict[str, int], list[str]]:
    """(vocab, merges) so that each of ``words`` is one token.

    Each word is first merged with the rules so far (as BPE would); the rules that join what is
    left, left to right, are appended with higher ranks, so they never disturb earlier words.
    """
    words = words if words is not None else all_words()
    tokens: list[str] = [BOS, EOS]
    symbols = _byte_symbols()
    tokens += symbols + [s + "</w>" for s in symbols]
    seen = set(tokens)
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        parts = _apply_merges(list(word[:-1]) + [word[-1] + "</w>"], ranks)
        left = parts[0]
        for right in parts[1:]:
            ranks.setdefault((left, right), len(ranks))
            left = left + right
            if left not in seen:
                seen.add(left)
                tokens.append(left)
    merges = [f"{a} {b}" for (a, b), _ in sorted(ranks.items(), key=lambda kv: kv[1])]
    return {t: i for i, t in enumerate(tokens)}, merges


def save_tokenizer(out_dir: str | Path) -> Path:
    """Write vocab.json, merges.txt and the configs CLIPTokenizer reads; returns the directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab()
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "do_lower_case": True,
        "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps({"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}, indent=2))
    return out
