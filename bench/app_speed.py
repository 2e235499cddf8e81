"""Demo speed: app start to first served page, /translate round trips, server memory after many requests.

    python bench/app_speed.py [CHECKPOINT_FOLDER] [--calls 30] [--requests 100] [--beam 5]

Starts ``python app.py`` (free port, analytics and telemetry off) over a catalog holding only
CHECKPOINT_FOLDER (default: the bundled checkpoints/de-en-general), then, through gradio_client:
the first call (it loads the model), ``--calls`` timed calls of one 15-word sentence at beam 5
(median / p90 round trip), more calls up to ``--requests`` in all, and the server's resident memory.
Prints figures; asserts nothing. The machine's load average is printed too: figures from a busy
machine are slower.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nmt.device import cpu_description  # noqa: E402

SENTENCES = {  # 15 words each
    "de": "Ein Mann mit einem Hut sitzt auf einer Bank und liest eine Zeitung im Park.",
    "en": "A man with a hat is sitting on a bench and reading a newspaper in the park.",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def catalog_for(folder: Path, tmp: Path) -> tuple[Path, dict]:
    """A catalog folder with one link, named ``{src}-{tgt}-{attention}``, to the checkpoint ``folder``."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    name = f"{config['src_lang']}-{config['tgt_lang']}-{config['model']['attention']}"
    (tmp / "checkpoints").mkdir()
    (tmp / "checkpoints" / name).symlink_to(folder.resolve(), target_is_directory=True)
    return tmp / "checkpoints", config


def start_app(checkpoints: Path, tmp: Path) -> tuple[subprocess.Popen, str, float]:
    """Start app.py; return the process, its URL and the seconds until its page answered 200."""
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1", "GRADIO_TEMP_DIR": str(tmp / "gradio"),
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost", "NMT_CHECKPOINTS": str(checkpoints)}
    url = f"http://127.0.0.1:{port}/"
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=open(tmp / "server.log", "wb"),
                            stderr=subprocess.STDOUT)
    while proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return proc, url, time.perf_counter() - start
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"app.py exited with {proc.returncode}:\n{(tmp / 'server.log').read_text()[-3000:]}")


def rss_mib(pid: int) -> tuple[float, float]:
    """Current and peak resident memory of ``pid`` (MiB)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def timed_call(client, sentence: str, direction: str, attention: str, beam: int) -> float:
    start = time.perf_counter()
    _, result = client.predict(sentence, direction, attention, "", beam, 1, True, None, api_name="/translate")
    elapsed = time.perf_counter() - start
    if not result["ok"]:
        raise SystemExit(f"/translate failed: {result['error']}")
    return elapsed * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", nargs="?", default=str(ROOT / "checkpoints" / "de-en-general"))
    p.add_argument("--calls", type=int, default=30, help="timed round trips")
    p.add_argument("--requests", type=int, default=100, help="requests in all before measuring memory")
    p.add_argument("--beam", type=int, default=5)
    args = p.parse_args()
    print(f"CPU: {cpu_description()}")
    folder = Path(args.checkpoint)
    if not (folder / "config.json").is_file():
        raise SystemExit(f"{folder} is not a checkpoint folder (no config.json); give one on the command line")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from gradio_client import Client

    with tempfile.TemporaryDirectory(prefix="app-speed-") as tmp_name:
        tmp = Path(tmp_name)
        checkpoints, config = catalog_for(folder, tmp)
        direction, attention = f"{config['src_lang']}-{config['tgt_lang']}", config["model"]["attention"]
        sentence = SENTENCES.get(config["src_lang"], SENTENCES["de"])
        print(f"checkpoint {folder} ({direction}, attention {attention}); load average {os.getloadavg()[0]:.1f} "
              f"on {os.cpu_count()} cores")
        proc, url, started = start_app(checkpoints, tmp)
        try:
            print(f"app start to first served page: {started:.2f} s")
            client = Client(url, verbose=False)
            first = timed_call(client, sentence, direction, attention, args.beam)
            print(f"first /translate call (loads the model): {first:.0f} ms")
            times = [timed_call(client, sentence, direction, attention, args.beam) for _ in range(args.calls)]
            q = statistics.quantiles(times, n=10)
            print(f"/translate, one 15-word sentence, beam {args.beam}, {args.calls} calls: "
                  f"median {statistics.median(times):.0f} ms, p90 {q[8]:.0f} ms")
            for _ in range(max(0, args.requests - args.calls - 1)):
                timed_call(client, sentence, direction, attention, args.beam)
            rss, peak = rss_mib(proc.pid)
            total = max(args.requests, args.calls + 1)
            print(f"server memory after {total} requests: RSS {rss:.0f} MiB (peak {peak:.0f} MiB)")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
