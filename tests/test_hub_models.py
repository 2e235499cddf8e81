"""Real models through the Hub: push a checkpoint with the CLI, load it by repo id, same translations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hub_server import FakeHub  # noqa: E402

from nmt.checkpoint import save_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SENTS = ["Ein Hund läuft.", "Zwei Frauen sprechen miteinander.", "Ein Kind spielt am Strand."]
SENTS_BY_LANG = {"de": SENTS, "en": ["A dog runs.", "Two women are talking to each other.", "A child plays on the beach."]}

# Exact fp32: int8's per-batch activation scales turn the last-bit differences MKL may make from one
# process to the next (with the buffers' alignment) into visible ones, so the bundled models are compared
# in fp32, their weights by hash.
_TRANSLATE = r"""
import hashlib, json, sys, nmt
t = nmt.Translator.load(sys.argv[1])
rs = t.translate(json.loads(sys.argv[2]), beam_size=4, n_best=2, int8=False)
weights = hashlib.sha256(b"".join(w.numpy().tobytes() for w in t.model.state_dict().values())).hexdigest()
print(json.dumps([weights] + [[r.text, r.score, [c.text for c in r.n_best],
                               None if r.attention is None else r.attention.tolist()] for r in rs]))
"""


def translate_in_subprocess(env: dict, name: str, sents: list[str] = SENTS) -> list:
    proc = subprocess.run([sys.executable, "-c", _TRANSLATE, name, json.dumps(sents)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_push_with_the_cli_then_translate_by_repo_id(tiny_translator, tmp_path):
    folder = save_checkpoint(tiny_translator.checkpoint, tmp_path / "model")
    (folder / "README.md").write_text("---\nlanguage: [de, en]\npipeline_tag: translation\n---\n# tiny\n")
    local = [[r.text, r.score, [c.text for c in r.n_best], r.attention.tolist()]
             for r in tiny_translator.translate(SENTS, beam_size=4, n_best=2)]
    with FakeHub() as hub:
        env = hub.client_env(tmp_path / "hf", token="FAKE_TOKEN")
        push = subprocess.run([sys.executable, "-m", "nmt", "push", "--model", str(folder), "--repo-id", "alice/tiny-de-en"],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert push.returncode == 0, push.stderr
        assert set(hub.repo_files("alice/tiny-de-en")) >= {"config.json", "model.safetensors", "src.vocab", "tgt.vocab", "README.md"}
        remote = translate_in_subprocess(hub.client_env(tmp_path / "hf2"), "alice/tiny-de-en")
        assert remote[1:] == local
        # with the server gone, the warm cache still serves it offline
    offline = translate_in_subprocess({**env, "HF_HOME": str(tmp_path / "hf2"), "HF_HUB_OFFLINE": "1"}, "alice/tiny-de-en")
    assert offline[1:] == local


def numbers(found) -> list[float]:
    """Every score and attention weight of translate_in_subprocess's results, in order."""
    return [x for _, score, _, attention in found for x in [score, *(w for row in attention or [] for w in row)]]


BUNDLED = sorted(p.parent.name for p in (ROOT / "checkpoints").glob("*/config.json"))


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_checkpoint_by_repo_id_translates_like_the_local_folder(name, tmp_path):
    """Each bundled checkpoint, served as a Hub repo (with its card), loads by repo id to identical translations."""
    folder = ROOT / "checkpoints" / name
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    sents = SENTS_BY_LANG[json.loads(files["config.json"])["src_lang"]]
    local = translate_in_subprocess({**os.environ, "HF_HUB_OFFLINE": "1"}, str(folder), sents)
    with FakeHub() as hub:
        hub.add_repo(f"nmt-demo/{name}", files, revision_tag="v1.0")
        env = hub.client_env(tmp_path / "hf")
        for repo in (f"nmt-demo/{name}", f"nmt-demo/{name}@v1.0"):
            remote = translate_in_subprocess(env, repo, sents)
            assert remote[0] == local[0]  # the same weights
            assert [[r[0], r[2]] for r in remote[1:]] == [[r[0], r[2]] for r in local[1:]]
            assert numbers(remote[1:]) == pytest.approx(numbers(local[1:]), rel=1e-4, abs=1e-6)
