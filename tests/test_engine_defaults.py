"""The fast path by default: int8 search on a CPU where the checkpoint records that it keeps its
validation BLEU, exact fp32 otherwise, and a setting given always wins (``Engines.resolve``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from conftest import PAIRS, shared_data

from nmt.config import EngineConfig
from nmt.data import read_parallel
from nmt.engines.int8 import INT8_MAX_BLEU_LOSS, int8_keeps_quality, measure_int8
from nmt.serving.translator import Translator

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [s for s, _ in PAIRS]


def with_record(translator: Translator, record) -> Translator:
    ck = translator.checkpoint
    return Translator(dataclasses.replace(ck, extra={**ck.extra, "int8": record}), "cpu")


@pytest.mark.parametrize("record, expected", [
    ({"valid_bleu_fp32": 40.0, "valid_bleu_int8": 39.8}, True),
    ({"valid_bleu_fp32": 40.0, "valid_bleu_int8": 40.0 - INT8_MAX_BLEU_LOSS}, True),
    ({"valid_bleu_fp32": 40.0, "valid_bleu_int8": 41.0}, True),
    ({"valid_bleu_fp32": 40.0, "valid_bleu_int8": 39.5}, False),  # too much lost: fp32 stays
    (None, False), ({}, False), ("yes", False), ([40, 40], False),
    ({"valid_bleu_fp32": "40", "valid_bleu_int8": 40}, False),
    ({"valid_bleu_fp32": float("nan"), "valid_bleu_int8": 40}, False),
    ({"valid_bleu_fp32": True, "valid_bleu_int8": True}, False),
])
def test_the_record_decides_int8(record, expected):
    assert int8_keeps_quality(record) is expected


def test_int8_is_the_default_only_where_the_record_allows_it(tiny_translator):
    good = with_record(tiny_translator, {"valid_bleu_fp32": 40.0, "valid_bleu_int8": 39.9})
    bad = with_record(tiny_translator, {"valid_bleu_fp32": 40.0, "valid_bleu_int8": 39.0})
    assert good.engines.resolve(EngineConfig()).int8 is True
    assert bad.engines.resolve(EngineConfig()).int8 is False
    assert tiny_translator.engines.resolve(EngineConfig()).int8 is False  # no record: exact fp32
    # What runs is what was decided: the default's scores are int8's, or fp32's.
    for translator, engine in ((good, True), (bad, False), (tiny_translator, False)):
        default = translator.translate(SOURCES, beam_size=3)
        explicit = translator.translate(SOURCES, beam_size=3, int8=engine)
        assert [t.score for t in default] == [t.score for t in explicit]


def test_a_setting_given_always_wins(tiny_translator):
    good = with_record(tiny_translator, {"valid_bleu_fp32": 40.0, "valid_bleu_int8": 40.0})
    assert good.engines.resolve(EngineConfig(int8=False)).int8 is False
    assert tiny_translator.engines.resolve(EngineConfig(int8=True)).int8 is True
    fp32 = good.translate(SOURCES, int8=False)
    assert [t.score for t in fp32] == [t.score for t in tiny_translator.translate(SOURCES)]
    assert good.engines.resolve(EngineConfig(inter_threads=3)).inter_threads == 3


def test_inter_threads_zero_takes_the_cpus_threads_up_to_four(tiny_translator, monkeypatch):
    for threads, expected in ((1, 1), (2, 2), (8, 4)):
        monkeypatch.setattr(torch, "get_num_threads", lambda t=threads: t)
        assert tiny_translator.engines.resolve(EngineConfig()).inter_threads == expected


def test_an_ensemble_takes_int8_only_if_every_model_records_it(tiny_translator):
    good = with_record(tiny_translator, {"valid_bleu_fp32": 40.0, "valid_bleu_int8": 40.0}).checkpoint
    assert Translator([good, good], "cpu").engines.resolve(EngineConfig()).int8 is True
    assert Translator([good, tiny_translator.checkpoint], "cpu").engines.resolve(EngineConfig()).int8 is False


def test_measure_int8_records_both_bleus(tiny_translator):
    record = measure_int8(tiny_translator, SOURCES, [t for _, t in PAIRS], beam_size=3)
    assert record["valid_bleu_fp32"] == 100.0 and record["sentences"] == len(PAIRS)
    assert int8_keeps_quality(record) == (record["valid_bleu_fp32"] - record["valid_bleu_int8"] <= INT8_MAX_BLEU_LOSS)


@pytest.mark.parametrize("name", ["de-en-general", "en-de-general"])
def test_bundled_models_keep_their_bleu_with_int8(name):
    """The record is true on this CPU too: int8 within the bound of fp32 on the whole validation set."""
    data = shared_data()
    folder = ROOT / "checkpoints" / name
    record = json.loads((folder / "config.json").read_text())["int8"]
    assert int8_keeps_quality(record)
    translator = Translator.load(folder, device="cpu")
    src, tgt = name.split("-")[:2]
    sources, refs = read_parallel(data / f"val.{src}.gz", data / f"val.{tgt}.gz")
    measured = measure_int8(translator, sources, refs)
    assert measured["valid_bleu_fp32"] - measured["valid_bleu_int8"] <= INT8_MAX_BLEU_LOSS
