"""State and attention extraction (nmt.serving.extraction, ``python -m nmt extract``): the states are the
model's own forward pass, layer by layer; the files hold one block per input line, readable with the
module docstring's numpy lines; bad input and oversized outputs are clear errors."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import PAIRS, tiny_config

from nmt.checkpoint import Checkpoint
from nmt.errors import DataError
from nmt.model.seq2seq import Seq2Seq
from nmt.serving import extraction
from nmt.serving.extraction import batch_states, extract, id_states, summary
from nmt.serving.translator import Translator
from nmt.tokenization import get_tokenizer
from nmt.vocabulary import Vocabulary

SOURCES, TARGETS = [s for s, _ in PAIRS], [t for _, t in PAIRS]
CONFIGS = {
    "one layer": {"attention": "general"},
    "two layers, reverse_src": {"attention": "general", "layers": 2, "reverse_src": True},
    "three layers, uni-LSTM": {"attention": "dot", "layers": 3, "brnn": False},
    "concat, input feed off": {"attention": "concat", "layers": 2, "input_feed": False},
    "no attention": {"attention": "none", "layers": 2, "reverse_src": True},
}


def untrained(**kw) -> Translator:
    """A random model (states need no training to be compared) with the tiny corpus's vocabularies."""
    src_vocab = Vocabulary.build([get_tokenizer("de").tokenize(s) for s in SOURCES], 1000)
    tgt_vocab = Vocabulary.build([get_tokenizer("en").tokenize(t) for t in TARGETS], 1000)
    cfg = tiny_config(**kw)
    cfg.src_vocab, cfg.tgt_vocab = len(src_vocab), len(tgt_vocab)
    torch.manual_seed(0)
    return Translator(Checkpoint(Seq2Seq(cfg).eval(), src_vocab, tgt_vocab, "de", "en"), "cpu")


def batch():
    """A padded batch: (src, lengths, tgt_in), sentences of different lengths."""
    src = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0], [11, 12, 13, 0]])
    tgt_in = torch.tensor([[2, 5, 6, 0, 0], [2, 7, 8, 9, 10], [2, 11, 0, 0, 0]])
    return src, torch.tensor([4, 2, 3]), tgt_in


# ----------------------------------------------------------------------------- states
@pytest.mark.parametrize("name", CONFIGS)
def test_states_are_the_models_forward_pass(name):
    model = untrained(**CONFIGS[name]).model
    src, lengths, tgt_in = batch()
    states = batch_states(model, src, lengths, tgt_in)
    with torch.inference_mode():
        logits, attention = model(src, lengths, tgt_in)
        memory, _ = model.encoder(src, lengths)
        generated = model.logits(states.output)
    assert len(states.encoder_layers) == len(states.decoder_layers) == model.cfg.layers
    for x in states.encoder_layers:
        assert x.shape == (3, 4, model.encoder.output_size)
    torch.testing.assert_close(states.encoder_layers[-1], memory)
    torch.testing.assert_close(states.memory, memory)
    torch.testing.assert_close(generated, logits)
    if attention is None:
        assert states.attention is None
        torch.testing.assert_close(states.decoder_layers[-1], states.output)  # (h~_t = h_t without attention)
    else:
        torch.testing.assert_close(states.attention, attention)
    assert states.output.shape == (3, 5, model.cfg.hidden)


def lstm_by_hand(rnn, k: int, x: torch.Tensor, suffix: str) -> torch.Tensor:
    """Layer ``k`` of ``rnn`` over one sentence x (len, in), one LSTMCell step at a time."""
    cell = torch.nn.LSTMCell(x.size(1), rnn.hidden_size)
    cell.load_state_dict({p: getattr(rnn, f"{p}_l{k}{suffix}") for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")})
    h = c = torch.zeros(1, rnn.hidden_size)
    out = []
    for x_t in x.unsqueeze(1):
        h, c = cell(x_t, (h, c))
        out.append(h[0])
    return torch.stack(out)


@pytest.mark.parametrize("reverse_src", [False, True])
def test_lower_encoder_layers_are_lstms_over_the_layer_below(reverse_src):
    """Each bi-LSTM layer by hand: forward over the layer below, backward over it reversed, concatenated
    (and, with reverse_src, over the reversed sentence, then put back in source order)."""
    model = untrained(attention="general", layers=3, reverse_src=reverse_src).model
    src, lengths, tgt_in = batch()
    layers = batch_states(model, src, lengths, tgt_in).encoder_layers
    rnn, row = model.encoder.rnn, 2
    with torch.inference_mode():
        words = src[row, : lengths[row]]
        x = model.encoder.embeddings(words.flip(0) if reverse_src else words)  # (len, emb)
        for k in range(3):
            x = torch.cat([lstm_by_hand(rnn, k, x, ""), lstm_by_hand(rnn, k, x.flip(0), "_reverse").flip(0)], -1)
            torch.testing.assert_close(layers[k][row, : lengths[row]], x.flip(0) if reverse_src else x)


@pytest.mark.parametrize("attention", ["general", "none"])
def test_decoder_layers_are_what_decoder_step_gives(attention):
    model = untrained(attention=attention, layers=2).model
    src, lengths, tgt_in = batch()
    states = batch_states(model, src, lengths, tgt_in)
    with torch.inference_mode():
        state = model.encode(src, lengths)
        for t in range(tgt_in.size(1)):
            out, _, state = model.decoder.step(model.decoder.embeddings(tgt_in[:, t]), state)
            for k in range(2):
                torch.testing.assert_close(states.decoder_layers[k][:, t], state["h"][:, k])
            torch.testing.assert_close(states.output[:, t], out)


def test_the_cheap_mode_has_the_same_memory_and_outputs():
    model = untrained(attention="general", layers=2).model
    src, lengths, tgt_in = batch()
    full, cheap = batch_states(model, src, lengths, tgt_in), batch_states(model, src, lengths, tgt_in, layers=False)
    assert cheap.encoder_layers is None and cheap.decoder_layers is None
    assert torch.equal(cheap.memory, full.memory) and torch.equal(cheap.output, full.output)
    assert torch.equal(cheap.attention, full.attention)
    only_source = batch_states(model, src, lengths, layers=False)
    assert torch.equal(only_source.memory, full.memory) and only_source.output is None


# ----------------------------------------------------------------------------- files
def read_sentence(folder, i: int) -> dict:
    """The module docstring's lines, run as they are written there."""
    lines = [line.strip()[4:] for line in extraction.__doc__.splitlines() if line.strip().startswith(">>> ")]
    assert len(lines) == 4  # (an import, then three lines)
    scope = {"i": i}
    exec("\n".join(lines).replace("DIR", str(folder)), scope)  # noqa: S102 (the docstring's own lines)
    return scope


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """A 2-layer bi-LSTM with reverse_src over the pairs, an empty pair, an empty target and unknown words."""
    tr = untrained(attention="general", layers=2, reverse_src=True)
    sources = SOURCES + ["", "Ein Xylophon spielt.", "Ein Hund läuft."]
    targets = TARGETS + ["", "", "A xylophone plays ."]
    folder = tmp_path_factory.mktemp("extract") / "out"
    info = extract(tr, sources, targets, folder, batch_size=3)
    return SimpleNamespace(translator=tr, sources=sources, folder=folder, info=info)


def test_each_block_is_its_sentences_states(extracted):
    from safetensors.numpy import load_file

    tr, sources, folder, info = extracted.translator, extracted.sources, extracted.folder, extracted.info
    a = load_file(str(folder / "states.safetensors"))
    assert set(a) == {"src_offsets", "tgt_offsets", "attention_offsets", "encoder.layer0", "encoder.layer1",
                      "decoder.layer0", "decoder.layer1", "decoder.output", "attention"}
    records = [json.loads(line) for line in (folder / "tokens.jsonl").read_text().splitlines()]
    assert len(records) == len(sources) == len(a["src_offsets"]) - 1 == info["sentences"]
    s, t, o = a["src_offsets"], a["tgt_offsets"], a["attention_offsets"]
    for i, record in enumerate(records):
        assert record["sentence"] == i
        src_ids, tgt_ids = tr.checkpoint.src_vocab.encode(record["src"]), tr.checkpoint.tgt_vocab.encode(record["tgt"])
        if not src_ids:
            assert s[i + 1] == s[i] and t[i + 1] == t[i] and o[i + 1] == o[i]
            continue
        assert (s[i + 1] - s[i], t[i + 1] - t[i]) == (len(src_ids), len(tgt_ids) + 1)
        one = id_states(tr.model, "cpu", [src_ids], [tgt_ids])  # (the sentence alone: no padding, no batch)
        for k in range(2):
            np.testing.assert_allclose(a[f"encoder.layer{k}"][s[i] : s[i + 1]], one.encoder_layers[k][0], atol=1e-6)
            np.testing.assert_allclose(a[f"decoder.layer{k}"][t[i] : t[i + 1]], one.decoder_layers[k][0], atol=1e-6)
        np.testing.assert_allclose(a["decoder.output"][t[i] : t[i + 1]], one.output[0], atol=1e-6)
        scope = read_sentence(folder, i)
        np.testing.assert_allclose(scope["att"], one.attention[0], atol=1e-6)
        np.testing.assert_allclose(scope["att"].sum(1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(scope["enc"], a["encoder.layer0"][s[i] : s[i + 1]])
        np.testing.assert_array_equal(scope["dec"], a["decoder.output"][t[i] : t[i + 1]])
    for name, spec in info["arrays"].items():
        assert list(a[name].shape) == spec["shape"] and str(a[name].dtype) == spec["dtype"]


def test_tokens_are_as_the_model_read_them(extracted):
    folder, info = extracted.folder, extracted.info
    records = [json.loads(line) for line in (folder / "tokens.jsonl").read_text().splitlines()]
    assert records[20] == {"sentence": 20, "src": [], "tgt": [], "skipped": "empty source"}
    assert records[21]["src"] == ["Ein", "<unk>", "<unk>", "."] and records[21]["tgt"] == []
    assert records[21]["src_unk"] == [[1, "Xylophon"], [2, "spielt"]]
    assert records[22]["tgt"] == ["A", "<unk>", "<unk>", "."] and records[22]["tgt_unk"][0] == [1, "xylophone"]
    saved = json.loads((folder / "extraction.json").read_text())
    assert saved["empty_sources"] == [20] and saved["src_positions"] == sum(len(r["src"]) for r in records)
    assert "extracted 23 sentence pairs" in summary(info) and "1 empty sources" in summary(info)


def test_an_empty_target_has_the_one_state_predicting_the_end(extracted):
    tr, folder = extracted.translator, extracted.folder
    scope = read_sentence(folder, 21)  # "Ein Xylophon spielt." with an empty target
    assert scope["dec"].shape == (1, tr.model.cfg.hidden) and scope["att"].shape == (1, 4)
    scope = read_sentence(folder, 20)  # the empty pair
    assert scope["enc"].shape == (0, tr.model.encoder.output_size) and scope["att"].shape == (0, 0)


def test_a_model_without_attention_writes_no_attention(tmp_path):
    tr = untrained(attention="none")
    info = extract(tr, SOURCES[:3], TARGETS[:3], tmp_path)
    assert "attention" not in info["arrays"] and "attention_offsets" not in info["arrays"]
    assert {"encoder.layer0", "decoder.layer0", "decoder.output"} <= set(info["arrays"])


def test_the_cheap_mode_writes_the_top_layer_only(tmp_path):
    tr = untrained(attention="general", layers=2)
    info = extract(tr, SOURCES[:3], TARGETS[:3], tmp_path, layers=False)
    assert set(info["arrays"]) == {"src_offsets", "tgt_offsets", "attention_offsets", "encoder.layer1",
                                   "decoder.output", "attention"}


def test_mismatched_line_counts_are_an_error(tmp_path):
    with pytest.raises(DataError, match="3 source lines but 2 target lines"):
        extract(untrained(attention="general"), SOURCES[:3], TARGETS[:2], tmp_path)
    assert not any(tmp_path.iterdir())


def test_an_output_over_the_size_limit_is_refused_before_computing(tmp_path, monkeypatch):
    monkeypatch.setattr(extraction, "batch_states", lambda *a, **k: pytest.fail("computed"))
    with pytest.raises(DataError, match="over the limit of 10,000 bytes"):
        extract(untrained(attention="general"), SOURCES, TARGETS, tmp_path, max_bytes=10_000)
    assert not any(tmp_path.iterdir())


def test_an_interrupted_run_leaves_no_file(tmp_path, monkeypatch):
    tr = untrained(attention="general")
    extract(tr, SOURCES[:2], TARGETS[:2], tmp_path)
    before = (tmp_path / "states.safetensors").read_bytes()
    calls = []

    def failing(*args, **kw):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return batch_states(*args, **kw)

    monkeypatch.setattr(extraction, "batch_states", failing)
    with pytest.raises(KeyboardInterrupt):
        extract(tr, SOURCES, TARGETS, tmp_path, batch_size=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["states.safetensors", "tokens.jsonl"]  # (no temporary file)
    assert (tmp_path / "states.safetensors").read_bytes() == before  # (and extraction.json, now stale, is gone)


def test_the_trained_models_states_predict_its_memorised_targets(tiny_translator, tmp_path):
    """The generator on decoder.output gives the memorised target, then </s>."""
    from safetensors.numpy import load_file

    extract(tiny_translator, SOURCES[:4], TARGETS[:4], tmp_path)
    a = load_file(str(tmp_path / "states.safetensors"))
    t = a["tgt_offsets"]
    vocab = tiny_translator.checkpoint.tgt_vocab
    with torch.inference_mode():
        for i in range(4):
            logits = tiny_translator.model.generator(torch.from_numpy(a["decoder.output"][t[i] : t[i + 1]]))
            assert vocab.decode(logits.argmax(-1).tolist()) == tiny_translator.tgt_tok.tokenize(TARGETS[i]) + ["</s>"]
