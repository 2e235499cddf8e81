"""Word alignments for guided alignment: Pharaoh files, the matrices and loss, AER, grow-diag-final-and, eflomal."""

from __future__ import annotations

import gzip
import itertools
import random
import sys

import pytest
import torch
from conftest import PAIRS, tiny_config

from nmt import alignment as al
from nmt import cli
from nmt.data import ParallelDataset, tokenize_all
from nmt.errors import DataError, NMTError
from nmt.model.seq2seq import Seq2Seq
from nmt.serving import plots
from nmt.serving.translator import Translation

# --- Pharaoh files -------------------------------------------------------------------------------------------

def test_reading_a_valid_file(tmp_path):
    path = tmp_path / "a.align"
    path.write_text("0-0 1-1\n\n2-1 0-0 0-0\r\n", encoding="utf-8")
    assert al.read_alignments(path, [2, 1, 3], [2, 4, 2]) == [[(0, 0), (1, 1)], [], [(2, 1), (0, 0)]]
    gz = tmp_path / "a.align.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert al.read_alignments(gz, [2, 1, 3], [2, 4, 2]) == al.read_alignments(path, [2, 1, 3], [2, 4, 2])


def test_writing_and_reading_back(tmp_path):
    links = [[(1, 0), (0, 1), (1, 1)], [], [(0, 0)]]
    al.write_alignments(tmp_path / "out", links)
    assert (tmp_path / "out").read_text() == "1-0 0-1 1-1\n\n0-0\n"  # (sorted by target word)
    assert [sorted(x) for x in al.read_alignments(tmp_path / "out", [2, 1, 1], [2, 1, 1])] == [sorted(x) for x in links]
    assert al.swap_links([(1, 0), (2, 3)]) == [(0, 1), (3, 2)]


@pytest.mark.parametrize("text, line, what", [
    ("0-0\n0:1\n", 2, "'0:1' is not a link"),
    ("0-0\n0-a\n", 2, "'0-a' is not a link"),
    ("1-\n0-0\n", 1, "'1-' is not a link"),
    ("0-0\n-1-0\n", 2, "'-1-0' is not a link"),
    ("0-0\n0-1-2\n", 2, "'0-1-2' is not a link"),
    ("0p1\n0-0\n", 1, "'0p1' is not a link"),
    ("0-0\n0-0 2-0\n", 2, "the link 2-0 is outside the sentence pair of 2 source and 3 target words"),
    ("0-3\n0-0\n", 1, "the link 0-3 is outside the sentence pair of 2 source and 3 target words"),
])
def test_a_bad_link_names_the_file_the_line_and_the_link(tmp_path, text, line, what):
    path = tmp_path / "bad.align"
    path.write_text(text)
    with pytest.raises(DataError) as err:
        al.read_alignments(path, [2, 2], [3, 3])
    assert f"{path}, line {line}: " in str(err.value) and what in str(err.value)


def test_the_file_must_have_a_line_per_pair(tmp_path):
    path = tmp_path / "short.align"
    path.write_text("0-0\n")
    with pytest.raises(DataError, match=r"short.align has 1 lines but there are 2 sentence pairs"):
        al.read_alignments(path, [1, 1], [1, 1])


def test_untrusted_files_are_size_checked_and_decoded_carefully(tmp_path, monkeypatch):
    path = tmp_path / "a.align"
    path.write_bytes(b"0-0\n\xff\n")
    with pytest.raises(DataError, match=r"a.align, line 2: not valid UTF-8"):
        al.read_alignments(path, [1, 1], [1, 1])
    with pytest.raises(DataError, match="missing or not a regular file"):
        al.read_alignments(tmp_path, [1], [1])
    monkeypatch.setattr(al, "MAX_ALIGNMENT_BYTES", 4)
    path.write_text("0-0 0-0\n")
    with pytest.raises(DataError, match="over the limit"):
        al.read_alignments(path, [1], [1])
    gz = tmp_path / "bomb.align.gz"
    gz.write_bytes(gzip.compress(b"0-0 " * 100))  # (small compressed, large decompressed)
    monkeypatch.setattr(al, "MAX_ALIGNMENT_BYTES", 100)
    with pytest.raises(DataError, match="over the limit of 0.0 MiB uncompressed"):
        al.read_alignments(gz, [1], [1])


# --- matrices and the guided alignment loss --------------------------------------------------------------------

def test_matrix_rows_are_target_words_sharing_one_and_end_with_an_empty_eos_row():
    m = al.alignment_matrix([(0, 0), (2, 0), (1, 1)], src_len=3, tgt_len=3)
    assert m.shape == (4, 3)
    assert m.tolist() == [[0.5, 0.0, 0.5], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]


def test_batch_is_padded_with_zeros_and_matches_each_matrix():
    links = [[(0, 0), (1, 1)], [(2, 0), (0, 1), (1, 1)]]
    batch = al.alignment_batch(links, [2, 3], [2, 3], src_max=4, tgt_max=5)
    assert batch.shape == (2, 5, 4)
    for b, (s, t) in enumerate([(2, 2), (3, 3)]):
        assert torch.equal(batch[b, : t + 1, :s], al.alignment_matrix(links[b], s, t))
        assert batch[b, t + 1 :].abs().sum() == 0 and batch[b, :, s:].abs().sum() == 0
    with pytest.raises(ValueError, match="needs a row for </s>"):
        al.alignment_batch(links, [2, 3], [2, 3], src_max=4, tgt_max=3)
    with pytest.raises(ValueError, match="the link 5-0 is outside"):
        al.alignment_batch([[(5, 0)]], [2], [2], src_max=4, tgt_max=3)


def test_the_batch_has_the_shape_of_the_models_training_attention():
    src_tok, tgt_tok = tokenize_all([s for s, _ in PAIRS[:3]], "de"), tokenize_all([t for _, t in PAIRS[:3]], "en")
    cfg = tiny_config("general", src_vocab=40, tgt_vocab=40)
    ids = [[5 + i % 30 for i in range(len(s))] for s in src_tok], [[5 + i % 30 for i in range(len(t))] for t in tgt_tok]
    batch = ParallelDataset(*ids).make_batch([0, 1, 2])
    _, attention = Seq2Seq(cfg)(batch.src, batch.src_lengths, batch.tgt_in)
    links = [[(i, i) for i in range(min(len(s), len(t)))] for s, t in zip(src_tok, tgt_tok)]
    guide = al.alignment_batch(links, [len(s) for s in src_tok], [len(t) for t in tgt_tok],
                               batch.src.size(1), batch.tgt_out.size(1))
    assert guide.shape == attention.shape
    loss, rows = al.guided_alignment_loss(attention, guide)
    assert rows == sum(len(x) for x in links) and loss.item() > 0


def softmax_attention(logits: torch.Tensor) -> torch.Tensor:
    return logits.softmax(-1)


def test_the_loss_falls_as_attention_moves_to_the_alignment_and_is_least_on_it():
    guide = al.alignment_matrix([(2, 0), (0, 1), (1, 2)], 3, 3).unsqueeze(0)  # single links, an </s> row
    uniform = torch.full_like(guide, 1 / 3)
    target = guide.clone()
    target[0, 3] = 1 / 3  # (the </s> row keeps some attention: it does not count)
    losses = [al.guided_alignment_loss((1 - k) * uniform + k * target, guide)[0].item() for k in (0, 0.3, 0.6, 0.9, 1)]
    assert all(a > b for a, b in itertools.pairwise(losses)) and losses[-1] == pytest.approx(0, abs=1e-6)
    torch.manual_seed(0)
    for _ in range(20):  # any other attention costs more
        assert al.guided_alignment_loss(softmax_attention(torch.randn(1, 4, 3) * 3), guide)[0] > losses[-1]
    assert al.guided_alignment_loss(uniform, guide)[1] == 3  # (three target rows have links; </s> none)


def test_the_loss_is_the_cross_entropy_over_linked_rows_and_is_differentiable():
    guide = al.alignment_matrix([(0, 0), (1, 0), (1, 2)], 2, 3).unsqueeze(0)  # word 1 unlinked
    logits = torch.zeros(1, 4, 2, requires_grad=True)
    loss, rows = al.guided_alignment_loss(softmax_attention(logits), guide)
    assert rows == 2
    assert loss.item() == pytest.approx(-(0.5 * 2 * torch.tensor(0.5).log() + torch.tensor(0.5).log()).item())
    loss.backward()
    assert logits.grad[0, 1].abs().sum() == 0 and logits.grad[0, 3].abs().sum() == 0  # unlinked rows: no pull
    assert logits.grad[0, 2, 1] < 0  # (descent raises the linked source word's attention)
    optimizer, start = torch.optim.SGD([logits], lr=1.0), loss.item()
    for _ in range(20):
        optimizer.zero_grad()
        loss, _ = al.guided_alignment_loss(softmax_attention(logits), guide)
        loss.backward()
        optimizer.step()
    assert loss.item() < start
    half = al.guided_alignment_loss(softmax_attention(logits.detach()).half(), guide)[0]
    assert half.dtype == torch.float32 and torch.isfinite(half)  # (fp16 attention: the loss in fp32)
    with pytest.raises(ValueError, match="differ in shape"):
        al.guided_alignment_loss(torch.zeros(1, 3, 2), guide)


def test_padding_with_zero_attention_gives_a_finite_loss():
    guide = al.alignment_batch([[(0, 0)], [(0, 0), (1, 1)]], [1, 2], [1, 2], 2, 3)
    attention = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]], [[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]]])
    loss, rows = al.guided_alignment_loss(attention, guide)
    assert torch.isfinite(loss) and rows == 3
    assert loss.item() == pytest.approx(-(torch.tensor(0.9).log() + torch.tensor(0.8).log()).item(), rel=1e-5)


# --- reading links from attention, AER, symmetrisation -------------------------------------------------------

def test_attention_links_take_each_target_words_argmax_source():
    attention = torch.tensor([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.9, 0.05, 0.05]])
    assert al.attention_links(attention, src_len=3, tgt_len=3) == [(1, 0), (0, 1), (2, 2)]  # (</s> row left out)
    assert al.attention_links(attention.numpy(), src_len=2, tgt_len=2) == [(1, 0), (0, 1)]  # (padding left out)
    with pytest.raises(ValueError, match="smaller"):
        al.attention_links(attention, src_len=4, tgt_len=2)


def test_aer_on_hand_made_alignments():
    sure = [[(0, 0), (1, 1)], [(0, 0), (1, 2), (2, 1)]]
    assert al.alignment_error_rate(sure, sure) == 0.0
    assert al.alignment_error_rate([[(0, 0)], []], [[(0, 0), (1, 1)], []]) == pytest.approx(1 - 2 / 3)
    assert al.alignment_error_rate([[(0, 1)], []], [[(0, 0)], []]) == 1.0
    # possible links are forgiven, sure links always count as possible: 1 - (1 + 2) / (2 + 1)
    assert al.alignment_error_rate([[(0, 0), (1, 2)]], [[(0, 0)]], [[(1, 2)]]) == 0.0
    # corpus counts, not a mean of sentences: A&S = 1 + 0, A&P = 1 + 1, |A| = 1 + 1, |S| = 1 + 1
    aer = al.alignment_error_rate([[(0, 0)], [(1, 1)]], [[(0, 0)], [(0, 0)]], [[], [(1, 1)]])
    assert aer == pytest.approx(1 - 3 / 4)
    with pytest.raises(ValueError):
        al.alignment_error_rate([[]], [[], []])


@pytest.mark.parametrize("forward, reverse, expected", [
    ([(0, 0), (1, 1)], [(0, 0), (1, 1)], [(0, 0), (1, 1)]),  # agreement: the intersection
    ([(0, 0), (1, 1), (2, 1)], [(0, 0), (1, 1), (1, 2)], [(0, 0), (1, 1), (2, 1), (1, 2)]),  # grows to the union
    ([(0, 0), (2, 2)], [(0, 0)], [(0, 0), (2, 2)]),  # final-and: both words unaligned, far off
    ([(0, 0), (0, 2)], [(0, 0)], [(0, 0)]),  # final-and refuses: source 0 is aligned, not a neighbour
    ([(0, 0), (1, 3), (1, 1)], [(0, 0), (1, 3)], [(0, 0), (1, 1), (1, 3)]),  # only the diagonal reaches (1, 1)
    ([(0, 0), (1, 0)], [(0, 0), (0, 1)], [(0, 0), (1, 0), (0, 1)]),  # a side neighbour each way
    ([(0, 0), (1, 1), (0, 1)], [(0, 0), (1, 1)], [(0, 0), (1, 1)]),  # (0, 1) neighbours, but both its words are taken
    ([(0, 0), (1, 1)], [(0, 0), (0, 1)], [(0, 0), (0, 1), (1, 1)]),  # (1, 1) grows from (0, 0): source 1 is free
    ([], [], []),
])
def test_grow_diag_final_and_on_hand_examples(forward, reverse, expected):
    assert sorted(al.grow_diag_final_and(forward, reverse)) == sorted(expected)


def test_grow_diag_final_and_lies_between_intersection_and_union():
    rng = random.Random(0)
    for _ in range(200):
        fwd = {(rng.randrange(6), rng.randrange(6)) for _ in range(rng.randrange(8))}
        rev = {(rng.randrange(6), rng.randrange(6)) for _ in range(rng.randrange(8))}
        sym = set(al.grow_diag_final_and(fwd, rev))
        assert fwd & rev <= sym <= fwd | rev
        assert sym == set(al.grow_diag_final_and(fwd, rev))  # (deterministic)


def test_coverage_counts_target_words_with_a_link():
    assert al.coverage([[(0, 0), (1, 0)], [(0, 1)]], [2, 2]) == 0.5


# --- the eflomal aligner and the align command -----------------------------------------------------------------

def corpus(tmp_path, pairs=PAIRS):
    (tmp_path / "src.de").write_text("".join(s + "\n" for s, _ in pairs), encoding="utf-8")
    (tmp_path / "tgt.en").write_text("".join(t + "\n" for _, t in pairs), encoding="utf-8")
    return str(tmp_path / "src.de"), str(tmp_path / "tgt.en")


def test_align_command_writes_a_checked_pharaoh_line_per_pair(tmp_path, capsys):
    pytest.importorskip("eflomal", reason="eflomal (pip install eflomal==2.0.0) is not installed")
    src, tgt = corpus(tmp_path, PAIRS[:12])
    (tmp_path / "more.de").write_text("".join(s + "\n" for s, _ in PAIRS[12:]), encoding="utf-8")
    (tmp_path / "more.en").write_text("".join(t + "\n" for _, t in PAIRS[12:]), encoding="utf-8")
    out = tmp_path / "out.align"
    assert cli.main(["align", "--src", src, "--tgt", tgt, "--src-lang", "de", "--tgt-lang", "en", "--out", str(out),
                     "--extra-src", str(tmp_path / "more.de"), "--extra-tgt", str(tmp_path / "more.en")]) == 0
    assert "aligned 20 sentence pairs" in capsys.readouterr().out
    src_tok, tgt_tok = tokenize_all([s for s, _ in PAIRS[:12]], "de"), tokenize_all([t for _, t in PAIRS[:12]], "en")
    links = al.read_alignments(out, [len(s) for s in src_tok], [len(t) for t in tgt_tok])  # (12 lines, in range)
    assert (3, 3) in links[0] and len({(0, 0), (1, 1), (2, 2)} & set(links[0])) >= 2  # Ein Hund läuft . / A dog runs .
    assert al.coverage(links, map(len, tgt_tok)) > 0.7


def test_align_pairs_gives_both_directions_and_their_symmetrisation():
    pytest.importorskip("eflomal", reason="eflomal (pip install eflomal==2.0.0) is not installed")
    src, tgt = tokenize_all([s for s, _ in PAIRS], "de"), tokenize_all([t for _, t in PAIRS], "en")
    src[1], tgt[1] = [], []  # (an empty pair: no links, its line kept)
    forward, reverse, sym = al.align_pairs(src, tgt)
    assert len(forward) == len(reverse) == len(sym) == len(PAIRS) and sym[1] == []
    for f, r, s in zip(forward, reverse, sym):
        assert set(f) & set(r) <= set(s) <= set(f) | set(r)
    assert all(len({t for _, t in f}) == len(f) for f in forward)  # forward: at most one source word per target word


def test_align_command_errors(tmp_path, capsys, monkeypatch):
    src, tgt = corpus(tmp_path)
    args = ["align", "--src", src, "--tgt", tgt, "--src-lang", "de", "--tgt-lang", "en", "--out"]
    assert cli.main([*args, str(tmp_path / "out"), "--extra-src", src]) == 2
    assert "1 --extra-src but 0 --extra-tgt" in capsys.readouterr().err
    assert cli.main([*args, str(tmp_path / "no" / "out")]) == 2
    assert "is in a folder that does not exist" in capsys.readouterr().err
    (tmp_path / "short.en").write_text("A dog runs.\n")
    assert cli.main([*args[:4], str(tmp_path / "short.en"), *args[5:], str(tmp_path / "out")]) == 2
    assert "error: " in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert cli.main([*args[:2], str(tmp_path / "missing.de"), *args[3:], str(tmp_path / "out")]) == 2
    assert "missing.de: no such file" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "eflomal", None)  # (as if not installed)
    with pytest.raises(NMTError, match="pip install eflomal"):
        al.align_pairs([["a"]], [["b"]])


# --- the heatmap overlay ---------------------------------------------------------------------------------------

def test_alignment_links_are_a_toggleable_trace_on_the_attention_heatmap():
    attention = torch.tensor([[0.8, 0.2], [0.3, 0.7], [0.5, 0.5]]).numpy()
    t = Translation("Ein Hund", ["Ein", "Hund"], "A dog", ["A", "dog", "</s>"], -0.1, [], attention)
    fig = plots.attention_figure(t)
    before = fig.data[0].to_plotly_json()
    plots.add_alignment_links(fig, [(0, 0), (1, 1), (1, 1)])
    assert fig.data[0].to_plotly_json() == before  # (the heatmap itself unchanged)
    [trace] = [d for d in fig.data if d.name == "alignment"]
    assert trace.type == "scatter" and list(trace.x) == [0, 1] and list(trace.y) == [0, 1] and trace.showlegend
    assert fig.layout.showlegend
    fig.to_json()  # (plain lists: serialisable)
    with pytest.raises(ValueError, match="outside the heatmap"):
        plots.add_alignment_links(plots.attention_figure(t), [(2, 0)])
    compact = plots.attention_figure(t, compact=True)
    height = compact.layout.height
    plots.add_alignment_links(compact, al.attention_links(attention, 2, 2))
    assert compact.data[-1].name == "alignment"
    assert compact.layout.height == height + plots.LEGEND_PX  # (the legend below the colour bar, in added room)
