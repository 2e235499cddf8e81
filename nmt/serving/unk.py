"""UNK replacement from attention, optionally through a source->target lexicon."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from nmt.errors import DataError, NMTError
from nmt.safe_io import MAX_LEXICON_BYTES, decode_lines, read_capped
from nmt.vocabulary import UNK


@dataclass
class Replacement:
    position: int  # index in the output tokens
    source_position: int  # index in the source tokens
    source_word: str
    word: str  # what replaced <unk>


def load_lexicon(path: str | Path, echo: bool = True, error: type[NMTError] = DataError) -> dict[str, str]:
    """Read ``source ||| target`` lines (seq2seq-attn's srctarg_dict); the first entry of a word wins.

    At most ``MAX_LEXICON_BYTES`` are read. A malformed line is an ``error`` naming it; with ``echo``
    the message quotes it, which a file from an untrusted checkpoint must never have."""
    path = Path(path)
    lines = decode_lines(read_capped(path, MAX_LEXICON_BYTES, "lexicon", error), str(path), error)
    lexicon: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split("|||")]
        if len(parts) != 2 or not parts[0] or not parts[1]:
            got = f", got {line[:80]!r}" if echo else ""
            raise error(f"{path}, line {number}: expected 'source ||| target'{got}")
        lexicon.setdefault(parts[0], parts[1])
    if not lexicon:
        raise error(f"{path}: the lexicon has no entries")
    return lexicon


def replace_unk(tokens: list[str], src_tokens: list[str], attention: torch.Tensor,
                lexicon: dict[str, str] | None = None) -> tuple[list[str], list[Replacement]]:
    """Replace each <unk> in ``tokens`` by the most attended original source word.

    ``attention`` is (len(tokens), len(src_tokens)): it covers the real source words only,
    so neither padding nor a special token can be chosen.
    """
    out, done = list(tokens), []
    for i, tok in enumerate(tokens):
        if tok != UNK:
            continue
        j = int(torch.argmax(attention[i]))
        word = src_tokens[j]
        out[i] = lexicon.get(word, word) if lexicon else word
        done.append(Replacement(i, j, word, out[i]))
    return out, done
