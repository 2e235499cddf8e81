"""UNK replacement copies the most attended original source word, or its lexicon entry."""

from __future__ import annotations

import pytest
import torch

from nmt.errors import DataError, NMTError
from nmt.serving.unk import load_lexicon, replace_unk
from nmt.vocabulary import UNK, Vocabulary

def test_replace_unk_uses_attention_argmax():
    att = torch.tensor([[0.9, 0.05, 0.05], [0.1, 0.2, 0.7], [0.2, 0.6, 0.2]])
    out, reps = replace_unk(["A", UNK, UNK], ["Ein", "Hund", "Zürich"], att)
    assert out == ["A", "Zürich", "Hund"]
    assert [(r.position, r.source_position, r.source_word) for r in reps] == [(1, 2, "Zürich"), (2, 1, "Hund")]
    out, _ = replace_unk(["A", UNK], ["Ein", "Hund", "Zürich"], att[:2], {"Zürich": "Zurich"})
    assert out == ["A", "Zurich"]


class DiagonalModel(torch.nn.Module):
    """Scripted model: emits ``script[t]`` at step t while attending to source position t."""

    has_attention = True

    def __init__(self, script: list[int]):
        super().__init__()
        self.script = torch.tensor(script + [3])  # then </s>

    def encode(self, src, lengths):
        return {"t": torch.zeros(src.size(0), dtype=torch.long), "len": lengths}

    def step(self, prev, state):
        t = state["t"].clamp(max=len(self.script) - 1)
        logp = torch.full((prev.size(0), 9), -20.0)
        logp[torch.arange(prev.size(0)), self.script[t]] = 0.0
        src_len = int(state["len"].max())
        attn = torch.nn.functional.one_hot(state["t"].clamp(max=src_len - 1), src_len).float()
        return logp, attn, {"t": state["t"] + 1, "len": state["len"]}


@pytest.fixture(scope="module")
def name_model():
    """'The dog sees <unk> .' with a diagonal alignment: the <unk> attends to the 4th source word."""
    from nmt.checkpoint import Checkpoint
    from nmt.serving.translator import Translator

    src_vocab = Vocabulary(["<blank>", "<unk>", "<s>", "</s>", "Der", "Hund", "sieht", "."])
    tgt_vocab = Vocabulary(["<blank>", "<unk>", "<s>", "</s>", "The", "dog", "sees", ".", "cat"])
    return Translator(Checkpoint(DiagonalModel([4, 5, 6, 1, 7]), src_vocab, tgt_vocab, "de", "en"), "cpu")


@pytest.mark.parametrize("beam", [1, 5])
def test_unk_is_replaced_by_the_aligned_original_source_word(name_model, beam):
    results = name_model.translate(["Der Hund sieht Lena.", "Der Hund sieht Zoë-Marie."], beam_size=beam, replace_unk=True)
    assert [r.text for r in results] == ["The dog sees Lena.", "The dog sees Zoë-Marie."]
    assert [(x.position, x.source_position, x.source_word) for x in results[0].replacements] == [(3, 3, "Lena")]
    plain = name_model.translate(["Der Hund sieht Lena."], beam_size=beam, replace_unk=False)
    assert plain[0].tokens[3] == UNK and plain[0].replacements == []


def test_lexicon_translates_the_copied_word(name_model, tmp_path):
    lex = tmp_path / "lex.txt"
    lex.write_text("Peter ||| Pete\nLena ||| Lena-en\n", encoding="utf-8")
    results = name_model.translate(["Der Hund sieht Peter.", "Der Hund sieht Lena."], replace_unk=True, lexicon=str(lex))
    assert [r.text for r in results] == ["The dog sees Pete.", "The dog sees Lena-en."]


def test_corrupt_lexicon_names_the_line(tmp_path):
    lex = tmp_path / "lex.txt"
    lex.write_text("Peter ||| Pete\nno separator here\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 2"):
        load_lexicon(lex)
    lex.write_bytes(b"\xff\xfe bad")
    with pytest.raises(DataError, match="line 1: not valid UTF-8"):
        load_lexicon(lex)


def test_no_attention_means_no_replacement(tiny_translators):
    with pytest.raises(NMTError, match="no attention"):
        tiny_translators["none"].translate(["Ein Hund läuft."], replace_unk=True)
