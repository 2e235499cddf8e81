"""Untrusted checkpoints and hostile input: nothing outside a checkpoint's folder is read, sizes are
checked before allocating, every failure is a clear message (CLI: ``error: ...``, exit 2), outputs are
never half-written, and a killed or diverged training run never leaves the wrong ``best/``.

The same attacks through the app's API, on checkpoints served by the tests' Hub, are in test_app.py.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_training import tiny_corpus, trainer

from nmt.checkpoint import checkpoint_epoch, load_checkpoint, save_checkpoint
from nmt.checkpoint import read_metrics as checkpoint_read_metrics
from nmt.config import MAX_BEAM_SIZE, DecodeConfig
from nmt.errors import CheckpointError, DataError
from nmt.evaluation import perplexity
from nmt.hub import parse_repo_ref, push_checkpoint
from nmt.safe_io import checkpoint_file, decode_lines, read_capped
from nmt.serving import catalog
from nmt.serving.translator import Translator

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def folder(tiny_translator, tmp_path) -> Path:
    return save_checkpoint(tiny_translator.checkpoint, tmp_path / "ckpt")


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


def run_cli(*args, input_bytes: bytes | None = None):
    return subprocess.run([sys.executable, "-m", "nmt", *args], cwd=ROOT, capture_output=True, input=input_bytes,
                          env={**os.environ, "NMT_PROGRESS": "0"}, timeout=600)


# ----------------------------------------------------------------------------- 1. files outside the folder
@pytest.mark.parametrize("lexicon", ["/etc/passwd", "/dev/zero", "../outside.txt", "sub/../../outside.txt",
                                     "~/.bashrc", "C:\\x"])
def test_a_config_cannot_name_a_file_outside_its_folder(folder, lexicon):
    (folder.parent / "outside.txt").write_text("secret ||| geheim\n")
    edit_config(folder, decode={"lexicon": lexicon})
    with pytest.raises(CheckpointError, match="not a file name inside|outside the checkpoint folder"):
        load_checkpoint(folder)


def test_a_link_out_of_the_folder_is_refused(folder):
    (folder / "lexicon.txt").symlink_to("/etc/passwd")
    edit_config(folder, decode={"lexicon": "lexicon.txt"})
    with pytest.raises(CheckpointError, match="links to a file outside"):
        load_checkpoint(folder)


def test_a_hub_snapshot_may_link_into_its_own_blobs_only(tmp_path):
    snapshot = tmp_path / "models--a--b" / "snapshots" / "abc"
    (tmp_path / "models--a--b" / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (tmp_path / "models--a--b" / "blobs" / "123").write_text("x")
    (snapshot / "config.json").symlink_to("../../blobs/123")
    (tmp_path / "elsewhere").write_text("y")
    (snapshot / "src.vocab").symlink_to(tmp_path / "elsewhere")
    assert checkpoint_file(snapshot, "config.json") == snapshot / "config.json"
    with pytest.raises(CheckpointError, match="links to a file outside"):
        checkpoint_file(snapshot, "src.vocab")


def test_a_snapshot_whose_blobs_folder_is_a_link_gets_no_exception(tmp_path):
    """Only a real ``blobs/`` beside ``snapshots/`` may hold a snapshot's files (a tarball can carry links)."""
    (tmp_path / "secret.txt").write_text("Hund ||| SECRET\n")
    repo = tmp_path / "evil"
    (repo / "snapshots" / "ckpt").mkdir(parents=True)
    (repo / "blobs").symlink_to("/")
    (repo / "snapshots" / "ckpt" / "lexicon.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(CheckpointError, match="links to a file outside"):
        checkpoint_file(repo / "snapshots" / "ckpt", "lexicon.txt")


def test_a_lexicon_the_folder_lacks_is_refused_at_load(folder):
    edit_config(folder, decode={"lexicon": "other.txt"})
    with pytest.raises(CheckpointError, match="not a file of the checkpoint"):
        load_checkpoint(folder)


def test_numbers_beyond_a_float_are_a_clear_error(folder):
    (folder / "config.json").write_text((folder / "config.json").read_text().replace('"dropout": 0.0', '"dropout": 1' + "0" * 400))
    with pytest.raises(CheckpointError, match="'model.dropout' must be a number of a float's range"):
        load_checkpoint(folder)


def test_hostile_metrics_and_scores_are_skipped(folder, tiny_translator):
    (folder / "metrics.jsonl").write_text('{"epoch": true}\n{"epoch": 1, "train_loss": 1' + "0" * 400 + '}\n'
                                          + "[" * 50_000 + "]" * 50_000 + '\n{"epoch": 2, "valid_ppl": 3.5}\n')
    assert checkpoint_read_metrics(folder) == [{"epoch": 1}, {"epoch": 2, "valid_ppl": 3.5}]
    edit_config(folder, scores={"bleu": 10**400, "chrf": True})
    translator = Translator.load(folder)
    assert catalog.test_bleu(translator) is None and "not measured" in catalog.card_markdown(catalog.summary(translator))


def test_the_checkpoint_lexicon_is_read_only_for_unk_replacement_and_never_echoed(folder):
    (folder / "lexicon.txt").write_text("Hund ||| dog\nTOP-SECRET-LINE\n")
    edit_config(folder, decode={"lexicon": "lexicon.txt"})
    translator = Translator.load(folder)
    assert translator.translate(["Ein Hund läuft."])[0].text == "A dog runs."  # not read without UNK replacement
    with pytest.raises(CheckpointError, match="line 2: expected 'source ||| target'") as info:
        translator.translate(["Ein Hund läuft."], replace_unk=True)
    assert "TOP-SECRET" not in str(info.value)
    (folder / "lexicon.txt").write_text("Ein ||| One\n")
    assert Translator.load(folder).lexicon_for(None) == {"Ein": "One"}


def test_files_are_size_checked_before_they_are_read(folder):
    (folder / "src.vocab").write_bytes(b"w\n" * (33 * 2**20))
    with pytest.raises(CheckpointError, match="over the limit of 64.0 MiB"):
        load_checkpoint(folder)


# ----------------------------------------------------------------------------- 2. sizes checked first
def test_a_config_claiming_a_huge_model_is_refused_before_allocating(folder):
    config = json.loads((folder / "config.json").read_text())
    edit_config(folder, model={**config["model"], "emb_size": 8192, "hidden": 8192, "brnn": False,
                               "src_vocab": 2_000_000, "tgt_vocab": 2_000_000})  # ~50 G parameters: 200 GB
    with pytest.raises(CheckpointError, match="over this program's limit of 500,000,000"):
        load_checkpoint(folder)
    edit_config(folder, model=config["model"])
    with pytest.raises(CheckpointError, match="over this program's limit of 1,000"):
        Translator.load(folder, max_parameters=1000)
    with pytest.raises(CheckpointError, match="over this program's limit of 1,000"):
        catalog.ModelCache(max_parameters=1000).bundled(catalog.BundledModel("x", folder, "de", "en", "general"))


def test_weights_must_match_the_config_in_names_shapes_and_dtypes(folder):
    weights = load_file(str(folder / "model.safetensors"))
    name = "generator.bias"
    for bad, message in [({**weights, name: weights[name][:-1]}, f"{name} has shape"),
                         ({k: v for k, v in weights.items() if k != name}, f"missing {name}"),
                         ({**weights, "extra.weight": torch.zeros(2)}, "unexpected extra.weight"),
                         ({**weights, name: weights[name].to(torch.int32)}, "must be F32, F16 or BF16")]:
        save_file(bad, str(folder / "model.safetensors"))
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(folder)


@pytest.mark.parametrize("config, message", [
    ({"model": [1, 2]}, "'model' must be a JSON object"),
    ({"decode": "beam"}, "'decode' must be a JSON object"),
    ({"decode": {"beam_size": "5"}}, "'decode.beam_size' must be an integer"),
    ({"decode": {"beam_size": 5000}}, f"between 1 and {MAX_BEAM_SIZE}"),
    ({"src_lang": {"x": 1}}, "'src_lang' must be a language code"),
])
def test_a_malformed_config_is_a_clear_error(folder, config, message):
    edit_config(folder, **config)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(folder)


def test_a_deeply_nested_config_is_a_clear_error(folder):
    (folder / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match="nested too deeply"):
        load_checkpoint(folder)


# ----------------------------------------------------------------------------- 4. lines, stdin, outputs
def test_only_newlines_end_lines():
    data = "a\u2028b\nc\x0cd\r\ne\x85f\x0bg\rh\n".encode()
    assert decode_lines(data, "x") == ["a\u2028b", "c\x0cd", "e\x85f\x0bg\rh"]


def test_cli_stdin_keeps_line_alignment_and_names_bad_bytes(folder, tmp_path):
    text = "Ein Hund läuft.\u2028Eine Frau singt.\nEin Kind lacht.\x0c\nZwei Männer spielen Fußball.\r\nDie Katze.\n"
    r = run_cli("translate", "--model", str(folder), "--src", "-", input_bytes=text.encode())
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.decode().split("\n")) - 1 == 4
    out = tmp_path / "out.txt"
    out.write_text("kept\n")
    r = run_cli("translate", "--model", str(folder), "--src", "-", "--output", str(out),
                input_bytes=b"Ein Hund.\n\xff\xfe\n")
    assert r.returncode == 2 and "error: <stdin>, line 2: not valid UTF-8" in r.stderr.decode()
    assert out.read_text() == "kept\n" and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "out.txt"]
    r = run_cli("translate", "--model", str(folder), "--src", "-", input_bytes=b"")
    assert r.returncode == 2 and "error: <stdin>: no input" in r.stderr.decode()


def test_cli_refuses_a_folder_as_output(folder, tmp_path):
    src = tmp_path / "src.txt"
    src.write_text("Ein Hund läuft.\n")
    for flag in ("--output", "--attention-out"):
        r = run_cli("translate", "--model", str(folder), "--src", str(src), flag, str(tmp_path))
        assert r.returncode == 2 and "is a folder" in r.stderr.decode() and "Traceback" not in r.stderr.decode()


def test_an_output_is_written_whole_or_not_at_all(tiny_translator, folder, tmp_path, monkeypatch):
    from nmt import cli

    src, out = tmp_path / "src.txt", tmp_path / "out.txt"
    src.write_text("Ein Hund läuft.\nEine Frau singt.\n")
    out.write_text("previous\n")
    real = Translator.translate

    def translate_then_fail(self, sentences, *args, **kw):
        results = real(self, sentences, *args, **kw)
        results[1] = None  # writing the second line fails
        return results

    monkeypatch.setattr(Translator, "translate", translate_then_fail)
    assert cli.main(["translate", "--model", str(folder), "--src", str(src), "--output", str(out)]) == 2
    assert out.read_text() == "previous\n" and not list(tmp_path.glob(".out.txt.*"))


def test_outputs_keep_links_devices_and_modes(tmp_path):
    from nmt.safe_io import atomic_output

    real, link = tmp_path / "real.txt", tmp_path / "link.txt"
    real.write_text("old\n")
    real.chmod(0o640)
    link.symlink_to(real)
    with atomic_output(link) as fh:
        fh.write("new\n")
    assert link.is_symlink() and real.read_text() == "new\n" and real.stat().st_mode & 0o777 == 0o640
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got = []
    reader = __import__("threading").Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    with atomic_output(fifo) as fh:  # (a device or FIFO is written to, never replaced)
        fh.write("through\n")
    reader.join(timeout=10)
    assert got == ["through\n"] and stat.S_ISFIFO(fifo.stat().st_mode)
    with atomic_output(tmp_path / "fresh.txt") as fh:
        fh.write("x\n")
    assert (tmp_path / "fresh.txt").stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ----------------------------------------------------------------------------- 5. best/ under a kill
def test_resume_repairs_a_best_checkpoint_left_behind_by_a_kill(tmp_path):
    files = tiny_corpus(tmp_path, n_train=60, n_valid=10)
    run = tmp_path / "run"
    first = trainer(files, run, epochs=1)
    first.cfg.select_by = "ppl"  # (saved with the run; validation perplexity falls in epoch 2)
    first.run()
    shutil.copytree(run / "best", tmp_path / "best-epoch-1")
    trainer(files, tmp_path / "ignored", epochs=2, train_from=str(run)).run()
    state = json.loads((run / "last/trainer_state.json").read_text())["trainer"]
    assert state["best_epoch"] == 2 and checkpoint_epoch(run / "best") == 2
    # Killed while writing best/ after epoch 2: the old best/ is still there, and a temporary folder.
    shutil.rmtree(run / "best")
    shutil.copytree(tmp_path / "best-epoch-1", run / "best")
    (run / ".best.tmp-abc123").mkdir()
    (run / ".best.tmp-abc123" / "model.safetensors").write_bytes(b"half")
    assert checkpoint_epoch(run / "best") == 1
    best = trainer(files, tmp_path / "ignored", epochs=2, train_from=str(run)).run()
    assert checkpoint_epoch(best) == 2 and not list(run.glob(".*.tmp-*"))
    last, repaired = load_file(str(run / "last/model.safetensors")), load_file(str(best / "model.safetensors"))
    assert all(torch.equal(last[k], repaired[k]) for k in repaired)


def test_checkpoint_epoch_notices_weights_that_are_not_the_recorded_ones(folder, tiny_translator, tmp_path):
    other = save_checkpoint(tiny_translator.checkpoint, tmp_path / "other")
    edit_config(folder, checkpoint={**json.loads((folder / "config.json").read_text())["checkpoint"], "epoch": 3})
    assert checkpoint_epoch(folder) == 3
    weights = load_file(str(other / "model.safetensors"))
    save_file({k: v + 1 for k, v in weights.items()}, str(folder / "model.safetensors"))
    assert checkpoint_epoch(folder) is None


# ----------------------------------------------------------------------------- 6, 7. writes, divergence
def test_a_full_disk_is_a_clear_error_and_nothing_is_lost(tmp_path, monkeypatch, capsys):
    from nmt import checkpoint, cli

    files = tiny_corpus(tmp_path, n_train=40, n_valid=8)
    args = ["train", "--train-src", str(files["train", "de"]), "--train-tgt", str(files["train", "en"]),
            "--valid-src", str(files["val", "de"]), "--valid-tgt", str(files["val", "en"]), "--epochs", "1",
            "--emb-size", "16", "--hidden", "32", "--save-dir", str(tmp_path / "run")]

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full)
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "error: cannot write the checkpoint" in err and "No space left on device" in err
    assert not list((tmp_path / "run").glob(".*.tmp-*"))
    monkeypatch.undo()
    assert cli.main([*args[:-1], "/proc/nmt-cannot-write-here"]) == 2
    assert "error: cannot create the save dir" in capsys.readouterr().err


def test_an_untrained_model_is_not_taken_for_a_diverged_one(tmp_path):
    files = tiny_corpus(tmp_path, n_train=40, n_valid=8)
    t = trainer(files, tmp_path / "run", epochs=1)
    t.cfg.learning_rate = 0.0  # (validation perplexity about the vocabulary's size)
    assert t.run().exists()


def test_an_unknown_or_absent_device_is_a_clear_error(folder, tmp_path):
    src = tmp_path / "src.txt"
    src.write_text("Ein Hund.\n")
    for device, message in [("nonsense", "unknown device 'nonsense'"), ("meta", "not supported")] + \
            ([] if torch.cuda.is_available() else [("cuda", "CUDA is not available")]):
        r = run_cli("translate", "--model", str(folder), "--src", str(src), "--device", device)
        assert r.returncode == 2 and message in r.stderr.decode() and "Traceback" not in r.stderr.decode()


def test_divergence_stops_training_and_is_never_best(tmp_path, capsys):
    from nmt import cli

    files = tiny_corpus(tmp_path, n_train=60, n_valid=10)
    code = cli.main(["train", "--train-src", str(files["train", "de"]), "--train-tgt", str(files["train", "en"]),
                     "--valid-src", str(files["val", "de"]), "--valid-tgt", str(files["val", "en"]),
                     "--epochs", "2", "--emb-size", "16", "--hidden", "32", "--learning-rate", "50",
                     "--max-grad-norm", "0", "--save-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "error: training diverged in epoch 1" in err and "lower --learning-rate" in err
    assert not (tmp_path / "run" / "best").exists() and not (tmp_path / "run" / "last").exists()
    assert perplexity(-1e6, 1) == float("inf")


# ----------------------------------------------------------------------------- 8. options
@pytest.mark.parametrize("option, value", [("max_len_a", -5.0), ("max_len_a", float("inf")),
                                           ("length_penalty", float("nan")), ("beam_size", 1000),
                                           ("max_len_b", -1), ("batch_size", 0)])
def test_decoding_options_outside_their_range_are_refused(option, value):
    with pytest.raises(ValueError, match=option.replace("_", "-").removesuffix("-size") + "|" + option.split("_")[0]):
        DecodeConfig(**{option: value, "n_best": 1}).validate()


def test_cli_says_the_limits(folder, tmp_path):
    src = tmp_path / "src.txt"
    src.write_text("Ein Hund.\n")
    for flags, message in [(["--length-penalty", "nan"], "--length-penalty must be between 0 and 10"),
                           (["--beam-size", "1000"], f"beam size must be between 1 and {MAX_BEAM_SIZE}"),
                           (["--max-len-a", "inf"], "--max-len-a must be between 0 and 10")]:
        r = run_cli("translate", "--model", str(folder), "--src", str(src), *flags)
        assert r.returncode == 2 and message in r.stderr.decode(), r.stderr


def test_blank_validation_files_are_an_error(tmp_path):
    files = tiny_corpus(tmp_path, n_train=40, n_valid=8)
    for lang in ("de", "en"):
        files["val", lang].write_bytes(__import__("gzip").compress(b"\n  \n\n"))
    with pytest.raises(DataError, match="no validation pair has words on both sides"):
        trainer(files, tmp_path / "run", epochs=1).run()


# ----------------------------------------------------------------------------- 9. Hub ids, push, cards
@pytest.mark.parametrize("name", ["a/b@../../x", "a/b@main/../x", "a/b@/etc", "a/b@x y", "a/b@refs//x"])
def test_revisions_that_are_paths_are_invalid(name):
    with pytest.raises(CheckpointError, match="invalid revision"):
        parse_repo_ref(name)


def test_push_refuses_a_link_out_of_the_folder(folder, tmp_path):
    (tmp_path / "private.txt").write_text("not yours")
    (folder / "README.md").symlink_to(tmp_path / "private.txt")
    with pytest.raises(CheckpointError, match="README.md links to a file outside the folder"):
        push_checkpoint(folder, "alice/x")


def test_the_model_card_escapes_what_the_checkpoint_says(tiny_translator):
    info = catalog.summary(tiny_translator)
    info.update(name="<b>x</b>", decode={"<img src=x onerror=1>": "[a](javascript:1)"},
                scores={"bleu": 1.0, "test_set": "<iframe>"},
                data={"corpus": "", "train_src": "t<script>", "train_tgt": "*", "valid_src": "", "max_len": 5,
                      "min_freq": 1})
    card = catalog.card_markdown(info)
    assert all(raw not in card for raw in ("<b>", "<img", "[a]", "<iframe", "<script")), card
    assert "&lt;iframe&gt;" in card


class _StaleSize(type(Path())):
    """A path whose stat() reports 5 bytes: the file grew after it was measured."""

    def stat(self, *args, **kwargs):
        real = os.stat(self)
        return os.stat_result((real.st_mode, *real[1:6], 5, *real[7:]))


def test_read_capped_reads_a_file_that_grew_and_still_refuses_one_past_the_limit(tmp_path):
    (tmp_path / "small").write_bytes(b"x" * 12)
    (tmp_path / "big").write_bytes(b"y" * 30)
    assert read_capped(_StaleSize(tmp_path / "small"), 20) == b"x" * 12
    with pytest.raises(CheckpointError, match="over the limit"):
        read_capped(_StaleSize(tmp_path / "big"), 20)
