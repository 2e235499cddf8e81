"""The Gradio demo: nmt.serving.catalog and nmt.serving.plots in-process, then app.py as a real server driven by gradio_client.

The server runs ``python app.py`` once for the module (a subprocess on a free port) over a catalog of tiny
memorising models (tests/conftest.py) and a fake Hub (tests/hub_server.py) serving a model that emits <unk>.
``AppServer`` and ``build_catalog`` are reused by tests/test_browser.py.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import PAIRS  # noqa: E402
from hub_server import FakeHub  # noqa: E402

from nmt.checkpoint import Checkpoint, save_checkpoint  # noqa: E402
from nmt.errors import CheckpointError  # noqa: E402
from nmt.serving import catalog, plots  # noqa: E402
from nmt.serving.translator import Translation, Translator  # noqa: E402
from nmt.serving.unk import Replacement  # noqa: E402
from nmt.vocabulary import UNK_ID  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCORES = {"dot": 31.5, "general": 33.25, "concat": 32.0}  # 'none' gets no scores: "BLEU not measured"
METRICS = [{"epoch": e, "train_loss": 5.0 / e, "train_ppl": 90.0 / e, "valid_ppl": 40.0 / e, "valid_bleu": 8.0 * e,
            "lr": 0.001} for e in (1, 2, 3)]


# ----------------------------------------------------------------------------- shared helpers
def build_catalog(folder: Path, translators: dict[str, Translator]) -> Path:
    """``folder/de-en-{kind}`` checkpoints of the tiny models, with test scores and (general) a metrics.jsonl."""
    for kind, translator in translators.items():
        ckpt = translator.checkpoint
        extra = {"scores": {"bleu": SCORES[kind], "chrf": 55.0, "test_set": "tiny"}} if kind in SCORES else {}
        bundled = Checkpoint(ckpt.model, ckpt.src_vocab, ckpt.tgt_vocab, "de", "en", extra)
        save_checkpoint(bundled, folder / f"de-en-{kind}")
    (folder / "de-en-general" / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in METRICS))
    return folder


def char_model() -> Translator:
    """A memorising model with a character-CNN encoder (tests/test_model_inputs.py)."""
    from test_model_inputs import model

    return model("chars-enc")[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_env(checkpoints: Path, tmp: Path, port: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of an app server for tests: local only, quiet, temp folders."""
    env = dict(os.environ if base is None else base)
    env.update({"GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
                "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1",
                "GRADIO_TEMP_DIR": str(tmp / "gradio"), "NO_PROXY": "127.0.0.1,localhost",
                "no_proxy": "127.0.0.1,localhost", "NMT_CHECKPOINTS": str(checkpoints), "OMP_NUM_THREADS": "1",
                "PYTHONUNBUFFERED": "1"})
    env.setdefault("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    env.setdefault("HF_HOME", str(tmp / "hf_home"))
    env.setdefault("NMT_HUB_CACHE_DIR", str(tmp / "app_hub_cache"))
    env.setdefault("NMT_JOBS_DIR", str(tmp / "jobs"))  # (the Train tab's jobs and its browser secret)
    env.setdefault("NMT_ALIGNMENTS", str(tmp / "no-alignments"))
    return env


class AppServer:
    """``python app.py`` in a subprocess; ``url`` once it serves its page; stopped with SIGTERM."""

    def __init__(self, env: dict[str, str], log: Path):
        self.env, self.log = env, log
        self.url = f"http://127.0.0.1:{env['GRADIO_SERVER_PORT']}/"

    def __enter__(self) -> "AppServer":
        self._log = open(self.log, "wb")
        self.proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 180) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    if response.status == 200:
                        return time.monotonic() - start
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"app.py did not serve {self.url} within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-5000:]

    def __exit__(self, *exc) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def unk_model(translator: Translator, word: str) -> Translator:
    """The same network with the output ids of ``word`` and <unk> swapped: it writes <unk> where it wrote ``word``."""
    ckpt = translator.checkpoint
    model = copy.deepcopy(ckpt.model)
    i = ckpt.tgt_vocab.stoi[word]
    with torch.no_grad():
        for tensor in (model.generator.weight, model.generator.bias, model.decoder.embeddings.embedding.weight):
            tensor[[i, UNK_ID]] = tensor[[UNK_ID, i]].clone()
    return Translator(Checkpoint(model, ckpt.src_vocab, ckpt.tgt_vocab, "de", "en", {}), "cpu")


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def figure_matrix(figure: dict) -> np.ndarray:
    return np.array(figure["data"][0]["z"], dtype=float)


# ----------------------------------------------------------------------------- nmt.serving.catalog and nmt.serving.plots
def write_config(folder: Path, src: str, tgt: str, attention: str, scores: dict | None = None) -> None:
    folder.mkdir(parents=True)
    config = {"format_version": 1, "src_lang": src, "tgt_lang": tgt, "model": {"attention": attention}}
    if scores is not None:
        config["scores"] = scores
    (folder / "config.json").write_text(json.dumps(config))


def test_discover_reads_configs_sorts_and_skips_broken_folders(tmp_path, monkeypatch):
    write_config(tmp_path / "en-de-general", "en", "de", "general", {"bleu": 27.5, "chrf": 50.0, "test_set": "t"})
    write_config(tmp_path / "de-en-general", "de", "en", "general", {"bleu": 35.0})
    write_config(tmp_path / "de-en-none", "de", "en", "none")
    write_config(tmp_path / "de-en-weird", "de", "en", "local-m")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv(catalog.CHECKPOINTS_ENV, str(tmp_path))
    models = catalog.discover()
    assert [m.name for m in models] == ["de-en-none", "de-en-general", "en-de-general"]
    assert [m.label for m in models] == ["none · BLEU not measured", "general · BLEU 35.00", "general · BLEU 27.50"]
    assert catalog.directions(models) == ["de-en", "en-de"]
    assert catalog.direction_label("en-de") == "English → German"
    assert catalog.find(models, "en-de", "general").bleu == 27.5 and catalog.find(models, "en-de", "dot") is None
    assert catalog.discover(tmp_path / "missing") == []


def test_checkpoints_folder_defaults_to_the_repository(monkeypatch):
    monkeypatch.delenv(catalog.CHECKPOINTS_ENV, raising=False)
    assert catalog.checkpoints_dir() == ROOT / "checkpoints"


@pytest.mark.parametrize("text, expected", [("alice/model", ("alice/model", None)),
                                            (" alice/model@v1.0 ", ("alice/model", "v1.0"))])
def test_parse_hub_id(text, expected):
    assert catalog.parse_hub_id(text) == expected


@pytest.mark.parametrize("text", ["", "alice", "a/b/c", "alice/model@", "alice/mo del", "alice/😀", "../x"])
def test_parse_hub_id_refuses_malformed_ids(text):
    with pytest.raises(CheckpointError):
        catalog.parse_hub_id(text)


def test_model_cache_loads_once_across_threads(tiny_translator):
    cache, calls, results = catalog.ModelCache(capacity=2), [], []

    def load():
        calls.append(1)
        time.sleep(0.2)
        return tiny_translator

    threads = [threading.Thread(target=lambda: results.append(cache.get(("k",), load))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and cache.loads == 1 and all(r is tiny_translator for r in results)
    for key in ("a", "b"):
        cache.get((key,), lambda: tiny_translator)
    cache.get(("k",), load)  # evicted (capacity 2): loaded again
    assert len(calls) == 2


def test_model_cache_does_not_keep_failures(tiny_translator):
    cache = catalog.ModelCache()
    with pytest.raises(CheckpointError):
        cache.get(("x",), lambda: (_ for _ in ()).throw(CheckpointError("hub down")))
    assert cache.get(("x",), lambda: tiny_translator) is tiny_translator


def synthetic_translation() -> Translation:
    src, out = ["der", "Hund", "sieht", "der", "Katze", "."], ["the", "dog", "sees", "the", "Katze", "."]
    attention = np.eye(6) * 0.9 + 0.1 / 6
    return Translation("der Hund sieht der Katze .", src, "the dog sees the Katze.", out, -0.5, [], attention,
                       [Replacement(4, 4, "Katze", "Katze")])


def test_attention_figure_keeps_repeated_words_apart():
    figure = json.loads(plots.attention_figure(synthetic_translation()).to_json())
    heatmap, layout = figure["data"][0], figure["layout"]
    assert layout["xaxis"]["ticktext"] == ["der", "Hund", "sieht", "der", "Katze", "."]
    assert layout["yaxis"]["ticktext"] == ["the", "dog", "sees", "the", "Katze", "."]
    assert layout["xaxis"]["tickvals"] == list(range(6)) and heatmap["x"] == list(range(6))
    assert figure_matrix(figure).shape == (6, 6)
    assert (heatmap["zmin"], heatmap["zmax"]) == (0, 1) and layout["height"] >= plots.MIN_HEIGHT
    assert heatmap["customdata"][3][0] == ["der", "the", ""]  # hover: source word, output word
    assert "copied from source word 'Katze'" in heatmap["customdata"][4][4][2]
    assert len(layout["shapes"]) == 1  # the UNK-replaced cell is outlined


def test_attention_figure_refuses_a_model_without_attention():
    translation = synthetic_translation()
    translation.attention = None
    with pytest.raises(ValueError, match="no attention"):
        plots.attention_figure(translation)


def test_training_curves_figure():
    figure = plots.training_curves_figure(METRICS[::-1] + [{"epoch": 4, "train_loss": float("nan")}])
    names = [trace.name for trace in figure.data]
    assert names == ["train loss", "train perplexity", "validation perplexity", "validation BLEU"]
    assert list(figure.data[0].x) == [1, 2, 3, 4] and figure.data[0].y[-1] is None
    assert figure.layout.height == plots.CURVES_HEIGHT
    with pytest.raises(ValueError):
        plots.training_curves_figure([])


def test_read_metrics_skips_bad_lines(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 2, "valid_ppl": 3}\nnot json\n[1]\n{"epoch": 1}\n')
    assert [m["epoch"] for m in catalog.read_metrics(tmp_path)] == [1, 2]
    assert catalog.read_metrics(tmp_path / "nothing") == []


def test_model_summary_and_card(tiny_translators, tmp_path):
    folder = build_catalog(tmp_path, {"general": tiny_translators["general"]})
    translator = Translator.load(folder / "de-en-general")
    info = catalog.summary(translator)
    assert info["parameters"] == translator.checkpoint.model.num_parameters() and info["epochs_trained"] == 3
    card = catalog.card_markdown(info)
    assert f"{info['parameters']:,} parameters" in card and "BLEU **33.25**" in card and "general" in card
    assert "not recorded" in card  # the tiny checkpoint has no training-data settings


def test_model_card_names_guided_alignment_and_bf16_training():
    train = {"epochs": 20, "optim": "adam", "guided_alignment": True, "guided_alignment_weight": 0.5, "amp": True}
    assert catalog._training_settings({"train": train}) == {"epochs": 20, "optim": "adam",
                                                            "guided_alignment_weight": 0.5, "autocast": "bf16"}
    plain = {**train, "guided_alignment": False, "amp": False}
    assert catalog._training_settings({"train": plain}) == {"epochs": 20, "optim": "adam"}


def test_validation_examples_fall_back_to_built_in_sentences(tmp_path):
    assert catalog.validation_examples("en", 2, data_dir=tmp_path) == catalog.FALLBACK_EXAMPLES["en"][:2]


# ----------------------------------------------------------------------------- the app, through gradio_client
@pytest.fixture(scope="module")
def unk_translator(tiny_translators):
    return unk_model(tiny_translators["general"], "dog")


SECRET = "SECRET-LINE-OF-THE-LEXICON"
HOSTILE_CARD = {"scores": {"bleu": 1.0, "test_set": "<img src=x onerror=alert(1)>"},
                "data": {"train_src": "/d/<iframe src=//evil.example>/train.de", "train_tgt": "[x](javascript:alert(1))"},
                "decode": {"beam_size": 5}, "extra": "<script>alert(1)</script>"}


def hostile_repos(files: dict[str, bytes]) -> dict[str, dict[str, bytes]]:
    """Hub repos a hostile user could publish: the tiny checkpoint's files with a config that asks
    for a file outside the folder, claims a huge model, carries HTML, or brings a corrupt lexicon."""
    config = json.loads(files["config.json"])

    def repo(changes: dict, **more: bytes) -> dict[str, bytes]:
        return {**files, "config.json": json.dumps({**config, **changes}).encode(), **more}

    huge = {**config["model"], "emb_size": 2000, "hidden": 2000, "src_vocab": 150000, "tgt_vocab": 150000}
    return {
        "mallory/passwd": repo({"decode": {"lexicon": "/etc/passwd"}}),
        "mallory/dev-zero": repo({"decode": {"lexicon": "../../../../../../dev/zero"}}),
        "mallory/huge": repo({"model": huge}),
        "mallory/card": repo(HOSTILE_CARD),
        "mallory/bad-lexicon": repo({"decode": {"lexicon": "lexicon.txt"}},
                                    **{"lexicon.txt": f"Hund ||| dog\n{SECRET}\n".encode()}),
        "mallory/long": repo({"decode": {"max_len_a": 10.0, "max_len_b": 1000, "batch_size": 10000}}),
        "mallory/model-list": repo({"model": [1, 2]}),
        "mallory/decode-string": repo({"decode": "beam"}),
        "mallory/nested": {**files, "config.json": b"[" * 100_000 + b"]" * 100_000},
    }


@pytest.fixture(scope="module")
def hub(tmp_path_factory, unk_translator):
    folder = save_checkpoint(unk_translator.checkpoint, tmp_path_factory.mktemp("hub") / "tiny-unk")
    with FakeHub() as fake:
        fake.add_repo("alice/tiny-unk", folder_files(folder), revision_tag="v1")
        fake.add_repo("alice/no-weights", {"config.json": b"{}", "README.md": b"# nothing here\n", "model.bin": b"x"})
        for repo_id, files in hostile_repos(folder_files(folder)).items():
            fake.add_repo(repo_id, files)
        yield fake


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_translators, hub):
    tmp = tmp_path_factory.mktemp("app")
    checkpoints = build_catalog(tmp / "checkpoints", tiny_translators)
    chars = char_model()
    save_checkpoint(dataclasses.replace(chars.checkpoint, extra={"scores": {"bleu": 30.0, "test_set": "tiny"}}),
                    checkpoints / "de-en-general-chars")
    env = hub.client_env(tmp / "hf_home", base=app_env(checkpoints, tmp, free_port()))
    with AppServer(env, tmp / "server.log") as app:
        yield app


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server.url, verbose=False)


def translate(client, text, attention="general", hub_id="", beam=5, n_best=3, unk=True, lexicon=None,
              direction="de-en"):
    """Call the /translate endpoint; returns (status HTML, result dict)."""
    return client.predict(text, direction, attention, hub_id, beam, n_best, unk, lexicon, api_name="/translate")


def test_translate_returns_text_n_best_and_attention_figure(client, tiny_translators):
    text = "Ein Hund läuft. Die Katze schläft auf dem Sofa."
    status, result = translate(client, text, beam=5, n_best=3)
    expected = tiny_translators["general"].translate(["Ein Hund läuft.", "Die Katze schläft auf dem Sofa."],
                                                     beam_size=5, n_best=3, replace_unk=True)  # the engine's default, as the app
    assert result["ok"] and "Translated 2 sentences" in status
    assert [s["translation"] for s in result["sentences"]] == ["A dog runs.", "The cat sleeps on the sofa."]
    for got, want in zip(result["sentences"], expected):
        assert [c["text"] for c in got["n_best"]] == [c.text for c in want.n_best] and len(got["n_best"]) == 3
        assert [c["score"] for c in got["n_best"]] == pytest.approx([c.score for c in want.n_best], abs=1e-3)
        figure = got["attention_figure"]
        assert figure["layout"]["xaxis"]["ticktext"] == got["src_tokens"] == want.src_tokens
        assert figure["layout"]["yaxis"]["ticktext"] == got["tokens"] == want.tokens
        z = figure_matrix(figure)
        assert z.shape == (len(want.tokens), len(want.src_tokens))
        assert np.allclose(z.sum(axis=1), 1.0, atol=1e-4) and np.allclose(z, want.attention, atol=1e-5)
        assert figure["data"][0]["zmin"] == 0 and figure["data"][0]["zmax"] == 1 and figure["layout"]["height"] > 0


def test_a_model_without_attention_says_so(client):
    status, result = translate(client, "Ein Kind lacht.", attention="none")
    [row] = result["sentences"]
    assert result["ok"] and row["translation"] == "A child laughs."
    assert row["attention_figure"] is None and "no attention" in row["attention_note"]
    assert "UNK replacement needs attention" in status


def test_n_best_is_limited_by_the_beam(client):
    status, result = translate(client, "Ein Kind lacht.", beam=2, n_best=5)
    assert len(result["sentences"][0]["n_best"]) == 2 and "Showing 2 alternatives" in status


@pytest.mark.parametrize("text, message", [
    ("", "Nothing to translate"),
    ("  \n\t ", "Nothing to translate"),
    ("\x00\x07\x1b", "only control characters"),
    ("Ein Hund läuft. " * 130, "the limit is 2,000"),
    (" ".join(["Ein Hund läuft."] * 21), "the limit is 20"),
    ("wort " * 101, "the limit is 100"),
])
def test_bad_input_gets_a_clear_message(client, text, message):
    status, result = translate(client, text)
    assert not result["ok"] and message in result["error"] and message in status


@pytest.mark.parametrize("text, note", [
    ("Ein Hund\x07 läuft.", "Removed 1 control character (U+0007)"),
    ("Ein Hund läuft. 🐶🎉", "emoji"),
    ("كلب يجري. Ein Hund läuft.", "right-to-left"),
])
def test_unusual_input_is_translated_with_a_note(client, text, note):
    status, result = translate(client, text)
    assert result["ok"] and note in status and any(note in n for n in result["notes"])
    assert "A dog runs." in [s["translation"] for s in result["sentences"]]


def test_unknown_source_words_are_reported(client):
    _, result = translate(client, "Ein Hund 🐶 läuft.")
    assert "🐶" in result["sentences"][0]["unknown_source_words"]


@pytest.mark.parametrize("hub_id, message", [
    ("not a repo id!!", "is not a Hub repo id"),
    ("a/b/c", "neither a local checkpoint folder nor a Hub repo id"),
    ("alice/missing-model", "not found"),
    ("alice/tiny-unk@no-such-branch", "revision 'no-such-branch' not found"),
    ("alice/no-weights", "not an nmt checkpoint: missing model.safetensors"),
    ("nmt/errors.py", "a local file or folder of the same name shadows it"),
])
def test_hub_problems_get_a_clear_message(client, hub_id, message):
    status, result = translate(client, "Ein Hund läuft.", hub_id=hub_id)
    assert not result["ok"] and message in result["error"] and message in status


@pytest.mark.parametrize("hub_id, message", [
    ("mallory/passwd", "names a file outside the checkpoint folder"),
    ("mallory/dev-zero", "names a file outside the checkpoint folder"),
    ("mallory/huge", "over this program's limit of 50,000,000"),
    ("mallory/model-list", "'model' must be a JSON object"),
    ("mallory/decode-string", "'decode' must be a JSON object"),
    ("mallory/nested", "nested too deeply"),
    ("alice/tiny-unk@../../x", "invalid revision"),
])
def test_hostile_hub_checkpoints_are_refused_with_a_clear_message(client, hub_id, message):
    status, result = translate(client, "Ein Hund läuft.", hub_id=hub_id)
    assert not result["ok"] and message in result["error"], result["error"]
    assert "root:" not in result["error"] and "Internal error" not in result["error"]
    assert translate(client, "Ein Hund läuft.")[1]["sentences"][0]["translation"] == "A dog runs."


def test_a_checkpoint_lexicon_is_read_only_for_unk_replacement_and_never_echoed(client):
    _, plain = translate(client, "Ein Hund läuft.", hub_id="mallory/bad-lexicon", unk=False, n_best=1)
    assert plain["ok"] and plain["sentences"][0]["tokens"] == ["A", "<unk>", "runs", "."]
    _, replaced = translate(client, "Ein Hund läuft.", hub_id="mallory/bad-lexicon", unk=True, n_best=1)
    assert not replaced["ok"] and "line 2: expected 'source ||| target'" in replaced["error"]
    assert SECRET not in replaced["error"]


def test_a_checkpoint_cannot_make_a_request_cost_more_than_the_app_allows(client):
    _, result = translate(client, "Ein Hund läuft.", hub_id="mallory/long", n_best=1)
    settings = result["settings"]
    assert result["ok"] and (settings["max_len_a"], settings["max_len_b"], settings["batch_size"]) == (3.0, 50, 20)


def test_a_hostile_model_card_comes_back_escaped(client):
    card, _ = client.predict("de-en", "general", "mallory/card", api_name="/model_card")
    assert "BLEU **1.00**" in card and "onerror" in card  # the text is there, as inert characters
    for raw in ("<img", "<iframe", "](javascript", "<script"):
        assert raw not in card


def test_every_translate_input_but_the_text_has_a_default(client):
    status, result = client.predict(text="Ein Hund läuft.", api_name="/translate")
    assert result["ok"] and result["sentences"][0]["translation"] == "A dog runs."
    assert result["settings"]["beam_size"] == 5 and result["settings"]["lexicon"] is None
    _, result = client.predict(text="Ein Hund läuft.", api_name="/compare")
    assert result["ok"] and len(result["models"]) == 4


def test_a_hub_model_is_downloaded_and_unk_replacement_is_marked(client, unk_translator):
    plain, replaced = (translate(client, "Ein Hund läuft.", hub_id="alice/tiny-unk@v1", unk=unk, n_best=1)[1]
                       for unk in (False, True))
    assert plain["model"]["source"] == "hub" and plain["sentences"][0]["tokens"] == ["A", "<unk>", "runs", "."]
    [row] = replaced["sentences"]
    [rep] = row["unk_replacements"]
    expected = unk_translator.translate(["Ein Hund läuft."], replace_unk=True)[0]
    assert rep["position"] == 1 and rep["source_word"] == row["src_tokens"][rep["source_position"]]
    assert row["tokens"] == expected.tokens and rep["word"] == rep["source_word"]


def test_uploaded_lexicon_is_used_and_a_corrupt_one_is_named(client, tmp_path):
    from gradio_client import handle_file

    good = tmp_path / "lexicon.txt"
    good.write_text("".join(f"{w} ||| LEX-{w}\n" for w in ["Ein", "Hund", "läuft", "."]), encoding="utf-8")
    _, result = translate(client, "Ein Hund läuft.", hub_id="alice/tiny-unk", lexicon=handle_file(str(good)))
    [rep] = result["sentences"][0]["unk_replacements"]
    assert rep["word"] == f"LEX-{rep['source_word']}" and result["settings"]["lexicon"] == "lexicon.txt"
    bad = tmp_path / "broken-lexicon.txt"
    bad.write_text("Hund ||| dog\nthis line has no separator\n", encoding="utf-8")
    status, result = translate(client, "Ein Hund läuft.", hub_id="alice/tiny-unk", lexicon=handle_file(str(bad)))
    assert not result["ok"] and "'broken-lexicon.txt', line 2" in result["error"] and "gradio" not in result["error"]


def test_compare_translates_with_every_attention_type(client):
    status, result = client.predict("Ein Hund läuft. Eine Frau singt.", "de-en", 5, True, None, api_name="/compare")
    rows = {r["attention"]: r for r in result["models"]}
    assert result["ok"] and list(rows) == ["none", "dot", "general", "concat"] and "first of the 2" in status
    assert all(r["translation"] == "A dog runs." for r in rows.values())
    assert rows["none"]["attention_figure"] is None and "no attention" in rows["none"]["attention_note"]
    for kind in ("dot", "general", "concat"):
        assert rows[kind]["attention_figure"]["layout"]["xaxis"]["ticktext"] == ["Ein", "Hund", "läuft", "."]


def test_model_card_shows_size_data_scores_and_curves(client):
    card, curves = client.predict("de-en", "general", "", api_name="/model_card")
    assert "parameters" in card and "BLEU **33.25**" in card
    figure = json.loads(curves["plot"])
    assert [t["name"] for t in figure["data"]][:3] == ["train loss", "train perplexity", "validation perplexity"]
    card, curves = client.predict("de-en", "none", "", api_name="/model_card")
    assert "not measured" in card and "no `metrics.jsonl`" in card and curves is None


def test_twenty_simultaneous_clients_all_get_answers(server):
    from gradio_client import Client

    sentences = [s for s, _ in PAIRS]
    answers: dict[int, dict] = {}

    def one(i: int) -> None:
        try:
            answers[i] = translate(Client(server.url, verbose=False), sentences[i], n_best=1)[1]
        except Exception as exc:  # recorded, asserted below
            answers[i] = {"ok": False, "error": repr(exc)}

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert sorted(answers) == list(range(20))
    assert [a.get("error") for a in answers.values() if not a["ok"]] == []
    assert [answers[i]["sentences"][0]["translation"] for i in range(20)] == [t for _, t in PAIRS]


def test_an_unreachable_hub_gets_a_clear_message_and_the_app_keeps_serving(client, hub):
    hub.stop()  # last test of the module: from here on nothing listens at HF_ENDPOINT
    status, result = translate(client, "Ein Hund läuft.", hub_id="alice/never-downloaded")
    assert not result["ok"] and "cannot reach the Hugging Face Hub" in result["error"]
    assert translate(client, "Ein Hund läuft.")[1]["sentences"][0]["translation"] == "A dog runs."


def test_a_character_model_is_a_choice_of_its_own_and_translates(client):
    status, result = translate(client, "Ein Hund läuft. Ein Zebra läuft.", attention="general-chars", n_best=1)
    assert result["ok"], status
    assert result["model"]["name"] == "de-en-general-chars"
    first, second = result["sentences"]
    assert first["translation"] == "A dog runs." and second["unknown_source_words"] == []  # (no word is unknown to it)
    _, words = translate(client, "Ein Zebra läuft.", attention="general", n_best=1)
    assert words["sentences"][0]["unknown_source_words"] == ["Zebra"]
