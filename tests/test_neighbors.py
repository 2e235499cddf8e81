"""Nearest training examples (nmt.serving.neighbors, ``python -m nmt index``): a tiny memorising model's
training states find their own sentences, the index agrees with exact search, hostile index files are
clear errors, the command line and the Hub carry the index."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import PAIRS, fit, tiny_config
from safetensors.numpy import load_file, save_file

from nmt.checkpoint import download_limits, file_sha256, save_checkpoint
from nmt.errors import CheckpointError, NMTError
from nmt.hub import INDEX_FILES, _check_listing
from nmt.serving import neighbors
from nmt.serving.neighbors import IndexSettings, build_index, find_neighbors, sentence_states
from nmt.serving.translator import Translator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hub_server import FakeHub  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SOURCES, TARGETS = [s for s, _ in PAIRS], [t for _, t in PAIRS]
# Few candidates, so that exact re-ranking does not simply look at the whole tiny index.
SMALL = IndexSettings(target_candidates=12, source_candidates=12, opq_iterations=5)
SECRET = "SECRET-CONTENT-42"


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, tiny_translator) -> Path:
    folder = save_checkpoint(tiny_translator.checkpoint, tmp_path_factory.mktemp("nn") / "model")
    build_index(Translator.load(folder), SOURCES, TARGETS, settings=SMALL)
    return folder


@pytest.fixture
def translator(indexed) -> Translator:
    return Translator.load(indexed)


@pytest.fixture
def copy(indexed, tmp_path) -> Path:
    """A copy of the indexed checkpoint to spoil."""
    folder = tmp_path / "model"
    folder.mkdir()
    for p in indexed.iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    return folder


def exact_states(tr: Translator, side: str) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Every training position's state, computed one sentence at a time, and its (sentence, position)."""
    rows, where = [], []
    for i, (s, t) in enumerate(PAIRS):
        src = tr.checkpoint.src_vocab.encode(tr.src_tok.tokenize(s))
        tgt = tr.checkpoint.tgt_vocab.encode(tr.tgt_tok.tokenize(t))
        memory, out = sentence_states(tr.model, tr.device, [src], [tgt])
        states = out[0, : len(tgt)] if side == "target" else memory[0]  # (the state predicting </s> is not indexed)
        rows.append(states)
        where += [(i, p) for p in range(len(states))]
    return np.concatenate(rows), where


# ----------------------------------------------------------------------------- behaviour
@pytest.mark.parametrize("side", ["target", "source"])
def test_a_training_state_finds_itself_first(translator, side):
    for i in (0, 4, 13, 19):
        tokens = (translator.tgt_tok.tokenize(TARGETS[i]) if side == "target"
                  else translator.src_tok.tokenize(SOURCES[i]))
        for position in (0, len(tokens) // 2, len(tokens) - 1):
            [first, *rest] = find_neighbors(translator, SOURCES[i], TARGETS[i], position, side, k=3)
            assert (first.sentence, first.position) == (i, position) and first.distance < 1e-3
            assert (first.source, first.target, first.tokens) == (SOURCES[i], TARGETS[i], tokens)
            assert len(rest) == 2 and all(n.distance >= first.distance for n in rest)


@pytest.mark.parametrize("side", ["target", "source"])
def test_the_index_agrees_with_exact_search(translator, side):
    states, where = exact_states(translator, side)
    queries = PAIRS[::3] + [("Ein Hund spielt im Park.", "A dog plays in the park."),
                            ("Zwei Frauen trinken Kaffee am See.", "Two women drink coffee at the lake.")]
    hits, total = 0, 0
    for source, target in queries:
        n_positions = len((translator.tgt_tok if side == "target" else translator.src_tok).tokenize(
            target if side == "target" else source))
        for position in range(n_positions):
            found = find_neighbors(translator, source, target, position, side, k=5)
            query = neighbors._query_state(translator, translator.src_tok.tokenize(source),
                                           translator.tgt_tok.tokenize(target) if side == "target" else None, position)
            distances = np.sqrt(((states - query) ** 2).sum(1))
            best = set(np.argsort(distances, kind="stable")[:5].tolist())
            hits += len(best & {where.index((n.sentence, n.position)) for n in found})
            total += 5
            for n in found:  # distances are exact, not the quantizer's
                assert n.distance == pytest.approx(distances[where.index((n.sentence, n.position))], abs=1e-3)
            assert [n.distance for n in found] == sorted(n.distance for n in found)
    assert hits / total >= 0.9


def test_without_a_translation_the_models_own_is_used(translator):
    [best] = translator.translate([SOURCES[3]], replace_unk=False)
    own = find_neighbors(translator, SOURCES[3], None, 1, "target", 4)
    assert own == find_neighbors(translator, SOURCES[3], best.text, 1, "target", 4)
    assert (own[0].sentence, own[0].position) == (3, 1)  # (the model translates its training sentence exactly)
    with pytest.raises(NMTError, match=f"the translation has {len(best.tokens)} tokens"):
        find_neighbors(translator, SOURCES[3], None, len(best.tokens), "target", 1)


def test_bad_queries_are_clear_errors(translator):
    cases = [(dict(side="sideways"), "side must be 'target' or 'source'"), (dict(k=0), "between 1 and 100"),
             (dict(k=101), "between 1 and 100"), (dict(k=True), "k must be"), (dict(k=2.5), "k must be"),
             (dict(position=-1), "position must be"), (dict(position="1"), "position must be"),
             (dict(position=4), r"out of range: the translation has 4 tokens \(positions 0 to 3\)"),
             (dict(position=4, side="source"), "out of range: the source has 4 tokens")]
    for kwargs, message in cases:
        with pytest.raises(NMTError, match=message):
            find_neighbors(translator, "Ein Hund läuft.", "A dog runs.", **{"position": 0, **kwargs})
    with pytest.raises(NMTError, match="the source sentence is empty"):
        find_neighbors(translator, "   ", None)
    with pytest.raises(NMTError, match="the translation is empty"):
        find_neighbors(translator, "Ein Hund läuft.", " ")
    assert len(find_neighbors(translator, "Ein Hund läuft.", "A dog runs.", 3, "target", 100)) == 100


def test_a_model_without_an_index_says_how_to_build_one(tiny_translator, tmp_path):
    for tr in (tiny_translator, Translator.load(save_checkpoint(tiny_translator.checkpoint, tmp_path / "plain"))):
        with pytest.raises(NMTError, match="no nearest-neighbour index: build one with python -m nmt index"):
            find_neighbors(tr, "Ein Hund läuft.")


def test_the_index_is_loaded_once_per_translator_even_by_concurrent_requests(translator, monkeypatch):
    loads = []
    load = neighbors.load_index
    monkeypatch.setattr(neighbors, "load_index", lambda tr: loads.append(tr) or load(tr))
    results, barrier = [], threading.Barrier(4)

    def ask():
        barrier.wait()
        results.append(find_neighbors(translator, SOURCES[5], TARGETS[5], 2, "target", 3))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loads) == 1 and len(results) == 4 and all(r == results[0] for r in results)
    assert neighbors.cached_index(translator) is neighbors.cached_index(translator)


# ----------------------------------------------------------------------------- hostile index files
def rewrite(folder: Path, arrays: dict | None = None, config: dict | None = None, texts: dict | None = None) -> None:
    """Change the index files, keeping index.json's digests right (so that the other checks are reached)."""
    import hashlib

    if arrays is not None:
        save_file(arrays, str(folder / "index.safetensors"))
    for name, lines in (texts or {}).items():
        (folder / name).write_bytes(lines)
    cfg = json.loads((folder / "index.json").read_text())
    cfg.update(config or {})
    cfg["files"] = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in INDEX_FILES[1:]
                    if (folder / name).is_file()}
    (folder / "index.json").write_text(json.dumps(cfg))


def arrays_of(folder: Path) -> dict[str, np.ndarray]:
    return load_file(str(folder / "index.safetensors"))


def spoil(name: str, folder: Path, outside: Path) -> None:
    a = arrays_of(folder)
    cfg = json.loads((folder / "index.json").read_text())
    if name == "codes of the wrong width":
        rewrite(folder, a | {"target.codes": np.zeros((len(a["target.codes"]), 3), np.uint8)})
    elif name == "codes of the wrong dtype":
        rewrite(folder, a | {"source.codes": a["source.codes"].astype(np.int64)})
    elif name == "codes fewer than the sentences' positions":
        rewrite(folder, a | {"target.codes": a["target.codes"][:-1]})
    elif name == "lengths that do not add up":
        lengths = a["target.lengths"].copy()
        lengths[0] += 1
        lengths[1] -= 2
        rewrite(folder, a | {"target.lengths": lengths})
    elif name == "a length out of range":
        lengths = a["source.lengths"].copy()
        lengths[0], lengths[1] = 0, lengths[1] + lengths[0]
        rewrite(folder, a | {"source.lengths": lengths})
    elif name == "non-finite centroids":
        c = a["target.centroids"].copy()
        c[0, 0, 0] = np.nan
        rewrite(folder, a | {"target.centroids": c})
    elif name == "a missing array":
        rewrite(folder, {k: v for k, v in a.items() if k != "source.rotation"})
    elif name == "an extra array":
        rewrite(folder, a | {SECRET: np.zeros(3, np.float32)})
    elif name == "dimensions of another model":
        rewrite(folder, config={"target": {**cfg["target"], "dim": 32}})
    elif name == "a position count that lies":
        rewrite(folder, config={"source": {**cfg["source"], "positions": cfg["source"]["positions"] + 10}})
    elif name == "a file size that lies":
        data = (folder / "index.safetensors").read_bytes()
        (folder / "index.safetensors").write_bytes(data[:-100])
        rewrite(folder)
    elif name == "an oversized header":
        (folder / "index.safetensors").write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
        rewrite(folder)
    elif name == "a header that is not JSON":
        (folder / "index.safetensors").write_bytes((20).to_bytes(8, "little") + SECRET.encode() + b"\0\0\0")
        rewrite(folder)
    elif name == "a changed file":
        data = bytearray((folder / "index.safetensors").read_bytes())
        data[-1] ^= 1
        (folder / "index.safetensors").write_bytes(bytes(data))
    elif name == "index.json not JSON":
        (folder / "index.json").write_text("{" + SECRET)
    elif name == "an unknown format":
        rewrite(folder, config={"format_version": 99})
    elif name == "settings of the wrong type":
        rewrite(folder, config={"sentences": SECRET})
    elif name == "other weights":
        rewrite(folder, config={"weights_sha256": "0" * 64})
    elif name == "a missing text file":
        (folder / "index.tgt.txt.gz").unlink()
    elif name == "a text file with a line too few":
        rewrite(folder, texts={"index.src.txt.gz": gzip.compress("".join(s + "\n" for s in SOURCES[:-1]).encode())})
    elif name == "a text file of invalid UTF-8":
        rewrite(folder, texts={"index.tgt.txt.gz": gzip.compress((SECRET + "\xff\n").encode("latin-1") * len(PAIRS))})
    elif name == "a text file that is not gzip":
        rewrite(folder, texts={"index.tgt.txt.gz": "".join(t + "\n" for t in TARGETS).encode()})
    elif name == "a gzip bomb":
        rewrite(folder, texts={"index.src.txt.gz": gzip.compress(b"x" * (65 * 1024 * 1024), 1)})
    elif name == "a gzip file with more after it":
        data = (folder / "index.src.txt.gz").read_bytes()
        rewrite(folder, texts={"index.src.txt.gz": data + gzip.compress(SECRET.encode())})
    elif name == "a link out of the folder":
        (outside / "arrays").write_bytes((folder / "index.safetensors").read_bytes())
        (folder / "index.safetensors").unlink()
        (folder / "index.safetensors").symlink_to(outside / "arrays")
    elif name == "a link to a device":
        (folder / "index.src.txt.gz").unlink()
        (folder / "index.src.txt.gz").symlink_to("/dev/zero")
    elif name == "a FIFO":
        (folder / "index.tgt.txt.gz").unlink()
        os.mkfifo(folder / "index.tgt.txt.gz")
    elif name == "a folder instead of the arrays":
        (folder / "index.safetensors").unlink()
        (folder / "index.safetensors").mkdir()
    else:
        raise AssertionError(name)


HOSTILE = {
    "codes of the wrong width": "target.codes must be U8 of shape",
    "codes of the wrong dtype": "source.codes must be U8 of shape",
    "codes fewer than the sentences' positions": "target.codes must be U8 of shape",
    "lengths that do not add up": "target.lengths must be 1 to 1000 and add up to the number of codes",
    "a length out of range": "source.lengths must be 1 to 1000",
    "non-finite centroids": "must be finite numbers",
    "a missing array": "the arrays do not match index.json",
    "an extra array": "the arrays do not match index.json",
    "dimensions of another model": "built for another model",
    "a position count that lies": "source.codes must be U8 of shape",
    "a file size that lies": "bytes, but its arrays take",
    "an oversized header": "oversized header",
    "a header that is not JSON": "not a readable safetensors file",
    "a changed file": "does not match index.json",
    "index.json not JSON": "not valid JSON",
    "an unknown format": "not an index of this program",
    "settings of the wrong type": "sentences must be a whole number",
    "other weights": "built for other weights",
    "a missing text file": "missing or not a regular file",
    "a text file with a line too few": "19 lines, but index.json says 20 sentences",
    "a text file of invalid UTF-8": "line 1: not valid UTF-8",
    "a text file that is not gzip": "not a readable gzip file",
    "a gzip bomb": "over 64 MiB once decompressed",
    "a gzip file with more after it": "not one complete gzip stream",
    "a link out of the folder": "links to a file outside the checkpoint folder",
    "a link to a device": "links to a file outside the checkpoint folder",
    "a FIFO": "missing or not a regular file",
    "a folder instead of the arrays": "missing or not a regular file",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_index_files_are_clear_errors(name, copy, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    spoil(name, copy, outside)
    with pytest.raises(CheckpointError, match=HOSTILE[name]) as caught:
        find_neighbors(Translator.load(copy), SOURCES[0], TARGETS[0])
    assert SECRET not in str(caught.value)


def test_hub_limits_cover_the_index_files():
    limits = download_limits(1000)
    assert all(name in limits for name in INDEX_FILES)
    sizes = {"config.json": 10, "model.safetensors": 10, "src.vocab": 10, "tgt.vocab": 10,
             "index.safetensors": limits["index.safetensors"] + 1}
    with pytest.raises(CheckpointError, match="index.safetensors .* was not downloaded|was not downloaded"):
        _check_listing("'mallory/huge'", sizes, limits)
    _check_listing("'alice/fine'", {**sizes, "index.safetensors": 100}, limits)


# ----------------------------------------------------------------------------- the command line and the Hub
def run(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**(env or os.environ), "NMT_PROGRESS": "0"})


def test_the_cli_builds_an_index_and_refuses_bad_input(tiny_translator, tmp_path):
    folder = save_checkpoint(tiny_translator.checkpoint, tmp_path / "model")
    src, tgt, short = tmp_path / "train.de.gz", tmp_path / "train.en", tmp_path / "short.en"
    src.write_bytes(gzip.compress("".join(s + "\n" for s in SOURCES).encode()))
    tgt.write_text("".join(t + "\n" for t in TARGETS))
    short.write_text("".join(t + "\n" for t in TARGETS[:-1]))
    ok = run("-m", "nmt", "index", "--model", str(folder), "--src", str(src), "--tgt", str(tgt), "--batch-size", "7")
    assert ok.returncode == 0, ok.stderr
    assert "indexed 20 sentence pairs" in ok.stdout and "INFO Loading faiss" not in ok.stderr
    assert all((folder / name).is_file() for name in INDEX_FILES)
    assert gzip.decompress((folder / "index.tgt.txt.gz").read_bytes()).decode().split("\n")[:-1] == TARGETS
    assert not list(folder.glob(".*tmp"))
    for args, message in [(("--src", str(tmp_path / "nope.de"), "--tgt", str(tgt)), "nope.de: no such file"),
                          (("--src", str(src), "--tgt", str(short)), "has 20 lines but"),
                          (("--model", str(tmp_path / "absent"), "--src", str(src), "--tgt", str(tgt)),
                           "absent: no such checkpoint folder")]:
        args = args if "--model" in args else ("--model", str(folder), *args)
        bad = run("-m", "nmt", "index", *args)
        assert bad.returncode == 2 and bad.stderr.startswith("error: ") and message in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr


_NEIGHBORS = r"""
import dataclasses, json, sys
from nmt.serving.translator import Translator
from nmt.serving.neighbors import find_neighbors
t = Translator.load(sys.argv[1])
print(json.dumps([dataclasses.asdict(n) for n in find_neighbors(t, sys.argv[2], None, 1, "target", 4)]))
"""


def test_an_index_pushed_to_the_hub_comes_back_and_works(indexed, translator, tmp_path):
    local = [n.__dict__ for n in find_neighbors(translator, SOURCES[7], None, 1, "target", 4)]
    with FakeHub() as hub:
        env = hub.client_env(tmp_path / "hf", token="FAKE_TOKEN")
        push = run("-m", "nmt", "push", "--model", str(indexed), "--repo-id", "alice/tiny-nn", env=env)
        assert push.returncode == 0, push.stderr
        remote = hub.repo_files("alice/tiny-nn")
        assert all(remote[name] == (indexed / name).read_bytes() for name in INDEX_FILES)
        pulled = run("-c", _NEIGHBORS, "alice/tiny-nn", SOURCES[7], env=hub.client_env(tmp_path / "hf2"))
        assert pulled.returncode == 0, pulled.stderr
    remote_found = json.loads(pulled.stdout.splitlines()[-1])
    assert [{**n, "distance": 0} for n in remote_found] == [{**n, "distance": 0} for n in local]
    assert [n["distance"] for n in remote_found] == pytest.approx([n["distance"] for n in local], abs=1e-5)


def test_a_model_of_other_dimensions_cannot_use_an_index(indexed, tmp_path):
    other = fit(PAIRS[:6], tiny_config("general", hidden=32), steps=5)
    folder = save_checkpoint(other.checkpoint, tmp_path / "other")
    for name in INDEX_FILES:
        (folder / name).write_bytes((indexed / name).read_bytes())
    rewrite(folder, config={"weights_sha256": file_sha256(folder / "model.safetensors")})
    with pytest.raises(CheckpointError, match="built for another model"):
        find_neighbors(Translator.load(folder), SOURCES[0])
