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
from test_training import tiny_corpus, trainer

from nmt.config import EngineConfig
from nmt.data import pad
from nmt.engines.cuda_graphs import GraphedBeamSearch
from nmt.search import beam_search
from nmt.serving.translator import Translator

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


def assert_same_translations(a, b):
    assert [t.text for t in a] == [t.text for t in b]
    assert [[c.text for c in t.n_best] for t in a] == [[c.text for c in t.n_best] for t in b]
    assert [t.score for t in a] == pytest.approx([t.score for t in b], abs=1e-5)
    for x, y in zip(a, b):
        assert (x.attention is None) == (y.attention is None)
        if x.attention is not None:
            assert torch.allclose(torch.as_tensor(x.attention), torch.as_tensor(y.attention), atol=1e-5)


@pytest.mark.parametrize("kind", ["none", "general", "concat"])
def test_cuda_graph_search_equals_the_eager_search(tiny_translators, kind):
    gpu = on_gpu(tiny_translators[kind])
    for beam, n_best, alpha in ((1, 1, 0.0), (5, 3, 0.0), (4, 2, 1.0)):
        kwargs = dict(beam_size=beam, n_best=n_best, length_penalty=alpha, replace_unk=False)
        graphed = gpu.translate(SOURCES, cuda_graphs=True, **kwargs)
        assert_same_translations(gpu.translate(SOURCES, cuda_graphs=False, **kwargs), graphed)
    assert gpu.engines.graphs is not None and gpu.engines.graphs.captures >= 3


def test_cuda_graphs_are_captured_once_per_shape(tiny_translator):
    gpu = on_gpu(tiny_translator)
    first = gpu.translate(SOURCES[:4])
    graphed = gpu.engines.graphs
    captures = graphed.captures
    assert captures == 1
    assert_same_translations(first, gpu.translate(SOURCES[:4]))  # replayed from the start
    assert graphed.captures == captures
    other = gpu.translate(SOURCES[4:9])  # another shape, another graph
    assert graphed.captures == captures + 1
    assert_same_translations(other, on_gpu(tiny_translator).translate(SOURCES[4:9], cuda_graphs=False))
    assert_same_translations(first, gpu.translate(SOURCES[:4]))


def test_the_graph_cache_keeps_the_most_recent(tiny_translator):
    gpu = on_gpu(tiny_translator)
    search = GraphedBeamSearch(gpu.model, cache_size=2)
    for n in (2, 3, 4, 3):
        src, lengths = gpu_batch(gpu, SOURCES[:n])
        search(src, lengths)
    assert search.captures == 3 and len(search._graphs) == 2
    assert [key[0][0] for key in search._graphs] == [4, 3]  # sentences of each kept shape


def gpu_batch(gpu: Translator, sentences):
    ids = [gpu.checkpoint.src_vocab.encode(gpu.src_tok.tokenize(s)) for s in sentences]
    return pad(ids).cuda(), torch.tensor([len(x) for x in ids], device="cuda")


def test_graph_replays_never_wait_for_the_gpu(tiny_translator):
    gpu = on_gpu(tiny_translator)
    search = GraphedBeamSearch(gpu.model)
    src, lengths = gpu_batch(gpu, SOURCES[:8])
    search(src, lengths, beam_size=5)
    [(beams, graph)] = search._graphs.values()
    syncs = []
    with torch.inference_mode(), warnings.catch_warnings():
        beams.load(gpu.model.encode(src, lengths), lengths)
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *args, **kwargs: syncs.append(str(message))
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(beams.steps):
                graph.replay()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert bool(beams.stopped.all())
    assert not [s for s in syncs if "synchroniz" in s]


@pytest.mark.parametrize("beam", [1, 4])
def test_prefixes_beam_trees_and_scores_on_the_gpu_match_the_cpu(tiny_translator, beam):
    """A forced prefix (searched eagerly: graphs have fixed steps), the beam tree and forced decoding."""
    gpu = on_gpu(tiny_translator)
    prefixes = ["", "A", "Two men", "The", "", "A man rides"] + [""] * (len(SOURCES) - 6)
    a = tiny_translator.translate(SOURCES, beam_size=beam, prefix=prefixes, replace_unk=False)
    b = gpu.translate(SOURCES, beam_size=beam, prefix=prefixes, replace_unk=False)
    assert [t.tokens for t in a] == [t.tokens for t in b] and [t.forced for t in a] == [t.forced for t in b]
    tree_cpu, tree_gpu = (t.beam_tree(SOURCES[0], beam_size=beam, prefix="A") for t in (tiny_translator, gpu))
    assert [tree_gpu.nodes[i].token for i in tree_gpu.best_path] == [tree_cpu.nodes[i].token for i in tree_cpu.best_path]
    sa, sb = (t.score(SOURCES, [r.text for r in a]) for t in (tiny_translator, gpu))
    assert [x.score for x in sb] == pytest.approx([x.score for x in sa], abs=1e-4)


def test_an_ensemble_and_simple_stopping_replay_as_cuda_graphs(tiny_translator):
    """The graphed search of an ensemble (and with simple stopping) finds what the eager one finds."""
    gpu = on_gpu(tiny_translator)
    ensemble = Translator([gpu.checkpoint, copy.deepcopy(gpu.checkpoint)], "cuda")
    graphs = ensemble.engines.get(EngineConfig()).graphs
    assert graphs is not None
    ids = [gpu.checkpoint.src_vocab.encode(gpu.src_tok.tokenize(s)) for s in SOURCES[:8]]
    src, lengths = pad(ids).cuda(), torch.tensor([len(x) for x in ids], device="cuda")
    for simple in (False, True):
        kw = dict(beam_size=4, n_best=2, length_penalty=1.0, max_len_a=1.5, max_len_b=5, simple=simple)
        eager = beam_search(ensemble.model, src, lengths, **kw)
        graphed = graphs(src, lengths, **kw)
        assert [[h.tokens for h in s] for s in eager] == [[h.tokens for h in s] for s in graphed]
        assert [[h.score for h in s] for s in eager] == pytest.approx([[h.score for h in s] for s in graphed], abs=1e-4)
