"""Input layers (issue 18): character-CNN inputs on either side, source word features (the built-in
case feature and inline word-|-feat tokens), pretrained or fixed embeddings."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import PAIRS, tiny_config

from nmt.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from nmt.data import ParallelDataset, pad, tokenize_pair_files
from nmt.engines.cuda_graphs import fixed_beam_search
from nmt.errors import DataError
from nmt.inputs import SourceInputs, case_of, char_vocabulary, split_features
from nmt.model.embeddings import CharCNN
from nmt.model.seq2seq import Seq2Seq
from nmt.search import beam_search
from nmt.serving.translator import Translator
from nmt.tokenization import get_tokenizer
from nmt.training.loss import sequence_loss
from nmt.training.pretrained import apply_vectors, load_vectors
from nmt.vocabulary import Vocabulary

SOURCES, TARGETS = [s for s, _ in PAIRS], [t for _, t in PAIRS]
CHARS = dict(char_vec_size=16, kernel_width=3, num_kernels=48, num_highway_layers=1, max_word_length=14)


def inline(sentence: str) -> str:
    """A pre-tokenized source with two inline features: the case and the word's length parity."""
    tokens = get_tokenizer("de").tokenize(sentence)
    return " ".join(f"{t}-|-{case_of(t)}-|-{'even' if len(t) % 2 == 0 else 'odd'}" for t in tokens)


def fit_inputs(cfg, sources=SOURCES, steps: int = 300, seed: int = 0) -> Translator:
    """A tiny model with these input options memorises PAIRS (full batch), as conftest.fit does for words."""
    torch.manual_seed(seed)
    src_tok = [get_tokenizer("de", cfg.src_features == "inline").tokenize(s) for s in sources]
    tgt_tok = [get_tokenizer("en").tokenize(t) for t in TARGETS]
    words = [SourceInputs.parse_all(src_tok, cfg.src_features)[i][0] for i in range(len(src_tok))]
    chars = char_vocabulary(words + tgt_tok) if cfg.use_chars_enc or cfg.use_chars_dec else None
    inputs = SourceInputs.build(src_tok, cfg.src_features, chars if cfg.use_chars_enc else None, cfg.max_word_length, 1000)
    tgt_vocab = Vocabulary.build(tgt_tok, 1000)
    cfg.src_vocab, cfg.tgt_vocab = len(inputs.words), len(tgt_vocab)
    cfg.char_vocab, cfg.feature_vocabs = len(chars) if chars else 0, tuple(len(v) for v in inputs.features)
    ck = Checkpoint(Seq2Seq(cfg), inputs.words, tgt_vocab, "de", "en", chars=chars, features=inputs.features)
    data = ParallelDataset([ck.inputs.encode(s) for s in src_tok], [tgt_vocab.encode(t) for t in tgt_tok])
    batch = data.make_batch(list(range(len(data))))
    opt = torch.optim.Adam(ck.model.parameters(), lr=0.01)
    ck.model.train()
    for _ in range(steps):
        logits, _ = ck.model(batch.src, batch.src_lengths, batch.tgt_in)
        loss, _ = sequence_loss(logits, batch.tgt_out, 0.0)
        opt.zero_grad()
        (loss / len(data)).backward()
        opt.step()
    ck.model.eval()
    return Translator(ck, "cpu")


OPTIONS = {
    "chars-enc": (dict(use_chars_enc=True, **CHARS), SOURCES),
    "chars-dec": (dict(use_chars_dec=True, **CHARS), SOURCES),
    "chars-both": (dict(use_chars_enc=True, use_chars_dec=True, **CHARS), SOURCES),
    "case": (dict(src_features="case"), SOURCES),
    "inline": (dict(src_features="inline", feature_vec_size=6), [inline(s) for s in SOURCES]),
    "chars-case": (dict(use_chars_enc=True, src_features="case", **CHARS), SOURCES),
}
_MODELS: dict = {}


def model(name: str) -> tuple[Translator, list[str]]:
    if name not in _MODELS:
        options, sources = OPTIONS[name]
        _MODELS[name] = fit_inputs(tiny_config("general", **options), sources), sources
    return _MODELS[name]


@pytest.mark.parametrize("name", list(OPTIONS))
def test_each_input_option_memorises_and_translates_exactly(name):
    translator, sources = model(name)
    assert [t.text for t in translator.translate(sources, beam_size=3)] == TARGETS
    assert [t.text for t in translator.translate(sources, beam_size=1)] == TARGETS


@pytest.mark.parametrize("name", list(OPTIONS))
def test_every_search_path_agrees(name):
    translator, sources = model(name)
    plain = translator.translate(sources, beam_size=3, n_best=2, int8=False, trace=False)
    for engine in ({"trace": True}, {"inter_threads": 2}, {"batch_size": 1}):
        other = translator.translate(sources, beam_size=3, n_best=2, int8=False, **engine)
        assert [[c.text for c in t.n_best] for t in other] == [[c.text for c in t.n_best] for t in plain], engine
        assert [t.score for t in other] == pytest.approx([t.score for t in plain], abs=1e-5)
    assert [t.text for t in translator.translate(sources, int8=True)] == TARGETS
    ids = translator.source_ids([translator.src_tok.tokenize(s) for s in sources[:6]])
    src, lengths = pad(ids), torch.tensor([len(x) for x in ids])
    eager = beam_search(translator.model, src, lengths, beam_size=3, n_best=2)
    fixed = fixed_beam_search(translator.model, src, lengths, beam_size=3, n_best=2)  # (what CUDA graphs replay)
    assert [[h.tokens for h in s] for s in eager] == [[h.tokens for h in s] for s in fixed]


@pytest.mark.parametrize("name", list(OPTIONS))
def test_save_and_load_give_the_same_model(name, tmp_path):
    translator, sources = model(name)
    folder = save_checkpoint(translator.checkpoint, tmp_path / name)
    loaded = Translator(load_checkpoint(folder), "cpu")
    a, b = translator.model.state_dict(), loaded.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [t.score for t in loaded.translate(sources)] == [t.score for t in translator.translate(sources)]
    config = json.loads((folder / "config.json").read_text())
    assert config["model"]["src_features"] == translator.model_cfg.src_features


def test_the_character_layer_gives_a_word_the_same_vector_in_any_batch():
    torch.manual_seed(0)
    cnn = CharCNN(40, 8, 3, 16, 2).eval()
    chars = char_vocabulary([["Hund", "Katze", "Maus", "läuft"]])
    spell = SourceInputs(Vocabulary(["<blank>", "<unk>", "<s>", "</s>"]), chars=chars, max_word_length=9).spell
    alone = cnn(torch.tensor([[spell("Hund")]]))[0, 0]
    batch = cnn(torch.tensor([[spell("Katze"), spell("Hund"), spell("Maus")], [spell("Hund"), spell("läuft"), spell("Hund")]]))
    for vector in (batch[0, 1], batch[1, 0], batch[1, 2]):
        assert torch.allclose(vector, alone, atol=1e-6)
    assert not torch.allclose(batch[0, 0], alone)


def test_no_source_word_is_unknown_to_a_character_encoder():
    translator, _ = model("chars-enc")
    [t] = translator.translate(["Ein Zebra läuft."], replace_unk=True)
    assert translator.checkpoint.inputs.unknown(t.src_tokens) == []
    words = model("case")[0]
    assert words.checkpoint.inputs.unknown(["Ein", "Zebra"]) == ["Zebra"]
    assert all(r.source_word in t.src_tokens for r in t.replacements)  # (UNK replacement still copies source words)


def test_the_case_feature_and_lower_cased_lookup():
    assert [case_of(w) for w in ("hund", "Hund", "HUND", "hUnd", "42", "I", "Hund-artig")] == [
        "lower", "cap", "upper", "other", "other", "cap", "cap"]
    translator, _ = model("case")
    inputs = translator.checkpoint.inputs
    assert inputs.encode(["Hund"])[0][0] == inputs.encode(["hund"])[0][0] == inputs.words.stoi["hund"]
    assert inputs.encode(["Hund"])[0][1] != inputs.encode(["hund"])[0][1]
    assert "Hund" not in inputs.words.stoi


def test_every_word_must_carry_the_same_number_of_features(tmp_path):
    with pytest.raises(DataError, match=r"line 3: the word 'Hund-\|-a-\|-b' has 2 features, the first word 1"):
        split_features(["Ein-|-x", "Hund-|-a-|-b"], "line 3")
    (tmp_path / "src").write_text("Ein-|-a Hund-|-b\nZwei-|-a Hunde-|-b-|-c\n")
    (tmp_path / "tgt").write_text("A dog\nTwo dogs\n")
    with pytest.raises(DataError, match=r"src line 2: the word 'Hunde-\|-b-\|-c' has 2 features"):
        tokenize_pair_files(tmp_path / "src", tmp_path / "tgt", "de", "en", src_features="inline")
    (tmp_path / "src").write_text("Ein-|-a Hund-|-b\nZwei-|-a-|-c Hunde-|-b-|-c\n")
    with pytest.raises(DataError, match=r"src line 2: the word 'Zwei-\|-a-\|-c' has 2 features, the words of the lines before 1"):
        tokenize_pair_files(tmp_path / "src", tmp_path / "tgt", "de", "en", src_features="inline")
    translator, _ = model("inline")
    with pytest.raises(DataError, match="sentence 1: the word 'läuft-\\|-lower' has 1 features"):
        translator.translate(["Ein-|-cap-|-odd läuft-|-lower"])


def test_inline_features_are_read_from_pretokenized_text():
    translator, sources = model("inline")
    [t] = translator.translate([sources[0]], replace_unk=True)
    assert t.src_tokens == sources[0].split()
    assert len(translator.checkpoint.features) == 2 and translator.model_cfg.feature_vocabs == (7, 6)
    sizes = [e.embedding_dim for e in translator.model.encoder.embeddings.features]
    assert sizes == [6, 6]


def test_feature_embeddings_are_sized_by_the_exponent():
    translator = fit_inputs(tiny_config("general", src_features="case", feature_embeddings_dim_exponent=1.0), steps=1)
    [feature] = translator.model.encoder.embeddings.features
    assert feature.embedding_dim == len(translator.checkpoint.features[0])  # N ** 1


# ----------------------------------------------------------------------------- pretrained embeddings
@pytest.fixture
def vocab():
    return Vocabulary(["<blank>", "<unk>", "<s>", "</s>", "hund", "katze", "maus"])


def test_text_vectors_land_on_their_words_rows(tmp_path, vocab):
    (tmp_path / "vec.txt").write_text("3 4\nkatze 1 2 3 4\nzebra 9 9 9 9\nhund 0.5 0.5 0.5 0.5\nkatze 7 7 7 7\n")
    table = torch.nn.Parameter(torch.full((len(vocab), 4), -1.0))
    coverage = apply_vectors(table, tmp_path / "vec.txt", vocab, fix=False, side="source")
    assert (coverage.found, coverage.words) == (2, 3) and "2 of 3 words (66.7 %)" == str(coverage)
    assert table[5].tolist() == [1, 2, 3, 4] and table[4].tolist() == [0.5] * 4  # (the first vector of a word wins)
    assert table[6].tolist() == [-1] * 4 and table.requires_grad


def test_matrix_vectors_in_vocabulary_order_and_frozen(tmp_path, vocab):
    from safetensors.numpy import save_file

    matrix = np.arange(len(vocab) * 3, dtype=np.float32).reshape(len(vocab), 3)
    np.save(tmp_path / "vec.npy", matrix)
    save_file({"vectors": matrix}, str(tmp_path / "vec.safetensors"))
    for name in ("vec.npy", "vec.safetensors"):
        vectors, mask = load_vectors(tmp_path / name, vocab, 3)
        assert torch.equal(vectors[mask], torch.from_numpy(matrix)[1:]) and not mask[0]
    with pytest.raises(DataError, match=r"shape \(7, 3\); the vocabulary and embedding need \(7, 4\)"):
        load_vectors(tmp_path / "vec.npy", vocab, 4)


def test_fixed_embeddings_stay_fixed_through_training(tmp_path):
    cfg = tiny_config("general")
    torch.manual_seed(0)
    src_tok = [get_tokenizer("de").tokenize(s) for s in SOURCES]
    src_vocab = Vocabulary.build(src_tok, 1000)
    lines = [f"{w} " + " ".join(str((i + j) / 100) for j in range(cfg.emb_size)) for i, w in enumerate(src_vocab.itos[4:])]
    (tmp_path / "vec.txt").write_text("\n".join(lines) + "\n")
    cfg.src_vocab, cfg.tgt_vocab = len(src_vocab), 50
    m = Seq2Seq(cfg)
    table = m.encoder.embeddings.weight
    apply_vectors(table, tmp_path / "vec.txt", src_vocab, fix=True, side="source")
    before = table.detach().clone()
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=0.1)
    src = pad([src_vocab.encode(s) for s in src_tok[:4]])
    logits, _ = m(src, torch.tensor([len(s) for s in src_tok[:4]]), torch.full((4, 3), 5))
    logits.sum().backward()
    opt.step()
    assert torch.equal(table, before) and table.grad is None
    assert table[4, 3].item() == pytest.approx(0.03)


def test_a_malformed_vector_file_names_its_line(tmp_path, vocab):
    (tmp_path / "vec.txt").write_text("hund 1 2 3\nkatze 1 2\n")
    with pytest.raises(DataError, match="line 2: 2 numbers after the word; the embedding size is 3"):
        load_vectors(tmp_path / "vec.txt", vocab, 3)
    (tmp_path / "vec.txt").write_text("hund 1 x 3\n")
    with pytest.raises(DataError, match="line 1: not a vector of numbers"):
        load_vectors(tmp_path / "vec.txt", vocab, 3)
    (tmp_path / "bad.txt").write_bytes(b"hund \xff 2 3\n")
    with pytest.raises(DataError, match="not UTF-8"):
        load_vectors(tmp_path / "bad.txt", vocab, 3)


def test_a_checkpoint_whose_inputs_do_not_match_is_refused(tmp_path):
    from nmt.errors import CheckpointError

    translator, _ = model("chars-enc")
    folder = save_checkpoint(translator.checkpoint, tmp_path / "ck")
    config = json.loads((folder / "config.json").read_text())
    for broken in ({"chars": config["inputs"]["chars"][:-1]}, {"chars": None}, {"chars": "abc"},
                   {**config["inputs"], "features": [["<blank>"]]}):
        (folder / "config.json").write_text(json.dumps({**config, "inputs": broken}))
        with pytest.raises(CheckpointError, match="inputs"):
            load_checkpoint(folder)
    assert dataclasses.is_dataclass(translator.checkpoint)


# ----------------------------------------------------------------------------- through python -m nmt train
def test_training_a_character_and_feature_model_end_to_end(tmp_path):
    """``python -m nmt train`` with a char-CNN encoder, the case feature and fixed pretrained target
    vectors; resumed exactly; the best checkpoint translates, records int8's validation BLEU and loads."""
    from test_training import tiny_corpus

    from nmt import cli

    files = tiny_corpus(tmp_path, n_train=60, n_valid=10)
    tgt_vocab_words = sorted({w for line in SOURCES for w in get_tokenizer("en").tokenize(line)} | {"A", "dog"})
    (tmp_path / "vec.txt").write_text("".join(f"{w} " + " ".join(["0.25"] * 16) + "\n" for w in tgt_vocab_words))
    args = ["train", "--train-src", str(files["train", "de"]), "--train-tgt", str(files["train", "en"]),
            "--valid-src", str(files["val", "de"]), "--valid-tgt", str(files["val", "en"]), "--emb-size", "16",
            "--hidden", "32", "--batch-size", "16", "--use-chars-enc", "--num-kernels", "24", "--kernel-width", "3",
            "--src-features", "case", "--pre-word-vecs-dec", str(tmp_path / "vec.txt"), "--fix-word-vecs-dec",
            "--save-dir", str(tmp_path / "run")]
    assert cli.main([*args, "--epochs", "1"]) == 0
    assert cli.main(["train", "--train-from", str(tmp_path / "run"), "--epochs", "2"]) == 0
    best = load_checkpoint(tmp_path / "run" / "best")
    config = json.loads((tmp_path / "run/best/config.json").read_text())
    assert set(config["int8"]) >= {"valid_bleu_fp32", "valid_bleu_int8"}
    assert best.model.cfg.use_chars_enc and best.model.cfg.src_features == "case" and best.chars is not None
    table = best.model.decoder.embeddings.weight
    found = [best.tgt_vocab.stoi[w] for w in ("A", "dog") if w in best.tgt_vocab.stoi]
    assert found and all(torch.equal(table[i], torch.full((16,), 0.25)) for i in found)  # (fixed through 2 epochs)
    [t] = Translator(best, "cpu").translate(["Ein Hund läuft."])
    assert t.src_tokens == ["Ein", "Hund", "läuft", "."]


@pytest.mark.parametrize("name", ["chars-enc", "inline"])
def test_translate_on_the_command_line(name, tmp_path, capsys):
    from nmt import cli

    translator, sources = model(name)
    folder = save_checkpoint(translator.checkpoint, tmp_path / name)
    (tmp_path / "src").write_text("".join(s + "\n" for s in sources[:4]))
    assert cli.main(["translate", "--model", str(folder), "--src", str(tmp_path / "src")]) == 0
    assert capsys.readouterr().out.splitlines() == TARGETS[:4]
    if name == "inline":  # (a word without its features: the error names the sentence and the word)
        (tmp_path / "src").write_text(sources[0] + "\nEin Hund\n")
        assert cli.main(["translate", "--model", str(folder), "--src", str(tmp_path / "src")]) == 2
        assert "error: sentence 2: words carry 0 features, the model reads 2" in capsys.readouterr().err


def test_an_ensemble_needs_the_same_source_input():
    from nmt.errors import NMTError

    chars, words = model("chars-enc")[0], model("case")[0]
    with pytest.raises(NMTError, match="another source input"):
        Translator([chars.checkpoint, dataclasses.replace(words.checkpoint, src_vocab=chars.checkpoint.src_vocab)], "cpu")
    twice = Translator([chars.checkpoint, chars.checkpoint], "cpu")
    assert [t.text for t in twice.translate(SOURCES)] == TARGETS
