"""``python -m nmt preprocess`` and ``ShardedDataset``: the pairs, ids and batches of training from the
raw files, whatever the shards and workers; hostile folders refused with clear errors; atomic output."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from conftest import PAIRS, shared_data
from nmt.cli import main
from nmt.config import ModelConfig, VocabConfig
from nmt.data import ParallelDataset, length_batches, tokenize_pair_files
from nmt.errors import DataError
from nmt.preprocess import MANIFEST, SHARD_NAME, ShardedDataset, preprocess, shard_bounds
from nmt.training.corpus import build_vocabularies

MAX_LEN, VOCAB = 30, VocabConfig(src_vocab_size=60, tgt_vocab_size=50)  # (small: some words become <unk>)
LAYOUTS = {"1 shard, 1 worker": (1, 1), "3 shards, 2 workers": (3, 2), "3 shards, 1 worker": (3, 1)}


def synthetic_lines() -> tuple[list[str], list[str]]:
    """~150 pairs of varied lengths (sentences repeated), two empty pairs and one over MAX_LEN."""
    src, tgt = [], []
    for i in range(150):
        k = i % 4 + 1
        src.append(" ".join(PAIRS[(i + j) % len(PAIRS)][0] for j in range(k)))
        tgt.append(" ".join(PAIRS[(i + j) % len(PAIRS)][1] for j in range(k)))
    src[7], tgt[40] = "", "   "
    src[90], tgt[90] = " ".join(s for s, _ in PAIRS), " ".join(t for _, t in PAIRS)
    return src, tgt


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("corpus")
    src, tgt = synthetic_lines()
    with gzip.open(folder / "train.de.gz", "wt", encoding="utf-8") as f:  # (one side gzipped, one plain)
        f.write("\n".join(src) + "\n")
    (folder / "train.en").write_text("\n".join(tgt) + "\n", encoding="utf-8")
    return folder / "train.de.gz", folder / "train.en"


def reference(src_path, tgt_path, max_len: int, vocab: VocabConfig):
    """What training from the raw files does: tokenize_pair_files, build_vocabularies, encode."""
    src_tok, tgt_tok = tokenize_pair_files(src_path, tgt_path, "de", "en", max_len)
    v = build_vocabularies(src_tok, tgt_tok, ModelConfig(), vocab)
    return v, ParallelDataset([v.src_vocab.encode(s) for s in src_tok], [v.tgt_vocab.encode(t) for t in tgt_tok])


@pytest.fixture(scope="module")
def expected(corpus):
    return reference(*corpus, MAX_LEN, VOCAB)


@pytest.fixture(scope="module")
def folders(corpus, tmp_path_factory) -> dict[str, Path]:
    out = {}
    for name, (shards, workers) in LAYOUTS.items():
        out[name] = tmp_path_factory.mktemp("pre") / "data"
        preprocess(*corpus, out[name], "de", "en", MAX_LEN, VOCAB, shards=shards, workers=workers, chunk_lines=40)
    return out


def assert_same_batch(a, b) -> None:
    for name in ("src", "src_lengths", "tgt_in", "tgt_out"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y), name
    assert a.index == b.index


@pytest.mark.parametrize("layout", LAYOUTS)
def test_ids_and_vocabularies_are_those_of_training_from_the_raw_files(folders, expected, layout):
    vocabs, data = expected
    ds = ShardedDataset.open(folders[layout])
    assert ds.src_vocab.itos == vocabs.src_vocab.itos and ds.tgt_vocab.itos == vocabs.tgt_vocab.itos
    assert len(ds) == len(data) == 147  # (150, less two empty pairs and one long one)
    assert [ds.pair(i) for i in range(len(ds))] == list(zip(data.src, data.tgt))
    assert ds.src_lengths.tolist() == [len(s) for s in data.src]
    assert ds.tgt_lengths.tolist() == [len(t) for t in data.tgt]
    m = ds.manifest
    assert (ds.src_lang, ds.tgt_lang, ds.settings["max_len"], ds.settings["src_vocab_size"]) == ("de", "en", 30, 60)
    assert m["dropped"] == {"empty": 2, "long": 1} and m["files"]["src"]["lines"] == 150
    assert [s["file"] for s in m["shards"]] == [SHARD_NAME.format(k) for k in range(LAYOUTS[layout][0])]
    assert {p.name for p in folders[layout].iterdir()} == {MANIFEST, "src.vocab", "tgt.vocab",
                                                           *(s["file"] for s in m["shards"])}


def test_workers_change_nothing_in_the_files(folders):
    one, two = (json.loads((folders[k] / MANIFEST).read_text()) for k in ("3 shards, 1 worker", "3 shards, 2 workers"))
    assert one["shards"] == two["shards"] and one["vocabularies"] == two["vocabularies"]


@pytest.mark.parametrize("layout", ["1 shard, 1 worker", "3 shards, 2 workers"])
def test_batches_are_parallel_datasets_for_every_seed(folders, expected, layout):
    _, data = expected
    ds = ShardedDataset.open(folders[layout])
    for shuffle, in_order, seed in ((True, False, 0), (True, False, 5), (False, False, 0), (True, True, 3)):
        for batch_size in (1, 16, 64, 500):
            assert ds.batch_indices(batch_size, shuffle, seed, in_order) == \
                data.batch_indices(batch_size, shuffle, seed, in_order)
    for a, b in zip(ds.batches(16, seed=11), data.batches(16, seed=11), strict=True):
        assert_same_batch(a, b)
    assert_same_batch(ds.make_batch([146, 0, 73, 0]), data.make_batch([146, 0, 73, 0]))  # (any order, repeats)


def test_length_batches_is_the_original_ordering():
    """The ordering ParallelDataset.batch_indices had before it was shared (here as it was written)."""
    def original(src, tgt, batch_size, shuffle, seed, in_order):
        rng = random.Random(seed)
        order = list(range(len(src)))
        if shuffle and not in_order:
            rng.shuffle(order)
        order.sort(key=lambda i: (len(src[i]), len(tgt[i])))
        chunks = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
        if shuffle and not in_order:
            rng.shuffle(chunks)
        return chunks

    rng = random.Random(1)
    src = [[4] * rng.randint(1, 6) for _ in range(500)]  # (many ties)
    tgt = [[5] * rng.randint(1, 6) for _ in range(500)]
    for args in ((32, True, 0, False), (7, True, 9, False), (32, False, 0, False), (32, True, 2, True)):
        want = original(src, tgt, *args)
        assert length_batches([len(s) for s in src], [len(t) for t in tgt], *args) == want
        assert ParallelDataset(src, tgt).batch_indices(*args) == want


def test_a_multi30k_slice(tmp_path):
    data = shared_data()
    files = []
    for lang in ("de", "en"):
        with gzip.open(data / f"train.{lang}.gz", "rt", encoding="utf-8") as f:
            lines = [next(f) for _ in range(2000)]
        files.append(tmp_path / f"slice.{lang}")
        files[-1].write_text("".join(lines), encoding="utf-8")
    vocabs, want = reference(*files, 50, VocabConfig(min_freq=2))
    preprocess(*files, tmp_path / "pre", "de", "en", 50, VocabConfig(min_freq=2), shards=3, workers=2, chunk_lines=300)
    ds = ShardedDataset.open(tmp_path / "pre")
    assert ds.src_vocab.itos == vocabs.src_vocab.itos and ds.tgt_vocab.itos == vocabs.tgt_vocab.itos
    assert len(ds) == len(want) and len(ds.manifest["shards"]) == 3
    chunks = ds.batch_indices(64, True, 7)
    assert chunks == want.batch_indices(64, True, 7)
    for chunk in chunks:
        assert_same_batch(ds.make_batch(chunk), want.make_batch(chunk))


def test_shard_bounds():
    assert shard_bounds(10, shards=3) == [(0, 4), (4, 7), (7, 10)]
    assert shard_bounds(10, shard_size=4) == [(0, 4), (4, 7), (7, 10)]  # (at most 4 a shard, balanced)
    assert shard_bounds(8, shard_size=4) == [(0, 4), (4, 8)]
    assert shard_bounds(10) == [(0, 10)]
    with pytest.raises(DataError, match="more than the 10 pairs"):
        shard_bounds(10, shards=11)


def test_vocabularies_for_the_trainer(folders):
    ds = ShardedDataset.open(folders["1 shard, 1 worker"])
    m = ModelConfig()
    v = ds.vocabularies(m)
    assert (m.src_vocab, m.tgt_vocab) == (len(ds.src_vocab), len(ds.tgt_vocab)) and v.inputs.plain
    with pytest.raises(DataError, match="word ids only"):
        ds.vocabularies(ModelConfig(use_chars_enc=True))
    with pytest.raises(IndexError):
        ds.make_batch([len(ds)])


# ---- hostile folders --------------------------------------------------------------------------
@pytest.fixture
def copy(folders, tmp_path) -> Path:
    """A damageable copy of the 3-shard folder."""
    return Path(shutil.copytree(folders["3 shards, 2 workers"], tmp_path / "copy"))


def edit_manifest(folder: Path, change) -> None:
    m = json.loads((folder / MANIFEST).read_text())
    change(m)
    (folder / MANIFEST).write_text(json.dumps(m))


def rewrite_shard(folder: Path, change, k: int = 1) -> None:
    """Change shard ``k``'s arrays and record its new sha256 and token counts (so that only the change is wrong)."""
    path = folder / SHARD_NAME.format(k)
    arrays = load_file(str(path))
    change(arrays)
    save_file(arrays, str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()

    def record(m):
        m["shards"][k].update(sha256=digest, src_tokens=len(arrays["src"]), tgt_tokens=len(arrays["tgt"]))
    edit_manifest(folder, record)


def test_offsets_past_the_end_are_refused(copy):
    rewrite_shard(copy, lambda a: a["src_offsets"].__setitem__(-1, a["src_offsets"][-1] + 5))
    with pytest.raises(DataError, match=r"shard-00001.safetensors: src_offsets is damaged"):
        ShardedDataset.open(copy)


def test_offsets_that_go_back_are_refused(copy):
    rewrite_shard(copy, lambda a: a["tgt_offsets"].__setitem__(3, 10**9))
    with pytest.raises(DataError, match="tgt_offsets is damaged"):
        ShardedDataset.open(copy)


@pytest.mark.parametrize("side, value", [("tgt", 50), ("src", -1)])
def test_ids_outside_the_vocabulary_are_refused(copy, side, value):
    rewrite_shard(copy, lambda a: a[side].__setitem__(0, value))
    with pytest.raises(DataError, match=f"{side} holds ids outside its vocabulary"):
        ShardedDataset.open(copy)


def test_a_truncated_shard_is_refused(copy):
    path = copy / SHARD_NAME.format(2)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="shard-00002.safetensors: cut off"):
        ShardedDataset.open(copy)


def test_an_oversized_header_is_refused_before_reading(copy):
    path = copy / SHARD_NAME.format(0)
    path.write_bytes(struct.pack("<Q", 2**60) + path.read_bytes()[8:])
    with pytest.raises(DataError, match="not a shard"):
        ShardedDataset.open(copy)


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "sub/../../x"])
def test_a_manifest_naming_files_outside_is_refused(copy, name):
    edit_manifest(copy, lambda m: m["shards"][0].update(file=name))
    with pytest.raises(DataError, match="is not a file inside"):
        ShardedDataset.open(copy)


def test_a_shard_linking_outside_is_refused(copy, tmp_path):
    outside = tmp_path / "outside.safetensors"
    shutil.move(copy / SHARD_NAME.format(0), outside)
    (copy / SHARD_NAME.format(0)).symlink_to(outside)
    with pytest.raises(DataError, match="is not a file inside"):
        ShardedDataset.open(copy)


def test_a_changed_shard_fails_its_sha256(copy):
    path = copy / SHARD_NAME.format(1)
    arrays = load_file(str(path))
    arrays["src"][0] = 4 if arrays["src"][0] != 4 else 5  # (a valid id: only the sha256 tells)
    save_file(arrays, str(path))
    with pytest.raises(DataError, match="shard-00001.safetensors: not the shard preprocess.json records"):
        ShardedDataset.open(copy)


def test_a_changed_vocabulary_fails_its_sha256(copy):
    (copy / "tgt.vocab").write_text((copy / "tgt.vocab").read_text().replace("dog", "cat"))
    with pytest.raises(DataError, match="tgt.vocab: not the vocabulary"):
        ShardedDataset.open(copy)


@pytest.mark.parametrize("change, message", [
    (lambda a: a.update(extra=np.zeros(2, np.int32)), "exactly the tensors"),
    (lambda a: a.update(src=a["src"].astype(np.int64)), "src must be a vector of I32"),
    (lambda a: a.update(src=a["src"][:-1]), "not of the"),
])
def test_shards_of_the_wrong_shape_are_refused(copy, change, message):
    path = copy / SHARD_NAME.format(1)
    arrays = load_file(str(path))
    change(arrays)
    save_file(arrays, str(path))
    with pytest.raises(DataError, match=message):
        ShardedDataset.open(copy)


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(format_version=99), "format version 99 is not supported"),
    (lambda m: m.update(pairs=True), "'pairs' must be a whole number"),
    (lambda m: m["shards"][1].update(pairs=m["shards"][1]["pairs"] + 1), "must hold the 147 pairs"),
    (lambda m: m["shards"].append(m["shards"][0]), "each named once"),
    (lambda m: m["shards"][0].update(sha256="0" * 63), "'sha256' must be 64 hexadecimal"),
    (lambda m: m.update(src_lang="../de"), "language code"),
    (lambda m: m["vocabularies"]["src"].update(size=3), "at least 4"),
    (lambda m: m["shards"][0].update(file="model.safetensors"), "not a shard name"),
])
def test_bad_manifests_are_refused(copy, change, message):
    edit_manifest(copy, change)
    with pytest.raises(DataError, match=message):
        ShardedDataset.open(copy)


def test_not_a_folder_or_not_json(copy, tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        ShardedDataset.open(tmp_path / "nothing")
    with pytest.raises(DataError, match="not a preprocessed folder"):
        ShardedDataset.open(tmp_path)
    (copy / MANIFEST).write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        ShardedDataset.open(copy)


# ---- the command --------------------------------------------------------------------------------
def test_the_command_writes_the_folder_and_refuses_or_replaces_it(corpus, tmp_path, capsys):
    out = tmp_path / "pre"
    files = ["preprocess", "--train-src", str(corpus[0]), "--train-tgt", str(corpus[1])]
    args = files + ["--out", str(out), "--shards", "2", "--workers", "2", "--src-vocab-size", "60"]
    assert main(args) == 0
    assert "preprocessed 147 pairs (dropped 2 empty, 1 longer than 50) into" in capsys.readouterr().out
    first = (out / MANIFEST).read_text()
    assert main(args + ["--max-len", "8"]) == 2  # (a second run into the same --out: refused, nothing changed)
    assert "exists already; give --overwrite" in capsys.readouterr().err and (out / MANIFEST).read_text() == first
    assert main(args + ["--max-len", "8", "--overwrite"]) == 0  # (replaced atomically)
    assert ShardedDataset.open(out).settings["max_len"] == 8 and len(ShardedDataset.open(out)) < 147
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pre"]  # (no temporary folder left)
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert main(files + ["--out", str(other), "--overwrite"]) == 2
    assert "is not a preprocessed folder" in capsys.readouterr().err and (other / "notes.txt").exists()
    with pytest.raises(SystemExit):
        main(args + ["--shard-size", "10"])  # (--shards or --shard-size)


def test_an_interrupted_write_leaves_nothing_that_looks_complete(corpus, folders, tmp_path, monkeypatch):
    import nmt.preprocess as pre

    real, calls = pre.write_shard, []

    def failing(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(pre, "write_shard", failing)
    with pytest.raises(KeyboardInterrupt):
        preprocess(*corpus, tmp_path / "new", max_len=MAX_LEN, shards=3, workers=1)
    assert list(tmp_path.iterdir()) == []
    old = Path(shutil.copytree(folders["1 shard, 1 worker"], tmp_path / "old"))
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        preprocess(*corpus, old, max_len=MAX_LEN, shards=3, workers=1, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"] and len(ShardedDataset.open(old)) == 147


def test_overwrite_never_deletes_the_inputs(corpus, tmp_path):
    out = tmp_path / "pre"
    preprocess(*corpus, out, max_len=MAX_LEN, workers=1)
    shutil.copy(corpus[1], out / "train.en")
    with pytest.raises(DataError, match="holds the input"):
        preprocess(corpus[0], out / "train.en", out, max_len=MAX_LEN, workers=1, overwrite=True)
    assert (out / "train.en").exists()
