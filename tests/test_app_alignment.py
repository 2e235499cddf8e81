"""A word aligner's links on the app's heatmaps: the look-up of nmt.serving.alignments over a tiny data folder
and alignment folder (monkeypatched $NMT_DATA / $NMT_ALIGNMENTS), and the app's /translate, /score and
render functions in-process, with a tiny memorising model (tests/conftest.py)."""

from __future__ import annotations

import gzip
import logging
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import PAIRS, shared_data
from test_app import build_catalog

import demo.checks
from demo import endpoints, inside, inside_view, render
from nmt.serving import alignments, catalog, plots
from nmt.tokenization import get_tokenizer

DE, EN = get_tokenizer("de"), get_tokenizer("en")
SENTENCE, REFERENCE = PAIRS[0]  # "Ein Hund läuft." / "A dog runs."
OTHER = "Der Hund springt über den Zaun."  # a PAIRS sentence the data folder does not hold
VAL = PAIRS[:6]  # (OTHER is PAIRS[8])
TRAIN = [("Ein Hund läuft.", "The dog is running."), *PAIRS[10:14]]  # a second reference of SENTENCE


def diagonal(src: str, tgt: str) -> str:
    """Pharaoh links of word i to word i (as far as both sentences go), then the last source word to every
    remaining target word: links that tell the two references of SENTENCE apart."""
    s, t = len(DE.tokenize(src)), len(EN.tokenize(tgt))
    return " ".join(f"{min(i, s - 1)}-{i}" for i in range(t))


def links_of(src: str, tgt: str) -> list[tuple[int, int]]:
    return [tuple(map(int, link.split("-"))) for link in diagonal(src, tgt).split()]


def write_split(data: Path, folder: Path, split: str, pairs, direction: str = "de-en", lines=None) -> None:
    for lang, side in (("de", 0), ("en", 1)):
        with gzip.open(data / f"{split}.{lang}.gz", "wt", encoding="utf-8") as fh:
            fh.writelines(p[side] + "\n" for p in pairs)
    if lines is None:
        lines = [diagonal(s, t) for s, t in pairs]
        if direction == "en-de":
            lines = [" ".join(f"{link.split('-')[1]}-{link.split('-')[0]}" for link in line.split()) for line in lines]
    (folder / f"{split}.{direction}.align").write_text("".join(line + "\n" for line in lines))


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """A data folder and an alignment folder (val and train, de-en) that the look-up reads."""
    data, folder = tmp_path / "data", tmp_path / "alignments"
    data.mkdir()
    folder.mkdir()
    write_split(data, folder, "val", VAL)
    write_split(data, folder, "train", TRAIN)
    monkeypatch.setenv(catalog.DATA_ENV, str(data))
    monkeypatch.setenv(alignments.ALIGNMENTS_ENV, str(folder))
    alignments.clear_cache()
    yield data, folder
    alignments.clear_cache()


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "nmt.serving.alignments" and r.levelno >= logging.WARNING]


# ----------------------------------------------------------------------------- the look-up
def test_a_known_pair_gets_its_links_from_text_or_tokens(folders):
    want = links_of(SENTENCE, REFERENCE)
    assert alignments.known_links("de", "en", SENTENCE, EN.tokenize(REFERENCE)) == want
    assert alignments.known_links("de", "en", DE.tokenize(SENTENCE), EN.tokenize(REFERENCE)) == want
    # the same Moses tokens whatever the spacing; the second reference of the sentence has its own links
    assert alignments.known_links("de", "en", "  Ein Hund läuft . ", ["A", "dog", "runs", "."]) == want
    second = "The dog is running."
    assert alignments.known_links("de", "en", SENTENCE, EN.tokenize(second)) == links_of(SENTENCE, second)
    # every split is read: the last pair of train
    src, tgt = TRAIN[-1]
    assert alignments.known_links("de", "en", src, EN.tokenize(tgt)) == links_of(src, tgt)


def test_the_other_direction_reads_the_swapped_file_or_swaps_the_links(folders):
    data, folder = folders
    swapped = [(t, s) for s, t in links_of(SENTENCE, REFERENCE)]
    assert alignments.known_links("en", "de", REFERENCE, DE.tokenize(SENTENCE)) == swapped  # (from de-en files)
    write_split(data, folder, "val", VAL, direction="en-de")
    (folder / "val.en-de.align").write_text("0-0\n" * len(VAL))  # a file of its own wins
    alignments.clear_cache()
    assert alignments.known_links("en", "de", REFERENCE, DE.tokenize(SENTENCE)) == [(0, 0)]


@pytest.mark.parametrize("src,tgt", [
    (OTHER, "The dog jumps over the fence."),  # not in the data
    (SENTENCE, "A dog runs fast."),  # a known source, another translation
    (SENTENCE, "A dog <unk> ."),  # the model's tokens with an unknown word
    ("Ein Hundläuft.", REFERENCE),  # the same characters, other tokens: the key matches, the tokens do not
    (SENTENCE, "A dogruns."),
    ("", REFERENCE), (SENTENCE, ""),
])
def test_an_unknown_pair_gets_none(folders, src, tgt):
    assert alignments.known_links("de", "en", src, tgt.split() if "<unk>" in tgt else EN.tokenize(tgt)) is None


def test_languages_outside_the_data_or_naming_paths_get_none(folders, caplog):
    assert alignments.known_links("de", "fr", SENTENCE, ["Un", "chien"]) is None
    for hostile in ("../de", "de/../../x", "", "d" * 40, None):
        assert alignments.known_links(hostile, "en", SENTENCE, EN.tokenize(REFERENCE)) is None
        assert alignments.known_links("de", hostile, SENTENCE, EN.tokenize(REFERENCE)) is None
    assert not warnings(caplog)


@pytest.mark.parametrize("missing", ["data", "alignments", "align file", "data file"])
def test_missing_folders_or_files_get_none_silently(folders, monkeypatch, caplog, missing):
    data, folder = folders
    if missing == "data":
        monkeypatch.setenv(catalog.DATA_ENV, str(data / "nowhere"))
    elif missing == "alignments":
        monkeypatch.setenv(alignments.ALIGNMENTS_ENV, str(folder / "nowhere"))
    elif missing == "align file":
        (folder / "val.de-en.align").unlink()
    else:
        (data / "val.en.gz").unlink()
    assert alignments.known_links("de", "en", SENTENCE, EN.tokenize(REFERENCE)) is None
    src, tgt = TRAIN[-1]  # train is still there (unless a whole folder is missing)
    found = alignments.known_links("de", "en", src, EN.tokenize(tgt))
    assert (found is None) == (missing in ("data", "alignments"))
    assert not warnings(caplog)


def test_the_default_folders(monkeypatch):
    monkeypatch.delenv(catalog.DATA_ENV, raising=False)
    monkeypatch.delenv(alignments.ALIGNMENTS_ENV, raising=False)
    assert alignments.data_dir() == catalog.DEFAULT_DATA
    assert alignments.alignments_dir() == catalog.REPO_ROOT / "alignments"


@pytest.mark.parametrize("corrupt", [
    "not a link", "links outside", "too few lines", "binary", "oversized", "data lines differ", "bad gzip",
])
def test_a_corrupt_file_is_logged_once_and_counts_as_missing(folders, monkeypatch, caplog, corrupt):
    data, folder = folders
    align = folder / "val.de-en.align"
    lines = [diagonal(s, t) for s, t in VAL]
    if corrupt == "not a link":
        lines[3] = "0-0 <script>alert(1)</script>"
    elif corrupt == "links outside":
        lines[0] = "0-0 99-1"
    elif corrupt == "too few lines":
        lines = lines[:-1]
    elif corrupt == "oversized":  # (spaces between links are allowed: the same links, a larger file)
        monkeypatch.setattr("nmt.alignment.MAX_ALIGNMENT_BYTES", 1000)
        lines[1] += " " * 2000
    if corrupt == "binary":
        align.write_bytes(b"\xff\xfe\x00garbage\n" * len(VAL))
    else:
        align.write_text("".join(line + "\n" for line in lines))
    if corrupt == "data lines differ":
        with gzip.open(data / "val.en.gz", "wt", encoding="utf-8") as fh:
            fh.write("A dog runs.\n")
    if corrupt == "bad gzip":
        (data / "val.en.gz").write_bytes(b"\x1f\x8b not really gzip")
    for _ in range(3):
        assert alignments.known_links("de", "en", SENTENCE, EN.tokenize(REFERENCE)) is None
    assert alignments.known_links("de", "en", TRAIN[-1][0], EN.tokenize(TRAIN[-1][1])) is not None  # train is fine
    logged = warnings(caplog)
    assert len(logged) == 1 and "word alignments not used" in logged[0], logged  # (in the server's log only)


def test_links_beyond_the_real_tokens_are_not_drawn(folders, caplog):
    folder = folders[1]
    # within the characters (the check made without tokenizing) but past the 4 Moses tokens of SENTENCE
    lines = [diagonal(s, t) for s, t in VAL]
    lines[0] = "0-0 6-1"
    (folder / "val.de-en.align").write_text("".join(line + "\n" for line in lines))
    for _ in range(2):
        assert alignments.known_links("de", "en", SENTENCE, EN.tokenize(REFERENCE)) is None
    assert len(warnings(caplog)) == 1


def test_the_index_is_built_once_for_concurrent_first_requests(folders, monkeypatch):
    built = []
    real = alignments._build
    monkeypatch.setattr(alignments, "_build", lambda *a: built.append(a) or real(*a))
    found, barrier = [], threading.Barrier(8)

    def ask():
        barrier.wait()
        found.append(alignments.known_links("de", "en", SENTENCE, EN.tokenize(REFERENCE)))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1 and found == [links_of(SENTENCE, REFERENCE)] * 8


def test_the_bundled_alignments_know_the_first_validation_pair(monkeypatch):
    """The real files, where scripts/align_multi30k.sh has made them (git-ignored)."""
    data, folder = shared_data(), catalog.REPO_ROOT / "alignments"
    if not (folder / "val.de-en.align").is_file():
        pytest.skip(f"no word alignments in {folder} (scripts/align_multi30k.sh makes them)")
    monkeypatch.setenv(catalog.DATA_ENV, str(data))
    monkeypatch.delenv(alignments.ALIGNMENTS_ENV, raising=False)
    alignments.clear_cache()
    try:
        with gzip.open(data / "val.de.gz", "rt", encoding="utf-8") as de, gzip.open(data / "val.en.gz", "rt") as en:
            src, tgt = de.readline().strip(), en.readline().strip()
        links = alignments.known_links("de", "en", src, EN.tokenize(tgt))
        assert links and all(s < len(DE.tokenize(src)) and t < len(EN.tokenize(tgt)) for s, t in links)
        assert alignments.known_links("en", "de", tgt, DE.tokenize(src)) == [(t, s) for s, t in links]
    finally:
        alignments.clear_cache()


# ----------------------------------------------------------------------------- the app's heatmaps
def alignment_traces(figure: dict | None) -> list[dict]:
    return [t for t in (figure or {}).get("data", []) if t.get("name") == alignments.TRACE_NAME]


@pytest.fixture
def app_models(tmp_path, monkeypatch, tiny_translator):
    """The app's bundled catalog: the tiny general model (it translates PAIRS as their references)."""
    checkpoints = build_catalog(tmp_path / "checkpoints", {"general": tiny_translator})
    models = catalog.discover(checkpoints)
    monkeypatch.setattr(demo.checks, "MODELS", models)
    monkeypatch.setattr(endpoints, "MODELS", models)  # (/compare's own name for it)
    return checkpoints


@pytest.mark.parametrize("compact", [False, True])
def test_the_translation_heatmap_shows_the_links_exactly_when_known(folders, tiny_translator, compact):
    known, unknown = tiny_translator.translate([SENTENCE, OTHER], beam_size=3)
    assert known.text == REFERENCE and unknown.text == "The dog jumps over the fence."
    row = endpoints.sentence_result(known, tiny_translator, compact=compact)
    [trace] = alignment_traces(row["attention_figure"])
    want = links_of(SENTENCE, REFERENCE)
    assert sorted(zip(trace["x"], trace["y"])) == sorted(want)
    assert row["alignment_links"] == [list(link) for link in want]
    assert row["attention_figure"]["layout"]["showlegend"] is True
    row = endpoints.sentence_result(unknown, tiny_translator, compact=compact)
    assert not alignment_traces(row["attention_figure"]) and row["alignment_links"] is None
    assert row["attention_figure"]["data"][0]["type"] == "heatmap"


def test_without_alignment_files_the_heatmap_is_unchanged(folders, tiny_translator, monkeypatch):
    [known] = tiny_translator.translate([SENTENCE], beam_size=3)
    monkeypatch.setenv(alignments.ALIGNMENTS_ENV, str(folders[1] / "nowhere"))
    row = endpoints.sentence_result(known, tiny_translator)
    assert row["alignment_links"] is None
    assert row["attention_figure"] == endpoints.json.loads(plots.attention_figure(known).to_json())


def test_translate_and_its_rendering_caption_the_links(folders, app_models):
    status, result = endpoints.translate(f"{SENTENCE} {OTHER}", "de-en", "general", "", 3, 2, True, None)
    assert result["ok"], status
    first, second = result["sentences"]
    assert alignment_traces(first["attention_figure"]) and not alignment_traces(second["attention_figure"])
    updates = render.render_translation(result)
    labels = [u.label for u in updates if type(u).__name__ == "Plot"][:2]
    assert labels == [f"Attention, sentence 1 · {alignments.CAPTION}", "Attention, sentence 2"]
    # an n-best alternative is looked up as well: the second candidate of SENTENCE is not a reference
    plot = render.pick_candidate(0)(2, result)
    assert not alignment_traces(render.candidate_figure(first, 1, ("de", "en")))
    assert plot.label == "Attention, sentence 1"
    assert render.pick_candidate(0)(1, result).label == f"Attention, sentence 1 · {alignments.CAPTION}"


def test_compare_captions_the_links(folders, app_models):
    status, result = endpoints.compare(SENTENCE, "de-en", 3, True, None)
    assert result["ok"], status
    [row] = result["models"]
    assert alignment_traces(row["attention_figure"])
    labels = [u.label for u in render.render_comparison(result) if type(u).__name__ == "Plot"]
    assert f"general attention · {alignments.CAPTION}" in labels


def test_scoring_the_reference_shows_its_links(folders, app_models):
    status, result = inside.score(SENTENCE, "de-en", "general", "", 3, REFERENCE)
    assert result["ok"], status
    [trace] = alignment_traces(result["yours"]["attention_figure"])
    assert sorted(zip(trace["x"], trace["y"])) == sorted(links_of(SENTENCE, REFERENCE))
    heatmap = result["yours"]["attention_figure"]["data"][0]
    assert len(heatmap["z"]) == len(EN.tokenize(REFERENCE)) + 1  # (a row for </s>, without links)
    assert alignment_traces(result["model_best"]["attention_figure"])  # the model's own is the reference too
    _, yours, best = inside_view.render_score(result)
    assert yours.label == f"Attention while reading your translation · {alignments.CAPTION}"
    assert best.label == f"Attention of the model's own translation · {alignments.CAPTION}"


def test_scoring_another_translation_shows_no_links(folders, app_models):
    status, result = inside.score(SENTENCE, "de-en", "general", "", 3, "A dog runs fast.")
    assert result["ok"], status
    assert not alignment_traces(result["yours"]["attention_figure"])
    assert alignment_traces(result["model_best"]["attention_figure"])  # (the model's own: the reference)
    _, yours, _ = inside_view.render_score(result)
    assert yours.label == "Attention while reading your translation"


def test_what_if_and_the_beam_tree_look_links_up_too(folders, app_models):
    status, result = inside.what_if(SENTENCE, "de-en", "general", "", 3, "A dog", True)
    assert result["ok"], status
    assert result["translation"] == REFERENCE and alignment_traces(result["attention_figure"])
    status, result = inside.beam_tree(SENTENCE, "de-en", "general", "", 3)
    assert result["ok"], status
    assert alignment_traces(result["best"]["attention_figure"])
    assert inside_view.render_tree(result)[1].label == "Beam search tree"
