"""A small local server that speaks the Hugging Face Hub's HTTP protocol, for tests.

It implements what `huggingface_hub` (with HF_HUB_DISABLE_XET=1) and `transformers` call to
create a repo, upload a folder (preupload, LFS batch with the basic transfer, ndjson commit),
and download it again (HEAD/GET resolve with X-Repo-Commit, ETag and X-Linked-Etag, model
info, tree, paths-info), plus whoami, branch creation and README metadata validation.
Endpoints and payloads follow huggingface_hub's hf_api.py, _commit_api.py, lfs.py and
file_download.py; the client is never patched.

Files live content-addressed under a temporary directory; repos, branches and commits are in
memory. Tokens map to (user, role): an unknown token gets 401, a `read` token 403 on writes.
`stats` counts LFS uploads and commits so tests can see what a push really sent.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import itertools
import json
import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

# The .gitattributes the Hub writes into every new model repo (abridged).
LFS_PATTERNS = """
*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.lfs.* *.mlmodel *.model *.msgpack
*.npy *.npz *.onnx *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors
saved_model/**/* *.tar.* *.tar *.tflite *.tgz *.wasm *.xz *.zip *.zst *tfevents*
"""
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS.split())
LFS_MIN_SIZE = 10 * 1024 * 1024  # larger files always go to LFS, as on the Hub
LICENSES = {"apache-2.0", "mit", "bsd-3-clause", "cc-by-4.0", "cc-by-sa-4.0", "llama3", "other"}
PIPELINE_TAGS = {
    "text-generation",
    "fill-mask",
    "text-classification",
    "token-classification",
    "text2text-generation",
    "feature-extraction",
}


def git_blob_oid(content: bytes) -> str:
    """The git object id of a blob, as the Hub reports it for regular files."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    text = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"
    return text.encode()


@dataclass
class Entry:
    """A file in a commit."""

    size: int
    sha256: str
    lfs: bool
    git_oid: str  # of the content for regular files, of the LFS pointer for LFS files


@dataclass
class Commit:
    oid: str
    parent: str | None
    message: str
    files: dict[str, Entry]


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        oid = self.branches.get(revision, revision)
        return self.commits.get(oid)


@dataclass
class Stats:
    lfs_uploads: list[str] = field(default_factory=list)  # sha256 of every LFS object PUT
    commits: list[tuple[str, str]] = field(default_factory=list)  # (repo_id, message)
    requests: list[tuple[str, str, int]] = field(default_factory=list)  # (method, path, status)


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, **extra) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


class FakeHub:
    """The server state and its lifecycle: `start()`, `url`, `stop()`."""

    def __init__(self, root: Path, tokens: dict[str, tuple[str, str]]) -> None:
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self.tokens = tokens  # token -> (user, "read" | "write")
        self.repos: dict[str, Repo] = {}
        self.pending_uploads: dict[str, tuple[str, int]] = {}  # signature -> (sha256, size)
        self.stats = Stats()
        self.lock = threading.RLock()
        self.drop_lfs_uploads = False  # stop the whole server in the middle of an LFS PUT
        self._ids = itertools.count()
        self.server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> FakeHub:
        handler = type("Handler", (_Handler,), {"hub": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        """Stop serving and close the listening socket: new connections are refused."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    # -- storage --------------------------------------------------------------------------

    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256

    def has_blob(self, sha256: str) -> bool:
        return self.blob_path(sha256).is_file()

    def put_blob(self, content: bytes) -> str:
        sha = hashlib.sha256(content).hexdigest()
        path = self.blob_path(sha)
        if not path.exists():
            tmp = path.with_suffix(f".tmp{next(self._ids)}")
            tmp.write_bytes(content)
            tmp.replace(path)
        return sha

    def read(self, repo_id: str, path: str, revision: str = "main") -> bytes:
        """A file's content, for tests."""
        entry = self.repos[repo_id].resolve(revision).files[path]
        return self.blob_path(entry.sha256).read_bytes()

    def files(self, repo_id: str, revision: str = "main") -> dict[str, Entry]:
        return dict(self.repos[repo_id].resolve(revision).files)

    def new_commit(self, repo: Repo, branch: str, message: str, files: dict[str, Entry]) -> Commit:
        parent = repo.branches.get(branch)
        seed = f"{repo.repo_id}{parent}{message}{next(self._ids)}{secrets.token_hex(4)}"
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), parent, message, files)
        repo.commits[commit.oid] = commit
        repo.branches[branch] = commit.oid
        return commit

    def entry_for(self, content: bytes, lfs: bool) -> Entry:
        sha = self.put_blob(content)
        oid = git_blob_oid(lfs_pointer(sha, len(content)) if lfs else content)
        return Entry(len(content), sha, lfs, oid)

    # -- auth -----------------------------------------------------------------------------

    def user(self, authorization: str | None) -> tuple[str, str] | None:
        """(user, role) for the request's token; None without one; 401 for an unknown one."""
        if not authorization:
            return None
        token = authorization.removeprefix("Bearer ").strip()
        if token not in self.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.tokens[token]

    def repo_for_read(self, repo_id: str, auth: str | None) -> Repo:
        user = self.user(auth)
        repo = self.repos.get(repo_id)
        visible = repo is not None and (not repo.private or (user and _owns(user[0], repo_id)))
        if not visible:
            status = 401 if user is None else 404
            raise HubError(status, "Repository not found", "RepoNotFound")
        return repo

    def repo_for_write(self, repo_id: str, auth: str | None) -> Repo:
        user = self.user(auth)
        if user is None:
            raise HubError(401, "Unauthorized: a token is required", "RepoNotFound")
        repo = self.repo_for_read(repo_id, auth)
        if user[1] != "write" or not _owns(user[0], repo_id):
            raise HubError(403, "You don't have the rights to write to this repository")
        return repo


def _owns(user: str, repo_id: str) -> bool:
    return repo_id.split("/")[0] == user


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    # -- plumbing -------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        self.body = b""
        if method in ("POST", "PUT"):
            length = int(self.headers.get("Content-Length") or 0)
            if method == "PUT" and url.path.startswith("/_lfs/") and self.hub.drop_lfs_uploads:
                self._drop_mid_upload(length)
                return
            self.body = self.rfile.read(length)
        try:
            status = self._route(method, url.path)
        except HubError as err:
            status = err.status
            headers = {"X-Error-Message": err.message}
            if err.code:
                headers["X-Error-Code"] = err.code
            self._json({"error": err.message, **err.extra}, err.status, headers)
        self.hub.stats.requests.append((method, url.path, status))

    def _drop_mid_upload(self, length: int) -> None:
        """Read part of the body, then take the whole server down and cut the connection."""
        self.rfile.read(min(length // 2, 4096))
        threading.Thread(target=self.hub.stop, daemon=True).start()
        self.close_connection = True
        self.connection.close()

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _json(self, payload: object, status: int = 200, headers: dict | None = None) -> int:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        return status

    @property
    def auth(self) -> str | None:
        return self.headers.get("Authorization")

    # -- routes ---------------------------------------------------------------------------

    def _route(self, method: str, path: str) -> int:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        hub = self.hub
        with hub.lock:
            if method == "GET" and path == "/api/whoami-v2":
                return self._whoami()
            if method == "POST" and path == "/api/repos/create":
                return self._create_repo()
            if method == "POST" and path == "/api/validate-yaml":
                return self._validate_yaml()
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                return self._api_models(method, f"{parts[2]}/{parts[3]}", parts[4:])
            if parts[0] == "_lfs" and len(parts) >= 4:
                return self._lfs_object(method, f"{parts[1]}/{parts[2]}", parts[3:])
            if (
                len(parts) >= 3
                and parts[1].endswith(".git")
                and parts[2:]
                == [
                    "info",
                    "lfs",
                    "objects",
                    "batch",
                ]
            ):
                return self._lfs_batch(f"{parts[0]}/{parts[1].removesuffix('.git')}")
            if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
                return self._resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
        raise HubError(404, f"no route for {method} {path}")

    def _whoami(self) -> int:
        user = self.hub.user(self.auth)
        if user is None:
            raise HubError(401, "Unauthorized")
        name, role = user
        return self._json(
            {
                "type": "user",
                "name": name,
                "fullname": name,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "t", "role": role}},
            }
        )

    def _create_repo(self) -> int:
        hub = self.hub
        user = hub.user(self.auth)
        if user is None:
            raise HubError(401, "Unauthorized: a token is required")
        payload = json.loads(self.body)
        namespace = payload.get("organization") or user[0]
        repo_id = f"{namespace}/{payload['name']}"
        if user[1] != "write" or namespace != user[0]:
            raise HubError(403, f"You don't have the rights to create a model under {namespace}")
        url = f"{hub.url}/{repo_id}"
        if repo_id in hub.repos:  # the Hub's 409 carries the url, which the client reads
            raise HubError(409, "You already created this model repo", url=url)
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        repo = Repo(repo_id, private)
        gitattributes = hub.entry_for(GITATTRIBUTES.encode(), lfs=False)
        hub.new_commit(repo, "main", "initial commit", {".gitattributes": gitattributes})
        hub.repos[repo_id] = repo
        return self._json({"url": url, "name": repo_id, "id": repo_id})

    def _validate_yaml(self) -> int:
        content = json.loads(self.body)["content"]
        errors = _metadata_errors(content)
        status = 400 if errors else 200
        return self._json({"errors": [{"message": e} for e in errors], "warnings": []}, status)

    def _api_models(self, method: str, repo_id: str, rest: list[str]) -> int:
        if method == "GET" and (not rest or rest[0] == "revision"):
            return self._model_info(repo_id, rest[1] if len(rest) > 1 else "main")
        if method == "GET" and rest and rest[0] == "tree":
            return self._tree(repo_id, rest[1], "/".join(rest[2:]))
        if method == "POST" and rest and rest[0] == "paths-info":
            return self._paths_info(repo_id, rest[1])
        if method == "POST" and rest and rest[0] == "preupload":
            return self._preupload(repo_id, rest[1])
        if method == "POST" and rest and rest[0] == "commit":
            return self._commit(repo_id, rest[1])
        if method == "POST" and rest and rest[0] == "branch":
            return self._create_branch(repo_id, "/".join(rest[1:]))
        raise HubError(404, f"no route for {method} /api/models/{repo_id}/{'/'.join(rest)}")

    def _commit_or_404(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _model_info(self, repo_id: str, revision: str) -> int:
        repo = self.hub.repo_for_read(repo_id, self.auth)
        commit = self._commit_or_404(repo, revision)
        return self._json(
            {
                "_id": repo_id,
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0],
                "sha": commit.oid,
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "tags": [],
                "downloads": 0,
                "likes": 0,
                "lastModified": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                "siblings": [{"rfilename": p} for p in sorted(commit.files)],
            }
        )

    def _file_info(self, path: str, entry: Entry) -> dict:
        info = {"type": "file", "oid": entry.git_oid, "size": entry.size, "path": path}
        if entry.lfs:
            pointer = lfs_pointer(entry.sha256, entry.size)
            info["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": len(pointer)}
        return info

    def _tree(self, repo_id: str, revision: str, prefix: str) -> int:
        repo = self.hub.repo_for_read(repo_id, self.auth)
        commit = self._commit_or_404(repo, revision)
        recursive = self.query.get("recursive", ["false"])[0].lower() == "true"
        base = f"{prefix}/" if prefix else ""
        items, folders = [], set()
        for path, entry in sorted(commit.files.items()):
            if not path.startswith(base):
                continue
            rest = path[len(base) :].split("/")
            for depth in range(1, len(rest)):
                if recursive or depth == 1:
                    folders.add(base + "/".join(rest[:depth]))
            if recursive or len(rest) == 1:
                items.append(self._file_info(path, entry))
        if prefix and not items and not folders:
            raise HubError(404, f"{prefix} does not exist", "EntryNotFound")
        for folder in sorted(folders):
            oid = hashlib.sha1(folder.encode()).hexdigest()
            items.append({"type": "directory", "oid": oid, "size": 0, "path": folder})
        return self._json(items)

    def _paths_info(self, repo_id: str, revision: str) -> int:
        repo = self.hub.repo_for_read(repo_id, self.auth)
        commit = self._commit_or_404(repo, revision)
        form = parse_qs(self.body.decode())
        paths = form.get("paths", [])
        return self._json([self._file_info(p, commit.files[p]) for p in paths if p in commit.files])

    def _create_branch(self, repo_id: str, branch: str) -> int:
        repo = self.hub.repo_for_write(repo_id, self.auth)
        if branch in repo.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        start = (json.loads(self.body or b"{}") or {}).get("startingPoint") or "main"
        repo.branches[branch] = self._commit_or_404(repo, start).oid
        return self._json({})

    def _preupload(self, repo_id: str, revision: str) -> int:
        repo = self.hub.repo_for_write(repo_id, self.auth)
        commit = self._commit_or_404(repo, revision)
        patterns = _lfs_patterns(self.hub, commit)
        files = []
        for item in json.loads(self.body)["files"]:
            sample = base64.b64decode(item["sample"])
            lfs = (
                item["size"] >= LFS_MIN_SIZE
                or b"\0" in sample
                or any(_match(item["path"], p) for p in patterns)
            )
            existing = commit.files.get(item["path"])
            oid = None
            if existing is not None:
                oid = existing.sha256 if existing.lfs else existing.git_oid
            files.append(
                {
                    "path": item["path"],
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": oid,
                }
            )
        return self._json({"files": files, "commitOid": commit.oid})

    def _lfs_batch(self, repo_id: str) -> int:
        hub = self.hub
        hub.repo_for_write(repo_id, self.auth)
        payload = json.loads(self.body)
        objects = []
        for obj in payload["objects"]:
            item = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if not hub.has_blob(obj["oid"]):
                signature = secrets.token_urlsafe(16)
                hub.pending_uploads[signature] = (obj["oid"], obj["size"])
                href = f"{hub.url}/_lfs/{repo_id}/{obj['oid']}"
                item["actions"] = {
                    "upload": {"href": f"{href}?sig={signature}", "header": {}},
                    "verify": {"href": f"{href}/verify", "header": {}},
                }
            objects.append(item)
        return self._json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def _lfs_object(self, method: str, repo_id: str, rest: list[str]) -> int:
        hub = self.hub
        if method == "PUT" and len(rest) == 1:  # the "presigned" upload: no auth header
            signature = self.query.get("sig", [""])[0]
            expected = hub.pending_uploads.pop(signature, None)
            if expected is None or expected[0] != rest[0]:
                raise HubError(403, "invalid or used upload signature")
            digest = hashlib.sha256(self.body).hexdigest()
            if digest != expected[0] or len(self.body) != expected[1]:
                raise HubError(400, "content does not match the announced oid and size")
            hub.put_blob(self.body)
            hub.stats.lfs_uploads.append(expected[0])
            return self._json({})
        if method == "POST" and rest[1:] == ["verify"]:
            hub.repo_for_write(repo_id, self.auth)
            payload = json.loads(self.body)
            if not hub.has_blob(payload["oid"]):
                raise HubError(404, "object not found")
            return self._json({})
        raise HubError(404, "no such LFS route")

    def _commit(self, repo_id: str, revision: str) -> int:
        hub = self.hub
        repo = hub.repo_for_write(repo_id, self.auth)
        if revision not in repo.branches:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        header = lines[0]
        if header.get("key") != "header":
            raise HubError(400, "the first ndjson line must be the header")
        parent = repo.branches[revision]
        if header["value"].get("parentCommit") not in (None, parent):
            raise HubError(412, "parent commit is not the head of the branch")
        files = dict(repo.commits[parent].files)
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                files[value["path"]] = hub.entry_for(base64.b64decode(value["content"]), lfs=False)
            elif key == "lfsFile":
                if not hub.has_blob(value["oid"]):
                    raise HubError(422, f"LFS object {value['oid']} was never uploaded")
                size = hub.blob_path(value["oid"]).stat().st_size
                oid = git_blob_oid(lfs_pointer(value["oid"], size))
                files[value["path"]] = Entry(size, value["oid"], True, oid)
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: e for p, e in files.items() if not p.startswith(prefix)}
            else:
                raise HubError(400, f"unknown commit operation {key!r}")
        commit = hub.new_commit(repo, revision, header["value"]["summary"], files)
        hub.stats.commits.append((repo_id, header["value"]["summary"]))
        return self._json(
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{hub.url}/{repo_id}/commit/{commit.oid}",
                "pullRequestUrl": None,
            }
        )

    def _resolve(self, repo_id: str, revision: str, path: str) -> int:
        hub = self.hub
        repo = hub.repo_for_read(repo_id, self.auth)
        commit = self._commit_or_404(repo, revision)
        entry = commit.files.get(path)
        headers = {"X-Repo-Commit": commit.oid}
        if entry is None:  # the commit header lets the client cache the absence
            headers.update({"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found"})
            return self._json({"error": "Entry not found"}, 404, headers)
        content = hub.blob_path(entry.sha256).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(content)))
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("X-Repo-Commit", commit.oid)
        if entry.lfs:
            self.send_header("ETag", f'"{entry.git_oid}"')
            self.send_header("X-Linked-Etag", f'"{entry.sha256}"')
            self.send_header("X-Linked-Size", str(entry.size))
        else:
            self.send_header("ETag", f'"{entry.git_oid}"')
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(content)
        return 200


def _lfs_patterns(hub: FakeHub, commit: Commit) -> list[str]:
    entry = commit.files.get(".gitattributes")
    if entry is None:
        return []
    text = hub.blob_path(entry.sha256).read_text()
    return [line.split()[0] for line in text.splitlines() if "filter=lfs" in line]


def _match(path: str, pattern: str) -> bool:
    return fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path.rsplit("/", 1)[-1], pattern)


def _metadata_errors(content: str) -> list[str]:
    """What the Hub would refuse in a README's YAML front matter (a subset of its checks)."""
    if not content.startswith("---\n"):
        return []
    front, sep, _ = content[4:].partition("\n---")
    if not sep:
        return ["the metadata block is not closed by ---"]
    try:
        data = yaml.safe_load(front) or {}
    except yaml.YAMLError as err:
        return [f"invalid YAML: {err}"]
    if not isinstance(data, dict):
        return ["metadata must be a mapping"]
    errors = []
    if "license" in data and data["license"] not in LICENSES:
        errors.append(f'"license" must be a known license id, got {data["license"]!r}')
    if "pipeline_tag" in data and data["pipeline_tag"] not in PIPELINE_TAGS:
        errors.append(f'"pipeline_tag" is not a known task: {data["pipeline_tag"]!r}')
    for key in ("tags", "datasets"):
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            errors.append(f'"{key}" must be a list of non-empty strings')
    base = data.get("base_model")
    if base is not None and not (isinstance(base, str) and base.strip()):
        errors.append('"base_model" must be a model id')
    return errors
