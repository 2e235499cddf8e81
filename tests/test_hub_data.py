"""nmt.serving.hub_data (the Train tab's Multi30k from the Hub) against a fake ``bentrevett/multi30k`` dataset
repo on FakeHub (tests/hub_server.py): download and conversion, the cache reused without the network, offline,
size limit, malformed lines, French, concurrency, and jobs.py using the Hub copy.

As in test_hub.py, huggingface_hub reads HF_ENDPOINT / HF_HUB_OFFLINE at import, so the code under test runs
in a subprocess (with ``nmt`` as a bare package: hub_data needs only nmt.errors, not torch).
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hub_server import FakeHub

REPO_ROOT = Path(__file__).resolve().parents[1]
DATASET = "bentrevett/multi30k"
RESOLVE = f"/datasets/{DATASET}/resolve/"

TRAIN = [{"en": f"A dog runs number {i}.", "de": f"Ein Hund läuft Nummer {i}."} for i in range(40)]
TRAIN[3] = {"en": "Two men\nplay  soccer.", "de": "Zwei Männer spielen Fußball."}  # a line break inside
VAL = [{"en": f"A cat sleeps {i}.", "de": f"Eine Katze schläft {i}."} for i in range(8)]

_DRIVER = r"""
import json, sys, threading, types
pkg = types.ModuleType("nmt")
pkg.__path__ = [sys.argv[1] + "/nmt"]
sys.modules["nmt"] = pkg  # a bare package: no nmt/__init__ (torch)
from nmt.serving import hub_data
kwargs = json.loads(sys.argv[2])
threads = kwargs.pop("threads", 1)
out = []
def call():
    try:
        out.append({"result": str(hub_data.multi30k_folder(**kwargs))})
    except Exception as exc:
        out.append({"error": type(exc).__name__, "message": str(exc)})
workers = [threading.Thread(target=call) for _ in range(threads)]
for w in workers: w.start()
for w in workers: w.join()
print("@@RESULTS@@" + json.dumps(out))
"""


def jsonl(rows) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def add_dataset(hub: FakeHub, train: bytes | None = None, val: bytes | None = None) -> str:
    files = {"train.jsonl": jsonl(TRAIN) if train is None else train, "val.jsonl": jsonl(VAL) if val is None else val,
             "test.jsonl": jsonl(VAL), "README.md": b"# multi30k\n"}
    return hub.add_repo(DATASET, files, repo_type="dataset")


def run_hub_data(hub: FakeHub, tmp_path: Path, offline: bool = False, threads: int = 1, **kwargs) -> list[dict]:
    env = hub.client_env(tmp_path / "hf_home", offline=offline)
    env["NMT_HUB_DATA_DIR"] = str(tmp_path / "cache")
    env.pop("NMT_DATA", None)
    kwargs.setdefault("local", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir(exist_ok=True)
    proc = subprocess.run([sys.executable, "-c", _DRIVER, str(REPO_ROOT), json.dumps({**kwargs, "threads": threads})],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.rsplit("@@RESULTS@@", 1)[1])


def lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def resolve_gets(hub: FakeHub) -> list[str]:
    return [p for m, p in hub.requests if m == "GET" and p.startswith(RESOLVE)]


def test_download_converts_to_line_aligned_gz_files_and_the_cache_is_reused_offline(tmp_path):
    with FakeHub() as hub:
        sha = add_dataset(hub)
        [out] = run_hub_data(hub, tmp_path, src="de", tgt="en")
        assert "result" in out, out
    folder = Path(out["result"])
    assert folder == tmp_path / "cache" / "multi30k-hub"
    assert sorted(p.name for p in folder.glob("*.gz")) == ["train.de.gz", "train.en.gz", "val.de.gz", "val.en.gz"]
    en, de = lines(folder / "train.en.gz"), lines(folder / "train.de.gz")
    assert len(en) == len(de) == len(TRAIN)
    assert en[0] == "A dog runs number 0." and de[0] == "Ein Hund läuft Nummer 0."
    assert en[3] == "Two men play soccer." and de[3] == "Zwei Männer spielen Fußball."  # still aligned
    assert en[-1] == "A dog runs number 39." and de[-1] == "Ein Hund läuft Nummer 39."
    assert lines(folder / "val.en.gz") == [r["en"] for r in VAL]
    assert json.loads((folder / "source.json").read_text())["commit"] == sha
    assert {p.rsplit("/", 1)[1] for p in resolve_gets(hub)} == {"train.jsonl", "val.jsonl"}  # not test.jsonl
    assert not list((tmp_path / "cache").glob(".multi30k-hub-*"))  # no temporary folder left

    # The server is stopped: the second call (either direction) uses the converted copy.
    [again] = run_hub_data(hub, tmp_path, src="en", tgt="de")
    assert again == {"result": str(folder)}
    [offline] = run_hub_data(hub, tmp_path, offline=True, src="de", tgt="en")
    assert offline == {"result": str(folder)}


def test_local_data_is_used_first(tmp_path):
    local = tmp_path / "local"
    local.mkdir()
    for name in ("train.fr.gz", "train.en.gz", "val.fr.gz", "val.en.gz"):
        with gzip.open(local / name, "wt") as f:
            f.write("x\n")
    with FakeHub() as hub:  # nothing on it
        [out] = run_hub_data(hub, tmp_path, src="fr", tgt="en", local=str(local))
    assert out == {"result": str(local)}
    assert not resolve_gets(hub)


def test_offline_without_data_says_so(tmp_path):
    with FakeHub() as hub:
        add_dataset(hub)
        [out] = run_hub_data(hub, tmp_path, offline=True, src="de", tgt="en")
    assert out["error"] == "DataError"
    assert "offline" in out["message"] and "NMT_DATA" in out["message"] and DATASET in out["message"]
    assert "train.de.gz" in out["message"]
    assert not resolve_gets(hub)


def test_an_oversized_file_is_refused_before_download(tmp_path):
    with FakeHub() as hub:
        add_dataset(hub)
        limit = len(jsonl(TRAIN)) - 1  # the limit lowered for the test: train.jsonl is one byte over it
        out = _run_with_prelude(hub, tmp_path, f"hub_data.MAX_FILE_BYTES = {limit}")
    assert out["error"] == "DataError", out
    assert "train.jsonl" in out["message"] and "limit" in out["message"] and "not downloaded" in out["message"]
    assert not resolve_gets(hub)
    assert not (tmp_path / "cache" / "multi30k-hub").exists()


def _run_with_prelude(hub: FakeHub, tmp_path: Path, prelude: str) -> dict:
    code = _DRIVER.replace("from nmt.serving import hub_data\n", f"from nmt.serving import hub_data\n{prelude}\n")
    env = hub.client_env(tmp_path / "hf_home")
    env["NMT_HUB_DATA_DIR"] = str(tmp_path / "cache")
    (tmp_path / "empty").mkdir(exist_ok=True)
    args = {"src": "de", "tgt": "en", "local": str(tmp_path / "empty")}
    proc = subprocess.run([sys.executable, "-c", code, str(REPO_ROOT), json.dumps(args)], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.rsplit("@@RESULTS@@", 1)[1])[0]


@pytest.mark.parametrize("bad, expected", [
    (b'{"en": "A dog.", "de": "Ein Hund."}\nnot json\n', r"train.jsonl line 2 is not valid JSON"),
    (b'{"en": "A dog.", "de": "Ein Hund."}\n["en", "de"]\n', r"train.jsonl line 2 is not a JSON object"),
    (b'{"en": "A dog."}\n', r'train.jsonl line 1: "de" is missing'),
    (b'{"en": "A dog.", "de": 3}\n', r'train.jsonl line 1: "de" is not a string'),
    (b'{"en": "  ", "de": "Ein Hund."}\n', r'train.jsonl line 1: "en" is empty'),
    (b'{"en": "' + b"a" * 5000 + b'", "de": "x"}\n', r'train.jsonl line 1: "en" has 5,000 characters'),
])
def test_a_malformed_line_is_a_clear_error(tmp_path, bad, expected):
    with FakeHub() as hub:
        add_dataset(hub, train=bad)
        [out] = run_hub_data(hub, tmp_path, src="de", tgt="en")
    assert out["error"] == "DataError", out
    assert expected in out["message"] and DATASET in out["message"]
    cache = tmp_path / "cache"
    assert not (cache / "multi30k-hub").exists() and not list(cache.glob(".multi30k-hub-*"))


def test_french_without_local_data_is_refused_clearly(tmp_path):
    with FakeHub() as hub:
        add_dataset(hub)
        [out] = run_hub_data(hub, tmp_path, src="fr", tgt="en")
    assert out["error"] == "DataError"
    assert "English and German only" in out["message"] and "NMT_DATA" in out["message"]
    assert not resolve_gets(hub)


def test_two_callers_at_once_download_once(tmp_path):
    with FakeHub() as hub:
        add_dataset(hub)
        outs = run_hub_data(hub, tmp_path, threads=4, src="de", tgt="en")
    assert len({json.dumps(o) for o in outs}) == 1 and "result" in outs[0], outs
    gets = resolve_gets(hub)
    assert len(gets) == 2, gets  # train.jsonl and val.jsonl, once each


_JOBS_DRIVER = r"""
import gzip, json, sys, time
from nmt.serving.jobs import JobManager, JobRequest
jobs = JobManager(sys.argv[1], supervise=False, python="true", nice=0)
request = JobRequest("en-de", "general", "tiny", epochs=1, pairs=100)
folder = jobs.data_for(request)
job = jobs.submit("visitor-token-1", request)
jobs.step()  # starts the job: writes its data folder, runs "true -m nmt train ..." (exits at once)
data = job.folder / "data"
first = {name: gzip.open(data / name, "rt", encoding="utf-8").read().splitlines()
         for name in ("train.en.gz", "train.de.gz", "valid.en.gz")}
deadline = time.time() + 30
while jobs.get(job.id, "visitor-token-1").status == "running" and time.time() < deadline:
    jobs.step(); time.sleep(0.1)
jobs.close()
try:
    JobManager(sys.argv[1] + "2", supervise=False).submit("other-token-2", JobRequest("fr-en", "general", "tiny"))
    french = None
except Exception as exc:
    french = f"{type(exc).__name__}: {exc}"
print("@@RESULTS@@" + json.dumps({"folder": str(folder), "first": first, "french": french}))
"""


def test_jobs_use_the_hub_copy_when_nmt_data_is_empty(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with FakeHub() as hub:
        add_dataset(hub)
        env = hub.client_env(tmp_path / "hf_home")
        env.update({"NMT_DATA": str(empty), "NMT_HUB_DATA_DIR": str(tmp_path / "cache"),
                    "PYTHONPATH": str(REPO_ROOT)})
        proc = subprocess.run([sys.executable, "-c", _JOBS_DRIVER, str(tmp_path / "jobs")], env=env,
                              capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.rsplit("@@RESULTS@@", 1)[1])
    assert out["folder"] == str(tmp_path / "cache" / "multi30k-hub")
    assert out["first"]["train.en.gz"] == [r["en"] for r in TRAIN][:3] + ["Two men play soccer."] + \
        [r["en"] for r in TRAIN][4:]
    assert out["first"]["train.de.gz"][0] == TRAIN[0]["de"] and len(out["first"]["train.de.gz"]) == len(TRAIN)
    assert out["first"]["valid.en.gz"] == [r["en"] for r in VAL]
    assert out["french"].startswith("JobError") and "English and German only" in out["french"]
    assert len(resolve_gets(hub)) == 2
