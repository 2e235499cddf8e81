"""The CUDA path end to end: training with mixed precision, search on the GPU, and no
host-device synchronisation inside the decoding loop except at its checks.

Skipped where no GPU is present (CI has none); run ``python -m pytest tests/test_cuda.py``
on a machine with one."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch

from conftest import PAIRS
from nmt.data import pad
from nmt.search import beam_search
from nmt.translator import Translator
from test_training import tiny_corpus, trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SOURCES = [s for s, _ in PAIRS]


def on_gpu(translator: Translator) -> Translator:
    return Translator(copy.deepcopy(translator.checkpoint), "cuda")


@pytest.mark.parametrize("kind", ["none", "dot", "general", "concat"])
def test_translations_on_the_gpu_match_the_cpu(tiny_translators, kind):
    cpu = tiny_translators[kind]
    gpu = on_gpu(cpu)
    assert next(gpu.model.parameters()).is_cuda
    for beam in (1, 5):
        a = cpu.translate(SOURCES, beam_size=beam, n_best=min(beam, 3), replace_unk=False)
        b = gpu.translate(SOURCES, beam_size=beam, n_best=min(beam, 3), replace_unk=False)
        assert [t.text for t in a] == [t.text for t in b]
        assert [[c.text for c in t.n_best] for t in a] == [[c.text for c in t.n_best] for t in b]
        assert [t.score for t in a] == pytest.approx([t.score for t in b], abs=1e-4)


def test_beam_search_syncs_with_the_host_only_at_its_checks(tiny_translator):
    """Between two decoder steps that are not a check, nothing waits for the GPU."""
    gpu = on_gpu(tiny_translator)
    ids = [gpu.checkpoint.src_vocab.encode(gpu.src_tok.tokenize(s)) for s in SOURCES[:8]]
    src = pad(ids).cuda()
    lengths = torch.tensor([len(x) for x in ids], device="cuda")
    model, check_every = gpu.model, 4
    syncs = [0]  # before the first step, then one count per step (its call and the loop after it)
    step = model.step

    def counting_step(prev, state):
        syncs.append(0)
        return step(prev, state)

    def record(message, *args, **kwargs):
        if "synchroniz" in str(message):
            syncs[-1] += 1

    model.step = counting_step
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            beam_search(model, src, lengths, beam_size=5, check_every=check_every)
        finally:
            torch.cuda.set_sync_debug_mode("default")
            del model.step
    per_step = syncs[1:-1]  # the last one also holds the final collection of results
    assert len(per_step) > check_every
    assert sum(syncs) > 0, "no synchronisation reported at all: the counter does not work"
    assert all(n == 0 for t, n in enumerate(per_step) if (t + 1) % check_every), per_step


def test_training_on_the_gpu_with_mixed_precision(tmp_path):
    files = tiny_corpus(tmp_path, n_train=64, n_valid=16)
    t = trainer(files, tmp_path / "run", epochs=1)
    assert t.device.type == "cuda" and t.amp
    t.run()
    metrics = json.loads((tmp_path / "run/metrics.jsonl").read_text().splitlines()[0])
    assert metrics["train_loss"] == metrics["train_loss"]  # not NaN
    assert next(t.model.parameters()).is_cuda


def test_no_amp_trains_in_full_precision_on_the_gpu(tmp_path):
    files = tiny_corpus(tmp_path, n_train=32, n_valid=8)
    t = trainer(files, tmp_path / "run", epochs=1)
    t.cfg.amp = False
    t = type(t)(t.data_cfg, t.vocab_cfg, t.model_cfg, t.cfg)
    assert t.device.type == "cuda" and not t.amp
