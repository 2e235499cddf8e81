"""nmt.hub against a local fake Hub (tests/hub_server.py): downloads, revisions, errors, offline cache, push.

``huggingface_hub`` reads HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE when imported, so each scenario runs
``nmt.hub`` in a subprocess with the environment from ``FakeHub.client_env``. That subprocess loads
``nmt.hub`` without ``nmt/__init__`` (which imports torch) to stay fast: ``nmt.hub`` needs only ``nmt.errors``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hub_server import FAKE_TOKEN, FakeHub  # noqa: E402

from nmt.errors import CheckpointError  # noqa: E402

NMT_DIR = Path(__file__).resolve().parents[1] / "nmt"

_DRIVER = r"""
import json, sys, types
pkg = types.ModuleType("nmt")
pkg.__path__ = [sys.argv[1]]
sys.modules["nmt"] = pkg  # a bare package: import nmt.hub without nmt/__init__ (and torch)
from nmt import hub
out = []
for func, kwargs in json.loads(sys.argv[2]):
    try:
        out.append({"result": str(getattr(hub, func)(**kwargs))})
    except Exception as exc:
        out.append({"error": type(exc).__name__, "message": str(exc)})
print("@@RESULTS@@" + json.dumps(out))
"""


def run_hub(env: dict[str, str], *calls: tuple[str, dict]) -> list[dict]:
    """Run ``nmt.hub.<func>(**kwargs)`` for each call, in one subprocess; return results or errors."""
    proc = subprocess.run([sys.executable, "-c", _DRIVER, str(NMT_DIR), json.dumps(calls)], env=env,
                          capture_output=True, text=True, timeout=120)
    marker = [line for line in proc.stdout.splitlines() if line.startswith("@@RESULTS@@")]
    assert proc.returncode == 0 and marker, f"driver failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(marker[-1][len("@@RESULTS@@"):])


def resolve(name: str, **kwargs) -> tuple[str, dict]:
    return ("resolve_checkpoint", {"name_or_path": name, **kwargs})


def ok(result: dict) -> Path:
    assert "result" in result, result
    return Path(result["result"])


def err(result: dict) -> str:
    assert result.get("error") == "CheckpointError", result
    return result["message"]


def read_folder(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def checkpoint_files(tmp_path: Path, tag: str = "v1") -> dict[str, bytes]:
    import torch

    weights = tmp_path / f"weights-{tag}.safetensors"
    save_file({"emb.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4) + len(tag)}, str(weights))
    return {
        "config.json": json.dumps({"format_version": 1, "tag": tag}).encode(),
        "model.safetensors": weights.read_bytes(),
        "src.vocab": f"<unk>\n<s>\n</s>\nhund {tag}\n".encode(),
        "tgt.vocab": f"<unk>\n<s>\n</s>\ndog {tag}\n".encode(),
    }


def downloads(hub: FakeHub) -> list[str]:
    return [path for method, path in hub.requests if "/resolve/" in path]


@pytest.fixture
def hub():
    with FakeHub(tree_page_size=3) as server:  # small pages: the client must follow the Link header
        yield server


def test_download_by_repo_id_is_byte_identical(hub, tmp_path):
    files = checkpoint_files(tmp_path)
    extra = {"metrics.jsonl": b'{"epoch": 1}\n', "optimizer.pt": b"\x80pickle", "notes.txt": b"not needed"}
    sha = hub.add_repo("alice/tiny", {**files, **extra})
    [result] = run_hub(hub.client_env(tmp_path / "hf"), resolve("alice/tiny"))
    folder = ok(result)
    assert read_folder(folder) == {**files, "metrics.jsonl": extra["metrics.jsonl"]}
    assert folder.name == sha and (tmp_path / "hf") in folder.parents
    assert not [p for p in downloads(hub) if p.endswith(("optimizer.pt", "notes.txt"))]


def test_revisions_tag_and_commit(hub, tmp_path):
    v1, v2 = checkpoint_files(tmp_path, "v1"), checkpoint_files(tmp_path, "v22")
    sha1 = hub.add_repo("alice/tiny", v1, revision_tag="v1")
    sha2 = hub.add_repo("alice/tiny", v2)
    results = run_hub(hub.client_env(tmp_path / "hf"), resolve("alice/tiny@v1"), resolve("alice/tiny", revision="v1"),
                      resolve(f"alice/tiny@{sha1}"), resolve("alice/tiny"), resolve("alice/tiny@nope"),
                      resolve("alice/tiny@v1", revision="main"))
    for result in results[:3]:
        assert read_folder(ok(result)) == v1 and ok(result).name == sha1
    assert read_folder(ok(results[3])) == v2 and ok(results[3]).name == sha2
    assert "revision 'nope' not found" in err(results[4])
    assert "revision" in err(results[5])


def test_missing_repo_and_missing_files(hub, tmp_path):
    files = checkpoint_files(tmp_path)
    pickled = {k: v for k, v in files.items() if k != "model.safetensors"} | {"pytorch_model.bin": b"\x80\x02pickle"}
    hub.add_repo("alice/pickled", pickled)
    hub.add_repo("alice/novocab", {k: v for k, v in files.items() if k != "tgt.vocab"})
    results = run_hub(hub.client_env(tmp_path / "hf"), resolve("alice/nothing"), resolve("alice/pickled"),
                      resolve("alice/novocab"))
    message = err(results[0])
    assert "'alice/nothing' not found" in message and "HF_TOKEN" in message
    message = err(results[1])
    assert "model.safetensors" in message and "pytorch_model.bin" in message and "pickle" in message
    assert "tgt.vocab" in err(results[2])
    assert downloads(hub) == []  # refused from the file listing: nothing fetched, the .bin least of all


def test_files_over_their_limit_are_refused_before_any_download(hub, tmp_path):
    files = checkpoint_files(tmp_path)
    hub.add_repo("mallory/big", {**files, "metrics.jsonl": b"x" * 5000})
    limits = {"model.safetensors": 10_000, "metrics.jsonl": 4096}
    results = run_hub(hub.client_env(tmp_path / "hf"), resolve("mallory/big", max_bytes=limits),
                      resolve("mallory/big", max_bytes={**limits, "model.safetensors": 10}))
    assert "metrics.jsonl (5,000 bytes, the limit is 4,096)" in err(results[0])
    assert "model.safetensors" in err(results[1]) and "was not downloaded" in err(results[1])
    assert downloads(hub) == []


def test_the_download_goes_to_the_cache_asked_for_without_the_model_card(hub, tmp_path):
    files = checkpoint_files(tmp_path)
    sha = hub.add_repo("alice/tiny", {**files, "README.md": b"# a card\n"})
    [result] = run_hub(hub.client_env(tmp_path / "hf"), resolve("alice/tiny", cache_dir=str(tmp_path / "own")))
    assert ok(result).name == sha and (tmp_path / "own") in ok(result).parents and not (tmp_path / "hf").exists()
    assert not (ok(result) / "README.md").exists()
    assert downloads(hub) and all(f"/resolve/{sha}/" in p for p in downloads(hub))


def test_pruning_deletes_the_least_recently_used_repos_of_its_own_cache(hub, tmp_path):
    for name in ("alice/a", "alice/b", "alice/c"):
        hub.add_repo(name, checkpoint_files(tmp_path, name[-1] * 50))
    own = str(tmp_path / "own")
    calls = [resolve(name, cache_dir=own) for name in ("alice/a", "alice/b", "alice/c")]
    results = run_hub(hub.client_env(tmp_path / "hf"), *calls,
                      ("prune_cache", {"cache_dir": own, "max_bytes": 1, "keep": ["alice/c"]}))
    assert results[3]["result"] == str(["alice/a", "alice/b"])
    assert not ok(results[0]).exists() and ok(results[2]).exists()


def test_malformed_names_never_reach_the_hub(hub, tmp_path):
    names = ["a/b/c", "bad repo/x", "-x/y", "user/na..me", "user/name@", "justaname", "./missing-folder"]
    results = run_hub(hub.client_env(tmp_path / "hf"), *(resolve(n) for n in names))
    for name, result in zip(names, results):
        assert name.rstrip("@") in err(result) or "missing-folder" in err(result)
    assert hub.requests == []


def test_parse_repo_ref():
    from nmt.hub import parse_repo_ref

    assert parse_repo_ref("user/name") == ("user/name", None)
    assert parse_repo_ref("user/name@v1.0") == ("user/name", "v1.0")
    assert parse_repo_ref("user/name", revision="dev") == ("user/name", "dev")
    assert parse_repo_ref("user/name@dev", revision="dev") == ("user/name", "dev")
    with pytest.raises(CheckpointError, match="also given"):
        parse_repo_ref("user/name@v1", revision="v2")


def test_local_folder_is_returned_as_is(tmp_path):
    from nmt.hub import resolve_checkpoint

    assert resolve_checkpoint(str(tmp_path)) == tmp_path
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        resolve_checkpoint(str(tmp_path / "file.txt"))


def test_private_repo_needs_token(hub, tmp_path):
    files = checkpoint_files(tmp_path)
    hub.add_repo("alice/secret", files, private=True)
    [anonymous] = run_hub(hub.client_env(tmp_path / "hf"), resolve("alice/secret"))
    assert "private" in err(anonymous) and "HF_TOKEN" in err(anonymous)
    [with_env] = run_hub(hub.client_env(tmp_path / "hf", token=FAKE_TOKEN), resolve("alice/secret"))
    assert read_folder(ok(with_env)) == files
    [explicit] = run_hub(hub.client_env(tmp_path / "hf2"), resolve("alice/secret", token=FAKE_TOKEN))
    assert read_folder(ok(explicit)) == files


def test_offline_uses_the_warm_cache_only(tmp_path):
    files = checkpoint_files(tmp_path)
    with FakeHub() as hub:
        hub.add_repo("alice/tiny", files, revision_tag="v1")
        [first] = run_hub(hub.client_env(tmp_path / "warm"), resolve("alice/tiny"))
        assert read_folder(ok(first)) == files
    # The server is gone: HF_HUB_OFFLINE=1 serves the cache; so does an unreachable Hub without the flag.
    warm_offline = run_hub(hub.client_env(tmp_path / "warm", offline=True), resolve("alice/tiny"),
                           resolve("alice/tiny@v1"))
    assert read_folder(ok(warm_offline[0])) == files
    assert "offline" in err(warm_offline[1]) and "not in the local cache" in err(warm_offline[1])
    [warm_unreachable] = run_hub(hub.client_env(tmp_path / "warm"), resolve("alice/tiny"))
    assert read_folder(ok(warm_unreachable)) == files
    cold = run_hub(hub.client_env(tmp_path / "cold", offline=True), resolve("alice/tiny"))
    assert "offline" in err(cold[0]) and "'alice/tiny'" in err(cold[0])
    cold = run_hub(hub.client_env(tmp_path / "cold"), resolve("alice/tiny"))
    assert "cannot reach" in err(cold[0])


def _model_dir(tmp_path: Path, files: dict[str, bytes], name: str = "model") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for filename, data in files.items():
        (folder / filename).write_bytes(data)
    return folder


def test_push_then_download(hub, tmp_path):
    files = checkpoint_files(tmp_path) | {"metrics.jsonl": b'{"epoch": 1, "bleu": 1.5}\n',
                                         "README.md": b"---\nlicense: mit\n---\n# tiny\n"}
    folder = _model_dir(tmp_path, files | {"notes.txt": b"stays local"})
    (folder / "sub").mkdir()
    (folder / "sub" / "config.json").write_text("{}")
    env = hub.client_env(tmp_path / "hf")
    push, again, branch, pulled, pulled_branch = run_hub(
        env, ("push_checkpoint", {"model_dir": str(folder), "repo_id": "bob/tiny"}),
        ("push_checkpoint", {"model_dir": str(folder), "repo_id": "bob/tiny"}),
        ("push_checkpoint", {"model_dir": str(folder), "repo_id": "bob/tiny", "revision": "exp",
                             "commit_message": "experiment"}),
        resolve("bob/tiny"), resolve("bob/tiny@exp"))
    sha = hub.refs("bob/tiny")["main"]
    assert push["result"] == f"{hub.endpoint}/bob/tiny/commit/{sha}"
    assert again.get("result") == push["result"], again  # nothing changed: no new commit
    remote = hub.repo_files("bob/tiny")
    assert {k: v for k, v in remote.items() if k != ".gitattributes"} == files
    loaded = {k: v for k, v in files.items() if k != "README.md"}  # (the card is pushed, not downloaded: nothing reads it)
    assert read_folder(ok(pulled)) == loaded
    assert hub.repo_files("bob/tiny", "exp") == remote and read_folder(ok(pulled_branch)) == loaded
    assert "result" in branch
    assert not [p for m, p in hub.requests if "lfs" in p or "xet" in p]


def test_push_refuses_bad_folders(hub, tmp_path):
    files = checkpoint_files(tmp_path)
    incomplete = _model_dir(tmp_path, {k: v for k, v in files.items() if k != "model.safetensors"}, "incomplete")
    pickled = _model_dir(tmp_path, {k: v for k, v in files.items() if k != "model.safetensors"}
                         | {"pytorch_model.bin": b"\x80"}, "pickled")
    extra_pickle = _model_dir(tmp_path, files | {"optimizer.pt": b"\x80"}, "extra")
    complete = _model_dir(tmp_path, files, "complete")
    results = run_hub(hub.client_env(tmp_path / "hf"),
                      *(("push_checkpoint", {"model_dir": str(d), "repo_id": "bob/tiny"})
                        for d in (incomplete, pickled, extra_pickle, tmp_path / "absent")),
                      ("push_checkpoint", {"model_dir": str(complete), "repo_id": "bob/tiny/extra"}))
    assert "missing model.safetensors" in err(results[0])
    assert "pytorch_model.bin" in err(results[1]) and "pickle" in err(results[1])
    assert "optimizer.pt" in err(results[2])
    assert "does not exist" in err(results[3])
    assert "bob/tiny/extra" in err(results[4])
    assert hub.requests == []
