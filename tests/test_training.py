"""Training end to end: metrics, checkpoints, exact resume, and the command line."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from conftest import PAIRS, shared_data
from nmt.cli import build_parser, config_from_args, main
from nmt.config import DataConfig, ModelConfig, TrainConfig, VocabConfig
from nmt.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = ["--emb-size", "16", "--hidden", "32", "--dropout", "0.2"]


def tiny_corpus(tmp_path: Path, n_train: int = 200, n_valid: int = 30):
    """The first lines of Multi30k (or the built-in pairs where it is absent)."""
    files = {}
    for split, n in (("train", n_train), ("val", n_valid)):
        for lang in ("de", "en"):
            if (ROOT.parent / "shared/data/multi30k").is_dir():
                with gzip.open(shared_data() / f"{split}.{lang}.gz", "rt", encoding="utf-8") as f:
                    lines = [next(f).rstrip("\n") for _ in range(n)]
            else:  # (with one pair longer than 20 words, as Multi30k has)
                lines = [p[0 if lang == "de" else 1] for p in PAIRS] * (n // len(PAIRS) + 1)
                lines = lines[: n - 1] + [" ".join(lines[:6])]
            path = tmp_path / f"{split}.{lang}.gz"
            path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
            files[split, lang] = path
    return files


def trainer(files, save_dir, epochs, train_from="", **model):
    data = DataConfig(train_src=str(files["train", "de"]), train_tgt=str(files["train", "en"]),
                      valid_src=str(files["val", "de"]), valid_tgt=str(files["val", "en"]), batch_size=16)
    cfg = dict(emb_size=16, hidden=32, dropout=0.2)
    cfg.update(model)
    return Trainer(data, VocabConfig(), ModelConfig(**cfg),
                   TrainConfig(save_dir=str(save_dir), epochs=epochs, train_from=train_from, label_smoothing=0.1,
                               learning_rate=0.005, start_decay_at=2, scheduled_sampling=0.1))


def test_training_writes_metrics_and_checkpoints(tmp_path):
    files = tiny_corpus(tmp_path)
    best = trainer(files, tmp_path / "run", epochs=2).run()
    lines = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    assert lines[1]["train_loss"] < lines[0]["train_loss"]
    assert lines[1]["lr"] == lines[0]["lr"]  # decay starts after epoch 2's validation
    for key in ("train_ppl", "valid_ppl", "valid_bleu", "src_tokens_per_s", "tgt_tokens_per_s"):
        assert key in lines[0]
    assert best == tmp_path / "run/best"
    assert (best / "metrics.jsonl").read_text() == (tmp_path / "run/metrics.jsonl").read_text()
    assert {p.name for p in (tmp_path / "run/last").iterdir()} >= {"model.safetensors", "optimizer.safetensors", "trainer_state.json"}
    assert not any(p.suffix in (".pt", ".bin", ".pkl") for p in (tmp_path / "run").rglob("*"))


def test_resume_continues_identically(tmp_path):
    files = tiny_corpus(tmp_path)
    trainer(files, tmp_path / "straight", epochs=3).run()
    trainer(files, tmp_path / "stopped", epochs=1).run()
    torch.manual_seed(12345)  # a resumed run must not depend on the process' RNG
    trainer(files, tmp_path / "ignored", epochs=3, train_from=str(tmp_path / "stopped")).run()
    a = load_file(str(tmp_path / "straight/last/model.safetensors"))
    b = load_file(str(tmp_path / "stopped/last/model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ma = (tmp_path / "straight/metrics.jsonl").read_text().splitlines()
    mb = (tmp_path / "stopped/metrics.jsonl").read_text().splitlines()
    strip = lambda lines: [{k: v for k, v in json.loads(x).items() if "per_s" not in k and "time" not in k} for x in lines]
    assert strip(ma) == strip(mb)


def run_cli(*args, input_text=None):
    return subprocess.run([sys.executable, "-m", "nmt", *args], cwd=ROOT, capture_output=True, text=True,
                          input=input_text, env={**__import__("os").environ, "NMT_PROGRESS": "0"}, timeout=600)


def test_cli_train_translate_evaluate(tmp_path):
    files = tiny_corpus(tmp_path, n_train=300, n_valid=40)
    r = run_cli("train", "--train-src", str(files["train", "de"]), "--train-tgt", str(files["train", "en"]),
                "--valid-src", str(files["val", "de"]), "--valid-tgt", str(files["val", "en"]), "--epochs", "2",
                "--batch-size", "32", "--max-len", "20", "--save-dir", str(tmp_path / "run"), "--attention", "concat",
                "--threads", "1", *TINY_MODEL)
    assert r.returncode == 0, r.stderr
    assert "pairs longer than 20" in r.stderr and "best checkpoint:" in r.stdout
    model = str(tmp_path / "run/best")

    r = run_cli("translate", "--model", model, "--src", str(files["val", "de"]), "--beam-size", "3",
                "--n-best", "2", "--replace-unk", "--attention-out", str(tmp_path / "att.jsonl"),
                "--score-gold", str(files["val", "en"]))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 80 and lines[0].startswith("0 ||| ") and lines[2].startswith("1 ||| ")
    assert float(lines[0].split(" ||| ")[2]) >= float(lines[1].split(" ||| ")[2])
    assert "GOLD SCORE" in r.stderr and "perplexity" in r.stderr
    att = [json.loads(x) for x in (tmp_path / "att.jsonl").read_text().splitlines()]
    assert len(att) == 40
    assert all(len(a["attention"]) == len(a["tgt"]) and all(len(row) == len(a["src"]) for row in a["attention"]) for a in att)

    r = run_cli("translate", "--model", model, "--src", "-", "--beam-size", "1", input_text="Ein Hund.\n\nZwei Männer.\n")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 3 and r.stdout.splitlines()[1] == ""

    r = run_cli("evaluate", "--model", model, "--src", str(files["val", "de"]), "--ref", str(files["val", "en"]))
    assert r.returncode == 0, r.stderr
    assert "BLEU = " in r.stdout and "nrefs:1|case:mixed|eff:no|tok:13a" in r.stdout
    assert "chrF = " in r.stdout and "perplexity = " in r.stdout


def test_cli_reports_bad_input_clearly(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("eins\nzwei\n")
    (tmp_path / "b.txt").write_text("one\n")
    code = main(["train", "--train-src", str(tmp_path / "a.txt"), "--train-tgt", str(tmp_path / "b.txt"),
                 "--valid-src", str(tmp_path / "a.txt"), "--valid-tgt", str(tmp_path / "a.txt"),
                 "--save-dir", str(tmp_path / "r")])
    assert code == 2 and "b.txt ends after line 1" in capsys.readouterr().err
    code = main(["train", "--train-src", str(tmp_path / "a.txt"), "--train-tgt", str(tmp_path / "a.txt"),
                 "--valid-src", str(tmp_path / "a.txt"), "--valid-tgt", str(tmp_path / "a.txt"),
                 "--save-dir", str(tmp_path / "r"), "--hidden", "33"])
    assert code == 2 and "even --hidden" in capsys.readouterr().err
    code = main(["translate", "--model", str(tmp_path / "nope"), "--src", str(tmp_path / "a.txt")])
    assert code == 2 and "error:" in capsys.readouterr().err
    code = main(["train", "--train-from", str(tmp_path / "nothing-here")])
    assert code == 2 and "neither a save dir" in capsys.readouterr().err


def test_rounding_the_output_rows_changes_no_update(tmp_path):
    """With --amp on a CPU a step rounds the output layer's rows to a multiple of 64 with
    padding positions (oneDNN builds a kernel per shape); the update is the same as without."""
    files = tiny_corpus(tmp_path, n_train=40, n_valid=8)
    steps = []
    for multiple in (1, 64):
        t = trainer(files, tmp_path / f"run{multiple}", epochs=1, dropout=0.0)
        t.cfg.scheduled_sampling = 0.0
        t._setup()
        t.row_multiple = multiple
        batch = next(iter(t.train_data.batches(16, shuffle=False)))
        torch.manual_seed(0)
        loss, _ = t.train_step(batch)
        steps.append((loss, [p.detach().clone() for p in t.model.parameters()]))
    (loss1, params1), (loss64, params64) = steps
    assert torch.allclose(loss1, loss64, rtol=1e-6)
    for a, b in zip(params1, params64):
        assert torch.allclose(a, b, atol=1e-6)


def test_amp_left_unset_follows_the_device_and_no_amp_is_respected(tmp_path):
    def amp(*flags):
        args = build_parser().parse_args(["train", *flags])
        return config_from_args(TrainConfig, args).amp

    assert (amp(), amp("--amp"), amp("--no-amp")) == (None, True, False)
    files = tiny_corpus(tmp_path, n_train=20, n_valid=5)
    t = trainer(files, tmp_path / "run", epochs=1)
    assert t.cfg.amp is None and t.device.type == "cpu" and not t.amp  # unset: off on a CPU
