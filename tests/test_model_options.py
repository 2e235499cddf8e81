"""seq2seq-attn's other model options (issue 18): GRU cells, residual layers, a lower attention
(multi_attn), summed bi-RNN directions, an encoder of another size, Bahdanau's decoder. Each trains
(a tiny model memorises its pairs), translates the same in every search path, saves and loads; old
configs keep today's model; bad combinations are refused; the CPU training engine falls back."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import PAIRS, fit, tiny_config
from test_tracing import same_translations

import nmt.engines.teacher_forcing as tf
from nmt.checkpoint import load_checkpoint, save_checkpoint
from nmt.cli import main
from nmt.config import ModelConfig, from_dict, to_dict
from nmt.data import pad
from nmt.engines.cuda_graphs import fixed_beam_search
from nmt.engines.tracing import TracedSearchModel
from nmt.model.seq2seq import Seq2Seq
from nmt.search import beam_search, greedy_search

OPTIONS = {
    "gru": dict(rnn_type="gru"),
    "res_net2": dict(res_net=True, layers=2),
    "res_net3": dict(res_net=True, layers=3),
    "multi_attn": dict(multi_attn=1, layers=2),
    "brnn_sum": dict(brnn_merge="sum"),
    "enc_hidden": dict(enc_hidden=48, bridge=True),
    "bahdanau_general": dict(decoder="bahdanau"),
    "bahdanau_concat": dict(decoder="bahdanau", attention="concat"),
    "all_at_once": dict(rnn_type="gru", res_net=True, layers=2, multi_attn=1, brnn_merge="sum", enc_hidden=48,
                        bridge=True, reverse_src=True, attention="concat"),
    "bahdanau_gru_res": dict(decoder="bahdanau", rnn_type="gru", res_net=True, layers=2, reverse_src=True),
    "start_symbol": dict(start_symbol=True, reverse_src=True, layers=2),
}
NEW_FIELDS = ("rnn_type", "res_net", "multi_attn", "brnn_merge", "enc_hidden", "decoder", "start_symbol")
TRAIN_PAIRS = PAIRS[:12]
SOURCES = [s for s, _ in TRAIN_PAIRS]
_CACHE: dict = {}


def config(name: str) -> ModelConfig:
    options = dict(OPTIONS[name])
    return tiny_config(options.pop("attention", "general"), **options)


def trained(name: str):
    if name not in _CACHE:
        _CACHE[name] = fit(TRAIN_PAIRS, config(name), steps=200, lr=0.01)
    return _CACHE[name]


def batch_of(translator, sentences):
    ids = [translator.checkpoint.src_vocab.encode(translator.src_tok.tokenize(s)) for s in sentences]
    return pad(ids), torch.tensor([len(x) for x in ids])


@pytest.mark.parametrize("name", OPTIONS)
def test_a_tiny_model_memorises_its_pairs(name):
    tr = trained(name)
    for beam in (1, 5):
        assert [r.text for r in tr.translate(SOURCES, beam_size=beam)] == [t for _, t in TRAIN_PAIRS]


@pytest.mark.parametrize("name", OPTIONS)
def test_every_search_path_gives_the_same_hypotheses(name):
    tr = trained(name)
    sents = SOURCES + ["Ein Hund spielt im Park.", "Zwei Kinder essen Gemüse am Strand."]
    batched = tr.translate(sents, beam_size=4, n_best=2, batch_size=14, trace=False)
    same_translations(batched, tr.translate(sents, beam_size=4, n_best=2, batch_size=14, trace=True))
    one = tr.translate(sents, beam_size=4, n_best=2, batch_size=1, trace=False)  # (the one-sentence CPU path)
    for a, b in zip(batched, one):
        assert [c.tokens for c in a.n_best] == [c.tokens for c in b.n_best]
        assert [c.score for c in a.n_best] == pytest.approx([c.score for c in b.n_best], abs=1e-4)
    same_translations(one, tr.translate(sents, beam_size=4, n_best=2, batch_size=1, trace=True))
    int8 = tr.translate(SOURCES, beam_size=4, int8=True)
    assert [r.text for r in int8] == [t for _, t in TRAIN_PAIRS]

    model, (src, lengths) = tr.model, batch_of(tr, sents)
    expected = beam_search(model, src, lengths, beam_size=4, n_best=2)
    for got in (fixed_beam_search(model, src, lengths, beam_size=4, n_best=2),
                beam_search(TracedSearchModel(model), src, lengths, beam_size=4, n_best=2)):
        for a, b in zip(expected, got, strict=True):
            assert [h.tokens for h in a] == [h.tokens for h in b]
            assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-5)
            assert all(torch.allclose(x.attention, y.attention, atol=1e-6) for x, y in zip(a, b))
    greedy, beam1 = greedy_search(model, src, lengths), beam_search(model, src, lengths, beam_size=1)
    assert [h[0].tokens for h in greedy] == [h[0].tokens for h in beam1]


@pytest.mark.parametrize("name", ["gru", "multi_attn", "enc_hidden", "bahdanau_concat", "all_at_once"])
def test_save_and_load_keep_the_weights_and_the_translations(name, tmp_path):
    tr = trained(name)
    save_checkpoint(tr.checkpoint, tmp_path / "ck")
    saved = json.loads((tmp_path / "ck/config.json").read_text())["model"]
    assert {k: saved[k] for k in NEW_FIELDS} == {k: getattr(tr.model.cfg, k) for k in NEW_FIELDS}
    loaded = load_checkpoint(tmp_path / "ck")
    assert loaded.model.cfg == tr.model.cfg
    ours, theirs = tr.model.state_dict(), loaded.model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    from nmt.serving.translator import Translator

    again = Translator(loaded, "cpu")
    same_translations(tr.translate(SOURCES, beam_size=3, n_best=2), again.translate(SOURCES, beam_size=3, n_best=2))


def test_old_configs_build_todays_model():
    old = {"emb_size": 16, "hidden": 32, "layers": 2, "brnn": True, "attention": "general", "bridge": True,
           "src_vocab": 20, "tgt_vocab": 22}
    cfg = from_dict(ModelConfig, old, "model")
    assert (cfg.rnn_type, cfg.res_net, cfg.multi_attn, cfg.brnn_merge, cfg.enc_hidden, cfg.decoder) == \
        ("lstm", False, 0, "concat", 0, "luong")
    names = set(Seq2Seq(cfg).state_dict())
    rnn = {f"encoder.rnn.{w}_l{k}{d}" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh") for k in (0, 1)
           for d in ("", "_reverse")}
    cells = {f"decoder.cells.{k}.{w}" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh") for k in (0, 1)}
    bridge = {f"bridge.{k}.{w}" for k in (0, 1) for w in ("weight", "bias")}
    attention = {"decoder.attention.linear_in.weight", "decoder.attention.linear_out.weight"}
    assert rnn | cells | bridge | attention | {"generator.weight", "generator.bias"} <= names
    assert not {n for n in names if "layers_rnn" in n or "lower" in n}
    state = Seq2Seq(cfg).eval().encode(torch.tensor([[5, 6, 7]]), torch.tensor([3]))
    assert list(state) == ["h", "c", "feed", "memory", "keys", "mask"]


def test_the_bundled_checkpoints_still_load(tmp_path):
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "checkpoints/de-en-general"
    if not (folder / "model.safetensors").is_file():
        pytest.skip("no bundled checkpoint")
    ck = load_checkpoint(folder)  # (the weights' names and shapes are checked against the config's model)
    assert ck.model.cfg.rnn_type == "lstm" and ck.model.cfg.decoder == "luong"
    assert hasattr(ck.model.encoder, "rnn")


@pytest.mark.parametrize("options,message", [
    (dict(attention="dot", enc_hidden=48, bridge=True), "dot attention"),
    (dict(enc_hidden=48), "--bridge"),
    (dict(multi_attn=2, layers=2), "--multi-attn"),
    (dict(multi_attn=3, layers=2), "--multi-attn"),
    (dict(multi_attn=-1, layers=2), "--multi-attn"),
    (dict(multi_attn=1, layers=2, attention="none"), "--multi-attn"),
    (dict(multi_attn=1, layers=2, decoder="bahdanau"), "--multi-attn"),
    (dict(decoder="bahdanau", attention="none"), "bahdanau"),
    (dict(rnn_type="rnn"), "rnn_type"),
    (dict(brnn_merge="mean"), "brnn_merge"),
    (dict(decoder="transformer"), "decoder"),
    (dict(enc_hidden=33), "even --enc-hidden"),
    (dict(enc_hidden=-1), "--enc-hidden"),
])
def test_bad_combinations_are_clear_errors(options, message):
    options = dict(options)
    cfg = tiny_config(options.pop("attention", "general"), src_vocab=20, tgt_vocab=20, **options)
    with pytest.raises(ValueError, match=message):
        Seq2Seq(cfg)


def test_legal_neighbours_of_the_bad_combinations():
    for options in (dict(enc_hidden=48, init_dec=False), dict(enc_hidden=33, brnn_merge="sum", bridge=True),
                    dict(hidden=63, brnn_merge="sum"), dict(brnn=False, brnn_merge="sum"), dict(enc_hidden=64)):
        Seq2Seq(tiny_config("general", src_vocab=20, tgt_vocab=20, **options))


def test_the_states_have_the_same_layout_for_search():
    def state(**options):
        torch.manual_seed(0)
        model = Seq2Seq(tiny_config("general", src_vocab=20, tgt_vocab=20, layers=2, **options)).eval()
        return model.encode(torch.tensor([[5, 6, 7], [8, 9, 0]]), torch.tensor([3, 2]))

    assert list(state(rnn_type="gru")) == ["h", "feed", "memory", "keys", "mask"]  # a GRU has no c
    assert list(state(decoder="bahdanau")) == ["h", "c", "memory", "keys", "mask"]  # no input feeding
    assert "lower_keys" in state(multi_attn=1) and "lower_keys" in Seq2Seq.sentence_keys
    s = state(enc_hidden=48, bridge=True, rnn_type="gru")
    assert s["h"].shape == (2, 2, 64) and s["memory"].shape == (2, 3, 48)
    assert state(enc_hidden=48, init_dec=False)["c"].abs().sum() == 0


def test_bahdanau_attends_from_the_previous_state():
    """a_t depends on s_{t-1} only: the step's input word does not change where it attends."""
    torch.manual_seed(0)
    model = Seq2Seq(tiny_config("concat", src_vocab=20, tgt_vocab=20, decoder="bahdanau", layers=2)).eval()
    state = model.encode(torch.tensor([[5, 6, 7, 8]]), torch.tensor([4]))
    _, a1, next1 = model.step(torch.tensor([5]), state)
    _, a2, next2 = model.step(torch.tensor([9]), state)
    assert torch.equal(a1, a2) and not torch.equal(next1["h"], next2["h"])
    _, weights = model.decoder.attention.context(state["h"][:, -1], state["memory"], state["keys"], state["mask"])
    assert torch.equal(weights, a1)


@pytest.mark.parametrize("rnn_type", ["lstm", "gru"])
def test_residual_layers_add_their_input(rnn_type):
    """With layer 2's weights zeroed its RNN outputs 0, so its output is its input (the layer below's)."""
    torch.manual_seed(0)
    cfg = tiny_config("general", src_vocab=20, tgt_vocab=20, layers=2, res_net=True, rnn_type=rnn_type)
    model = Seq2Seq(cfg).eval()
    with torch.no_grad():
        for p in model.encoder.layers_rnn[1].parameters():
            p.zero_()
    src, lengths = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]]), torch.tensor([4, 2])
    low, top = model.encoder.layer_outputs(src, lengths)
    assert torch.equal(low, top) and low.abs().sum() > 0
    memory, _ = model.encoder(src, lengths)
    assert torch.equal(memory, top)


def test_the_start_symbol_is_read_but_not_attended_to():
    """seq2seq-attn's -start_symbol: the encoder reads <s> w1 .. wn </s>; the memory holds the words'
    states (those of an encoder fed the bounded ids by hand), and attention spans the words only."""
    torch.manual_seed(0)
    model = Seq2Seq(tiny_config("general", src_vocab=20, tgt_vocab=20, start_symbol=True, layers=2)).eval()
    src, lengths = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]]), torch.tensor([4, 2])
    memory, (h, _) = model.encoder(src, lengths)
    model.encoder.start_symbol = False
    bounded = torch.tensor([[2, 5, 6, 7, 8, 3], [2, 9, 10, 3, 0, 0]])
    by_hand, (h_by_hand, _) = model.encoder(bounded, lengths + 2)
    model.encoder.start_symbol = True
    assert memory.shape == (2, 4, 64) and torch.equal(memory, by_hand[:, 1:5]) and torch.equal(h, h_by_hand)
    _, attention, _ = model.step(torch.tensor([2, 2]), model.encode(src, lengths))
    assert attention.shape == (2, 4) and torch.all(attention[1, 2:] == 0)
    with pytest.raises(ValueError, match="--start-symbol"):
        Seq2Seq(tiny_config("general", src_vocab=20, tgt_vocab=20, start_symbol=True, src_features="case"))


@pytest.mark.parametrize("options", [{}, dict(layers=2, reverse_src=True), dict(layers=2, rnn_type="gru"),
                                     dict(layers=2, brnn_merge="sum", res_net=True),
                                     dict(layers=2, start_symbol=True)])
def test_layer_outputs_end_with_the_memory(options):
    """``encoder.layer_outputs`` is every layer's output for extraction; the stacked nn.LSTM's layers
    (today's checkpoints) are run one at a time with the same weights."""
    torch.manual_seed(0)
    model = Seq2Seq(tiny_config("general", src_vocab=20, tgt_vocab=20, **options)).eval()
    src, lengths = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]]), torch.tensor([4, 2])
    outputs = model.encoder.layer_outputs(src, lengths)
    memory, _ = model.encoder(src, lengths)
    assert len(outputs) == model.cfg.layers and torch.allclose(outputs[-1], memory, atol=1e-6)


SRC = torch.tensor([[5, 6, 7, 8, 9, 10], [5, 6, 7, 0, 0, 0], [11, 12, 13, 14, 0, 0]])
LENGTHS = torch.tensor([6, 3, 4])
TGT_IN = torch.tensor([[2, 10, 11, 12, 13], [2, 14, 15, 0, 0], [2, 16, 17, 18, 0]])


@pytest.mark.parametrize("name", ["gru", "res_net2", "multi_attn", "brnn_sum", "enc_hidden", "bahdanau_general",
                                  "all_at_once"])
def test_the_cpu_training_engine_gives_autograds_gradients(name):
    """The engine's own steps for the encoder-side options; the model's plain forward (``handles``)
    for the decoders it does not implement, never wrong gradients."""
    cfg = dataclasses.replace(config(name), src_vocab=20, tgt_vocab=22, dropout=0.3)
    torch.manual_seed(0)
    model = Seq2Seq(cfg).train()
    own = tf.TeacherForcing.handles(cfg)
    assert own == (name in ("brnn_sum", "enc_hidden"))
    results = []
    for engine in (True, False):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same dropout masks
        if engine:
            logits, attn = tf.TeacherForcing().forward(model, SRC, LENGTHS, TGT_IN)
        else:
            logits, attn = model(SRC, LENGTHS, TGT_IN)
        (logits.pow(2).mean() + attn.pow(2).sum()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((logits.detach(), grads))
    (logits, grads), (ref_logits, ref_grads) = results
    assert torch.allclose(logits, ref_logits, atol=1e-6) and grads.keys() == ref_grads.keys()
    for n, g in grads.items():
        assert torch.allclose(g, ref_grads[n], rtol=1e-4, atol=1e-7), n


def test_the_engine_builds_nothing_for_a_decoder_it_does_not_implement(monkeypatch):
    made = []
    monkeypatch.setattr(tf, "_SharedBySteps", lambda *a: made.append(a))
    model = Seq2Seq(tiny_config("general", src_vocab=20, tgt_vocab=22, rnn_type="gru")).train()
    tf.TeacherForcing().forward(model, SRC, LENGTHS, TGT_IN)
    assert not made


def test_python_m_nmt_train_takes_the_new_flags(tmp_path):
    for split in ("train", "valid"):
        (tmp_path / f"{split}.de").write_text("\n".join(s for s, _ in PAIRS) + "\n", encoding="utf-8")
        (tmp_path / f"{split}.en").write_text("\n".join(t for _, t in PAIRS) + "\n", encoding="utf-8")
    flags = ["--rnn-type", "gru", "--res-net", "--layers", "2", "--multi-attn", "1", "--brnn-merge", "sum",
             "--enc-hidden", "24", "--bridge", "--decoder", "luong"]
    code = main(["train", "--train-src", str(tmp_path / "train.de"), "--train-tgt", str(tmp_path / "train.en"),
                 "--valid-src", str(tmp_path / "valid.de"), "--valid-tgt", str(tmp_path / "valid.en"),
                 "--save-dir", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "10", "--emb-size", "16",
                 "--hidden", "32", "--threads", "1", "--device", "cpu", *flags])
    assert code == 0
    cfg = load_checkpoint(tmp_path / "run/last").model.cfg
    assert (cfg.rnn_type, cfg.res_net, cfg.layers, cfg.multi_attn, cfg.brnn_merge, cfg.enc_hidden) == \
        ("gru", True, 2, 1, "sum", 24)
    assert to_dict(cfg)["decoder"] == "luong"
    assert np.isfinite(json.loads((tmp_path / "run/metrics.jsonl").read_text().splitlines()[0])["train_loss"])
