"""A small Hugging Face Hub-protocol server on 127.0.0.1, for tests that push and pull through `huggingface_hub`.

The real Hub is unreachable here, so `push_to_hub`, `from_pretrained("org/name")`, `hf_hub_download` and
`snapshot_download` are tested with real HTTP round trips against this stdlib server instead. It speaks the subset
of the Hub's HTTP API that huggingface_hub 2.4 uses for those calls (see `docs/testing_hub.md`); repositories live
on disk under a temporary folder, git-less: each branch is a list of commit ids, each commit a full snapshot
`{path: {sha256, size, oid}}`, file contents stored once under `blobs/<sha256>`.

Client side, `patched_hub_endpoint` points an already-imported `huggingface_hub` at the server (the endpoint is
read at import time), `hub_client_env` builds the environment of a client subprocess instead, and
`populate_cache` writes an HF cache layout for offline tests.

Example:

```python
>>> from huggingface_hub import hf_hub_download, upload_file
>>> with running_hub(tmp_path) as hub:  # doctest: +SKIP
...     upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id=hub.create_repo("org/tiny"))
...     path = hf_hub_download("org/tiny", "config.json")
```
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_USER = "hf-lime-tester"
INITIAL_GITATTRIBUTES = b"".join(
    b"*.%s filter=lfs diff=lfs merge=lfs -text\n" % ext
    for ext in (b"bin", b"h5", b"msgpack", b"onnx", b"ot", b"pt", b"pth", b"safetensors", b"tar.gz", b"zip")
)
_API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_HEX = re.compile(r"[0-9a-f]{7,40}")
_MAX_BODY = 512 * 1024 * 1024


def git_blob_sha1(data: bytes) -> str:
    """The git blob id of `data`: the Hub's `oid`/ETag of a regular (non-LFS) file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _is_repo_path(path: str) -> bool:
    """A relative POSIX path without empty, `.` or `..` parts."""
    return bool(path) and not any(part in ("", ".", "..") for part in path.split("/"))


class HubError(Exception):
    """An HTTP error answered the way the Hub does (`X-Error-Code` decides the client's exception class)."""

    def __init__(self, status: int, message: str, code: str | None = None, **extra: str) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


@dataclass
class Response:
    """What a route answers: status, body and headers."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, data: object, status: int = 200) -> Response:
        return cls(status, json.dumps(data).encode(), {"Content-Type": "application/json"})


class RepoStore:
    """Git-less repositories on disk: `repos/<type>/<org>/<name>.json` plus content-addressed `blobs/<sha256>`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self._nonce = 0

    def _repo_file(self, repo_type: str, repo_id: str) -> Path:
        parts = repo_id.split("/")
        if len(parts) != 2 or not all(_NAME.fullmatch(p) and ".." not in p for p in parts):
            raise HubError(404, f"Repository {repo_id!r} not found", "RepoNotFound")
        return self.root / "repos" / repo_type / parts[0] / f"{parts[1]}.json"

    def load(self, repo_type: str, repo_id: str) -> dict:
        path = self._repo_file(repo_type, repo_id)
        if not path.is_file():
            raise HubError(404, f"Repository {repo_id!r} not found", "RepoNotFound")
        return json.loads(path.read_text())

    def save(self, repo: dict) -> None:
        path = self._repo_file(repo["type"], repo["id"])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(repo, indent=1))
        os.replace(tmp, path)

    def delete(self, repo_type: str, repo_id: str) -> None:
        with self.lock:
            self.load(repo_type, repo_id)
            self._repo_file(repo_type, repo_id).unlink()

    def put_blob(self, data: bytes) -> dict:
        sha256 = hashlib.sha256(data).hexdigest()
        blob = self.root / "blobs" / sha256
        if not blob.exists():
            blob.write_bytes(data)
        return {"sha256": sha256, "size": len(data), "oid": git_blob_sha1(data)}

    def read_blob(self, entry: dict) -> bytes:
        return (self.root / "blobs" / entry["sha256"]).read_bytes()

    def create(self, repo_type: str, repo_id: str, private: bool) -> dict:
        with self.lock:
            if self._repo_file(repo_type, repo_id).exists():
                raise HubError(409, f"You already created this {repo_type} repo", url=repo_id)
            repo = {"type": repo_type, "id": repo_id, "private": private, "created_at": _now()}
            repo.update(branches={"main": []}, commits={})
            files = {".gitattributes": self.put_blob(INITIAL_GITATTRIBUTES)}
            self.add_commit(repo, "main", files, "initial commit", "")
            return repo

    def add_commit(self, repo: dict, branch: str, files: dict, summary: str, description: str) -> str:
        """Append a commit holding the full snapshot `files` to `branch` and save the repo; returns its id."""
        with self.lock:
            history = repo["branches"][branch]
            self._nonce += 1
            commit = {"parent": history[-1] if history else None, "title": summary, "message": description}
            commit.update(date=_now(), files=files)
            seed = json.dumps({**commit, "nonce": self._nonce, "repo": repo["id"]}, sort_keys=True)
            commit_id = hashlib.sha1(seed.encode()).hexdigest()
            repo["commits"][commit_id] = commit
            history.append(commit_id)
            self.save(repo)
            return commit_id

    @staticmethod
    def resolve(repo: dict, revision: str) -> str:
        """A branch name, a full commit id or a unique commit-id prefix (7+ hex digits) -> the commit id."""
        if revision in repo["branches"]:
            return repo["branches"][revision][-1]
        if revision in repo["commits"]:
            return revision
        matches = [c for c in repo["commits"] if _HEX.fullmatch(revision) and c.startswith(revision)]
        if len(matches) == 1:
            return matches[0]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    @staticmethod
    def history(repo: dict, commit_id: str) -> list[str]:
        """Commit ids from the first commit to `commit_id`, following parents."""
        chain = []
        while commit_id is not None:
            chain.append(commit_id)
            commit_id = repo["commits"][commit_id]["parent"]
        return chain[::-1]


class HubApp:
    """The Hub routes, independent of the HTTP plumbing: `handle(method, raw_path, body) -> Response`."""

    def __init__(self, store: RepoStore, endpoint: str) -> None:
        self.store, self.endpoint = store, endpoint

    def repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.endpoint}/{_URL_PREFIXES[repo_type]}{repo_id}"

    def handle(self, method: str, raw_path: str, body: bytes) -> Response:
        split = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        segs = [unquote(s) for s in split.path.strip("/").split("/")]
        if segs[0] == "api":
            return self._api(method, segs[1:], query, body)
        return self._resolve(method, segs)

    def _api(self, method: str, segs: list[str], query: dict, body: bytes) -> Response:
        if (method, segs) == ("POST", ["repos", "create"]):
            return self._create_repo(json.loads(body or b"{}"))
        if (method, segs) == ("DELETE", ["repos", "delete"]):
            return self._delete_repo(json.loads(body or b"{}"))
        if (method, segs) == ("POST", ["validate-yaml"]):
            return Response.json({"errors": [], "warnings": []})
        if (method, segs) == ("GET", ["whoami-v2"]):
            return Response.json({"type": "user", "name": DEFAULT_USER, "fullname": DEFAULT_USER, "orgs": []})
        if len(segs) >= 3 and segs[0] in _API_TYPES:
            with self.store.lock:
                repo = self.store.load(_API_TYPES[segs[0]], f"{segs[1]}/{segs[2]}")
                return self._repo_route(method, repo, segs[3:], query, body)
        raise HubError(404, f"This fake Hub does not serve {method} /api/{'/'.join(segs)}")

    def _repo_route(self, method: str, repo: dict, rest: list[str], query: dict, body: bytes) -> Response:
        action, args = (rest[0], rest[1:]) if rest else ("revision", ["main"])
        if method == "GET" and action == "revision" and len(args) == 1:
            return self._info(repo, args[0])
        if method == "GET" and action == "tree" and args:
            return self._tree(repo, args[0], "/".join(args[1:]).strip("/"), query.get("recursive") == "true")
        if method == "POST" and action == "preupload" and len(args) == 1:
            return self._preupload(repo, args[0], json.loads(body))
        if method == "POST" and action == "commit" and len(args) == 1:
            if query.get("create_pr"):
                raise HubError(400, "This fake Hub does not support pull requests (create_pr)")
            return self._commit(repo, args[0], body)
        if action == "branch" and args and method in ("POST", "DELETE"):
            return self._branch(method, repo, "/".join(args), json.loads(body or b"{}"))
        if method == "GET" and action == "refs" and not args:
            return self._refs(repo)
        if method == "GET" and action == "commits" and len(args) == 1:
            return self._commits(repo, args[0])
        raise HubError(404, f"This fake Hub does not serve {method} {action} on a repo")

    def _create_repo(self, payload: dict) -> Response:
        repo_type = payload.get("type") or "model"
        if repo_type not in _URL_PREFIXES:
            raise HubError(400, f"Invalid repo type {repo_type!r}")
        repo_id = f"{payload.get('organization') or DEFAULT_USER}/{payload.get('name')}"
        if not all(_NAME.fullmatch(part) and ".." not in part for part in repo_id.split("/")):
            raise HubError(400, f"Invalid repo name {repo_id!r}: use letters, digits, '-', '_' and '.'")
        private = payload.get("private") or payload.get("visibility") == "private"
        url = self.repo_url(repo_type, repo_id)
        try:
            self.store.create(repo_type, repo_id, bool(private))
        except HubError as err:
            if err.status != 409:
                raise
            return Response.json({"error": err.message, "url": url}, status=409)
        return Response.json({"url": url, "name": repo_id, "id": repo_id})

    def _delete_repo(self, payload: dict) -> Response:
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or DEFAULT_USER}/{payload.get('name')}"
        self.store.delete(repo_type, repo_id)
        return Response()

    def _info(self, repo: dict, revision: str) -> Response:
        commit_id = self.store.resolve(repo, revision)
        commit = repo["commits"][commit_id]
        siblings = [
            {"rfilename": path, "size": entry["size"], "blobId": entry["oid"]}
            for path, entry in sorted(commit["files"].items())
        ]
        org = repo["id"].split("/")[0]
        info = {"_id": repo["id"], "id": repo["id"], "author": org, "sha": commit_id, "private": repo["private"]}
        info.update(lastModified=commit["date"], createdAt=repo["created_at"], disabled=False, gated=False)
        info.update(downloads=0, likes=0, tags=[], siblings=siblings)
        return Response.json(info)

    def _tree(self, repo: dict, revision: str, folder: str, recursive: bool) -> Response:
        commit_id = self.store.resolve(repo, revision)
        files = repo["commits"][commit_id]["files"]
        prefix = f"{folder}/" if folder else ""
        entries: dict[str, dict] = {}
        for path, entry in files.items():
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            depth = len(parts) if recursive else 1
            for i in range(1, min(depth, len(parts) - 1) + 1):
                sub = prefix + "/".join(parts[:i])
                entries[sub] = {"type": "directory", "oid": hashlib.sha1(sub.encode()).hexdigest(), "size": 0}
            if recursive or len(parts) == 1:
                entries[path] = {"type": "file", "oid": entry["oid"], "size": entry["size"]}
        if folder and not entries:
            raise HubError(404, f"{folder} does not exist on {revision}", "EntryNotFound", commit=commit_id)
        return Response.json([{**value, "path": path} for path, value in sorted(entries.items())])

    def _preupload(self, repo: dict, revision: str, payload: dict) -> Response:
        files = repo["commits"][self.store.resolve(repo, revision)]["files"]
        answer = [
            {
                "path": item["path"],
                "uploadMode": "regular",
                "shouldIgnore": False,
                "oid": files[item["path"]]["oid"] if item["path"] in files else None,
            }
            for item in payload.get("files", [])
        ]
        return Response.json({"files": answer, "commitOid": self.store.resolve(repo, revision)})

    def _commit(self, repo: dict, branch: str, body: bytes) -> Response:
        if branch not in repo["branches"]:
            raise HubError(404, f"Invalid rev id: {branch} (commits go to a branch)", "RevisionNotFound")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The commit payload must start with a header line")
        header, head = lines[0]["value"], repo["branches"][branch][-1]
        if header.get("parentCommit") and self.store.resolve(repo, header["parentCommit"]) != head:
            raise HubError(412, "A commit has happened since the parentCommit. Please pull and retry.")
        files = dict(repo["commits"][head]["files"])
        for line in lines[1:]:
            self._apply(files, line.get("key"), line.get("value") or {})
        commit_id = self.store.add_commit(
            repo, branch, files, header.get("summary", ""), header.get("description", "")
        )
        url = f"{self.repo_url(repo['type'], repo['id'])}/commit/{commit_id}"
        return Response.json({"success": True, "commitOid": commit_id, "commitUrl": url, "pullRequestUrl": None})

    def _apply(self, files: dict, key: str | None, value: dict) -> None:
        path = str(value.get("path", "")).rstrip("/")
        if not _is_repo_path(path):
            raise HubError(400, f"Invalid path in repo: {path!r}")
        if key == "file":
            if value.get("encoding") != "base64":
                raise HubError(400, f"Unsupported encoding {value.get('encoding')!r} for {path}")
            files[path] = self.store.put_blob(base64.b64decode(value["content"]))
        elif key == "deletedFile":
            if files.pop(path, None) is None:
                raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
        elif key == "deletedFolder":
            doomed = [p for p in files if p.startswith(path + "/")]
            if not doomed:
                raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
            for p in doomed:
                del files[p]
        else:
            raise HubError(400, f"This fake Hub only takes regular files (no LFS); got commit operation {key!r}")

    def _branch(self, method: str, repo: dict, branch: str, payload: dict) -> Response:
        if method == "DELETE":
            if branch == "main" or repo["branches"].pop(branch, None) is None:
                raise HubError(404 if branch != "main" else 403, f"Cannot delete branch {branch}")
        elif branch in repo["branches"]:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        else:
            start = self.store.resolve(repo, payload.get("startingPoint") or "main")
            repo["branches"][branch] = self.store.history(repo, start)
        self.store.save(repo)
        return Response.json({})

    def _refs(self, repo: dict) -> Response:
        branches = [
            {"name": name, "ref": f"refs/heads/{name}", "targetCommit": history[-1]}
            for name, history in repo["branches"].items()
        ]
        return Response.json({"branches": branches, "converts": [], "tags": [], "pullRequests": []})

    def _commits(self, repo: dict, revision: str) -> Response:
        chain = self.store.history(repo, self.store.resolve(repo, revision))[::-1]
        items = [
            {"id": c, "title": repo["commits"][c]["title"], "message": repo["commits"][c]["message"]}
            | {"date": repo["commits"][c]["date"], "authors": [{"user": DEFAULT_USER}]}
            for c in chain
        ]
        return Response.json(items)

    def _resolve(self, method: str, segs: list[str]) -> Response:
        repo_type = _API_TYPES.get(segs[0]) if segs[0] in ("datasets", "spaces") else "model"
        segs = segs[1:] if repo_type != "model" else segs
        if method not in ("GET", "HEAD") or len(segs) < 5 or segs[2] != "resolve":
            raise HubError(404, f"This fake Hub does not serve {method} /{'/'.join(segs)}")
        with self.store.lock:
            repo = self.store.load(repo_type, f"{segs[0]}/{segs[1]}")
            commit_id = self.store.resolve(repo, segs[3])
            entry = repo["commits"][commit_id]["files"].get("/".join(segs[4:]))
        if entry is None:
            raise HubError(404, "Entry not found", "EntryNotFound", commit=commit_id)
        headers = {"ETag": f'"{entry["oid"]}"', "X-Repo-Commit": commit_id, "Accept-Ranges": "none"}
        headers["Content-Type"] = "application/octet-stream"
        return Response(200, self.store.read_blob(entry), headers)


class _Handler(BaseHTTPRequestHandler):
    server_version = "HfLimeFakeHub/1.0"
    timeout = 30  # seconds a connection may stay silent before its thread gives up

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            raise HubError(413, f"Request body of {length} bytes is over this fake Hub's limit")
        if length:
            return self.rfile.read(length)
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return b""
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        self.rfile.readline()
        return b"".join(chunks)

    def _dispatch(self, method: str) -> None:
        hub: HubServer = self.server.hub  # type: ignore[attr-defined]
        hub.requests.append(f"{method} {self.path}")
        try:
            response = hub.app.handle(method, self.path, self._read_body())
        except HubError as err:
            response = Response.json({"error": err.message}, status=err.status)
            response.headers["X-Error-Message"] = err.message
            if err.code:
                response.headers["X-Error-Code"] = err.code
            if "commit" in err.extra:
                response.headers["X-Repo-Commit"] = err.extra["commit"]
        except (ValueError, KeyError, TypeError) as err:  # malformed request bodies
            response = Response.json({"error": f"Bad request: {err!r}"}, status=400)
        except Exception as err:  # a bug of this server: answer it, so the client's error shows it
            response = Response.json({"error": f"Fake Hub error: {err!r}"}, status=500)
            response.headers["X-Error-Message"] = f"Fake Hub error: {err!r}"
        self.send_response(response.status)
        for name, value in {**response.headers, "Content-Length": str(len(response.body))}.items():
            self.send_header(name, " ".join(value.encode("ascii", "replace").decode().split()))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(response.body)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # never wait on a client that keeps a connection open


class HubServer:
    """The fake Hub: a `ThreadingHTTPServer` on 127.0.0.1 (a free port) serving repos stored under `root`.

    Args:
        root (`Path`):
            Folder holding the repositories and blobs (created if missing).
        max_lifetime_s (`float`, *optional*, defaults to `600`):
            The server stops by itself after this many seconds, even if a test forgets to stop it.

    Attributes:
        endpoint (`str`): `"http://127.0.0.1:PORT"`, to give to `HfApi(endpoint=...)` or `patched_hub_endpoint`.
        requests (`list[str]`): `"METHOD /path"` of every request served, in order.
        cache_dir (`Path` or `None`): the client cache `running_hub` pointed huggingface_hub at, if any.
    """

    def __init__(self, root: Path, max_lifetime_s: float = 600.0) -> None:
        self.store = RepoStore(Path(root))
        self.requests: list[str] = []
        self.cache_dir: Path | None = None
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.hub = self  # type: ignore[attr-defined]
        self.endpoint = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self.app = HubApp(self.store, self.endpoint)
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._timer = threading.Timer(max_lifetime_s, self.stop)
        self._timer.daemon = True
        self._stopped = False

    def start(self) -> HubServer:
        self._thread.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent); the stored repos stay on disk."""
        if self._stopped:
            return
        self._stopped = True
        self._timer.cancel()
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def create_repo(self, repo_id: str, repo_type: str = "model", private: bool = False) -> str:
        """Create a repo directly in the store (with its initial commit); returns `repo_id`."""
        self.store.create(repo_type, repo_id, private)
        return repo_id

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """The files of a repo at a revision, read straight from the store (no HTTP)."""
        with self.store.lock:
            repo = self.store.load(repo_type, repo_id)
            files = repo["commits"][self.store.resolve(repo, revision)]["files"]
            return {path: self.store.read_blob(entry) for path, entry in files.items()}

    def branch_history(self, repo_id: str, branch: str = "main", repo_type: str = "model") -> list[str]:
        """The commit ids of a branch, oldest first."""
        return list(self.store.load(repo_type, repo_id)["branches"][branch])


# ---------------------------------------------------------------------------------------------- client-side helpers


@contextlib.contextmanager
def _patched(attrs: list[tuple[object, str, object]], env: dict[str, str | None]) -> Iterator[None]:
    """Set object attributes and environment variables, restoring every old value on exit."""
    saved_attrs = [(obj, name, getattr(obj, name)) for obj, name, _ in attrs]
    saved_env = {name: os.environ.get(name) for name in env}
    try:
        for obj, name, value in attrs:
            setattr(obj, name, value)
        for name, value in env.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)
        yield
    finally:
        for obj, name, value in reversed(saved_attrs):
            setattr(obj, name, value)
        for name, value in saved_env.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)


def _loaded(module_name: str) -> object | None:
    return sys.modules.get(module_name)


@contextlib.contextmanager
def hub_offline_mode(enabled: bool) -> Iterator[None]:
    """Switch huggingface_hub's offline mode (`constants.HF_HUB_OFFLINE`, read at call time) and the env vars."""
    from huggingface_hub import constants

    attrs: list[tuple[object, str, object]] = [(constants, "HF_HUB_OFFLINE", enabled)]
    if (datasets_config := _loaded("datasets.config")) is not None:
        attrs += [(datasets_config, "HF_HUB_OFFLINE", enabled), (datasets_config, "HF_DATASETS_OFFLINE", enabled)]
    flag = "1" if enabled else None
    with _patched(attrs, {"HF_HUB_OFFLINE": flag, "TRANSFORMERS_OFFLINE": flag, "HF_DATASETS_OFFLINE": flag}):
        yield


@contextlib.contextmanager
def patched_hub_endpoint(endpoint: str) -> Iterator[None]:
    """Point an already-imported huggingface_hub (and transformers/datasets, if loaded) at `endpoint`, online.

    huggingface_hub reads `HF_ENDPOINT` once, at import; this patches every copy taken from it: `constants.ENDPOINT`,
    `constants.HUGGINGFACE_CO_URL_TEMPLATE` (used by `hf_hub_url`), the trusted Hub hosts/origins, the module-level
    `HfApi` behind `huggingface_hub.create_repo`/`upload_folder`/..., transformers' cached `HfApi` and datasets'
    `config.HF_ENDPOINT`. It also turns offline mode off and closes the shared HTTP client so that a fresh one
    (reading `NO_PROXY`) is built. Everything is restored on exit.
    """
    import huggingface_hub
    from huggingface_hub import constants, hf_api
    from huggingface_hub.utils import _http

    endpoint = endpoint.rstrip("/")
    host = urlsplit(endpoint).hostname or ""
    template = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    attrs: list[tuple[object, str, object]] = [
        (constants, "ENDPOINT", endpoint),
        (constants, "HUGGINGFACE_CO_URL_TEMPLATE", template),
        (constants, "HF_URL_HOSTS", constants.HF_URL_HOSTS | {host}),
        (_http, "_HUB_ORIGINS", _http._HUB_ORIGINS | {_http._url_origin(endpoint)}),
        (hf_api.api, "endpoint", endpoint),
    ]
    if "HUGGINGFACE_CO_URL_TEMPLATE" in vars(huggingface_hub):
        attrs.append((huggingface_hub, "HUGGINGFACE_CO_URL_TEMPLATE", template))
    if (transformers_hub := _loaded("transformers.utils.hub")) is not None and hasattr(transformers_hub, "_hf_api"):
        attrs.append((transformers_hub, "_hf_api", None))  # rebuilt lazily from the patched constants
    if (datasets_config := _loaded("datasets.config")) is not None:
        attrs.append((datasets_config, "HF_ENDPOINT", endpoint))
        attrs.append((datasets_config, "HUB_DATASETS_URL", endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}"))
    no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1", "localhost"]))
    env = {"HF_ENDPOINT": endpoint, "NO_PROXY": no_proxy, "no_proxy": no_proxy}
    with hub_offline_mode(False), _patched(attrs, env):
        _http.close_session()
        try:
            yield
        finally:
            _http.close_session()


@contextlib.contextmanager
def patched_hub_cache(cache_dir: Path) -> Iterator[Path]:
    """Make `cache_dir` huggingface_hub's default cache (`constants.HF_HUB_CACHE`, env `HF_HUB_CACHE`).

    `HF_HOME` (env) becomes its parent and `HF_XET_CACHE` (env) `<parent>/xet`: hf_xet reads them when its session
    is created (first upload), so its logs land there rather than in `~/.cache/huggingface`.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import _cache_manager

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    attrs = [(constants, "HF_HUB_CACHE", str(cache_dir)), (_cache_manager, "HF_HUB_CACHE", str(cache_dir))]
    env = {
        "HF_HUB_CACHE": str(cache_dir),
        "HF_HOME": str(cache_dir.parent),
        "HF_XET_CACHE": str(cache_dir.parent / "xet"),
    }
    with _patched(attrs, env):
        yield cache_dir


@contextlib.contextmanager
def running_hub(tmp_path: Path) -> Iterator[HubServer]:
    """Start a fake Hub storing repos in `tmp_path/hub_server`, with huggingface_hub pointed at it.

    Inside the block the client is online, talks to the server and caches under `tmp_path/hf_home/hub`
    (`server.cache_dir`). On exit the server stops and every patch is undone.

    Example (a pytest fixture):

    ```python
    @pytest.fixture
    def hub(tmp_path):
        with running_hub(tmp_path) as server:
            yield server
    ```
    """
    tmp_path = Path(tmp_path)
    with HubServer(tmp_path / "hub_server") as server, patched_hub_endpoint(server.endpoint):
        with patched_hub_cache(tmp_path / "hf_home" / "hub") as cache_dir:
            server.cache_dir = cache_dir
            yield server


def hub_client_env(endpoint: str, cache_dir: Path | None = None) -> dict[str, str]:
    """The environment for a client subprocess talking to `endpoint`: the robust alternative to patching.

    `HF_ENDPOINT` is set (read by huggingface_hub at import), offline flags are removed, and the cache goes to
    `cache_dir` (`HF_HUB_CACHE`, with `HF_HOME` its parent) when given.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    no_proxy = ",".join(filter(None, [env.get("NO_PROXY"), "127.0.0.1", "localhost"]))
    env.update(HF_ENDPOINT=endpoint.rstrip("/"), NO_PROXY=no_proxy, no_proxy=no_proxy, HF_HUB_DISABLE_TELEMETRY="1")
    if cache_dir is not None:
        env.update(HF_HUB_CACHE=str(cache_dir), HF_HOME=str(Path(cache_dir).parent))
    return env


def populate_cache(
    cache_dir: Path,
    repo_id: str,
    files: dict[str, bytes | Path],
    revision: str = "main",
    repo_type: str = "model",
) -> Path:
    """Write `files` into an HF cache as if downloaded, so offline `hf_hub_download`/`snapshot_download` find them.

    Layout: `<cache_dir>/models--org--name/{blobs/<git sha1>, refs/<revision>, snapshots/<commit>/<path>}`, with
    snapshot files symlinked to blobs (copied where symlinks are unsupported), as huggingface_hub writes it.

    Args:
        cache_dir (`Path`): the hub cache folder (what `HF_HUB_CACHE` points at).
        repo_id (`str`): `"org/name"`.
        files (`dict[str, bytes | Path]`): repo path -> content, or a local file to read it from.
        revision (`str`, *optional*, defaults to `"main"`): the ref to write; a 40-hex commit id is used as-is.
        repo_type (`str`, *optional*, defaults to `"model"`): `"model"`, `"dataset"` or `"space"`.

    Returns:
        `Path`: the snapshot folder.
    """
    if repo_type not in _URL_PREFIXES:
        raise ValueError(f"repo_type must be one of {sorted(_URL_PREFIXES)}, got {repo_type!r}")
    if bad := [path for path in files if not _is_repo_path(path)]:
        raise ValueError(f"Invalid path in repo {bad!r}: paths must be relative, without '.', '..' or empty parts")
    contents = {path: c.read_bytes() if isinstance(c, Path) else bytes(c) for path, c in files.items()}
    manifest = json.dumps({p: git_blob_sha1(c) for p, c in sorted(contents.items())}).encode()
    is_commit = re.fullmatch(r"[0-9a-f]{40}", revision) is not None
    commit = revision if is_commit else hashlib.sha1(repo_id.encode() + manifest).hexdigest()
    storage = Path(cache_dir) / f"{repo_type}s--{repo_id.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    for path, content in contents.items():
        blob = storage / "blobs" / git_blob_sha1(content)
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(content)
        target = snapshot / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        try:
            target.symlink_to(os.path.relpath(blob, target.parent))
        except OSError:
            target.write_bytes(content)
    if not is_commit:
        (storage / "refs" / revision).parent.mkdir(parents=True, exist_ok=True)
        (storage / "refs" / revision).write_text(commit)  # no newline: huggingface_hub reads it verbatim
    return snapshot
