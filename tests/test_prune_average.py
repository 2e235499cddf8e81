"""Magnitude pruning (class-blind, class-uniform) and checkpoint averaging: exact, safe, and on the command line."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import PAIRS, fit, tiny_config
from safetensors import safe_open
from safetensors.torch import save_file

from nmt.checkpoint import load_checkpoint, save_checkpoint
from nmt.cli import main
from nmt.data import ParallelDataset
from nmt.errors import CheckpointError
from nmt.model.seq2seq import Seq2Seq
from nmt.serving.translator import Translator
from nmt.tokenization import get_tokenizer
from nmt.training.average import average_checkpoints
from nmt.training.loss import sequence_loss
from nmt.training.prune import (
    MASKS_FILE,
    apply_masks,
    dense_size_bytes,
    load_masks,
    prune_checkpoint,
    prune_model,
    sparse_size_bytes,
    weight_classes,
)

SOURCES = [s for s, _ in PAIRS]
TARGETS = [t for _, t in PAIRS]


@pytest.fixture(scope="module")
def folder(tiny_translator, tmp_path_factory):
    """The memorising model as a checkpoint folder (prune a fresh copy from it, never the shared model)."""
    return save_checkpoint(tiny_translator.checkpoint, tmp_path_factory.mktemp("prune") / "model")


def fresh(folder):
    return load_checkpoint(folder).model


def all_weights(model, names) -> torch.Tensor:
    params = dict(model.named_parameters())
    return torch.cat([params[n].detach().abs().flatten() for n in names])


def check_smallest_pruned(before: torch.Tensor, mask: torch.Tensor, ratio: float) -> None:
    """Exactly round(ratio * n) entries pruned, and none of them larger than a kept one."""
    assert int((~mask).sum()) == round(ratio * mask.numel())
    assert before[~mask].max() <= before[mask].min()


def test_weight_classes_follow_the_paper():
    cfg = tiny_config("general", layers=2, bridge=True, src_vocab=30, tgt_vocab=20)
    classes = weight_classes(Seq2Seq(cfg))
    assert set(classes) == {"src_embeddings", "tgt_embeddings", "encoder.layer0", "encoder.layer1",
                            "decoder.layer0", "decoder.layer1", "attention", "generator", "bridge"}
    assert "encoder.rnn.weight_hh_l1_reverse" in classes["encoder.layer1"]
    assert "encoder.rnn.bias_ih_l0" in classes["encoder.layer0"]  # (biases are pruned with their layer)
    assert classes["decoder.layer1"] == [f"decoder.cells.1.{n}" for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]


def test_class_blind_prunes_the_smallest_weights_of_the_whole_model(folder):
    model = fresh(folder)
    names = [n for n, _ in model.named_parameters()]
    before = all_weights(model, names)
    masks = prune_model(model, 0.3, "blind")
    assert list(masks) == names
    check_smallest_pruned(before, torch.cat([masks[n].flatten() for n in names]), 0.3)
    after = all_weights(model, names)
    assert (after[~torch.cat([masks[n].flatten() for n in names])] == 0).all()
    kept = torch.cat([masks[n].flatten() for n in names])
    assert torch.equal(after[kept], before[kept])  # (|w| of the kept ones unchanged)


def test_class_uniform_prunes_the_same_ratio_in_every_class(folder):
    model = fresh(folder)
    classes = weight_classes(model)
    before = {c: all_weights(model, names) for c, names in classes.items()}
    masks = prune_model(model, 0.4, "uniform")
    for c, names in classes.items():
        check_smallest_pruned(before[c], torch.cat([masks[n].flatten() for n in names]), 0.4)
    for name, p in model.named_parameters():
        assert (p[~masks[name]] == 0).all()


def test_a_pruned_checkpoint_loads_and_still_translates(folder, tmp_path):
    out, record = prune_checkpoint(folder, 0.2, "blind", tmp_path / "pruned")
    loaded = load_checkpoint(out)
    masks = load_masks(out, loaded.model)
    for name, p in loaded.model.named_parameters():
        assert (p[~masks[name]] == 0).all()
    config = json.loads((out / "config.json").read_text())
    assert config["pruning"]["ratio"] == 0.2 and config["pruning"]["method"] == "blind"
    assert set(config["pruning"]["classes"]) == set(weight_classes(loaded.model))
    # the memorising model keeps every translation at 20% pruned (and loses most at 70%: see the paper's curves)
    assert [r.text for r in Translator(loaded).translate(SOURCES)] == TARGETS
    assert record["sparse_bytes"] < record["dense_fp16_bytes"]


def test_tied_embeddings_are_pruned_once(tmp_path):
    tr = fit(PAIRS[:4], tiny_config("general", emb_size=64, tie_embeddings=True), steps=5)
    out, _ = prune_checkpoint(save_checkpoint(tr.checkpoint, tmp_path / "tied"), 0.5, "uniform")
    assert out == tmp_path / "tied-pruned-0.5-uniform"
    model = load_checkpoint(out).model
    masks = load_masks(out, model)
    assert "generator.weight" not in masks and model.generator.weight is model.decoder.embeddings.weight
    assert (model.generator.weight[~masks["decoder.embeddings.embedding.weight"]] == 0).all()


def test_fp16_checkpoints_stay_fp16(tiny_translator, tmp_path):
    half = save_checkpoint(tiny_translator.checkpoint, tmp_path / "half", dtype=torch.float16)
    out, _ = prune_checkpoint(half, 0.2, "blind")
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert {f.get_slice(n).get_dtype() for n in f.keys()} == {"F16"}


@pytest.mark.parametrize("damage, message", [
    (lambda m: {**m, "encoder.rnn.weight_ih_l0": torch.ones(3, 3, dtype=torch.bool)}, "has shape"),
    (lambda m: {**m, "encoder.bogus": torch.ones(3, dtype=torch.bool)}, "not a parameter of this model"),
    (lambda m: {**m, "generator.bias": torch.ones(m["generator.bias"].shape)}, "must be BOOL or U8"),
])
def test_bad_masks_are_refused(folder, tmp_path, damage, message):
    out, _ = prune_checkpoint(folder, 0.2, "blind", tmp_path / "p")
    model = load_checkpoint(out).model
    save_file(damage(load_masks(out, model)), str(out / MASKS_FILE))
    with pytest.raises(CheckpointError, match=message):
        load_masks(out, model)


def test_too_large_or_missing_masks_are_refused(folder, tmp_path):
    out, _ = prune_checkpoint(folder, 0.2, "blind", tmp_path / "p")
    model = load_checkpoint(out).model
    (out / MASKS_FILE).write_bytes(b"\0" * (2 << 20))  # (more than a header and one byte a weight)
    with pytest.raises(CheckpointError, match="more than the masks of this model need"):
        load_masks(out, model)
    (out / MASKS_FILE).unlink()
    with pytest.raises(CheckpointError, match="no pruning masks"):
        load_masks(out, model)


def test_apply_masks_keeps_pruned_weights_at_zero_while_training(folder, tiny_translator):
    model = fresh(folder)
    masks = prune_model(model, 0.5, "blind")
    ckpt = tiny_translator.checkpoint
    src = [ckpt.src_vocab.encode(get_tokenizer("de").tokenize(s)) for s in SOURCES[:4]]
    tgt = [ckpt.tgt_vocab.encode(get_tokenizer("en").tokenize(t)) for t in TARGETS[:4]]
    batch = ParallelDataset(src, tgt).make_batch([0, 1, 2, 3])
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(2):
        logits, _ = model(batch.src, batch.src_lengths, batch.tgt_in)
        opt.zero_grad()
        sequence_loss(logits, batch.tgt_out, 0.0)[0].backward()
        opt.step()
        regrown = sum(int((p[~masks[n]] != 0).sum()) for n, p in model.named_parameters())
        apply_masks(model, masks)
        assert regrown > 0  # (the step does move pruned weights: the masks are what keeps them at 0)
        assert all((p[~masks[n]] == 0).all() for n, p in model.named_parameters())


def test_sparse_size_shrinks_with_the_ratio(folder):
    sizes = []
    for ratio in (0.0, 0.3, 0.6, 0.9):
        model = fresh(folder)
        sizes.append(sparse_size_bytes(model, prune_model(model, ratio, "blind")))
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 4
    n = sum(p.numel() for p in fresh(folder).parameters())
    assert dense_size_bytes(fresh(folder)) == 2 * n
    assert sizes[0] == 2 * n + sum(-(-p.numel() // 8) for p in fresh(folder).parameters())  # values + bitmask


def test_averaging_gives_the_mean(folder, tmp_path):
    other = fit(PAIRS, tiny_config("general"), steps=3, seed=1)
    second = save_checkpoint(other.checkpoint, tmp_path / "second")
    averaged = average_checkpoints([folder, second])
    a, b = load_checkpoint(folder).model.state_dict(), load_checkpoint(second).model.state_dict()
    for name, value in averaged.model.state_dict().items():
        assert torch.equal(value, (a[name] + b[name]) / 2), name
    assert averaged.extra["averaged"] == [str(folder), str(second)]


def test_averaging_a_checkpoint_with_itself_gives_it_back(folder):
    averaged = average_checkpoints([folder, folder, folder])
    original = load_checkpoint(folder).model.state_dict()
    assert all(torch.equal(v, original[k]) for k, v in averaged.model.state_dict().items())


def test_averaging_refuses_mismatched_vocabularies(folder, tmp_path):
    other = save_checkpoint(load_checkpoint(folder), tmp_path / "other")
    words = (other / "tgt.vocab").read_text().split("\n")
    words[4], words[5] = words[5], words[4]  # (the same size: only the words differ)
    (other / "tgt.vocab").write_text("\n".join(words))
    with pytest.raises(CheckpointError, match="different target vocabularies"):
        average_checkpoints([folder, other])
    small = save_checkpoint(fit(PAIRS[:3], tiny_config("general"), steps=1).checkpoint, tmp_path / "small")
    with pytest.raises(CheckpointError, match="different models.*src_vocab"):
        average_checkpoints([folder, small])


def test_the_commands_work_end_to_end(folder, tmp_path, capsys):
    assert main(["prune", "--model", str(folder), "--ratio", "0.2", "--method", "uniform",
                 "--out", str(tmp_path / "p")]) == 0
    assert "pruned 20.0% of the weights (class-uniform)" in capsys.readouterr().out
    assert [r.text for r in Translator.load(tmp_path / "p").translate(SOURCES[:3])] == TARGETS[:3]
    assert main(["average", "--model", str(tmp_path / "p"), str(folder), "--out", str(tmp_path / "avg")]) == 0
    config = json.loads((tmp_path / "avg" / "config.json").read_text())
    assert config["averaged"] == [str(tmp_path / "p"), str(folder)]
    assert "pruning" not in config and config["model"] == json.loads((folder / "config.json").read_text())["model"]
    assert [r.text for r in Translator.load(tmp_path / "avg").translate(SOURCES[:3])] == TARGETS[:3]


@pytest.mark.parametrize("argv, message", [
    (["prune", "--model", "MODEL", "--ratio", "1"], "the pruning ratio must be in [0, 1)"),
    (["prune", "--model", "MODEL", "--ratio", "-0.1"], "the pruning ratio must be in [0, 1)"),
    (["prune", "--model", "MODEL", "--ratio", "0.2", "--method", "magic"], "unknown pruning method 'magic'"),
    (["prune", "--model", "MODEL", "--ratio", "0.2", "--out", "FILE"], "exists and is not a checkpoint folder"),
    (["prune", "--model", "MODEL", "--ratio", "0.2", "--out", "MODEL"], "the output is one of the input checkpoints"),
    (["prune", "--model", "MISSING", "--ratio", "0.2"], "no such checkpoint folder"),
    (["average", "--model", "MODEL", "MODEL", "--out", "FILE"], "exists and is not a checkpoint folder"),
    (["average", "--model", "MODEL", "MISSING", "--out", "OUT"], "no such checkpoint folder"),
])
def test_bad_input_is_an_error(folder, tmp_path, capsys, argv, message):
    (tmp_path / "FILE").write_text("not a checkpoint")
    names = {"MODEL": folder, "FILE": tmp_path / "FILE", "MISSING": tmp_path / "missing", "OUT": tmp_path / "out"}
    assert main([str(names.get(a, a)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not (tmp_path / "out").exists()
