"""A local stand-in for the Hugging Face Hub, on 127.0.0.1.

Speaks the part of the protocol huggingface_hub's downloads use (hf_hub_download, and
snapshot_download, which common/models.py loads a Hub model with):
- GET {endpoint}/api/{models|datasets}/{repo}[/revision/{revision}]: the repository's info
  (id, sha = the commit the revision points to, private, siblings...), as HfApi.repo_info reads it;
- GET {endpoint}/api/{models|datasets}/{repo}/tree/{revision}[/{path}]?recursive=: its file
  listing (type, oid, size, path; lfs {oid, size, pointerSize} for LFS files), as
  HfApi.list_repo_tree reads it;
- HEAD/GET {endpoint}/[datasets/]{repo}/resolve/{revision}/{path}: a file, with X-Repo-Commit,
  ETag (the git blob id) and Content-Length; an LFS file (weights, archives) is a 302 redirect
  to a second server on another port (the Hub's CDN: another origin, so huggingface_hub does
  not follow the HEAD there), with X-Repo-Commit, X-Linked-Etag (its sha256) and
  X-Linked-Size, as the Hub answers;
- errors with the Hub's X-Error-Code: RepoNotFound (401 to a caller without a valid token, 404
  to one with a token that may not read it: a private repository is hidden), RevisionNotFound
  and EntryNotFound (404).
A revision is "main" (the newest commit) or the id of any of the repository's commits.

And the part its uploads use (HfApi.create_repo, upload_folder / create_commit, whoami), each
with `Authorization: Bearer <token>`, a token from `tokens` (token -> the owners it may write to:
its user, then its organizations):
- POST {endpoint}/api/repos/create {name, organization, visibility (or private), type}: a new
  repository with the Hub's first commit ("initial commit": a .gitattributes); {url, name}.
  Errors as the Hub answers: 401 without a token ("Invalid username or password.") or with an
  unknown one ("Invalid credentials in Authorization header"), 400 a name the Hub refuses,
  403 another owner's namespace, 409 {error, url} when it exists (create_repo(exist_ok=True)
  reads the url and carries on);
- POST {endpoint}/api/{models|datasets}/{repo}/preupload/{revision} {files: [{path, sample,
  size}]}: every file "regular" (its content then travels in the commit itself), with the oid of
  the file already at that path, from which the client drops unchanged files;
- POST {endpoint}/api/{models|datasets}/{repo}/commit/main (NDJSON: a header {summary,
  description, parentCommit?}, then file {path, content, encoding: base64}, deletedFile {path},
  deletedFolder {path}, lfsFile {path, oid} of content the stand-in already holds): a new commit
  on main; {success, commitOid, commitUrl, hookOutput, pullRequestUrl}. No token, an unknown
  one, a private repository it may not see: 401/404 RepoNotFound; a repository it may read but
  not write: 403; a parentCommit that is not main's head: 412. No pull requests (create_pr);
- POST {endpoint}/api/validate-yaml: no errors (upload_folder sends a README.md's there first);
- GET {endpoint}/api/whoami-v2: {type: "user", name, orgs, auth} of the token.
Why every file is "regular": huggingface_hub 2.4.0 with hf_xet installed uploads every file the
preupload calls "lfs" through Xet storage (the Hub's CAS servers, with a token from
.../xet-write-token/...), never through the LFS batch API; only "regular" files skip it. The
stand-in also sends no X-Xet-* header on downloads, so hf_xet never downloads either.
Files are served by their name as add() serves them: LFS_SUFFIXES through the CDN redirect.

Point HF_ENDPOINT at `endpoint`. `requests` and `cdn_requests` record (method, path);
`authorizations` every Authorization header value either server saw.
"""
import base64
import hashlib
import json
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"  # the commit add()/add_folder() put files in
# What a Hub repository keeps in Git LFS (the .gitattributes every new repository starts with, in part)
LFS_SUFFIXES = (".safetensors", ".h5", ".bin", ".msgpack", ".ot", ".onnx", ".zip", ".tar.gz", ".pt", ".ckpt")
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES).encode()
API = re.compile(r"^/api/(models|datasets)/(.+?)(?:/(revision|tree)/([^/]+)(?:/(.*))?)?$")
UPLOAD = re.compile(r"^/api/(models|datasets)/(.+?)/(preupload|commit)/([^/]+)$")
RESOLVE = re.compile(r"^/(datasets/)?(.+?)/resolve/([^/]+)/(.+)$")
COMMIT_ID = re.compile(r"^[0-9a-f]{40}$")
# The Hub's rule for a repository name, and its words when it refuses one (400 from /api/repos/create).
# huggingface_hub 2.4.0 checks the same before sending (validate_repo_id: HFValidationError), so
# through HfApi no such name reaches a server; a caller below HfApi gets this answer.
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,96}$")
NAME_RULE = ("Only regular characters and '-', '_', '.' are accepted. '--' and '..' are forbidden. '-' and '.' "
             "cannot start or end the name. The name cannot end with \".git\". Max length is 96.")
NO_TOKEN = "Invalid username or password."
BAD_TOKEN = "Invalid credentials in Authorization header"  # huggingface_hub tells it from "repo not found" by this


def _name_refused(name: str) -> bool:
    return (not NAME.match(name) or "--" in name or ".." in name or name[0] in "-." or name[-1] in "-."
            or name.endswith(".git"))


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _File:
    """A file at a commit: a local file (add()), read again when served, or uploaded bytes."""

    def __init__(self, local: str = None, data: bytes = None, name: str = None):
        self.local = local
        self.data = data
        if data is None:
            with open(local, "rb") as f:
                data = f.read()
        self.size = len(data)
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.git_sha1 = _git_blob_id(data)  # what the client compares a "regular" file against
        self.lfs = (name or local).endswith(LFS_SUFFIXES)
        if self.lfs:  # git holds the pointer; the Hub's listing gives the pointer's blob id and the real size
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n"
            self.pointer_size = len(pointer)
            self.blob_id = _git_blob_id(pointer.encode())
        else:
            self.blob_id = self.git_sha1

    def body(self) -> bytes:
        if self.data is not None:
            return self.data
        with open(self.local, "rb") as f:
            return f.read()

    def tree_entry(self, path: str) -> dict:
        entry = {"type": "file", "oid": self.blob_id, "size": self.size, "path": path}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": self.pointer_size}
        return entry


class _Commit:
    def __init__(self, oid: str, message: str, files: dict):
        self.oid, self.message, self.files = oid, message, files  # files: {path in repo: _File}


class _Repo:
    def __init__(self, private: bool = False):
        self.private = private
        self.commits = []  # oldest first; main is the last

    def resolve(self, revision: str):
        if revision == "main":
            return self.commits[-1] if self.commits else None
        return next((c for c in self.commits if c.oid == revision), None)

    def commit(self, message: str, files: dict) -> _Commit:
        parent = self.commits[-1].oid if self.commits else ""
        seed = f"{parent}\0{message}\0{len(self.commits)}\0{time.time_ns()}\0" + "".join(
            f"{p}\0{f.blob_id}\0" for p, f in sorted(files.items()))
        c = _Commit(hashlib.sha1(seed.encode()).hexdigest(), message, files)
        self.commits.append(c)
        return c


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    standin = None  # set per server
    cdn = False

    def log_message(self, *a):
        pass

    def _send(self, status: int, headers: dict, body: bytes = b"", send_body: bool = True):
        self.send_response(status)
        for k, v in {"Content-Length": str(len(body)), **headers}.items():  # HEAD: the length a GET would send
            self.send_header(k, v)
        self.end_headers()
        if send_body and body:
            self.wfile.write(body)

    def _error(self, status: int, code, message: str, send_body: bool = True, **extra):
        """The Hub's error: {"error": message} and X-Error-Message; X-Error-Code where the Hub sends one."""
        body = json.dumps({"error": message, **extra}).encode()
        headers = {"X-Error-Message": message, "Content-Type": "application/json; charset=utf-8"}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, headers, body, send_body)

    def _json(self, obj, send_body: bool = True):
        self._send(200, {"Content-Type": "application/json; charset=utf-8"}, json.dumps(obj).encode(), send_body)

    # ------------------------------------------------------------------ who is asking

    def _token(self):
        """(token, owners): token None without an Authorization header; owners None for a token the
        stand-in was not given."""
        auth = self.headers.get("Authorization")
        if not auth:
            return None, None
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else auth
        return token, self.standin.tokens.get(token)

    @staticmethod
    def _may_write(owners, repo: str) -> bool:
        return owners is not None and repo.split("/")[0] in owners

    def _not_found(self, send_body: bool):
        """A repository the caller may not see, as the Hub hides it: 401 without a valid token, 404 with one."""
        _, owners = self._token()
        self._error(401 if owners is None else 404, "RepoNotFound", "Repository not found", send_body)

    # ------------------------------------------------------------------ dispatch

    def _read_body(self) -> bytes:
        """The whole request body (read even when refused: the connection is kept alive)."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer(self, send_body: bool, body: bytes = b""):
        url = urlparse(self.path)
        path = unquote(url.path)
        query = parse_qs(url.query)
        s = self.standin
        (s.cdn_requests if self.cdn else s.requests).append((self.command, path))
        if self.headers.get("Authorization") is not None:
            s.authorizations.append(self.headers["Authorization"])
        if self.cdn:
            return self._cdn(path.lstrip("/"), send_body)
        if self.command == "POST":
            return self._post(path, query, body)
        token, owners = self._token()
        if token is not None and owners is None and s.tokens:  # the Hub refuses a token it does not know
            return self._error(401, None, BAD_TOKEN, send_body)
        if path == "/api/whoami-v2" and self.command == "GET":
            return self._whoami()
        m = API.match(path)
        if m and self.command == "GET":
            kind, repo, what, revision, sub = m.groups()  # /api/models/{repo}: the info at main
            return self._api(kind[:-1], repo, what or "revision", revision or "main", sub or "", query, send_body)
        m = RESOLVE.match(path)
        if m:
            dataset, repo, revision, name = m.groups()
            return self._resolve("dataset" if dataset else "model", repo, revision, name, send_body)
        self._error(404, "NotFound", "Sorry, we can't find the page you are looking for.", send_body)

    def _post(self, path, query, body):
        if path == "/api/repos/create":
            return self._create(body)
        if path == "/api/validate-yaml":  # the stand-in does not check model card metadata
            return self._json({"errors": [], "warnings": []})
        m = UPLOAD.match(path)
        if m:
            kind, repo, what, revision = m.groups()
            r = self._writable(kind[:-1], repo, query)
            if r is None:
                return
            return (self._preupload if what == "preupload" else self._commit)(kind[:-1], repo, r, revision, body)
        self._error(404, "NotFound", "Sorry, we can't find the page you are looking for.")

    # ------------------------------------------------------------------ downloads

    def _repo(self, repo_type, repo, revision, send_body):
        """The commit `revision` names in a repository the caller may read, or None (error sent)."""
        r = self.standin.repos.get((repo_type, repo))
        _, owners = self._token()
        if r is None or (r.private and not self._may_write(owners, repo)):  # readers are its owners
            return self._not_found(send_body)
        commit = r.resolve(revision)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", send_body)
        return commit

    def _api(self, repo_type, repo, what, revision, sub, query, send_body):
        commit = self._repo(repo_type, repo, revision, send_body)
        if commit is None:
            return
        files = commit.files
        if what == "revision":
            info = {"_id": hashlib.sha1(repo.encode()).hexdigest()[:24], "id": repo, "author": repo.split("/")[0],
                    "sha": commit.oid, "lastModified": "2024-01-01T00:00:00.000Z",
                    "createdAt": "2024-01-01T00:00:00.000Z",
                    "private": self.standin.repos[(repo_type, repo)].private, "disabled": False, "gated": False,
                    "downloads": 0, "likes": 0, "tags": [],
                    "siblings": [{"rfilename": p} for p in sorted(files)],
                    "usedStorage": sum(f.size for f in files.values())}
            if repo_type == "model":
                info.update(modelId=repo, library_name="transformers")
            return self._json(info, send_body)
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        prefix = sub.strip("/") + "/" if sub.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in files):
            return self._error(404, "EntryNotFound", f"{sub} does not exist on \"{revision}\"", send_body)
        entries, folders = [], set()
        for p in sorted(files):
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix):].split("/")
            for depth in range(1, len(rest)):  # the folders on the way
                folder = prefix + "/".join(rest[:depth])
                if folder not in folders and (recursive or depth == 1):
                    folders.add(folder)
                    entries.append({"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(), "size": 0,
                                    "path": folder})
            if recursive or len(rest) == 1:
                entries.append(files[p].tree_entry(p))
        self._json(entries, send_body)

    def _resolve(self, repo_type, repo, revision, name, send_body):
        commit = self._repo(repo_type, repo, revision, send_body)
        if commit is None:
            return
        f = commit.files.get(name)
        if f is None:
            return self._error(404, "EntryNotFound", f"{name} does not exist on \"{revision}\"", send_body)
        if f.lfs:
            location = f"{self.standin.cdn_endpoint}/{f.sha256}?download=true&filename={quote(os.path.basename(name))}"
            return self._send(302, {"X-Repo-Commit": commit.oid, "X-Linked-Etag": f'"{f.sha256}"',
                                    "X-Linked-Size": str(f.size), "ETag": f'W/"{f.blob_id}"', "Location": location,
                                    "Content-Type": "text/plain; charset=utf-8"}, b"", send_body)
        self._send(200, {"X-Repo-Commit": commit.oid, "ETag": f'"{f.blob_id}"', "Content-Length": str(f.size),
                         "Content-Type": "application/octet-stream"}, f.body() if send_body else b"", send_body)

    def _cdn(self, sha256, send_body):
        f = self.standin._by_sha256(sha256)
        if f is None:
            return self._send(404, {"Content-Type": "text/plain"}, b"Not Found", send_body)
        self._send(200, {"ETag": f'"{f.sha256}"', "Content-Length": str(f.size),
                         "Content-Type": "application/octet-stream"}, f.body() if send_body else b"", send_body)

    # ------------------------------------------------------------------ uploads

    def _whoami(self):
        token, owners = self._token()
        if owners is None:
            return self._error(401, None, NO_TOKEN if token is None else BAD_TOKEN)
        user, orgs = owners[0], owners[1:]
        self._json({"type": "user", "id": hashlib.sha1(user.encode()).hexdigest()[:24], "name": user,
                    "fullname": user, "isPro": False, "canPay": False, "emailVerified": True, "avatarUrl": "",
                    "orgs": [{"type": "org", "id": hashlib.sha1(o.encode()).hexdigest()[:24], "name": o,
                              "fullname": o, "roleInOrg": "write"} for o in orgs],
                    "auth": {"type": "access_token", "accessToken": {
                        "displayName": "standin", "role": "write", "createdAt": "2024-01-01T00:00:00.000Z"}}})

    def _repo_url(self, repo_type, repo) -> str:
        return f"{self.standin.endpoint}/{'datasets/' if repo_type == 'dataset' else ''}{repo}"

    def _create(self, body):
        token, owners = self._token()
        if owners is None:
            return self._error(401, None, NO_TOKEN if token is None else BAD_TOKEN)
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            return self._error(400, None, "Invalid JSON body")
        repo_type = payload.get("type") or "model"
        if repo_type not in ("model", "dataset"):  # the stand-in keeps models and datasets only
            return self._error(400, None, f"Invalid repo type: {repo_type}")
        name = payload.get("name") or ""
        namespace = payload.get("organization") or owners[0]  # no organization: the token's user
        if _name_refused(name):
            return self._error(400, None, NAME_RULE)
        if namespace not in owners:
            return self._error(403, None, f"You don't have the rights to create a {repo_type} under the namespace "
                                          f"\"{namespace}\"")
        repo, url = f"{namespace}/{name}", self._repo_url(repo_type, f"{namespace}/{name}")
        visibility = payload.get("visibility")  # 2.4.0 sends visibility; older clients private: bool
        private = visibility == "private" if visibility is not None else bool(payload.get("private"))
        s = self.standin
        with s.lock:
            if (repo_type, repo) in s.repos:
                return self._error(409, None, f"You already created this {repo_type} repo", url=url)
            r = s.repos[(repo_type, repo)] = _Repo(private)
            r.commit("initial commit", {".gitattributes": _File(data=GITATTRIBUTES, name=".gitattributes")})
        self._json({"url": url, "name": repo, "id": hashlib.sha1(repo.encode()).hexdigest()[:24]})

    def _writable(self, repo_type, repo, query):
        """The repository the caller may write to, or None (the Hub's error sent)."""
        token, owners = self._token()
        r = self.standin.repos.get((repo_type, repo))
        if token is None and r is not None and not r.private:
            return self._error(401, None, NO_TOKEN)
        if token is not None and owners is None:
            return self._error(401, None, BAD_TOKEN)
        if r is None or (r.private and not self._may_write(owners, repo)):
            return self._not_found(True)
        if "create_pr" in query:
            return self._error(400, None, "The Hub stand-in has no pull requests (create_pr)")
        if not self._may_write(owners, repo):  # may read (public) but not write
            return self._error(403, None, "Forbidden: pass `create_pr=1` as a query parameter to create a Pull Request")
        return r

    def _preupload(self, repo_type, repo, r, revision, body):
        commit = r.resolve(revision)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        try:
            files = json.loads(body)["files"]
        except (ValueError, KeyError, TypeError):
            return self._error(400, None, "Invalid preupload body: expected {files: [{path, sample, size}]}")
        answer = []
        for f in files:
            entry = {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
            if f["path"] in commit.files:  # the client drops a file whose oid matches (unchanged)
                entry["oid"] = commit.files[f["path"]].git_sha1
            answer.append(entry)
        self._json({"files": answer, "commitOid": commit.oid})

    def _commit(self, repo_type, repo, r, revision, body):
        if revision != "main":  # a commit goes on a branch; the stand-in's repositories have one
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        try:
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        except ValueError:
            return self._error(400, None, "Invalid NDJSON body")
        if not lines or lines[0].get("key") != "header" or not (lines[0].get("value") or {}).get("summary"):
            return self._error(400, None, "The commit needs a header with a summary first")
        header = lines[0]["value"]
        s = self.standin
        with s.lock:  # one commit at a time on main
            head = r.commits[-1]
            parent = header.get("parentCommit")
            if parent and not head.oid.startswith(parent):
                return self._error(412, None, f"A commit has happened since {parent}: main is at {head.oid}")
            files = dict(head.files)
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value") or {}
                path = value.get("path", "")
                if key == "file":
                    if value.get("encoding", "base64") != "base64":
                        return self._error(400, None, f"Unsupported encoding for {path}: {value.get('encoding')}")
                    files[path] = _File(data=base64.b64decode(value["content"]), name=path)
                elif key == "lfsFile":  # only content already here: the stand-in never asks for LFS uploads
                    known = s._by_sha256(value.get("oid", ""))
                    if known is None:
                        return self._error(400, None, f"Unknown LFS object {value.get('oid')} for {path}")
                    files[path] = _File(data=known.body(), name=path)
                elif key == "deletedFile":
                    if files.pop(path, None) is None:
                        return self._error(404, "EntryNotFound", f"A file with this name doesn't exist: {path}")
                elif key == "deletedFolder":
                    folder = path.rstrip("/") + "/"
                    gone = [p for p in files if p.startswith(folder)]
                    if not gone:
                        return self._error(404, "EntryNotFound", f"A folder with this name doesn't exist: {path}")
                    for p in gone:
                        del files[p]
                else:
                    return self._error(400, None, f"Unknown commit operation: {key}")
            message = header["summary"] + (f"\n\n{header['description']}" if header.get("description") else "")
            c = r.commit(message, files)
        self._json({"success": True, "commitOid": c.oid, "hookOutput": "", "pullRequestUrl": None,
                    "commitUrl": f"{self._repo_url(repo_type, repo)}/commit/{c.oid}"})

    def do_HEAD(self):
        self._answer(send_body=False)

    def do_GET(self):
        self._answer(send_body=True)

    def do_POST(self):
        self._answer(send_body=True, body=self._read_body())


class HubStandIn:
    def __init__(self, tokens: dict = None):
        """tokens: {token: (user, org, ...)}: the tokens the Hub knows and the owners (namespaces)
        each may write to; the first is the token's user (whoami's name)."""
        self.tokens = {t: tuple(owners) for t, owners in (tokens or {}).items()}
        self.repos = {}          # (repo_type, repo) -> _Repo
        self.requests = []       # (method, path) the Hub saw, for assertions
        self.cdn_requests = []   # (method, path) the CDN saw
        self.authorizations = [] # every Authorization header value either server saw
        self.lock = threading.Lock()
        self.server = self._serve(cdn=False)
        self.cdn = self._serve(cdn=True)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.cdn_endpoint = f"http://127.0.0.1:{self.cdn.server_address[1]}"

    def _serve(self, cdn: bool):
        handler = type("Handler", (_Handler,), {"standin": self, "cdn": cdn})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def _by_sha256(self, sha256: str):
        return next((f for r in list(self.repos.values()) for c in list(r.commits) for f in c.files.values()
                     if f.sha256 == sha256), None)

    def add(self, repo: str, path_in_repo: str, local: str, repo_type: str = "model"):
        """`local` at `path_in_repo` in the newest commit of `repo` (a new public repository: one
        commit, COMMIT)."""
        with self.lock:
            r = self.repos.setdefault((repo_type, repo), _Repo())
            if not r.commits:
                r.commits.append(_Commit(COMMIT, "initial commit", {}))
            r.commits[-1].files[path_in_repo] = _File(local)

    def add_folder(self, repo: str, folder: str, skip=()):
        """Every file under `folder` (subfolders too), at its relative path."""
        for root, _, names in os.walk(folder):
            for name in names:
                rel = os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/")
                if rel not in skip:
                    self.add(repo, rel, os.path.join(root, name))

    def commits(self, repo: str, repo_type: str = "model") -> list:
        """[(commit id, message, sorted file paths at that commit)], oldest first."""
        return [(c.oid, c.message, sorted(c.files)) for c in self.repos[(repo_type, repo)].commits]

    def files(self, repo: str, repo_type: str = "model") -> dict:
        """{path: content} at main."""
        return {p: f.body() for p, f in self.repos[(repo_type, repo)].commits[-1].files.items()}

    def private(self, repo: str, repo_type: str = "model") -> bool:
        return self.repos[(repo_type, repo)].private

    def _resolved(self, repo: str, repo_type: str, methods) -> set:
        prefix = ("/datasets/" if repo_type == "dataset" else "/") + repo + "/resolve/"
        return {p[len(prefix):].split("/", 1)[1] for m, p in self.requests if m in methods and p.startswith(prefix)}

    def requested(self, repo: str, repo_type: str = "model") -> set:
        """The paths in `repo` asked for at all (HEAD or GET of /resolve/)."""
        return self._resolved(repo, repo_type, ("HEAD", "GET"))

    def fetched(self, repo: str, repo_type: str = "model") -> set:
        """The files of `repo` (at main) whose content was downloaded: a GET of the file, or of its
        CDN copy after the Hub's redirect."""
        r = self.repos.get((repo_type, repo))
        files = r.commits[-1].files if r and r.commits else {}
        got = self._resolved(repo, repo_type, ("GET",))
        cdn = {p.lstrip("/") for m, p in self.cdn_requests if m == "GET"}
        return {p for p, f in files.items() if (f.sha256 in cdn and p in self.requested(repo, repo_type)
                                                 if f.lfs else p in got)}

    def close(self):
        for server in (self.server, self.cdn):
            server.shutdown()
            server.server_close()
