"""tracked.jsonl (a few validation sentences' greedy translation and attention after every epoch): reading an
untrusted file (nmt.serving.tracked), its figure with a slider over the epochs (nmt.serving.plots), the
model cards (the app's and the Hub's) and the Hub's file list. The files are made here by hand, in the
format training writes."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hub_server import FakeHub
from test_app import build_catalog
from test_hub import checkpoint_files, err, ok, read_folder, resolve, run_hub

from nmt import hub as nmt_hub
from nmt.checkpoint import MAX_TRACKED_BYTES, Checkpoint, download_limits
from nmt.serving import plots
from nmt.serving.model_card import model_card
from nmt.serving.tracked import read_tracked

SOURCES = [["Ein", "Hund", "läuft", "."], ["Zwei", "Männer", "spielen", "Fußball", "."]]
TRANSLATIONS = [  # per epoch, per sentence: the translation changes (and its length) from epoch to epoch
    [["A", "."], ["Two", "."]],
    [["A", "dog", "."], ["Two", "men", "."]],
    [["A", "dog", "runs", "."], ["Two", "men", "play", "soccer", "."]],
    [["A", "dog", "is", "running", "."], ["Two", "men", "play", "soccer", "."]],
    [["A", "dog", "runs", "."], ["Two", "men", "are", "playing", "soccer", "."]],
]


def attention(n_out: int, n_src: int, epoch: int) -> list[list[float]]:
    """(n_out + 1) x n_src weights, each row summing to 1 (up to rounding), sharper with the epoch."""
    rows = []
    for i in range(n_out + 1):
        focus = min(n_src - 1, i)
        raw = [1.0 + (4.0 * epoch if j == focus else 0.0) for j in range(n_src)]
        rows.append([round(w / sum(raw), 3) for w in raw])
    return rows


def records(epochs: int = 5) -> list[dict]:
    return [{"epoch": e + 1, "sentences": [
        {"source": src, "translation": TRANSLATIONS[e % 5][k], "attention": attention(len(TRANSLATIONS[e % 5][k]), len(src), e)}
        for k, src in enumerate(SOURCES)]} for e in range(epochs)]


def write(folder: Path, lines) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tracked.jsonl"
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)) + "\n" for x in lines),
                    encoding="utf-8")
    return path


def tracked_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "nmt.serving.tracked" and r.levelno >= logging.WARNING]


# ----------------------------------------------------------------------------- reading
def test_a_valid_file_reads_back_as_written(tmp_path, caplog):
    write(tmp_path, records())
    got = read_tracked(tmp_path)
    assert got == records() and [r["epoch"] for r in got] == [1, 2, 3, 4, 5]
    assert read_tracked(str(tmp_path)) == got  # (a str folder too)
    assert not tracked_warnings(caplog)


def test_extra_keys_are_dropped_and_blank_lines_skipped(tmp_path):
    first = records(1)[0]
    line = {**first, "note": "x", "sentences": [{**s, "score": -1.5} for s in first["sentences"]]}
    write(tmp_path, [line, ""])
    assert read_tracked(tmp_path) == [first]


def test_absent_or_empty_gives_none_quietly(tmp_path, caplog):
    assert read_tracked(tmp_path) is None and read_tracked(None) is None
    write(tmp_path, [])
    assert read_tracked(tmp_path) is None
    assert not tracked_warnings(caplog)


def _malformed() -> dict:
    good = records(2)
    s0 = good[0]["sentences"][0]

    def with_sentence(**change) -> list:
        return [{"epoch": 1, "sentences": [{**s0, **change}]}]

    return {
        "not JSON": ["{not json"],
        "a list": [[1, 2]],
        "epoch missing": [{"sentences": good[0]["sentences"]}],
        "epoch a bool": [{"epoch": True, "sentences": good[0]["sentences"]}],
        "epoch a float": [{"epoch": 1.0, "sentences": good[0]["sentences"]}],
        "epoch negative": [{"epoch": -1, "sentences": good[0]["sentences"]}],
        "epochs repeated": [good[0], good[0]],
        "epochs decreasing": [good[1], good[0]],
        "no sentences": [{"epoch": 1, "sentences": []}],
        "sentences not a list": [{"epoch": 1, "sentences": {"source": ["a"]}}],
        "too many sentences": [{"epoch": 1, "sentences": [s0] * 21}],
        "a sentence not an object": [{"epoch": 1, "sentences": ["Ein Hund"]}],
        "other sentences later": [good[0], {"epoch": 2, "sentences": good[1]["sentences"][::-1]}],
        "fewer sentences later": [good[0], {"epoch": 2, "sentences": good[1]["sentences"][:1]}],
        "source a string": with_sentence(source="Ein Hund läuft ."),
        "empty source": with_sentence(source=[], attention=[[]] * (len(s0["translation"]) + 1)),
        "a token not a string": with_sentence(translation=["A", 3]),
        "an empty token": with_sentence(translation=["A", ""]),
        "a token of 101 characters": with_sentence(translation=["A", "x" * 101]),
        "201 tokens": with_sentence(translation=["a"] * 201, attention=[[0.25] * 4] * 202),
        "translation missing": with_sentence(translation=None),
        "one attention row short": with_sentence(attention=s0["attention"][:-1]),
        "one attention row long": with_sentence(attention=s0["attention"] + [s0["attention"][0]]),
        "one column short": with_sentence(attention=[row[:-1] for row in s0["attention"]]),
        "a ragged row": with_sentence(attention=[s0["attention"][0][:-1]] + s0["attention"][1:]),
        "attention a number": with_sentence(attention=0.5),
        "a weight above 1": with_sentence(attention=[[1.5, 0, 0, 0]] + s0["attention"][1:]),
        "a negative weight": with_sentence(attention=[[-0.1, 0, 0, 0]] + s0["attention"][1:]),
        "a weight a string": with_sentence(attention=[["0.5", 0, 0, 0]] + s0["attention"][1:]),
        "a weight a bool": with_sentence(attention=[[True, 0, 0, 0]] + s0["attention"][1:]),
        "a NaN weight": ['{"epoch": 1, "sentences": [{"source": ["a"], "translation": [], "attention": [[NaN]]}]}'],
        "an infinite weight": ['{"epoch": 1, "sentences": [{"source": ["a"], "translation": [], "attention": [[Infinity]]}]}'],
        "a good line, then a bad one": [good[0], "[]"],
        "deeply nested": ["[" * 100_000 + "]" * 100_000],
    }


@pytest.mark.parametrize("case", list(_malformed()))
def test_anything_malformed_gives_none_and_one_warning(tmp_path, caplog, case):
    write(tmp_path, _malformed()[case])
    caplog.set_level(logging.WARNING, "nmt.serving.tracked")
    assert read_tracked(tmp_path) is None
    [warning] = tracked_warnings(caplog)
    assert "tracked.jsonl" in warning


def test_invalid_utf8_gives_none_and_a_warning(tmp_path, caplog):
    (tmp_path / "tracked.jsonl").write_bytes(b'{"epoch": 1, "sentences": [{"source": ["\xff"]}]}\n')
    assert read_tracked(tmp_path) is None
    assert len(tracked_warnings(caplog)) == 1


def test_an_oversized_file_is_refused(tmp_path, caplog):
    path = write(tmp_path, records(1))
    with open(path, "ab") as fh:
        fh.truncate(MAX_TRACKED_BYTES + 1)  # (sparse: the size is all that is looked at)
    assert read_tracked(tmp_path) is None
    [warning] = tracked_warnings(caplog)
    assert "over the limit of 4.0 MiB" in warning
    assert MAX_TRACKED_BYTES == 4 * 1024 * 1024


def test_a_link_out_of_the_folder_or_a_non_regular_file_is_refused(tmp_path, caplog):
    outside = write(tmp_path / "elsewhere", records(2))
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "tracked.jsonl").symlink_to(outside)
    assert read_tracked(folder) is None
    assert "outside the checkpoint folder" in tracked_warnings(caplog)[-1]

    (folder / "tracked.jsonl").unlink()
    (folder / "tracked.jsonl").symlink_to("/dev/zero")
    assert read_tracked(folder) is None
    (folder / "tracked.jsonl").unlink()
    (folder / "tracked.jsonl").symlink_to(folder / "missing.jsonl")  # dangling
    assert read_tracked(folder) is None
    (folder / "tracked.jsonl").unlink()
    (folder / "tracked.jsonl").mkdir()
    assert read_tracked(folder) is None
    (folder / "tracked.jsonl").rmdir()
    os.mkfifo(folder / "tracked.jsonl")  # (a FIFO is never opened: reading it would block)
    assert read_tracked(folder) is None
    assert len(tracked_warnings(caplog)) == 5


def test_a_link_inside_the_folder_is_read(tmp_path):
    write(tmp_path, records(2))
    (tmp_path / "tracked.jsonl").rename(tmp_path / "history.jsonl")
    (tmp_path / "tracked.jsonl").symlink_to("history.jsonl")
    assert read_tracked(tmp_path) == records(2)


def test_a_model_without_attention_may_record_null(tmp_path):
    line = {"epoch": 1, "sentences": [{"source": ["Ein", "Hund"], "translation": ["A", "dog"], "attention": None}]}
    write(tmp_path, [line])
    [record] = read_tracked(tmp_path)
    assert record["sentences"][0]["attention"] is None
    with pytest.raises(ValueError, match="no attention"):
        plots.tracked_attention_figure([record])


# ----------------------------------------------------------------------------- the figure
def padded(sentence: dict, n_rows: int) -> tuple[list, list[str]]:
    n_src = len(sentence["source"])
    pad = n_rows - len(sentence["translation"]) - 1
    return sentence["attention"] + [[None] * n_src] * pad, sentence["translation"] + ["&lt;/s&gt;"] + [""] * pad


@pytest.mark.parametrize("k", [0, 1])
def test_the_figure_has_one_slider_step_per_epoch_with_its_heatmap_labels_and_title(k):
    recs = records()
    fig = plots.tracked_attention_figure(recs, sentence=k)
    n_rows = max(len(r["sentences"][k]["translation"]) for r in recs) + 1
    [slider] = fig.layout.sliders
    assert len(slider.steps) == 5 and slider.active == 4  # it starts at the last epoch
    for step, record in zip(slider.steps, recs):
        sentence = record["sentences"][k]
        z, labels = padded(sentence, n_rows)
        [trace_z] = step.args[0]["z"]
        assert step.method == "update" and step.label == str(record["epoch"])
        assert trace_z == z and step.args[1]["yaxis.ticktext"] == labels
        title = step.args[1]["title.text"]
        assert f"<b>epoch {record['epoch']}</b>: " + " ".join(sentence["translation"]) in title.replace("<br>", " ")
        [hover] = step.args[0]["customdata"]
        assert [cell[0] for cell in hover[0]] == SOURCES[k]
        assert [row[0][1] for row in hover[:len(sentence["translation"]) + 1]] == sentence["translation"] + ["&lt;/s&gt;"]
    # the figure as drawn first is the last epoch's; the rows and columns are fixed, the source words on top
    heatmap = fig.data[0]
    last_z, last_labels = padded(recs[-1]["sentences"][k], n_rows)
    assert [list(row) for row in heatmap.z] == last_z and list(fig.layout.yaxis.ticktext) == last_labels
    assert list(fig.layout.yaxis.tickvals) == list(range(n_rows)) and fig.layout.yaxis.autorange == "reversed"
    assert list(fig.layout.xaxis.ticktext) == SOURCES[k] and fig.layout.xaxis.side == "top"
    assert fig.layout.title.text == slider.steps[-1].args[1]["title.text"]
    assert (heatmap.zmin, heatmap.zmax) == (0.0, 1.0)
    assert heatmap.colorscale == plots.go.Heatmap(colorscale=plots.COLORSCALE).colorscale  # (the app's heatmaps' colours)
    assert heatmap.hoverongaps is False and fig.layout.height >= plots.MIN_HEIGHT
    json.loads(fig.to_json())  # (plain JSON, as the app sends it)


def test_every_title_has_as_many_lines_so_the_heatmap_stays_put():
    recs = records()
    recs[-1]["sentences"][0]["translation"] = ["word"] * 30
    recs[-1]["sentences"][0]["attention"] = [[0.25] * 4] * 31
    fig = plots.tracked_attention_figure(recs)
    counts = {step.args[1]["title.text"].count("<br>") for step in fig.layout.sliders[0].steps}
    assert len(counts) == 1 and counts.pop() >= 1


def test_words_are_escaped_and_shortened_only_in_the_ticks():
    recs = records(2)
    for r in recs:
        r["sentences"][0]["source"] = ["<b>", "Donaudampfschifffahrt", "&", "."]
        r["sentences"][1]["source"] = ["<b>", "Donaudampfschifffahrt", "&", "."]
    fig = plots.tracked_attention_figure(recs)
    assert list(fig.layout.xaxis.ticktext) == ["&lt;b&gt;", "Donaudampfs…", "&amp;", "."]
    assert fig.data[0].customdata[0][1][0] == "Donaudampfschifffahrt"


def test_many_epochs_are_thinned_to_evenly_spaced_steps():
    recs = records(450)
    for i, r in enumerate(recs):
        r["epoch"] = i + 1
    fig = plots.tracked_attention_figure(recs)
    steps = fig.layout.sliders[0].steps
    assert len(steps) == plots.TRACKED_MAX_STEPS and steps[0].value == "1" and steps[-1].value == "450"
    assert sum(1 for s in steps if s.label) <= plots.TRACKED_MAX_LABELS + 1 and steps[-1].label == "450"


def test_no_such_sentence_is_a_value_error():
    with pytest.raises(ValueError):
        plots.tracked_attention_figure(records(), sentence=2)
    with pytest.raises(ValueError):
        plots.tracked_attention_figure([])


# ----------------------------------------------------------------------------- the model cards
@pytest.fixture
def app_models(tmp_path, monkeypatch, tiny_translators):
    import demo.checks
    from demo import endpoints
    from nmt.serving import catalog

    checkpoints = build_catalog(tmp_path / "checkpoints", {k: tiny_translators[k] for k in ("general", "dot")})
    models = catalog.discover(checkpoints)
    monkeypatch.setattr(demo.checks, "MODELS", models)
    monkeypatch.setattr(endpoints, "MODELS", models)
    return checkpoints


def test_the_app_card_shows_the_tracked_sentences_when_present_and_not_when_absent(app_models):
    from demo import endpoints

    write(app_models / "de-en-general", records())
    figure, labels = endpoints.tracked_attention("de-en", "general", "")
    assert labels == ["Ein Hund läuft .", "Zwei Männer spielen Fußball ."]
    assert len(figure.layout.sliders[0].steps) == 5 and list(figure.layout.xaxis.ticktext) == SOURCES[0]
    figure, _ = endpoints.tracked_attention("de-en", "general", "", sentence=1)
    assert list(figure.layout.xaxis.ticktext) == SOURCES[1]
    assert endpoints.tracked_attention("de-en", "dot", "") == (None, [])  # no tracked.jsonl
    card, curves = endpoints.model_card("de-en", "general", "")  # (the card and its curves as before)
    assert "parameters" in card and curves is not None
    write(app_models / "de-en-dot", ["{broken"])
    assert endpoints.tracked_attention("de-en", "dot", "") == (None, [])
    assert endpoints.tracked_attention("de-en", "concat", "") == (None, [])  # (a model that is not there)


def test_the_page_shows_the_choice_only_for_several_sentences(app_models):
    page = pytest.importorskip("demo.page")

    write(app_models / "de-en-general", records())
    pick, plot = page.tracked_view("de-en", "general", "")
    assert pick.visible is True and [c[1] for c in pick.choices] == [0, 1] and pick.value == 0
    assert plot.visible is True and plot.value is not None
    one = [{**r, "sentences": r["sentences"][:1]} for r in records()]
    write(app_models / "de-en-general", one)
    pick, plot = page.tracked_view("de-en", "general", "")
    assert pick.visible is False and plot.visible is True
    pick, plot = page.tracked_view("de-en", "dot", "")
    assert pick.visible is False and plot.visible is False


def test_the_hub_card_lists_the_first_sentence_epoch_by_epoch(tiny_translator, tmp_path):
    ckpt = tiny_translator.checkpoint
    bundled = Checkpoint(ckpt.model, ckpt.src_vocab, ckpt.tgt_vocab, "de", "en", {})
    recs = records()
    recs[0]["sentences"][0]["translation"] = ["A", "|", "*b*"]
    recs[0]["sentences"][0]["attention"] = [[0.25] * 4] * 4
    card = model_card(bundled, {}, "cmd", "a CPU", [], tracked=recs)
    assert "2 validation\nsentences" in card.text and "*Ein Hund läuft .*" in card.text
    assert "| 1 | A &#124; &#42;b&#42; |" in card.text and "| 5 | A dog runs . |" in card.text
    assert "Translations forming" not in model_card(bundled, {}, "cmd", "a CPU", []).text


# ----------------------------------------------------------------------------- the Hub
def test_checkpoints_carry_tracked_jsonl_with_a_download_limit():
    assert "tracked.jsonl" in nmt_hub.CHECKPOINT_FILES and "tracked.jsonl" in nmt_hub.DOWNLOAD_FILES
    assert download_limits(1000)["tracked.jsonl"] == MAX_TRACKED_BYTES
    with pytest.raises(nmt_hub.CheckpointError, match=r"tracked.jsonl \(5,000,000 bytes, the limit is 4,194,304\)"):
        nmt_hub._check_listing("'m/x'", {**{f: 10 for f in nmt_hub.REQUIRED_FILES}, "tracked.jsonl": 5_000_000},
                               download_limits(1000))


def test_push_uploads_it_and_a_download_brings_it(tmp_path):
    files = checkpoint_files(tmp_path) | {"tracked.jsonl": write(tmp_path / "made", records(2)).read_bytes()}
    folder = tmp_path / "model"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    with FakeHub() as server:
        server.add_repo("mallory/huge", {**files, "tracked.jsonl": b"x" * 5000})
        push, pulled, huge = run_hub(server.client_env(tmp_path / "hf"),
                                     ("push_checkpoint", {"model_dir": str(folder), "repo_id": "bob/tiny"}),
                                     resolve("bob/tiny"), resolve("mallory/huge", max_bytes={"tracked.jsonl": 4096}))
        assert "result" in push and server.repo_files("bob/tiny")["tracked.jsonl"] == files["tracked.jsonl"]
    assert read_folder(ok(pulled)) == files and read_tracked(ok(pulled)) == records(2)
    assert "tracked.jsonl (5,000 bytes, the limit is 4,096)" in err(huge)


def test_rounded_weights_are_accepted_as_training_writes_them(tmp_path):
    rows = [[round(1 / 3, 3)] * 3 for _ in range(2)]  # 0.333 x 3: rows sum to 0.999
    write(tmp_path, [{"epoch": 7, "sentences": [{"source": ["a", "b", "c"], "translation": ["x"], "attention": rows}]}])
    [record] = read_tracked(tmp_path)
    assert record["epoch"] == 7 and all(math.isclose(w, 0.333) for row in record["sentences"][0]["attention"] for w in row)
