"""seq2seq-attn's training tools: fine-tuning, retraining a pruned model, kept epoch checkpoints,
per-part learning rates, curriculum, the unknown-word filter and preset vocabularies."""

from __future__ import annotations

import json
import logging
import random
import shutil
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file

from nmt.cli import main
from nmt.data import tokenize_pair_files
from nmt.errors import DataError
from nmt.preprocess import preprocess
from nmt.serving.tracked import read_tracked
from nmt.config import DataConfig, ModelConfig, TrainConfig, VocabConfig
from nmt.training.average import average_checkpoints
from nmt.training.corpus import read_vocab_file, unknown_filter
from nmt.training.prune import prune_checkpoint
from nmt.training.trainer import Trainer
from nmt.vocabulary import SPECIALS, UNK_ID, Vocabulary
from test_training import tiny_corpus

TINY = dict(emb_size=16, hidden=32, dropout=0.2)


def make(files, save_dir, epochs=1, data=None, vocab=None, model=None, **train) -> Trainer:
    d = DataConfig(**{"train_src": str(files["train", "de"]), "train_tgt": str(files["train", "en"]),
                      "valid_src": str(files["val", "de"]), "valid_tgt": str(files["val", "en"]), "batch_size": 16,
                      **(data or {})})
    return Trainer(d, VocabConfig(**(vocab or {})), ModelConfig(**(model or TINY)),
                   TrainConfig(save_dir=str(save_dir), epochs=epochs, **{"learning_rate": 0.005, **train}))


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return tiny_corpus(tmp_path_factory.mktemp("corpus"), n_train=120, n_valid=20)


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):
    """A two-epoch run that keeps both epochs' checkpoints."""
    folder = tmp_path_factory.mktemp("runs") / "run"
    make(corpus, folder, epochs=2, keep_checkpoints=2).run()
    return folder


def test_fine_tuning_continues_from_the_weights_with_new_settings(corpus, run, tmp_path):
    other = tiny_corpus(tmp_path, n_train=60, n_valid=20)  # (other data: the same files' first lines)
    t = make(other, tmp_path / "tuned", epochs=4, train_from=str(run), fine_tune=True, start_epoch=3,
             learning_rate=0.001, optim="sgd")
    t.run()
    history = [json.loads(x) for x in (tmp_path / "tuned/metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [3, 4] and history[0]["lr"] == 0.001
    assert type(t.optimizer).__name__ == "SGD" and len(t.train_data) == 60
    start, tuned = weights(run / "last"), weights(tmp_path / "tuned/last")
    assert start.keys() == tuned.keys() and any(not torch.equal(start[k], tuned[k]) for k in start)
    saved = json.loads((tmp_path / "tuned/last/config.json").read_text())
    assert saved["train"]["optim"] == "sgd" and saved["model"] == json.loads((run / "last/config.json").read_text())["model"]


def test_a_fine_tuned_model_keeps_its_decoding_defaults(corpus, run, tmp_path):
    start = tmp_path / "start"
    shutil.copytree(run / "best", start)
    config = json.loads((start / "config.json").read_text())
    (start / "config.json").write_text(json.dumps({**config, "decode": {"beam_size": 3, "length_penalty": 0.5}}))
    make(corpus, tmp_path / "tuned", train_from=str(start)).run()
    assert json.loads((tmp_path / "tuned/best/config.json").read_text())["decode"] == {"beam_size": 3, "length_penalty": 0.5}


def test_fine_tuning_refuses_a_new_architecture_vocabulary_or_its_own_folder(corpus, run, tmp_path):
    with pytest.raises(ValueError, match=r"--hidden 64 \(the checkpoint has 32\)"):
        make(corpus, tmp_path / "x", train_from=str(run / "best"), model={**TINY, "hidden": 64}).run()
    with pytest.raises(ValueError, match="--src-vocab-size"):
        make(corpus, tmp_path / "x", train_from=str(run / "best"), vocab={"src_vocab_size": 100}).run()
    with pytest.raises(ValueError, match="the checkpoint fine-tuning starts from"):
        make(corpus, run, train_from=str(run / "best")).run()
    with pytest.raises(ValueError, match="--start-epoch 5"):
        make(corpus, tmp_path / "x", epochs=3, train_from=str(run / "best"), start_epoch=5).run()


def test_exact_resumption_says_which_flags_it_ignores(corpus, run, tmp_path, caplog):
    resumed = tmp_path / "resumed"
    make(corpus, resumed, epochs=1).run()
    with caplog.at_level(logging.WARNING, logger="nmt"):
        make(corpus, tmp_path / "elsewhere", epochs=2, train_from=str(resumed), learning_rate=0.1,
             data={"max_len": 20}).run()
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "ignored --max-len --learning-rate (to change them, add --fine-tune)" in warned  # (not the unchanged)
    assert json.loads((resumed / "last/trainer_state.json").read_text())["trainer"]["epoch"] == 2


def test_retraining_a_pruned_model_keeps_its_pruned_weights_at_zero(corpus, run, tmp_path):
    pruned, record = prune_checkpoint(run / "best", 0.5, "uniform", tmp_path / "pruned")
    masks = load_file(str(pruned / "masks.safetensors"))
    make(corpus, tmp_path / "retrained", epochs=2, train_from=str(pruned), learning_rate=0.01).run()
    for folder in ("last", "best"):
        after = weights(tmp_path / "retrained" / folder)
        assert all(torch.all(after[k][~masks[k]] == 0) for k in masks)
        assert any(not torch.equal(after[k], weights(pruned)[k]) for k in masks)  # (the kept ones trained)
        assert (tmp_path / "retrained" / folder / "masks.safetensors").is_file()
        assert json.loads((tmp_path / "retrained" / folder / "config.json").read_text())["pruning"]["ratio"] == 0.5
    make(corpus, tmp_path / "ignored", epochs=3, train_from=str(tmp_path / "retrained")).run()  # (resumed: still 0)
    after = weights(tmp_path / "retrained/last")
    assert all(torch.all(after[k][~masks[k]] == 0) for k in masks)


def test_kept_epoch_checkpoints_average_to_their_mean(run):
    assert sorted(p.name for p in run.glob("epoch-*")) == ["epoch-1", "epoch-2"]
    mean = average_checkpoints([run / "epoch-1", run / "epoch-2"]).model.state_dict()
    one, two = weights(run / "epoch-1"), weights(run / "epoch-2")
    assert all(torch.allclose(mean[k], (one[k] + two[k]) / 2) for k in one)
    assert torch.equal(weights(run / "epoch-2")["generator.weight"], weights(run / "last")["generator.weight"])


def test_only_the_last_n_kept_checkpoints_stay(corpus, tmp_path):
    make(corpus, tmp_path / "r", epochs=4, keep_checkpoints=1, save_every=2).run()
    assert sorted(p.name for p in (tmp_path / "r").glob("epoch-*")) == ["epoch-4"]


def test_layer_learning_rates_survive_decay(corpus, tmp_path):
    t = make(corpus, tmp_path / "r", epochs=2, layer_lrs="0.002,0.004,0.001", start_decay_at=1)
    t.run()
    assert [g["lr"] for g in t.optimizer.param_groups] == pytest.approx([0.0005, 0.001, 0.00025])
    names = {id(p): n for n, p in t.model.named_parameters()}
    groups = [{names[id(p)].split(".")[0] for p in g["params"]} for g in t.optimizer.param_groups]
    assert groups[1] == {"decoder"} and groups[2] == {"generator"} and "encoder" in groups[0]
    with pytest.raises(ValueError, match="three positive learning rates"):
        make(corpus, tmp_path / "bad", layer_lrs="0.1,0").run()


def test_curriculum_orders_the_first_n_epochs_by_length(corpus, tmp_path, monkeypatch):
    t = make(corpus, tmp_path / "r", epochs=3, data={"curriculum": 2})
    seen = []
    original = type(t).train_epoch

    def spy(self, epoch):
        calls = []
        batches = self.train_data.batches
        self.train_data.batches = lambda *a, **k: calls.append(k["in_order"]) or batches(*a, **k)
        try:
            return original(self, epoch)
        finally:
            self.train_data.batches = batches
            seen.append(calls[0])

    monkeypatch.setattr(type(t), "train_epoch", spy)
    t.run()
    assert seen == [True, True, False]


def test_the_unknown_word_filter_drops_what_it_should():
    vocab = Vocabulary(list(SPECIALS) + ["a", "b"])
    src = [["a", "b"], ["a", "x"], ["x", "y"], ["a", "b", "c", "d"]]
    tgt = [["a"], ["a"], ["a"], ["x"]]
    assert unknown_filter(src, tgt, vocab, vocab, 1) == [0, 1]  # (pair 3's target: 1 of 1 unknown, fine at 1)
    assert unknown_filter(src, tgt, vocab, vocab, 0.5) == [0, 1]
    assert unknown_filter(src, tgt, vocab, vocab, 2) == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        unknown_filter(src, tgt, vocab, vocab, -1)


def test_unkfilter_in_training_and_a_preset_vocabulary(corpus, tmp_path):
    src, _ = tokenize_pair_files(corpus["train", "de"], corpus["train", "en"], "de", "en", 50)
    words = [w for w, _ in Counter(w for s in src for w in s).most_common(40)]
    (tmp_path / "src.dict").write_text("".join(f"{w} {i}\n" for i, w in enumerate(["<unk>"] + words)))
    t = make(corpus, tmp_path / "r", vocab={"src_vocab_file": str(tmp_path / "src.dict")}, data={"unkfilter": 0.25})
    t.run()
    assert (tmp_path / "r/best/src.vocab").read_text().split("\n")[:-1] == list(SPECIALS) + words
    assert 0 < len(t.train_data) < len(src)
    assert all(sum(i == UNK_ID for i in s) <= 0.25 * len(s) for s in t.train_data.src)


def test_a_preset_vocabulary_file_is_checked(tmp_path):
    (tmp_path / "v").write_text("a\nb 3\na 1\n")
    with pytest.raises(Exception, match="line 3: 'a' again"):
        read_vocab_file(str(tmp_path / "v"))


def test_the_cli_fine_tunes_and_says_bad_flags_clearly(corpus, run, tmp_path, capsys):
    args = ["train", "--train-src", str(corpus["train", "de"]), "--train-tgt", str(corpus["train", "en"]),
            "--valid-src", str(corpus["val", "de"]), "--valid-tgt", str(corpus["val", "en"]), "--epochs", "1",
            "--train-from", str(run / "best"), "--save-dir", str(tmp_path / "cli")]
    assert main(args + ["--layers", "2"]) == 2 and "--layers 2 (the checkpoint has 1)" in capsys.readouterr().err
    assert main(args + ["--print-every", "2", "--batch-size", "16"]) == 0
    assert (tmp_path / "cli/best/model.safetensors").is_file()


def synthetic_aligned_corpus(folder, n_train=240, n_valid=30, seed=0):
    """Word-for-word pairs: target word j translates source word j, and the links say so (i-i)."""
    rng = random.Random(seed)
    files = {}
    for split, n in (("train", n_train), ("val", n_valid)):
        pairs = [[rng.randrange(12) for _ in range(rng.randint(3, 7))] for _ in range(n)]
        for lang, word in (("de", "q{}"), ("en", "z{}")):
            path = folder / f"{split}.{lang}"
            path.write_text("".join(" ".join(word.format(w) for w in p) + "\n" for p in pairs))
            files[split, lang] = path
        files[split, "align"] = folder / f"{split}.align"
        files[split, "align"].write_text("".join(" ".join(f"{i}-{i}" for i in range(len(p))) + "\n" for p in pairs))
    return files


def test_guided_alignment_lowers_the_attention_alignment_loss(tmp_path):
    files = synthetic_aligned_corpus(tmp_path)
    data = {"alignfile": str(files["train", "align"]), "alignvalfile": str(files["val", "align"])}
    scores = {}
    for guided in (False, True):
        t = make(files, tmp_path / f"run-{guided}", epochs=3, data=data, guided_alignment=guided,
                 guided_alignment_weight=1.0, guided_alignment_decay=0.9, learning_rate=0.01)
        t.run()
        history = [json.loads(x) for x in (tmp_path / f"run-{guided}/metrics.jsonl").read_text().splitlines()]
        scores[guided] = history[-1]
        assert ("train_align_loss" in history[0]) == guided
    assert scores[True]["align_weight"] == pytest.approx(0.81)
    assert scores[True]["valid_align_loss"] < 0.5 * scores[False]["valid_align_loss"]
    assert scores[True]["valid_aer"] < scores[False]["valid_aer"] and scores[True]["valid_aer"] < 0.5


def test_alignments_follow_the_kept_pairs_and_bad_files_name_their_line(tmp_path):
    files = synthetic_aligned_corpus(tmp_path, n_train=20)
    lines = files["train", "de"].read_text().splitlines()
    lines[1] = " ".join(["q1"] * 60)  # (dropped by --max-len 50: its alignment line must be skipped too)
    files["train", "de"].write_text("\n".join(lines) + "\n")
    aligns = files["train", "align"].read_text().splitlines()
    t = make(files, tmp_path / "r", data={"alignfile": str(files["train", "align"])})
    t._load_data(None)
    assert len(t.train_links) == 19 and t.train_links[1] == [(int(x[0]), int(x[2])) for x in aligns[2].split()]
    files["train", "align"].write_text("\n".join(aligns[:-1]) + "\n")
    with pytest.raises(DataError, match="19 lines but there are 20"):
        make(files, tmp_path / "r", data={"alignfile": str(files["train", "align"])}).run()
    files["train", "align"].write_text("\n".join(aligns[:3] + ["0-0 9-0"] + aligns[4:]) + "\n")
    with pytest.raises(DataError, match="line 4"):
        make(files, tmp_path / "r", data={"alignfile": str(files["train", "align"])}).run()
    with pytest.raises(ValueError, match="needs --alignfile"):
        make(files, tmp_path / "r", guided_alignment=True).run()


def test_preprocessed_data_trains_to_the_same_model_as_raw_text(corpus, tmp_path):
    preprocess(str(corpus["train", "de"]), str(corpus["train", "en"]), tmp_path / "pre", "de", "en", shards=2)
    make(corpus, tmp_path / "raw", epochs=1).run()
    make(corpus, tmp_path / "pre-run", epochs=1, data={"data": str(tmp_path / "pre"), "train_src": "",
                                                       "train_tgt": ""}).run()
    raw, pre = weights(tmp_path / "raw/last"), weights(tmp_path / "pre-run/last")
    assert raw.keys() == pre.keys() and all(torch.equal(raw[k], pre[k]) for k in raw)
    with pytest.raises(ValueError, match="not en-de"):
        make(corpus, tmp_path / "x", data={"data": str(tmp_path / "pre"), "src_lang": "en", "tgt_lang": "de"}).run()


def test_training_tracks_a_few_sentences_epoch_by_epoch(corpus, tmp_path):
    make(corpus, tmp_path / "r", epochs=2, track_sentences=2).run()
    lines = [json.loads(x) for x in (tmp_path / "r/tracked.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and all(len(r["sentences"]) == 2 for r in lines)
    assert lines[0]["sentences"][0]["source"] == lines[1]["sentences"][0]["source"]
    for r in lines:
        for s in r["sentences"]:
            assert len(s["attention"]) == len(s["translation"]) + 1 and all(len(row) == len(s["source"]) for row in s["attention"])
    assert read_tracked(tmp_path / "r/best") is not None  # (what the app reads accepts what training writes)
    assert all(abs(sum(row) - 1) < 0.01 for r in lines for s in r["sentences"] for row in s["attention"])
    best_epoch = json.loads((tmp_path / "r/best/config.json").read_text())["checkpoint"]["epoch"]
    assert len((tmp_path / "r/best/tracked.jsonl").read_text().splitlines()) == best_epoch
    make(corpus, tmp_path / "x", epochs=3, train_from=str(tmp_path / "r")).run()  # (resumed: the record goes on)
    assert [json.loads(x)["epoch"] for x in (tmp_path / "r/tracked.jsonl").read_text().splitlines()] == [1, 2, 3]
    (tmp_path / "mine.txt").write_text("Ein Hund läuft.\n\nZwei Männer.\n")
    make(corpus, tmp_path / "f", track_file=str(tmp_path / "mine.txt")).run()
    [record] = [json.loads(x) for x in (tmp_path / "f/tracked.jsonl").read_text().splitlines()]
    assert [s["source"] for s in record["sentences"]] == [["Ein", "Hund", "läuft", "."], ["Zwei", "Männer", "."]]
    make(corpus, tmp_path / "none", track_sentences=0).run()
    assert not (tmp_path / "none/tracked.jsonl").exists()
