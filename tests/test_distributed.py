"""Data-parallel training under torchrun (gloo, two CPU processes on 127.0.0.1): the same updates
as one process on the same global batches, one writer, exact resumption, and a lost process
stopping the other quickly with a clear error."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nmt.checkpoint import load_checkpoint, resolve_dir, state_dict_for_saving
from nmt.cli import main
from nmt.config import DataConfig, ModelConfig, TrainConfig, VocabConfig
from nmt.data import shard
from nmt.training.trainer import Trainer
from test_training import tiny_corpus

ROOT = Path(__file__).resolve().parents[1]
# Each process: writes its pid, and records every file it creates, writes or renames under the save dir.
WORKER = """
import os, sys
sys.path.insert(0, {root!r})
out, save = {out!r}, os.path.realpath({save!r})
rank = os.environ.get("RANK", "0")
open(os.path.join(out, "pid." + rank), "w").write(str(os.getpid()))
writes = open(os.path.join(out, "writes." + rank), "a", buffering=1)

def under_save(path):
    return isinstance(path, (str, bytes, os.PathLike)) and os.path.realpath(os.fsdecode(path)).startswith(save)

def hook(event, args):
    if event == "open" and under_save(args[0]) and args[1] and any(c in args[1] for c in "wax+"):
        writes.write(f"open {{args[0]}}\\n")
    elif event in ("os.mkdir", "os.rename", "os.remove", "os.rmdir") and under_save(args[0]):
        writes.write(f"{{event}} {{args[0]}}\\n")

sys.addaudithook(hook)
from nmt.cli import main
sys.exit(main(sys.argv[1:]))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_args(files, save_dir, epochs, dropout, batch_size=16, lr=0.005, optim="adam"):
    return ["train", "--optim", optim, "--train-src", str(files["train", "de"]), "--train-tgt", str(files["train", "en"]),
            "--valid-src", str(files["val", "de"]), "--valid-tgt", str(files["val", "en"]),
            "--emb-size", "16", "--hidden", "32", "--dropout", str(dropout), "--batch-size", str(batch_size),
            "--epochs", str(epochs), "--learning-rate", str(lr), "--label-smoothing", "0.1", "--start-decay-at", "2",
            "--valid-bleu-sents", "5", "--threads", "1", "--save-dir", str(save_dir)]


def worker(tmp_path: Path, save_dir: Path) -> tuple[Path, Path]:
    out = tmp_path / f"out-{save_dir.name}-{time.monotonic_ns()}"
    out.mkdir()
    script = out / "worker.py"
    script.write_text(WORKER.format(root=str(ROOT), out=str(out), save=str(save_dir)))
    return script, out


def env() -> dict:
    e = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return {**e, "NMT_PROGRESS": "0", "OMP_NUM_THREADS": "1"}


def torchrun(tmp_path, args, nproc=2, wait=True):
    save_dir = Path(args[args.index("--save-dir" if "--save-dir" in args else "--train-from") + 1])
    script, out = worker(tmp_path, save_dir)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "--monitor-interval", "0.5", str(script), *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), out
    r = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r, out


def writes(out: Path, rank: int) -> list[str]:
    path = out / f"writes.{rank}"
    return path.read_text().splitlines() if path.exists() else []


def params(run: Path) -> dict:
    return load_file(str(run / "last/model.safetensors"))


def metrics(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if "per_s" not in k and "time" not in k}
            for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_shards_are_the_batch_in_rank_order():
    for n in range(9):
        for world in (1, 2, 3):
            parts = [shard(list(range(n)), r, world) for r in range(world)]
            assert sum(parts, []) == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_two_processes_make_the_updates_of_one_and_only_process_0_writes(tmp_path):
    """SGD: an update is the gradient's multiple (Adam's would magnify the float rounding of the
    gradients' sums in the few elements whose gradient is about 0: they differ by ~1e-4)."""
    files = tiny_corpus(tmp_path, n_train=33, n_valid=8)  # batches of 16: 16, 16 and 1 (one slice left empty)
    _, out = torchrun(tmp_path, train_args(files, tmp_path / "two", epochs=2, dropout=0.0, lr=0.5, optim="sgd"))

    ref = Trainer(DataConfig(train_src=str(files["train", "de"]), train_tgt=str(files["train", "en"]),
                             valid_src=str(files["val", "de"]), valid_tgt=str(files["val", "en"]), batch_size=16),
                  VocabConfig(), ModelConfig(emb_size=16, hidden=32, dropout=0.0),
                  TrainConfig(save_dir=str(tmp_path / "one"), epochs=2, optim="sgd", learning_rate=0.5, label_smoothing=0.1,
                              start_decay_at=2, valid_bleu_sents=5))
    ref._setup()
    init = {k: v.clone() for k, v in state_dict_for_saving(ref.model).items()}
    ref.run()
    assert len(ref.train_data) == 33
    one, two = params(tmp_path / "one"), params(tmp_path / "two")
    assert one.keys() == two.keys()
    for k in one:
        assert torch.allclose(one[k], two[k], atol=1e-6, rtol=1e-5), (k, (one[k] - two[k]).abs().max())
    assert max(float((one[k] - init[k]).abs().max()) for k in one) > 1e-2  # (they did train)
    m1, m2 = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [m["lr"] for m in m1] == [m["lr"] for m in m2] and len(m2) == 2
    for a, b in zip(m1, m2):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["valid_ppl"] == pytest.approx(b["valid_ppl"], rel=1e-5)

    # Exactly one writer: process 0 wrote last/, best/ and the metrics; process 1 nothing under the save dir.
    assert writes(out, 1) == []
    written = writes(out, 0)
    assert any("metrics.jsonl" in w for w in written) and any(".last.tmp-" in w for w in written)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["best", "last", "metrics.jsonl", "tracked.jsonl"]
    state = json.loads((tmp_path / "two/last/trainer_state.json").read_text())
    assert state["trainer"]["world_size"] == 2 and len(state["python_rng_by_rank"]) == 2
    assert {"torch", "torch.1"} <= load_file(str(tmp_path / "two/last/rng.safetensors")).keys()


def test_resuming_continues_like_an_uninterrupted_run(tmp_path, caplog):
    files = tiny_corpus(tmp_path, n_train=60, n_valid=8)
    torchrun(tmp_path, train_args(files, tmp_path / "straight", epochs=2, dropout=0.3))
    torchrun(tmp_path, train_args(files, tmp_path / "stopped", epochs=1, dropout=0.3))
    torch.manual_seed(12345)  # (the resumed processes restore their own RNG streams)
    torchrun(tmp_path, ["train", "--train-from", str(tmp_path / "stopped"), "--epochs", "2", "--threads", "1"])
    a, b = params(tmp_path / "straight"), params(tmp_path / "stopped")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert metrics(tmp_path / "straight") == metrics(tmp_path / "stopped")

    # Without process 1's RNG stream (a different number of processes) it is not the same run; it says so.
    caplog.set_level(logging.WARNING)
    import shutil
    shutil.copytree(tmp_path / "stopped", tmp_path / "alone")
    state = json.loads((tmp_path / "alone/last/trainer_state.json").read_text())
    assert state["trainer"]["epoch"] == 2 and state["trainer"]["world_size"] == 2
    Trainer(DataConfig(), VocabConfig(), ModelConfig(), TrainConfig(train_from=str(tmp_path / "alone"), epochs=3)).run()
    assert "not bit-exact" in caplog.text and "2 processes and resumes with 1" in caplog.text
    state = json.loads((tmp_path / "alone/last/trainer_state.json").read_text())
    assert state["trainer"]["epoch"] == 3 and state["trainer"]["world_size"] == 1


def wait_for(path: Path, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, "training ended before it could be interrupted"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("launcher, victim, how", [("torchrun", 1, signal.SIGKILL), ("direct", 0, signal.SIGKILL),
                                                   ("direct", 1, signal.SIGSTOP)])
def test_a_lost_process_stops_the_other_quickly(tmp_path, launcher, victim, how):
    """torchrun: process 1 is killed (torchrun then ends process 0 too). Started without torchrun's
    agent, the survivor must see it itself: process 0 (which also holds the rendezvous) is killed,
    or process 1 hangs (stopped: the survivor waits --dist-timeout seconds)."""
    files = tiny_corpus(tmp_path, n_train=200, n_valid=8)
    args = train_args(files, tmp_path / "run", epochs=200, dropout=0.2) + ["--dist-timeout", "5"]
    if launcher == "torchrun":
        proc, out = torchrun(tmp_path, args, wait=False)
        procs = [proc]
    else:
        script, out = worker(tmp_path, tmp_path / "run")
        port = free_port()
        procs = [subprocess.Popen([sys.executable, str(script), *args], cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True,
                                  env={**env(), "WORLD_SIZE": "2", "RANK": str(r), "LOCAL_RANK": str(r),
                                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
                 for r in (0, 1)]
        proc = procs[1 - victim]
    try:
        wait_for(tmp_path / "run/last/trainer_state.json", proc)  # (an epoch is saved; training goes on)
        for rank in (0, 1):
            wait_for(out / f"pid.{rank}", proc)
        survivor = int((out / f"pid.{1 - victim}").read_text())
        os.kill(int((out / f"pid.{victim}").read_text()), how)
        lost = time.monotonic()
        output, _ = proc.communicate(timeout=60)
        took = time.monotonic() - lost
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert proc.returncode != 0 and took < 60, output
    with pytest.raises(ProcessLookupError):  # (the survivor is gone, not hanging)
        os.kill(survivor, 0)
    if launcher == "direct":  # the survivor's own clear error, no traceback
        assert proc.returncode == 2, output
        assert f"error: process {1 - victim} of 2 lost contact with the others" in output, output
        assert "Traceback" not in output and f"--train-from {tmp_path / 'run'}" in output
        if how == signal.SIGSTOP:
            assert "Timed out" in output and took > 4, output
    else:  # (torchrun names the killed process; the survivor says why it stops, whichever it saw first)
        assert "exitcode  : -9" in output and "rank      : 1" in output, output
        assert ("error: process 0 of 2 was stopped (SIGTERM)" in output
                or "error: process 0 of 2 lost contact with the others" in output), output
        assert "[rank0]: Traceback" not in output
    last = resolve_dir(tmp_path / "run/last")
    load_checkpoint(last, "cpu")  # the last complete checkpoint stays loadable
    assert json.loads((last / "trainer_state.json").read_text())["trainer"]["epoch"] >= 1


def test_processes_started_differently_refuse_to_train(tmp_path):
    """A process with other settings than process 0 (here another seed) stops them all with a message."""
    files = tiny_corpus(tmp_path, n_train=20, n_valid=4)
    script, out = worker(tmp_path, tmp_path / "run")
    port = free_port()
    args = train_args(files, tmp_path / "run", epochs=1, dropout=0.0)
    procs = [subprocess.Popen([sys.executable, str(script), *args, "--seed", str(1 + r)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**env(), "WORLD_SIZE": "2", "RANK": str(r), "LOCAL_RANK": str(r),
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
             for r in (0, 1)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    for p, output in zip(procs, outputs):
        assert p.returncode == 2 and "error: process 1 differs from process 0 in train" in output, output
    assert not (tmp_path / "run/last").exists()


def test_bad_torchrun_settings_are_clear_errors(tmp_path, monkeypatch, capsys):
    files = tiny_corpus(tmp_path, n_train=20, n_valid=4)
    args = train_args(files, tmp_path / "run", epochs=1, dropout=0.0, batch_size=2)
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert main(args) == 2 and "RANK is not" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "x")
    assert main(args) == 2 and "LOCAL_RANK='x' is not an integer" in capsys.readouterr().err
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert main(args) == 2 and "--batch-size 2 is the global batch" in capsys.readouterr().err
    assert main([*args[:-2], "--save-dir", str(tmp_path / "r"), "--batch-size", "3"]) == 2
    assert "MASTER_ADDR is not set" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "1")  # (torchrun with one process: the plain single process)
    assert Trainer(DataConfig(batch_size=1), VocabConfig(), ModelConfig(), TrainConfig()).dist is None
