"""A tiny Hugging Face Hub look-alike for tests (standard library only).

``FakeHub`` serves, on ``127.0.0.1`` and a free port, the part of the Hub HTTP API that
``huggingface_hub`` 2.4.0 uses to download (``snapshot_download``, ``hf_hub_download``,
``HfApi.model_info``, ``list_repo_files``/``list_repo_tree``) and to upload (``create_repo``,
``create_branch``, ``upload_folder``/``create_commit``):

* ``GET  /api/models/{repo}[/revision/{rev}]``          repo info (``id``, ``sha``, ``siblings``)
* ``GET  /api/models/{repo}/tree/{rev}[/{path}]``       file listing (``?recursive=``, Link-header pagination)
* ``HEAD|GET /{repo}/resolve/{rev}/{path}``             file bytes, ``X-Repo-Commit``, ``ETag``, ``Range``
* ``POST /api/repos/create``, ``POST /api/models/{repo}/branch/{name}``, ``POST /api/validate-yaml``
* ``POST /api/models/{repo}/preupload/{rev}``           every file gets ``uploadMode: "regular"``, so the
  client never tries LFS or Xet storage (no ``xetHash`` is ever advertised either)
* ``POST /api/models/{repo}/commit/{rev}``              NDJSON: ``header``, ``file`` (base64), ``deletedFile``,
  ``deletedFolder``
* anything else (``/api/agent-harnesses``, telemetry, ...) gets a harmless JSON 404.

Errors look like the Hub's: 404 (401 for private repos without the token) with an ``X-Error-Code``
header (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) and a JSON ``{"error": ...}`` body.
Only ``namespace/name`` repos are modelled: model repos, and (for downloads) dataset repos, added with
``add_repo(..., repo_type="dataset")`` and served under ``/api/datasets/...`` and ``/datasets/{repo}/resolve/...``.

How tests use it: ``huggingface_hub`` reads ``HF_ENDPOINT``, ``HF_HOME``, ``HF_HUB_OFFLINE``... once, at
import time, and the test process may already have imported it (with other settings). So client code
runs in a *subprocess* whose environment comes from ``FakeHub.client_env(hf_home, offline=...)``::

    with FakeHub() as hub:
        sha = hub.add_repo("alice/tiny", {"config.json": b"{}"}, revision_tag="v1")
        env = hub.client_env(tmp_path / "hf_home")
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
        assert ("GET", "/alice/tiny/resolve/%s/config.json" % sha) in hub.requests

``client_env`` still works after the server has stopped (the endpoint then refuses connections),
which is how "the Hub is unreachable" is simulated.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import itertools
import json
import os
import threading
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

FAKE_TOKEN = "hf_fake_token_for_tests"
FAKE_USER = "fake-user"
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".h5", ".msgpack")
_NOW = "2024-01-01T00:00:00.000Z"


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob holding ``data`` (what the Hub reports as a file's ``oid``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Request:
    method: str
    path: str  # URL path, percent-decoded, without the query string
    raw_path: str  # URL path as sent
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes = b""


@dataclass
class _Repo:
    private: bool = False
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag name -> commit id
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit id -> tree

    def resolve(self, revision: str) -> str | None:
        if revision in self.refs:
            return self.refs[revision]
        return revision if revision in self.commits else None


class HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str, commit: str | None = None, **extra):
        super().__init__(message)
        self.status, self.code, self.message, self.commit, self.extra = status, code, message, commit, extra


class FakeHub:
    """An in-memory Hub served over HTTP by a background thread; use it as a context manager."""

    def __init__(self, tree_page_size: int = 1000):
        self.tree_page_size = tree_page_size
        self.calls: list[Request] = []
        self._repos: dict[str, _Repo] = {}
        self._lock = threading.RLock()
        self._counter = itertools.count()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.endpoint = ""

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "FakeHub":
        handler = type("Handler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening; connections kept alive from before are dropped at their next request."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ test API
    @property
    def requests(self) -> list[tuple[str, str]]:
        """(method, path) of every request received so far, in order."""
        with self._lock:
            return [(c.method, c.path) for c in self.calls]

    def add_repo(self, repo_id: str, files: dict[str, bytes], revision_tag: str | None = None,
                 private: bool = False, repo_type: str = "model") -> str:
        """Create ``repo_id`` if needed and commit exactly ``files`` on ``main``; return the commit id.

        ``revision_tag`` (a tag or branch name) is pointed at the new commit as well. ``repo_type="dataset"``:
        a dataset repo (kept apart from the model repo of the same name).
        """
        repo_id = _key(repo_id, repo_type)
        with self._lock:
            repo = self._repos.setdefault(repo_id, _Repo(private=private))
            repo.private = private
            sha = self._commit(repo_id, repo, "main", dict(files))
            if revision_tag:
                repo.refs[revision_tag] = sha
            return sha

    def repo_files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """The files of ``repo_id`` at ``revision`` (a branch, a tag or a commit id)."""
        repo_id = _key(repo_id, repo_type)
        with self._lock:
            repo = self._repos[repo_id]
            sha = repo.resolve(revision)
            if sha is None:
                raise KeyError(f"{repo_id}@{revision}")
            return dict(repo.commits[sha])

    def refs(self, repo_id: str, repo_type: str = "model") -> dict[str, str]:
        with self._lock:
            return dict(self._repos[_key(repo_id, repo_type)].refs)

    def client_env(self, hf_home: str | os.PathLike, offline: bool = False, token: str | None = None,
                   base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for a subprocess whose ``huggingface_hub`` should talk to this server.

        ``hf_home`` becomes ``HF_HOME`` (cache, token, xet cache all live under it). Any token,
        cache or offline setting inherited from ``base`` (default ``os.environ``) is dropped.
        """
        env = dict(os.environ if base is None else base)
        for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE",
                    "HF_XET_CACHE", "HF_ASSETS_CACHE", "TRANSFORMERS_OFFLINE", "HF_HUB_OFFLINE",
                    "HUGGINGFACE_CO_STAGING", "HF_HUB_DISABLE_IMPLICIT_TOKEN"):
            env.pop(key, None)
        env.update({
            "HF_ENDPOINT": self.endpoint,
            "HF_HOME": str(Path(hf_home)),
            "HF_HUB_OFFLINE": "1" if offline else "0",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_DISABLE_UPDATE_CHECK": "1",
            "DO_NOT_TRACK": "1",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        })
        if token is not None:
            env["HF_TOKEN"] = token
        return env

    # ------------------------------------------------------------------ internals
    def _commit(self, repo_id: str, repo: _Repo, branch: str, tree: dict[str, bytes]) -> str:
        parent = repo.refs.get(branch, "")
        seed = f"{repo_id}\n{parent}\n{next(self._counter)}\n" + "\n".join(
            f"{p} {git_blob_sha1(d)}" for p, d in sorted(tree.items()))
        sha = hashlib.sha1(seed.encode()).hexdigest()
        repo.commits[sha] = tree
        repo.refs[branch] = sha
        return sha

    def _repo(self, req: Request, repo_id: str) -> _Repo:
        repo = self._repos.get(repo_id)
        authorized = req.headers.get("authorization") == f"Bearer {FAKE_TOKEN}"
        if repo is None or (repo.private and not authorized):
            raise HubError(404 if repo is None else 401, "RepoNotFound", "Repository not found")
        return repo

    def _revision(self, repo: _Repo, revision: str) -> str:
        sha = repo.resolve(revision)
        if sha is None:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return sha

    @staticmethod
    def _entry(path: str, data: bytes) -> dict:
        entry = {"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": path}
        if path.endswith(LFS_SUFFIXES):
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry

    @staticmethod
    def _etag(path: str, data: bytes) -> str:
        return hashlib.sha256(data).hexdigest() if path.endswith(LFS_SUFFIXES) else git_blob_sha1(data)

    def handle(self, req: Request) -> tuple[int, dict[str, str], bytes]:
        """Route one request: returns (status, headers, body)."""
        with self._lock:
            self.calls.append(req)
        # Decode segment by segment: a quoted revision such as "refs%2Fpr%2F1" stays one segment.
        parts = [unquote(p) for p in req.raw_path.strip("/").split("/")]
        try:
            with self._lock:
                if parts[:2] == ["api", "repos"] and parts[2:] == ["create"] and req.method == "POST":
                    return self._create_repo(req)
                if parts[:2] == ["api", "validate-yaml"]:
                    return _json(200, {"errors": [], "warnings": []})
                if len(parts) >= 4 and parts[:2] == ["api", "models"]:
                    return self._api_models(req, f"{parts[2]}/{parts[3]}", parts[4:])
                if len(parts) >= 4 and parts[:2] == ["api", "datasets"] and req.method == "GET":
                    return self._api_models(req, _key(f"{parts[2]}/{parts[3]}", "dataset"), parts[4:])
                if len(parts) >= 6 and parts[0] == "datasets" and parts[3] == "resolve" \
                        and req.method in ("GET", "HEAD"):
                    return self._resolve(req, _key(f"{parts[1]}/{parts[2]}", "dataset"), parts[4],
                                         "/".join(parts[5:]))
                if len(parts) >= 5 and parts[2] == "resolve" and req.method in ("GET", "HEAD"):
                    return self._resolve(req, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
            raise HubError(404, None, f"Not found: {req.method} {req.path}")
        except (KeyError, ValueError, TypeError) as exc:
            # A malformed request (or a bug here): answer 400, which the client does not retry (5xx it would).
            message = f"FakeHub cannot handle {req.method} {req.path}: {exc!r}"
            return _json(400, {"error": message}, {"X-Error-Message": message})
        except HubError as err:
            headers = {"X-Error-Message": err.message}
            if err.code:
                headers["X-Error-Code"] = err.code
            if err.commit:
                headers["X-Repo-Commit"] = err.commit
            return _json(err.status, {"error": err.message, **err.extra}, headers)

    def _create_repo(self, req: Request):
        payload = json.loads(req.body or b"{}")
        repo_id = f"{payload.get('organization') or FAKE_USER}/{payload['name']}"
        if repo_id in self._repos:
            # The real Hub's 409 carries the repo url, and create_repo(exist_ok=True) reads it.
            raise HubError(409, None, "You already created this model repo", url=f"{self.endpoint}/{repo_id}")
        private = payload.get("private") or payload.get("visibility") == "private"
        repo = self._repos[repo_id] = _Repo(private=bool(private))
        self._commit(repo_id, repo, "main", {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"})
        return _json(200, {"url": f"{self.endpoint}/{repo_id}", "name": repo_id, "id": repo_id})

    def _api_models(self, req: Request, repo_id: str, rest: list[str]):
        repo = self._repo(req, repo_id)
        action = rest[0] if rest else ""
        if req.method == "GET" and action in ("", "revision"):
            sha = self._revision(repo, rest[1] if action else "main")
            tree = repo.commits[sha]
            public_id = repo_id.removeprefix("datasets/")  # (a dataset repo's key)
            return _json(200, {
                "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24], "id": public_id, "modelId": public_id,
                "author": public_id.split("/")[0], "sha": sha, "private": repo.private, "gated": False,
                "disabled": False, "lastModified": _NOW, "createdAt": _NOW, "tags": [], "downloads": 0,
                "likes": 0, "library_name": "nmt", "siblings": [{"rfilename": p} for p in sorted(tree)]})
        if req.method == "GET" and action == "tree" and len(rest) >= 2:
            return self._tree(req, repo_id, repo, rest[1], "/".join(rest[2:]))
        if req.method == "POST" and action == "preupload" and len(rest) == 2:
            tree = repo.commits[self._revision(repo, rest[1])]
            files = json.loads(req.body)["files"]
            return _json(200, {"files": [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                 "oid": git_blob_sha1(tree[f["path"]]) if f["path"] in tree else None} for f in files]})
        if req.method == "POST" and action == "commit" and len(rest) == 2:
            return self._apply_commit(req, repo_id, repo, rest[1])
        if req.method == "POST" and action == "branch" and len(rest) == 2:
            branch = rest[1]
            if branch in repo.refs:
                raise HubError(409, None, f"Reference {branch} already exists")
            start = json.loads(req.body or b"{}").get("startingPoint") or "main"
            repo.refs[branch] = self._revision(repo, start)
            return _json(200, {})
        raise HubError(404, None, f"Not found: {req.method} {req.path}")

    def _tree(self, req: Request, repo_id: str, repo: _Repo, revision: str, prefix: str):
        tree = repo.commits[self._revision(repo, revision)]
        recursive = req.query.get("recursive", ["false"])[0].lower() == "true"
        base = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        entries: dict[str, dict] = {}
        for path, data in sorted(tree.items()):
            if not path.startswith(base):
                continue
            rel = path[len(base):].split("/")
            for depth in range(1, len(rel)):  # folders on the way to the file
                folder = base + "/".join(rel[:depth])
                if recursive or depth == 1:
                    entries.setdefault(folder, {"type": "directory", "oid": git_blob_sha1(folder.encode()),
                                                "size": 0, "path": folder})
            if recursive or len(rel) == 1:
                entries[path] = self._entry(path, data)
        if base and not entries:
            raise HubError(404, "EntryNotFound", f"{prefix} does not exist on {revision}")
        listing = sorted(entries.values(), key=lambda e: e["path"])
        start = int(req.query.get("cursor", ["0"])[0])
        page = listing[start:start + self.tree_page_size]
        headers = {}
        if start + self.tree_page_size < len(listing):
            url = f"{self.endpoint}{req.raw_path}?recursive={str(recursive).lower()}" \
                  f"&expand=false&cursor={start + self.tree_page_size}"
            headers["Link"] = f'<{url}>; rel="next"'
        return _json(200, page, headers)

    def _resolve(self, req: Request, repo_id: str, revision: str, path: str):
        repo = self._repo(req, repo_id)
        sha = self._revision(repo, revision)
        tree = repo.commits[sha]
        if path not in tree:
            raise HubError(404, "EntryNotFound", f"{path} does not exist on {revision}", commit=sha)
        data = tree[path]
        headers = {"X-Repo-Commit": sha, "ETag": f'"{self._etag(path, data)}"',
                   "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        status = 200
        ranged = req.headers.get("range", "")
        if ranged.startswith("bytes=") and req.method == "GET":
            first, _, last = ranged[len("bytes="):].partition("-")
            start = int(first or 0)
            end = min(int(last), len(data) - 1) if last else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start:end + 1], 206
        return status, headers, data

    def _apply_commit(self, req: Request, repo_id: str, repo: _Repo, branch: str):
        if branch not in repo.refs or repo.refs[branch] not in repo.commits:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {branch}")
        tree = dict(repo.commits[repo.refs[branch]])
        for line in req.body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                parent = value.get("parentCommit")
                if parent and not repo.refs[branch].startswith(parent):
                    raise HubError(412, None, "A commit has happened since. Please refresh and try again.")
            elif key == "file":
                content = value["content"]
                tree[value["path"]] = base64.b64decode(content) if value.get("encoding") == "base64" \
                    else content.encode()
            elif key == "deletedFile":
                if tree.pop(value["path"], None) is None:
                    raise HubError(404, "EntryNotFound", f"{value['path']} does not exist")
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                tree = {p: d for p, d in tree.items() if not p.startswith(folder)}
            else:  # lfsFile etc.: this fake has no LFS/Xet storage (preupload always says "regular")
                raise HubError(400, None, f"FakeHub does not support commit operation {key!r}")
        sha = self._commit(repo_id, repo, branch, tree)
        return _json(200, {"success": True, "commitOid": sha, "commitUrl": f"{self.endpoint}/{repo_id}/commit/{sha}",
                           "hookOutput": ""})


def _key(repo_id: str, repo_type: str) -> str:
    """Where a repo is kept: model repos under their id, dataset repos under ``datasets/{id}``."""
    if repo_type not in ("model", "dataset"):
        raise ValueError(f"FakeHub models model and dataset repos only, not {repo_type!r}")
    return repo_id if repo_type == "model" else f"datasets/{repo_id}"


def _json(status: int, payload, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(payload).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects; every response has a Content-Length
    hub: FakeHub

    def log_message(self, format, *args) -> None:  # noqa: A002 - silence the default stderr log
        pass

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            body = b"".join(chunks)
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        encoding = self.headers.get("Content-Encoding", "").lower()
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        return body

    def _dispatch(self) -> None:
        if self.hub._server is None:  # stopped: behave like a dead host on kept-alive connections too
            self.close_connection = True
            return
        url = urlsplit(self.path)
        req = Request(self.command, unquote(url.path), url.path, parse_qs(url.query),
                      {k.lower(): v for k, v in self.headers.items()}, self._read_body())
        status, headers, body = self.hub.handle(req)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

