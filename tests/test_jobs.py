"""nmt.serving.jobs: training jobs in subprocesses, one at a time, a queue, cancel, restart, limits."""

from __future__ import annotations

import gzip
import json
import os
import sys
import time
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import shared_data

from nmt.checkpoint import load_checkpoint
from nmt.serving import jobs as jobs_module
from nmt.serving.jobs import JobError, JobManager, JobRequest
from nmt.serving.translator import Translator

ALICE, BOB, CAROL = "alice-token-0123456789", "bob-token-0123456789", "carol-token-0123456789"
TINY = JobRequest("de-en", "general", "tiny", epochs=2, pairs=300)


@pytest.fixture
def manager(tmp_path):
    jobs = JobManager(tmp_path / "jobs", data=shared_data(), poll_s=0.1, nice=0)
    yield jobs
    jobs.close(kill=True)


def wait_for(predicate, timeout=120.0, what="the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def finished(jobs, job_id, token):
    return wait_for(lambda: jobs.progress(job_id, token)["status"] not in ("waiting", "running") and
                    jobs.progress(job_id, token), what=f"job {job_id} to finish")


def assert_no_half_written_checkpoint(run: Path) -> None:
    assert not list(run.glob(".*.tmp-*")), "a temporary checkpoint folder was left behind"
    for name in ("best", "last"):
        if (run / name).exists():
            load_checkpoint(run / name)  # raises if incomplete or corrupt


def group_gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return not jobs_module._group_alive(jobs_module.Job("x", "", TINY, pid=pid))


def test_a_job_trains_a_tiny_model_that_translates(manager, tmp_path):
    job = manager.submit(ALICE, TINY)
    assert job.status in ("waiting", "running") and manager.position(job.id) in (0, 1)
    info = finished(manager, job.id, ALICE)
    assert info["status"] == "done", info
    assert info["epoch"] == info["epochs"] == 2 and info["fraction"] == 1.0
    assert [m["epoch"] for m in info["metrics"]] == [1, 2] and info["valid_bleu"] is not None
    assert info["message"].startswith("Done: 2 epochs")
    folder = job.folder
    with gzip.open(folder / "data" / "train.de.gz", "rt", encoding="utf-8") as fh:
        assert sum(1 for _ in fh) == 300
    command = (folder / "train.log").read_text()
    assert "300 training pairs" in command
    best = manager.model_dir(job.id, ALICE)
    [result] = Translator.load(best).translate(["Ein Hund läuft über die Wiese."], beam_size=2)
    assert isinstance(result.text, str) and result.tokens
    tracked = manager.tracked(job.id, ALICE)  # (read as the model card reads them)
    assert tracked and [r["epoch"] for r in tracked] == [1, 2]
    saved = json.loads((folder / "job.json").read_text())
    assert saved["status"] == "done" and saved["owner"] != ALICE and ALICE not in (folder / "job.json").read_text()
    archive = manager.zip_model(job.id, ALICE)
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
    assert any(n.endswith("/model.safetensors") for n in names) and any(n.endswith("/config.json") for n in names)
    assert manager.zip_model(job.id, ALICE) == archive
    with pytest.raises(JobError, match="No training job"):
        manager.progress(job.id, BOB)  # another visitor does not see it


def test_cancel_stops_the_process_and_leaves_no_half_written_checkpoint(manager):
    job = manager.submit(ALICE, JobRequest("de-en", "general", "tiny", epochs=15, pairs=2000))
    wait_for(lambda: manager.progress(job.id, ALICE)["epoch"] >= 1, what="the first epoch")
    pid = job.pid
    assert pid and not group_gone(pid)
    manager.cancel(job.id, ALICE)
    info = manager.progress(job.id, ALICE)
    assert info["status"] == "cancelled" and info["epoch"] < 15 and "Cancelled after" in info["message"]
    assert wait_for(lambda: group_gone(pid), 10, "the training process to end")
    assert_no_half_written_checkpoint(job.run_dir)
    assert json.loads((job.folder / "job.json").read_text())["status"] == "cancelled"
    epochs = len(info["metrics"])
    time.sleep(1.5)
    assert len(manager.progress(job.id, ALICE)["metrics"]) == epochs  # nothing trains on
    manager.cancel(job.id, ALICE)  # cancelling again changes nothing


def test_a_second_job_waits_and_starts_after_the_first(manager):
    first = manager.submit(ALICE, TINY)
    second = manager.submit(BOB, TINY)
    wait_for(lambda: manager.progress(first.id, ALICE)["status"] == "running", what="the first job to start")
    info = manager.progress(second.id, BOB)
    assert info["status"] == "waiting" and info["position"] == 1 and "number 1 in line" in info["message"]
    assert manager.position(first.id) == 0
    with pytest.raises(JobError, match="already have a waiting"):
        manager.submit(BOB, TINY)
    assert finished(manager, first.id, ALICE)["status"] == "done"
    assert finished(manager, second.id, BOB)["status"] == "done"
    assert manager.progress(second.id, BOB)["position"] is None


def test_a_waiting_job_can_be_cancelled_and_the_queue_is_limited(tmp_path):
    jobs = JobManager(tmp_path / "jobs", data=shared_data(), max_waiting=2, supervise=False)
    first, second = jobs.submit(ALICE, TINY), jobs.submit(BOB, TINY)  # both wait: no supervisor starts them
    assert (jobs.position(first.id), jobs.position(second.id)) == (1, 2)
    with pytest.raises(JobError, match="queue is full"):
        jobs.submit(CAROL, TINY)
    jobs.cancel(first.id, ALICE)
    assert jobs.progress(first.id, ALICE)["status"] == "cancelled" and jobs.position(second.id) == 1
    jobs.submit(CAROL, TINY)  # room again


def test_a_new_manager_on_the_same_root_finds_the_jobs(tmp_path):
    root = tmp_path / "jobs"
    first = JobManager(root, data=shared_data(), poll_s=0.1, nice=0)
    done = first.submit(ALICE, TINY)
    assert finished(first, done.id, ALICE)["status"] == "done"
    running = first.submit(BOB, JobRequest("de-en", "dot", "tiny", epochs=4, pairs=300))
    waiting = first.submit(CAROL, TINY)
    wait_for(lambda: first.progress(running.id, BOB)["status"] == "running", what="the second job to start")
    first.close(kill=False)  # the "app" stops; its training process goes on

    second = JobManager(root, data=shared_data(), poll_s=0.1, nice=0)
    try:
        assert [j.id for j in second.jobs_of(ALICE)] == [done.id] and second.latest(ALICE).status == "done"
        assert second.model_dir(done.id, ALICE).is_dir()
        assert second.progress(running.id, BOB)["status"] == "running"  # watched again
        assert second.progress(waiting.id, CAROL)["position"] == 1
        assert finished(second, running.id, BOB)["status"] == "done"
        assert finished(second, waiting.id, CAROL)["status"] == "done"
    finally:
        second.close(kill=True)
        first.close(kill=True)


def test_a_job_whose_process_vanished_is_failed_on_restart(tmp_path):
    root = tmp_path / "jobs"
    jobs = JobManager(root, data=shared_data(), supervise=False)
    job = jobs.submit(ALICE, TINY)
    saved = json.loads((job.folder / "job.json").read_text())
    (job.folder / "job.json").write_text(json.dumps({**saved, "status": "running", "pid": 2 ** 22 + 7,
                                                     "started": time.time()}))
    again = JobManager(root, data=shared_data(), supervise=False)
    info = again.progress(job.id, ALICE)
    assert info["status"] == "failed" and "restarted" in info["error"]


def test_the_wall_clock_limit_fails_the_job(tmp_path):
    jobs = JobManager(tmp_path / "jobs", data=shared_data(), max_seconds=2, poll_s=0.1, nice=0)
    try:
        job = jobs.submit(ALICE, JobRequest("de-en", "general", "tiny", epochs=15, pairs=2000))
        info = finished(jobs, job.id, ALICE)
        assert info["status"] == "failed" and "time limit of 2 s" in info["error"]
        assert wait_for(lambda: group_gone(job.pid), 10, "the training process to end")
        assert_no_half_written_checkpoint(job.run_dir)
    finally:
        jobs.close(kill=True)


@pytest.mark.parametrize("request_, message", [
    (JobRequest(direction="de-cs"), "Unknown direction"),
    (JobRequest(attention="local"), "Unknown attention"),
    (JobRequest(preset="huge"), "Unknown size preset"),
    (JobRequest(epochs=0), "between 1 and 15"),
    (JobRequest(epochs=99), "between 1 and 15"),
    (JobRequest(epochs=2.5), "whole number"),
    (JobRequest(epochs="two"), "whole number"),
    (JobRequest(pairs=5), "between 100 and 29,000"),
    (JobRequest(pairs=10**9), "between 100 and 29,000"),
])
def test_bad_requests_are_refused(tmp_path, request_, message):
    jobs = JobManager(tmp_path / "jobs", data=shared_data(), supervise=False)
    with pytest.raises(JobError, match=message):
        jobs.submit(ALICE, request_)
    assert not (tmp_path / "jobs").exists() or not list((tmp_path / "jobs").iterdir())


def test_missing_data_and_tokens_get_clear_messages(tmp_path):
    jobs = JobManager(tmp_path / "jobs", data=tmp_path / "no-data", supervise=False)
    with pytest.raises(JobError, match=r"needs the Multi30k data.*NMT_DATA"):
        jobs.submit(ALICE, TINY)
    with pytest.raises(JobError, match="visitor token"):
        jobs.submit("", TINY)
    with pytest.raises(JobError, match="no model yet"):
        jobs2 = JobManager(tmp_path / "jobs2", data=shared_data(), supervise=False)
        job = jobs2.submit(ALICE, TINY)
        jobs2.model_dir(job.id, ALICE)


def test_train_command_uses_one_thread_and_the_preset(tmp_path):
    command = jobs_module.train_command(JobRequest("fr-en", "concat", "bundled", 3, 500), tmp_path / "d", tmp_path / "r")
    assert command[1:4] == ["-m", "nmt", "train"] and "--threads" in command
    assert command[command.index("--threads") + 1] == "1" and command[command.index("--epochs") + 1] == "3"
    assert command[command.index("--train-src") + 1].endswith("train.fr.gz")
    assert command[command.index("--emb-size") + 1] == "256" and "--tie-embeddings" in command


@pytest.mark.parametrize("preset, problem, amp", [("bundled", None, True), ("bundled", "no bf16 LSTM", False),
                                                  ("small", None, False), ("tiny", None, False)])
def test_the_bundled_preset_trains_in_bf16_where_the_cpu_can(monkeypatch, tmp_path, preset, problem, amp):
    monkeypatch.setattr(jobs_module, "cpu_bf16_problem", lambda: problem)
    command = jobs_module.train_command(JobRequest("de-en", "general", preset, 3, 500), tmp_path / "d", tmp_path / "r")
    assert ("--amp" in command) == amp


# ----------------------------------------------------------------------------- a finished job, in the app and on the Hub
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A done tiny job: (jobs root, job id)."""
    root = tmp_path_factory.mktemp("trained") / "jobs"
    jobs = JobManager(root, data=shared_data(), poll_s=0.1, nice=0)
    try:
        job = jobs.submit(ALICE, TINY)
        assert finished(jobs, job.id, ALICE)["status"] == "done"
    finally:
        jobs.close(kill=True)
    return root, job.id


def test_the_app_translates_with_a_trained_model(trained, tmp_path, tiny_translators):
    from gradio_client import Client
    from test_app import AppServer, app_env, build_catalog, free_port

    root, job_id = trained
    checkpoints = build_catalog(tmp_path / "checkpoints", {"general": tiny_translators["general"]})
    env = app_env(checkpoints, tmp_path, free_port())
    env.update({"NMT_JOBS_DIR": str(root), "NMT_DATA": str(shared_data())})
    with AppServer(env, tmp_path / "server.log") as app:
        client = Client(app.url, verbose=False)
        args = ("de-en", "general", f"job:{job_id}", 2, 1, True, None)
        status, result = client.predict("Ein Hund läuft.", *args, api_name="/translate")
        assert result["ok"], status
        assert result["model"]["source"] == "trained here" and result["model"]["name"].startswith("your model")
        expected = Translator.load(root / job_id / "run" / "best").translate(["Ein Hund läuft."], beam_size=2)[0]
        assert result["sentences"][0]["translation"] == expected.text
        card, _ = client.predict("de-en", "general", f"job:{job_id}", api_name="/model_card")
        assert "your model" in card
        for bad, message in ((f"job:{'0' * 24}", "no training job"), ("job:../../etc", "not a trained model")):
            status, result = client.predict("Ein Hund läuft.", "de-en", "general", bad, 2, 1, True, None,
                                            api_name="/translate")
            assert not result["ok"] and message in result["error"].lower(), result["error"]


def test_push_uses_the_visitors_token(trained, tmp_path):
    import subprocess

    from hub_server import FAKE_TOKEN, FakeHub

    root, job_id = trained
    code = ("import sys, json; from nmt.serving.jobs import JobManager, JobError\n"
            f"jobs = JobManager({str(root)!r}, supervise=False)\n"
            "for token in ('', sys.argv[1]):\n"
            "    try:\n"
            f"        print(json.dumps(['ok', jobs.push({job_id!r}, {ALICE!r}, 'alice/my-model', token)]))\n"
            "    except JobError as exc:\n"
            "        print(json.dumps(['error', str(exc)]))\n")
    with FakeHub() as hub:
        env = hub.client_env(tmp_path / "hf_home")  # no token in the environment: only the visitor's
        out = subprocess.run([sys.executable, "-c", code, FAKE_TOKEN], check=False, env=env, capture_output=True, text=True,
                             timeout=120, cwd=Path(__file__).resolve().parents[1])
        assert out.returncode == 0, out.stderr
        refused, pushed = [json.loads(line) for line in out.stdout.splitlines()]
        assert refused[0] == "error" and "access token" in refused[1]
        assert pushed[0] == "ok", pushed
        files = hub.repo_files("alice/my-model")
    assert {"config.json", "model.safetensors", "src.vocab", "tgt.vocab", "metrics.jsonl"} <= set(files)
    for path in root.rglob("*"):  # the token is written nowhere
        if path.is_file():
            assert FAKE_TOKEN.encode() not in path.read_bytes(), path
