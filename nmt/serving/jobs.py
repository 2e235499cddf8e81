"""Training jobs for the app: one ``python -m nmt train`` subprocess at a time, a short FIFO queue behind it.

A job trains a model on the first N pairs of the Multi30k training files (``$NMT_DATA``, the folder the
app's examples come from; without the direction's files there, the public Multi30k on the Hub, English and
German only, downloaded once and cached: nmt.serving.hub_data) in a process of its own (one thread, lowered priority, its own process group),
so the app keeps translating meanwhile. Each job has a folder under the jobs root (``$NMT_JOBS_DIR``,
default ``~/.cache/nmt-app/jobs``)::

    <root>/<job id>/job.json        id, owner (a hash of the visitor's token), request, status, times, error
                    data/           train.{src,tgt}.gz (the first N pairs), valid.{src,tgt}.gz
                    run/            the save dir: metrics.jsonl, tracked.jsonl, last/, best/
                    train.log       the training command's output
                    exit_code       written by the wrapper when the command ends by itself

``job.json`` is replaced atomically on every change, so a reloaded page (same owner token) or a restarted
app (a new :class:`JobManager` on the same root) finds its jobs: waiting ones stay queued in order, a
running one whose process still runs is watched again, one whose process is gone is marked failed.

Status: ``waiting`` -> ``running`` -> ``done`` | ``failed`` | ``cancelled`` (a waiting job can be cancelled
too). A job past the wall-clock limit is killed and failed with a message saying so. Cancelling
terminates the process group; checkpoints are written to a temporary folder and renamed into place, so a
killed job leaves only complete ``best/`` and ``last/`` folders, and the temporary folders of an
interrupted write are removed. Usable without the app::

    from nmt.serving.jobs import JobManager, JobRequest
    jobs = JobManager()
    job = jobs.submit("my-token", JobRequest("de-en", "general", "tiny", epochs=2, pairs=300))
    jobs.progress(job.id, "my-token")        # {"status", "position", "epoch", "epochs", "metrics", ...}
    jobs.model_dir(job.id, "my-token")       # run/best once an epoch is finished

Thread-safe: every method may be called from any thread (Gradio handlers run in threads).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from nmt.checkpoint import read_metrics, remove_leftovers, resolve_dir
from nmt.config import ATTENTION_KINDS
from nmt.device import cpu_bf16_problem
from nmt.errors import NMTError
from nmt.hub import REQUIRED_FILES
from nmt.safe_io import atomic_output
from nmt.serving.hub_data import missing_files

logger = logging.getLogger(__name__)

JOBS_ENV, DATA_ENV = "NMT_JOBS_DIR", "NMT_DATA"
MAX_SECONDS_ENV, MAX_WAITING_ENV, NICE_ENV = "NMT_JOB_MAX_SECONDS", "NMT_JOB_QUEUE", "NMT_JOB_NICE"
DEFAULT_ROOT = Path.home() / ".cache" / "nmt-app" / "jobs"
DIRECTIONS = ("de-en", "en-de", "fr-en", "en-fr")
STATUSES = ("waiting", "running", "done", "failed", "cancelled")
ACTIVE = ("waiting", "running")
MIN_EPOCHS, MAX_EPOCHS = 1, 15
MIN_PAIRS, MAX_PAIRS = 100, 29_000  # Multi30k's training set has 29,000 pairs
VALID_PAIRS = 200  # the first validation pairs: an epoch's validation (perplexity, greedy BLEU) stays short
DEFAULT_MAX_SECONDS = 1800  # wall-clock limit of a job (NMT_JOB_MAX_SECONDS)
DEFAULT_MAX_WAITING = 3  # jobs waiting behind the running one (NMT_JOB_QUEUE)
DEFAULT_NICE = 10  # the training process's niceness: translation requests come first
KILL_GRACE_S = 5.0

# Size presets: ``python -m nmt train`` flags. "bundled" is scripts/train_bundled.sh's recipe (COMMON).
PRESETS: dict[str, list[str]] = {
    "tiny": ["--emb-size", "64", "--hidden", "64", "--layers", "1", "--brnn", "--dropout", "0.1",
             "--batch-size", "16", "--optim", "adam", "--learning-rate", "0.01", "--max-len", "50"],
    "small": ["--emb-size", "128", "--hidden", "128", "--layers", "1", "--brnn", "--input-feed", "--dropout", "0.2",
              "--tie-embeddings", "--min-freq", "2", "--max-len", "50", "--batch-size", "64", "--optim", "adam",
              "--learning-rate", "0.002", "--label-smoothing", "0.1", "--max-grad-norm", "5"],
    "bundled": ["--emb-size", "256", "--hidden", "256", "--layers", "1", "--brnn", "--input-feed", "--no-bridge",
                "--dropout", "0.3", "--tie-embeddings", "--min-freq", "2", "--max-len", "50", "--batch-size", "64",
                "--optim", "adam", "--learning-rate", "0.001", "--label-smoothing", "0.1", "--max-grad-norm", "5",
                "--seed", "3435"],
}
PRESET_LABELS = {"tiny": "tiny (64-d, seconds an epoch on a few hundred pairs)",
                 "small": "small (128-d, tied embeddings, label smoothing)",
                 "bundled": "the bundled recipe (bi-LSTM 256, as scripts/train_bundled.sh)"}


class JobError(NMTError):
    """A training job cannot be started, found or changed; the message tells the visitor why."""


# ----------------------------------------------------------------------------- requests
@dataclass(frozen=True)
class JobRequest:
    """What a visitor asks to train."""

    direction: str = "de-en"
    attention: str = "general"
    preset: str = "tiny"
    epochs: int = 2
    pairs: int = 1000

    @classmethod
    def from_dict(cls, value: dict) -> JobRequest:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in dict(value).items() if k in names})

    def validated(self) -> JobRequest:
        """This request with whole numbers, or a JobError naming what is out of range."""
        if self.direction not in DIRECTIONS:
            raise JobError(f"Unknown direction {self.direction!r}: choose one of {', '.join(DIRECTIONS)}.")
        if self.attention not in ATTENTION_KINDS:
            raise JobError(f"Unknown attention type {self.attention!r}: choose one of {', '.join(ATTENTION_KINDS)}.")
        if self.preset not in PRESETS:
            raise JobError(f"Unknown size preset {self.preset!r}: choose one of {', '.join(PRESETS)}.")
        epochs, pairs = _whole(self.epochs, "number of epochs"), _whole(self.pairs, "number of training pairs")
        if not MIN_EPOCHS <= epochs <= MAX_EPOCHS:
            raise JobError(f"The number of epochs must be between {MIN_EPOCHS} and {MAX_EPOCHS} (got {epochs}).")
        if not MIN_PAIRS <= pairs <= MAX_PAIRS:
            raise JobError(f"The number of training pairs must be between {MIN_PAIRS:,} and {MAX_PAIRS:,} "
                           f"(got {pairs:,}).")
        return dataclasses.replace(self, epochs=epochs, pairs=pairs)

    @property
    def languages(self) -> tuple[str, str]:
        src, _, tgt = self.direction.partition("-")
        return src, tgt


def _whole(value, what: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise JobError(f"The {what} must be a whole number (got {value!r}).") from None
    if not number.is_integer():
        raise JobError(f"The {what} must be a whole number (got {value!r}).")
    return int(number)


def train_command(request: JobRequest, data: Path, run: Path, python: str = sys.executable) -> list[str]:
    """The ``python -m nmt train`` command of a job (one CPU thread, no progress bar). The bundled recipe
    trains with bf16 autocast where the CPU has bf16 kernels: on one thread of an AMX Xeon its 15 epochs
    on all 29,000 pairs then take about 23 minutes, within the time limit."""
    src, tgt = request.languages
    amp = ["--amp"] if request.preset == "bundled" and cpu_bf16_problem() is None else []
    return [python, "-m", "nmt", "train", *PRESETS[request.preset], *amp, "--attention", request.attention,
            "--src-lang", src, "--tgt-lang", tgt,
            "--train-src", str(data / f"train.{src}.gz"), "--train-tgt", str(data / f"train.{tgt}.gz"),
            "--valid-src", str(data / f"valid.{src}.gz"), "--valid-tgt", str(data / f"valid.{tgt}.gz"),
            "--epochs", str(request.epochs), "--threads", "1", "--device", "cpu", "--save-dir", str(run)]


def data_dir() -> Path:
    """The app's data folder (``catalog.data_folder``: ``$NMT_DATA`` or its default)."""
    from nmt.serving.catalog import data_folder

    return data_folder()


def check_data(folder: Path, request: JobRequest) -> None:
    """A JobError with a clear message when the Multi30k files of the direction are missing."""
    missing = missing_files(folder, *request.languages)
    if missing:
        raise JobError(f"Training needs the Multi30k data, and {', '.join(missing)} "
                       f"{'is' if len(missing) == 1 else 'are'} not in {folder}. Set {DATA_ENV} to the folder "
                       "holding train.{de,en,fr}.gz and val.{de,en,fr}.gz (this app has no training data offline "
                       "without it).")


def resolve_data(folder: Path, request: JobRequest, hub: bool = True) -> Path:
    """The folder a job of ``request`` reads: ``folder`` when it has the direction's files, else (``hub``) the
    public Multi30k on the Hub, downloaded once and cached (nmt.serving.hub_data); a JobError otherwise."""
    if not hub:
        check_data(folder, request)
        return folder
    from nmt.serving.hub_data import multi30k_folder

    try:
        return multi30k_folder(*request.languages, local=folder)
    except NMTError as exc:
        raise JobError(str(exc)) from exc


def write_pairs(source: Path, target: Path, lines: int) -> int:
    """The first ``lines`` lines of the gzipped ``source`` into gzipped ``target`` (atomically); the count."""
    tmp = target.with_name(target.name + ".tmp")
    count = 0
    with gzip.open(source, "rt", encoding="utf-8") as fin, gzip.open(tmp, "wt", encoding="utf-8") as fout:
        for count, line in enumerate(fin, 1):
            fout.write(line)
            if count >= lines:
                break
    os.replace(tmp, target)
    return count


# ----------------------------------------------------------------------------- jobs
def owner_key(token: str) -> str:
    """What job.json stores of a visitor's token: its SHA-256 (the token itself is never written)."""
    if not isinstance(token, str) or len(token.strip()) < 8:
        raise JobError("This page has no visitor token yet (it is kept in the browser): reload the page.")
    return hashlib.sha256(token.strip().encode()).hexdigest()


@dataclass
class Job:
    """A job as job.json holds it (plus the process, while this manager runs it)."""

    id: str
    owner: str
    request: JobRequest
    status: str = "waiting"
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    pid: int | None = None
    folder: Path = Path()
    proc: subprocess.Popen | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def run_dir(self) -> Path:
        return self.folder / "run"

    def to_json(self) -> dict:
        return {"id": self.id, "owner": self.owner, "request": dataclasses.asdict(self.request),
                "status": self.status, "created": self.created, "started": self.started, "finished": self.finished,
                "error": self.error, "pid": self.pid}

    @classmethod
    def from_json(cls, value: dict, folder: Path) -> Job:
        status = value.get("status")
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        return cls(id=str(value["id"]), owner=str(value["owner"]), request=JobRequest.from_dict(value["request"]),
                   status=status, created=float(value.get("created") or 0), started=value.get("started"),
                   finished=value.get("finished"), error=value.get("error"), pid=value.get("pid"), folder=folder)


def write_json(path: Path, value: dict) -> None:
    """``path`` replaced atomically by ``value`` as JSON."""
    with atomic_output(path, "job file") as fh:
        json.dump(value, fh, indent=1)


class JobManager:
    """The app's training jobs: at most one running, at most ``max_waiting`` waiting (first come, first
    served), each visitor (owner token) one active job at a time. A supervisor thread starts, watches,
    times out and finishes them; ``close()`` stops it (``kill=True``: and the running job)."""

    def __init__(self, root: str | Path | None = None, data: str | Path | None = None,
                 max_waiting: int | None = None, max_seconds: float | None = None, python: str = sys.executable,
                 nice: int | None = None, poll_s: float = 0.5, supervise: bool = True, hub_data: bool | None = None):
        self.root = jobs_root(root)
        self.data = Path(data).expanduser() if data is not None else None  # None: data_dir() when a job starts
        # Without the direction's files there, the Hub's Multi30k (default: only for the app's own data folder).
        self.hub_data = data is None if hub_data is None else bool(hub_data)
        self.max_waiting = int(max_waiting if max_waiting is not None
                               else os.environ.get(MAX_WAITING_ENV) or DEFAULT_MAX_WAITING)
        self.max_seconds = float(max_seconds if max_seconds is not None
                                 else os.environ.get(MAX_SECONDS_ENV) or DEFAULT_MAX_SECONDS)
        self.nice = int(nice if nice is not None else os.environ.get(NICE_ENV) or DEFAULT_NICE)
        self.python, self.poll_s = python, poll_s
        self._lock = threading.RLock()
        self._jobs: dict[str, Job] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._load()
        self._thread = None
        if supervise:
            self._thread = threading.Thread(target=self._supervise, name="nmt-jobs", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ the visitor's side
    def submit(self, token: str, request: JobRequest) -> Job:
        """Queue a job; it starts when no other job runs. Raises JobError for a bad request, missing data, a
        full queue, or a visitor who already has a waiting or running job."""
        owner = owner_key(token)
        request = request.validated()
        self.data_for(request)  # downloads the Hub's Multi30k if needed (not under the lock)
        with self._lock:
            mine = [j for j in self._jobs.values() if j.owner == owner and j.status in ACTIVE]
            if mine:
                raise JobError(f"You already have a {mine[0].status} training job ({mine[0].id}); cancel it or "
                               "wait for it to finish before starting another.")
            waiting = self._waiting()
            if len(waiting) >= self.max_waiting:
                raise JobError(f"The training queue is full ({len(waiting)} jobs waiting behind the running one); "
                               "try again later.")
            job_id = secrets.token_hex(12)
            folder = self.root / job_id
            folder.mkdir(parents=True)
            job = Job(job_id, owner, request, created=time.time(), folder=folder)
            self._jobs[job_id] = job
            self._save(job)
        self._wake.set()
        logger.info("job %s queued: %s", job_id, request)
        return job

    def get(self, job_id: str, token: str) -> Job:
        """The visitor's job ``job_id``; JobError when there is none of theirs by that id."""
        owner = owner_key(token)
        with self._lock:
            job = self._jobs.get(str(job_id or ""))
            if job is None or job.owner != owner:
                raise JobError(f"No training job {job_id!r} of yours here.")
            return job

    def jobs_of(self, token: str) -> list[Job]:
        """The visitor's jobs, newest first."""
        owner = owner_key(token)
        with self._lock:
            return sorted((j for j in self._jobs.values() if j.owner == owner), key=lambda j: -j.created)

    def latest(self, token: str) -> Job | None:
        jobs = self.jobs_of(token)
        return jobs[0] if jobs else None

    def position(self, job_id: str) -> int | None:
        """0 for the running job, 1, 2... for waiting ones in their order, None for a finished one."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.status not in ACTIVE:
                return None
            if job.status == "running":
                return 0
            return 1 + [j.id for j in self._waiting()].index(job_id)

    def cancel(self, job_id: str, token: str) -> Job:
        """Stop the visitor's job: a waiting one leaves the queue, a running one's process group is terminated
        (killed after a grace period) and its half-written checkpoint folders removed."""
        job = self.get(job_id, token)
        with self._lock:
            if job.status not in ACTIVE:
                return job
            if job.status == "running":
                self._kill(job)
            self._finish(job, "cancelled", None)
        self._wake.set()
        logger.info("job %s cancelled", job_id)
        return job

    def progress(self, job_id: str, token: str) -> dict:
        """What the Train tab shows: status, place in line, epoch k of n, the metrics and tracked sentences so far,
        and a one-line message."""
        job = self.get(job_id, token)
        with self._lock:
            status, position = job.status, self.position(job_id)
            started, finished, error = job.started, job.finished, job.error
        metrics = read_metrics(job.run_dir) if job.run_dir.is_dir() else []
        epoch = max((int(m["epoch"]) for m in metrics if isinstance(m.get("epoch"), int)), default=0)
        bleus = [m["valid_bleu"] for m in metrics if isinstance(m.get("valid_bleu"), (int, float))]
        end = finished or time.time()
        elapsed = round(end - started, 1) if started else 0.0
        epochs = job.request.epochs
        info = {"id": job.id, "status": status, "position": position, "request": dataclasses.asdict(job.request),
                "epoch": epoch, "epochs": epochs, "fraction": min(1.0, epoch / epochs) if epochs else 0.0,
                "metrics": metrics, "valid_bleu": bleus[-1] if bleus else None,
                "best_bleu": max(bleus) if bleus else None, "elapsed_s": elapsed, "error": error,
                "max_seconds": self.max_seconds, "model": None}
        model = self.model_dir(job_id, token, missing_ok=True)
        info["model"] = str(model) if model else None
        info["message"] = _message(info)
        return info

    def tracked(self, job_id: str, token: str) -> list[dict] | None:
        """The job's ``tracked.jsonl`` records so far (``nmt.serving.tracked.read_tracked``), or None."""
        from nmt.serving.tracked import read_tracked

        job = self.get(job_id, token)
        return read_tracked(job.run_dir) if job.run_dir.is_dir() else None

    def model_dir(self, job_id: str, token: str, missing_ok: bool = False) -> Path | None:
        """The job's best checkpoint (``run/best``) once an epoch has finished (a cancelled or timed-out job
        keeps the best of its finished epochs); JobError (or None with ``missing_ok``) before."""
        job = self.get(job_id, token)
        with self._lock:
            running = job.status == "running"
        best = usable_best(job.run_dir)
        if best is not None:
            return best
        if missing_ok:
            return None
        raise JobError("This job has no model yet: " + ("its first epoch is not finished." if running or
                                                          job.status == "waiting" else "no epoch was finished."))

    def zip_model(self, job_id: str, token: str) -> Path:
        """The job's best checkpoint folder as ``nmt-<direction>-<attention>-<preset>.zip`` (made once, atomically)."""
        job, best = self.get(job_id, token), self.model_dir(job_id, token)
        name = f"nmt-{job.request.direction}-{job.request.attention}-{job.request.preset}"
        target = job.folder / f"{name}.zip"
        stamp = max(p.stat().st_mtime for p in best.iterdir())
        if target.is_file() and target.stat().st_mtime >= stamp:
            return target
        tmp = job.folder / f".{name}.zip.tmp-{threading.get_ident()}"
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(best.iterdir()):
                if path.is_file():
                    zf.write(path, f"{name}/{path.name}")
        os.replace(tmp, target)
        return target

    def push(self, job_id: str, token: str, repo_id: str, hub_token: str, private: bool = False) -> str:
        """Upload the job's best checkpoint to the Hub repo ``repo_id`` with the visitor's own ``hub_token``
        (used for this call only: never stored or logged); returns the commit URL."""
        from nmt.hub import push_checkpoint

        best = self.model_dir(job_id, token)
        repo_id, hub_token = (repo_id or "").strip(), (hub_token or "").strip()
        if not repo_id:
            raise JobError("Give the Hub repo to push to (user/name).")
        if not hub_token:
            raise JobError("Give a Hugging Face access token with write access (it is used for this push only).")
        job = self.get(job_id, token)
        return push_checkpoint(best, repo_id, private=bool(private), token=hub_token,
                               commit_message=f"Upload nmt model trained in the app ({job.request.direction}, "
                                              f"attention {job.request.attention}, preset {job.request.preset})")

    def close(self, kill: bool = False) -> None:
        """Stop the supervisor thread; with ``kill``, also the running job (cancelled)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if kill:
            with self._lock:
                for job in self._jobs.values():
                    if job.status == "running":
                        self._kill(job)
                        self._finish(job, "cancelled", "The app stopped while this job was running.")

    # ------------------------------------------------------------------ the supervisor
    def _supervise(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # keep supervising whatever one job did
                logger.exception("the job supervisor failed")
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def step(self) -> None:
        """One round of supervision: finish or time out the running job, then start the next waiting one."""
        with self._lock:
            for job in [j for j in self._jobs.values() if j.status == "running"]:
                self._watch(job)
            if not any(j.status == "running" for j in self._jobs.values()):
                waiting = self._waiting()
                if waiting:
                    self._start(waiting[0])

    def _watch(self, job: Job) -> None:
        code = _exit_code(job)
        if code is None and _alive(job):
            if job.started and time.time() - job.started > self.max_seconds:
                self._kill(job)
                self._finish(job, "failed", f"Stopped: the job ran past the time limit of {_duration(self.max_seconds)} "
                                            "(choose fewer epochs or pairs, or a smaller preset). The best model of the "
                                            "finished epochs, if any, is kept.")
            return
        if job.proc is not None:
            try:  # (reap the wrapper, which may be a moment from exiting after writing its exit code)
                wrapper = job.proc.wait(timeout=KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                wrapper = None
            code = code if code is not None else wrapper  # no exit code file: killed from outside
        _clean(job)
        if code == 0:
            self._finish(job, "done", None)
        else:
            self._finish(job, "failed", _failure(job, code))

    def _start(self, job: Job) -> None:
        request = job.request
        try:
            data = job.folder / "data"
            data.mkdir(exist_ok=True)
            source = self.data_for(request)
            for lang in request.languages:
                write_pairs(source / f"train.{lang}.gz", data / f"train.{lang}.gz", request.pairs)
                write_pairs(source / f"val.{lang}.gz", data / f"valid.{lang}.gz", VALID_PAIRS)
            command = train_command(request, data, job.run_dir, self.python)
            if self.nice > 0 and shutil.which("nice"):
                command = ["nice", "-n", str(self.nice), *command]
            # The wrapper records the exit status (atomically), so a restarted app can tell done from failed.
            wrapper = ['sh', '-c', '"$@"; code=$?; echo $code > exit_code.tmp && mv exit_code.tmp exit_code', "sh",
                       *command]
            env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NMT_PROGRESS": "0",
                   "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
            package_root = str(Path(__file__).resolve().parents[2])  # (the job runs in its own folder)
            env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [os.environ.get("PYTHONPATH")])])
            env.pop("HF_TOKEN", None)  # the training process needs no credentials
            with open(job.folder / "train.log", "ab") as log:
                job.proc = subprocess.Popen(wrapper, cwd=job.folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        except (OSError, NMTError) as exc:
            self._finish(job, "failed", f"The training job could not start: {exc}")
            return
        job.status, job.started, job.pid = "running", time.time(), job.proc.pid
        self._save(job)
        logger.info("job %s started (pid %d)", job.id, job.pid)

    def _kill(self, job: Job) -> None:
        """Terminate the job's process group (SIGTERM, then SIGKILL), reap it, remove half-written folders."""
        if job.pid is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(job.pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            deadline = time.monotonic() + KILL_GRACE_S
            while time.monotonic() < deadline and _group_alive(job):
                if job.proc is not None:
                    job.proc.poll()
                time.sleep(0.05)
            if not _group_alive(job):
                break
        if job.proc is not None:
            try:
                job.proc.wait(timeout=KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
        _clean(job)

    def _finish(self, job: Job, status: str, error: str | None) -> None:
        job.status, job.error, job.finished = status, error, time.time()
        job.proc = None
        self._save(job)
        logger.info("job %s %s%s", job.id, status, f": {error}" if error else "")

    def _waiting(self) -> list[Job]:
        return sorted((j for j in self._jobs.values() if j.status == "waiting"), key=lambda j: (j.created, j.id))

    def _data_dir(self) -> Path:
        return self.data if self.data is not None else data_dir()

    def data_for(self, request: JobRequest) -> Path:
        """The Multi30k folder a job of ``request`` reads (see :func:`resolve_data`); JobError when there is none."""
        return resolve_data(self._data_dir(), request, hub=self.hub_data)

    def _save(self, job: Job) -> None:
        write_json(job.folder / "job.json", job.to_json())

    def _load(self) -> None:
        """The jobs of an earlier manager on this root: waiting ones queue again, running ones are watched."""
        if not self.root.is_dir():
            return
        for folder in sorted(self.root.iterdir()):
            path = folder / "job.json"
            if not path.is_file():
                continue
            try:
                job = Job.from_json(json.loads(path.read_text(encoding="utf-8")), folder)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                logger.warning("skipping %s: not a readable job (%s)", path, exc)
                continue
            if job.status == "running" and not _alive(job) and _exit_code(job) is None:
                _clean(job)
                job.status, job.finished = "failed", time.time()
                job.error = "Interrupted: the app restarted while this job was running."
                self._save(job)
            self._jobs[job.id] = job


# ----------------------------------------------------------------------------- helpers
def _exit_code(job: Job) -> int | None:
    try:
        return int((job.folder / "exit_code").read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(job: Job) -> bool:
    """Whether the job's wrapper process runs (not a zombie), and is this job's (its working folder)."""
    if job.proc is not None:
        return job.proc.poll() is None
    if job.pid is None:
        return False
    try:
        state = Path(f"/proc/{job.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        cwd = os.readlink(f"/proc/{job.pid}/cwd")
    except (OSError, IndexError):
        return False
    return state != "Z" and Path(cwd) == job.folder.resolve()


def _group_alive(job: Job) -> bool:
    """Whether a process of the job's process group is left that is not a zombie."""
    if job.pid is None:
        return False
    try:
        os.killpg(job.pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[2]) == job.pid and fields[0] != "Z":  # (state, ppid, pgrp, ...)
                    return True
    except OSError:
        return True
    return False


def _clean(job: Job) -> None:
    """Remove the temporary folders of a checkpoint write the process did not finish."""
    if job.run_dir.is_dir():
        removed = remove_leftovers(job.run_dir)
        if removed:
            logger.info("job %s: removed %d half-written checkpoint folder(s)", job.id, len(removed))


def _failure(job: Job, code: int | None) -> str:
    """The training command's own error line (``error: ...``), else its last log line."""
    try:
        lines = [line.strip() for line in (job.folder / "train.log").read_text(errors="replace").splitlines()
                 if line.strip()]
    except OSError:
        lines = []
    errors = [line for line in lines if line.startswith("error:")]
    detail = errors[-1] if errors else (lines[-1] if lines else "no output")
    return f"Training failed (exit status {code}): {detail[:500]}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60} min" + (f" {seconds % 60} s" if seconds % 60 else "") if seconds >= 60 else f"{seconds} s"


def _message(info: dict) -> str:
    status, epoch, epochs = info["status"], info["epoch"], info["epochs"]
    bleu = f", validation BLEU {info['valid_bleu']:.2f}" if info["valid_bleu"] is not None else ""
    if status == "waiting":
        ahead = info["position"] - 1
        return (f"Waiting: number {info['position']} in line (another visitor's job is training"
                + (f", and {ahead} more before yours" if ahead else "") + "). It starts by itself.")
    if status == "running":
        return f"Training: epoch {epoch} of {epochs} finished{bleu}; {_duration(info['elapsed_s'])} so far."
    if status == "done":
        return f"Done: {epochs} epochs in {_duration(info['elapsed_s'])}{bleu} (best {info['best_bleu']:.2f})." \
            if info["best_bleu"] is not None else f"Done: {epochs} epochs in {_duration(info['elapsed_s'])}."
    if status == "cancelled":
        return f"Cancelled after {epoch} of {epochs} epochs." + (" The best model of those is kept."
                                                                  if info["model"] else "")
    return info["error"] or "Failed."


# ----------------------------------------------------------------------------- the app's jobs
JOB_PREFIX = "job:"  # what the app's model field takes for a trained model: "job:<job id>"
_JOB_ID_CHARS = set("0123456789abcdef")
_MANAGER: JobManager | None = None
_MANAGER_LOCK = threading.Lock()


def manager() -> JobManager:
    """The app's job manager (created, with its supervisor thread, on first use)."""
    global _MANAGER
    with _MANAGER_LOCK:
        if _MANAGER is None:
            _MANAGER = JobManager()
        return _MANAGER


def jobs_root(root: str | Path | None = None) -> Path:
    """``root``, else ``$NMT_JOBS_DIR``, else ``~/.cache/nmt-app/jobs``."""
    return Path(root or os.environ.get(JOBS_ENV) or DEFAULT_ROOT).expanduser()


def usable_best(run_dir: Path) -> Path | None:
    """A run's ``best/`` if it holds a whole checkpoint (``nmt.hub.REQUIRED_FILES``), else None."""
    best = resolve_dir(run_dir / "best")
    return best if all((best / name).is_file() for name in REQUIRED_FILES) else None


def trained_model_dir(job_id: str, root: str | Path | None = None) -> Path:
    """The best checkpoint of job ``job_id`` (read from disk: any app instance on the jobs root finds it).

    The job id is the capability: it is random (96 bits) and shown only to the visitor who started the job,
    so the Translate tab's ``job:<id>`` is that visitor's model. JobError for a malformed or unknown id or a
    job without a finished epoch yet."""
    job_id = (job_id or "").strip()
    if len(job_id) != 24 or not set(job_id) <= _JOB_ID_CHARS:
        raise JobError(f"{JOB_PREFIX}{job_id} is not a trained model of this app (expected job: and a 24-character "
                       "job id, as the Train tab shows).")
    folder = jobs_root(root)
    if not (folder / job_id / "job.json").is_file():
        raise JobError(f"There is no training job {job_id} in this app (its jobs are in {folder}).")
    best = usable_best(folder / job_id / "run")
    if best is None:
        raise JobError(f"Training job {job_id} has no model yet: its first epoch is not finished.")
    return best


def browser_secret(root: str | Path | None = None) -> str:
    """The key the app encrypts the visitor's token with in the browser (``$NMT_BROWSER_SECRET``, else a
    random one kept in ``<jobs root>/.browser-secret``): stable across restarts, so a reloaded page still
    finds its jobs after the app restarted."""
    if os.environ.get("NMT_BROWSER_SECRET"):
        return os.environ["NMT_BROWSER_SECRET"]
    path = jobs_root(root) / ".browser-secret"
    try:
        return path.read_text().strip() or _new_secret(path)
    except FileNotFoundError:
        return _new_secret(path)
    except OSError:
        return secrets.token_urlsafe(24)  # (an unwritable root: tokens last until the app restarts)


def _new_secret(path: Path) -> str:
    secret = secrets.token_urlsafe(24)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secret)
        try:
            os.link(tmp, path)  # (first writer wins: concurrent starts agree on one secret)
        except FileExistsError:
            secret = path.read_text().strip() or secret
        finally:
            os.unlink(tmp)
    except OSError:
        pass
    return secret
