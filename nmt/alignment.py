"""Word alignments for guided alignment training, and for judging attention against them.

Guided alignment (Chen et al. 2016, "Guided Alignment Training for Topic-Aware Neural Machine
Translation", AMTA; harvardnlp/seq2seq-attn's ``-guided_alignment``) adds to the translation loss
the cross-entropy between an external word alignment A and the attention alpha,

    G = -1/N * sum_n sum_t sum_s A_ts log alpha_ts,

where row t of A spreads target word t's links evenly over the source words it is linked to.

Links are ``(s, t)``: source word s, target word t, 0-based over the Moses tokens that
``nmt.data.tokenize_all`` makes; files are in the Pharaoh format, one line per sentence pair
(``0-0 1-2 2-1``, source-target). Links come from eflomal (Östling & Tiedemann 2016) run in both
directions and symmetrised with grow-diag-final-and (Koehn et al. 2003; the Moses definition).

Layout: ``Seq2Seq.forward``'s attention is (batch, tgt_len, src_len), and its step t reads
``tgt_in[t]`` (``<s> w1 .. wn``) and predicts ``tgt_out[t]`` (``w1 .. wn </s>``). So row t of an
alignment matrix holds the links of target word t (0-based): the attention of the step that
*predicts* a word is guided to that word's source words, as in OpenNMT-py (its reference rows
shifted past ``<s>``) and OpenNMT-tf. The last row, the step that predicts ``</s>``, has no links.

Alignment quality: AER = 1 - (|A & S| + |A & P|) / (|A| + |S|) (Och & Ney 2003, "A Systematic
Comparison of Various Statistical Alignment Models", Computational Linguistics 29(1)), with sure
links S included in the possible links P.
"""

from __future__ import annotations

import gzip
import io
import re
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from nmt.errors import DataError, NMTError
from nmt.safe_io import MIB, atomic_output, decode_lines, read_capped

Link = tuple[int, int]  # (source position, target position)
MAX_ALIGNMENT_BYTES = 256 * MIB  # (Multi30k's 29,000 training pairs take about 2 MB)
_LINK = re.compile(r"([0-9]{1,9})-([0-9]{1,9})")
# Koehn et al.'s neighbours: the four sides, then the diagonals ("grow-diag").
_NEIGHBOURS = ((-1, 0), (0, -1), (1, 0), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1))


def read_alignments(path: str | Path, src_lengths: Sequence[int], tgt_lengths: Sequence[int]) -> list[list[Link]]:
    """The links of each sentence pair in the Pharaoh file ``path`` (plain or .gz), checked against the
    pairs' lengths in words: one line per pair, every link ``s-t`` inside its sentences (repeats dropped).
    ``src_lengths``/``tgt_lengths`` are those of *every* line of the parallel files, before a trainer
    drops empty or long pairs. Errors name the file and the line (from 1)."""
    if len(src_lengths) != len(tgt_lengths):
        raise ValueError(f"{len(src_lengths)} source lengths but {len(tgt_lengths)} target lengths")
    path = Path(path)
    lines = decode_lines(_read_bytes(path), str(path))
    if len(lines) != len(src_lengths):
        raise DataError(f"{path} has {len(lines)} lines but there are {len(src_lengths)} sentence pairs "
                        "(one line of links per pair, empty for a pair without links)")
    return [_parse_line(line, f"{path}, line {n}", s, t)
            for n, (line, s, t) in enumerate(zip(lines, src_lengths, tgt_lengths), start=1)]


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, size-checked before reading (and, gzipped, while decompressing)."""
    data = read_capped(path, MAX_ALIGNMENT_BYTES, "alignment file", DataError)
    if path.suffix != ".gz":
        return data
    try:
        data = gzip.GzipFile(fileobj=io.BytesIO(data)).read(MAX_ALIGNMENT_BYTES + 1)
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read the gzipped alignment file ({exc})") from None
    if len(data) > MAX_ALIGNMENT_BYTES:
        raise DataError(f"{path}: the alignment file is over the limit of {MAX_ALIGNMENT_BYTES / MIB:.1f} MiB "
                        "uncompressed")
    return data


def _parse_line(line: str, where: str, src_len: int, tgt_len: int) -> list[Link]:
    links = []
    for token in line.split():
        match = _LINK.fullmatch(token)
        if match is None:
            raise DataError(f"{where}: {token[:40]!r} is not a link 'i-j' (source word i, target word j, from 0)")
        s, t = int(match[1]), int(match[2])
        if s >= src_len or t >= tgt_len:
            raise DataError(f"{where}: the link {token} is outside the sentence pair of {src_len} source and "
                            f"{tgt_len} target words (positions count from 0)")
        links.append((s, t))
    return list(dict.fromkeys(links))


def format_links(links: Iterable[Link]) -> str:
    """One Pharaoh line: ``s-t`` pairs sorted by target, then source position."""
    return " ".join(f"{s}-{t}" for s, t in sorted(set(links), key=lambda link: (link[1], link[0])))


def write_alignments(path: str | Path, alignments: Iterable[Iterable[Link]]) -> None:
    """A Pharaoh file, one line per sentence pair, written atomically."""
    with atomic_output(path, "alignment file") as out:
        out.writelines(format_links(links) + "\n" for links in alignments)


def swap_links(links: Iterable[Link]) -> list[Link]:
    """The same links seen from the other side: the alignment of the reversed language pair."""
    return [(t, s) for s, t in links]


def alignment_matrix(links: Iterable[Link], src_len: int, tgt_len: int) -> torch.Tensor:
    """(tgt_len + 1, src_len): row t shares 1 among the source words of target word t's links; rows of
    unlinked target words and the last row (the step that predicts ``</s>``) are all 0."""
    return alignment_batch([links], [src_len], [tgt_len], src_len, tgt_len + 1)[0]


def alignment_batch(alignments: Sequence[Iterable[Link]], src_lens: Sequence[int], tgt_lens: Sequence[int],
                    src_max: int, tgt_max: int) -> torch.Tensor:
    """(batch, tgt_max, src_max) alignment matrices laid out as the model's training attention
    (``tgt_max``: the padded ``tgt_out`` length, at least the longest target + 1 for ``</s>``), 0 on padding."""
    out = torch.zeros(len(alignments), tgt_max, src_max)
    index = []
    for b, (links, s_len, t_len) in enumerate(zip(alignments, src_lens, tgt_lens, strict=True)):
        if s_len > src_max or t_len + 1 > tgt_max:
            raise ValueError(f"sentence {b}: {s_len} source and {t_len} target words do not fit "
                             f"({src_max}, {tgt_max}) (the target needs a row for </s>)")
        for s, t in set(links):
            if not (0 <= s < s_len and 0 <= t < t_len):
                raise ValueError(f"sentence {b}: the link {s}-{t} is outside {s_len} source and {t_len} target words")
            index.append((b, t, s))
    if index:
        out[tuple(torch.tensor(index).T)] = 1.0
    return out / out.sum(-1, keepdim=True).clamp(min=1.0)


def guided_alignment_loss(attention: torch.Tensor, alignment: torch.Tensor,
                          eps: float = 1e-12) -> tuple[torch.Tensor, int]:
    """Chen et al.'s cross-entropy ``-sum A_ts log(alpha_ts + eps)`` summed over the batch, and the number of
    target rows that have links (the rows it sums over: divide by it for the mean). ``eps`` keeps log finite
    where the attention is exactly 0 (padding), where A is 0 as well."""
    if attention.shape != alignment.shape:
        raise ValueError(f"attention {tuple(attention.shape)} and alignment {tuple(alignment.shape)} differ in shape")
    # (in fp32: under fp16 autocast eps would round to 0, and 0 * log 0 is NaN)
    loss = -(alignment.float() * (attention.float() + eps).log()).sum()
    return loss, int((alignment.sum(-1) > 0).sum())


def attention_links(attention, src_len: int, tgt_len: int) -> list[Link]:
    """Links read from attention (rows: target words, columns: source words): each of the first ``tgt_len``
    target words linked to its most attended of the first ``src_len`` source words."""
    weights = torch.as_tensor(attention)[:tgt_len, :src_len]
    if weights.shape != (tgt_len, src_len):
        raise ValueError(f"attention {tuple(torch.as_tensor(attention).shape)} is smaller than ({tgt_len}, {src_len})")
    return [(int(s), t) for t, s in enumerate(weights.argmax(-1).tolist())] if src_len else []


def alignment_error_rate(hypotheses: Sequence[Iterable[Link]], sure: Sequence[Iterable[Link]],
                         possible: Sequence[Iterable[Link]] | None = None) -> float:
    """Och & Ney's AER over a corpus (counts summed over sentences; 0 is best). ``possible`` defaults to
    ``sure``; sure links always count as possible."""
    possible = sure if possible is None else possible
    if not len(hypotheses) == len(sure) == len(possible):
        raise ValueError(f"{len(hypotheses)} hypotheses, {len(sure)} sure and {len(possible)} possible alignments")
    a_and_s = a_and_p = n_a = n_s = 0
    for hyp, s, p in zip(hypotheses, sure, possible):
        hyp, s = set(hyp), set(s)
        p = set(p) | s
        a_and_s, a_and_p, n_a, n_s = a_and_s + len(hyp & s), a_and_p + len(hyp & p), n_a + len(hyp), n_s + len(s)
    return 1.0 - (a_and_s + a_and_p) / (n_a + n_s) if n_a + n_s else 0.0


def grow_diag_final_and(forward: Iterable[Link], reverse: Iterable[Link]) -> list[Link]:
    """Koehn et al.'s symmetrisation of two directional alignments (both as source-target links):
    start from their intersection; grow-diag: repeatedly add a link of the union that neighbours
    (sides or diagonals) an alignment link and covers a word still unaligned; final-and: add the
    remaining links of each direction whose two words are both unaligned. The result lies between
    the intersection and the union. The scan visits points in the pseudo-code's order (target-major)."""
    forward, reverse = set(forward), set(reverse)
    union = forward | reverse
    links = forward & reverse
    src_done, tgt_done = {s for s, _ in links}, {t for _, t in links}

    def add(link: Link) -> None:
        links.add(link)
        src_done.add(link[0])
        tgt_done.add(link[1])

    grid = sorted(union, key=lambda link: (link[1], link[0]))  # (only union points can ever be aligned)
    grew = True
    while grew:
        grew = False
        for s, t in grid:
            if (s, t) not in links:
                continue
            for ds, dt in _NEIGHBOURS:
                new = (s + ds, t + dt)
                if new in union and new not in links and (new[0] not in src_done or new[1] not in tgt_done):
                    add(new)
                    grew = True
    for direction in (forward, reverse):
        for s, t in sorted(direction, key=lambda link: (link[1], link[0])):
            if s not in src_done and t not in tgt_done:
                add((s, t))
    return sorted(links, key=lambda link: (link[1], link[0]))


def align_pairs(src_tok: Sequence[Sequence[str]], tgt_tok: Sequence[Sequence[str]], model: int = 3,
                n_samplers: int = 3, rel_iterations: float = 1.0, null_prior: float = 0.2,
                quiet: bool = True) -> tuple[list[list[Link]], list[list[Link]], list[list[Link]]]:
    """(forward, reverse, symmetrised) links of tokenized sentence pairs: eflomal (``model`` 1 IBM1, 2 HMM,
    3 HMM + fertility; its other arguments as ``eflomal.Aligner``'s) aligns both directions in one run, and
    grow-diag-final-and joins them. All three are source-target. eflomal lowercases the words, and it
    samples from a system-random seed, so two runs may differ a little. Pairs of 1024 words or more get
    no links (eflomal's limit)."""
    try:
        import eflomal
    except ImportError:
        raise NMTError("word alignment needs eflomal: pip install eflomal==2.0.0 (it builds with a C compiler)"
                       ) from None
    if len(src_tok) != len(tgt_tok):
        raise ValueError(f"{len(src_tok)} source but {len(tgt_tok)} target sentences")
    if not src_tok:
        raise DataError("no sentence pairs to align")
    aligner = eflomal.Aligner(model=model, n_samplers=n_samplers, rel_iterations=rel_iterations,
                              null_prior=null_prior)
    with tempfile.TemporaryDirectory(prefix="nmt-align-") as tmp:
        fwd, rev = Path(tmp) / "forward", Path(tmp) / "reverse"
        try:  # (eflomal splits at whitespace, as the Moses tokenizer did: the same words)
            aligner.align([" ".join(s) for s in src_tok], [" ".join(t) for t in tgt_tok],
                          links_filename_fwd=str(fwd), links_filename_rev=str(rev), quiet=quiet)
        except subprocess.CalledProcessError as exc:
            raise NMTError(f"eflomal failed (exit status {exc.returncode})") from None
        lengths = [len(s) for s in src_tok], [len(t) for t in tgt_tok]
        forward, reverse = read_alignments(fwd, *lengths), read_alignments(rev, *lengths)
    return forward, reverse, [grow_diag_final_and(f, r) for f, r in zip(forward, reverse)]


def coverage(alignments: Iterable[Iterable[Link]], tgt_lens: Iterable[int]) -> float:
    """The fraction of target words with at least one link."""
    linked, total = 0, 0
    for links, n in zip(alignments, tgt_lens, strict=True):
        linked, total = linked + len({t for _, t in links}), total + n
    return linked / total if total else 0.0
