"""Checkpoint folders: identical outputs after reload, fp16, clear errors, crash safety."""

from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import PAIRS, fit, tiny_config
from nmt.checkpoint import Checkpoint, atomic_dir, load_checkpoint, resolve_dir, save_checkpoint
from nmt.errors import CheckpointError
from nmt.serving.translator import Translator

SENTS = [s for s, _ in PAIRS[:5]] + ["Ein Hund spielt mit einem Kind im Park."]


def test_reload_gives_identical_outputs(tiny_translator, tmp_path):
    folder = save_checkpoint(tiny_translator.checkpoint, tmp_path / "ckpt")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "src.vocab", "tgt.vocab"]
    loaded = Translator(load_checkpoint(folder))
    a = tiny_translator.translate(SENTS, beam_size=5, n_best=3)
    b = loaded.translate(SENTS, beam_size=5, n_best=3)
    assert [[(c.text, c.score) for c in r.n_best] for r in a] == [[(c.text, c.score) for c in r.n_best] for r in b]
    for x, y in zip(a, b):
        assert (x.attention == y.attention).all()


def test_a_saved_checkpoint_is_readable_by_others_as_the_umask_allows(tiny_translator, tmp_path):
    """(The temporary folder and safetensors' file are private until the checkpoint is committed.)"""
    old = os.umask(0o027)
    try:
        folder = save_checkpoint(tiny_translator.checkpoint, tmp_path / "ckpt")
    finally:
        os.umask(old)
    assert folder.stat().st_mode & 0o777 == 0o750
    assert {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()} == dict.fromkeys(
        ["config.json", "model.safetensors", "src.vocab", "tgt.vocab"], 0o640)


def test_tied_embeddings_are_saved_once_and_reloaded_tied(tmp_path):
    tr = fit(PAIRS[:4], tiny_config("general", emb_size=64, tie_embeddings=True), steps=5)
    folder = save_checkpoint(tr.checkpoint, tmp_path / "tied")
    model = load_checkpoint(folder).model
    assert model.generator.weight is model.decoder.embeddings.weight
    assert torch.equal(model.generator.weight, tr.model.generator.weight)


def test_fp16_checkpoint_loads_as_fp32_with_the_same_translations(tiny_translator, tmp_path):
    folder = save_checkpoint(tiny_translator.checkpoint, tmp_path / "half", dtype=torch.float16)
    loaded = load_checkpoint(folder)
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    assert [r.text for r in Translator(loaded).translate(SENTS)] == [r.text for r in tiny_translator.translate(SENTS)]


def test_config_records_languages_and_version(tiny_translator, tmp_path):
    folder = save_checkpoint(tiny_translator.checkpoint, tmp_path / "c")
    config = json.loads((folder / "config.json").read_text())
    assert config["format_version"] == 1 and config["src_lang"] == "de" and config["tgt_lang"] == "en"
    assert config["model"]["attention"] == "general"


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "model.safetensors").unlink(), "missing model.safetensors"),
    (lambda f: ((f / "model.safetensors").rename(f / "pytorch_model.bin")), "pickled checkpoints are never loaded"),
    (lambda f: (f / "config.json").write_text('{"format_version": 99, "model": {}}'), "format version 99"),
    (lambda f: (f / "config.json").write_text("{not json"), "unreadable"),
    (lambda f: (f / "model.safetensors").write_bytes(b"garbage"), "not a safetensors file"),
    (lambda f: (f / "src.vocab").write_text("<blank>\n<unk>\n<s>\n</s>\nx\n"), "vocabulary files do not match"),
])
def test_broken_checkpoints_fail_clearly(tiny_translator, tmp_path, damage, message):
    folder = save_checkpoint(tiny_translator.checkpoint, tmp_path / "broken")
    damage(folder)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(folder)


def test_failed_write_keeps_the_previous_checkpoint(tiny_translator, tmp_path):
    folder = save_checkpoint(tiny_translator.checkpoint, tmp_path / "ck")
    before = (folder / "model.safetensors").read_bytes()
    with pytest.raises(RuntimeError):
        with atomic_dir(folder) as tmp:
            (tmp / "model.safetensors").write_bytes(b"half written")
            raise RuntimeError("killed")
    assert (folder / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_crash_between_renames_is_recovered(tiny_translator, tmp_path):
    folder = save_checkpoint(tiny_translator.checkpoint, tmp_path / "ck")
    folder.rename(tmp_path / ".ck.old")  # the state after the first rename of a replacement
    assert resolve_dir(folder) == tmp_path / ".ck.old"
    load_checkpoint(resolve_dir(folder))


def test_translator_load_takes_a_local_folder(tiny_translator, tmp_path):
    folder = save_checkpoint(tiny_translator.checkpoint, tmp_path / "local")
    assert Translator.load(str(folder)).translate(["Ein Hund läuft."])[0].text == "A dog runs."
    with pytest.raises(CheckpointError):
        Translator.load(str(tmp_path / "missing"))


def test_checkpoint_dataclass_roundtrip_keeps_extra(tiny_translator, tmp_path):
    ck = tiny_translator.checkpoint
    extra = Checkpoint(ck.model, ck.src_vocab, ck.tgt_vocab, "de", "en", {"scores": {"bleu": 1.5}})
    assert load_checkpoint(save_checkpoint(extra, tmp_path / "x")).extra["scores"] == {"bleu": 1.5}
