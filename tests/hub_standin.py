"""A local stand-in for the Hugging Face Hub, on 127.0.0.1.

Speaks the part of the protocol huggingface_hub's downloads use (hf_hub_download, and
snapshot_download, which common/models.py loads a Hub model with):
- GET {endpoint}/api/{models|datasets}/{repo}[/revision/{revision}]: the repository's info
  (id, sha = the commit the revision points to, siblings...), as HfApi.repo_info reads it;
- GET {endpoint}/api/{models|datasets}/{repo}/tree/{revision}[/{path}]?recursive=: its file
  listing (type, oid, size, path; lfs {oid, size, pointerSize} for LFS files), as
  HfApi.list_repo_tree reads it;
- HEAD/GET {endpoint}/[datasets/]{repo}/resolve/{revision}/{path}: a file, with X-Repo-Commit,
  ETag (the git blob id) and Content-Length; an LFS file (weights, archives) is a 302 redirect
  to a second server on another port (the Hub's CDN: another origin, so huggingface_hub does
  not follow the HEAD there), with X-Repo-Commit, X-Linked-Etag (its sha256) and
  X-Linked-Size, as the Hub answers;
- errors with the Hub's X-Error-Code: RepoNotFound (401, as to an anonymous caller),
  RevisionNotFound and EntryNotFound (404).
Point HF_ENDPOINT at `endpoint`. `requests` and `cdn_requests` record (method, path).
"""
import hashlib
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REVISIONS = ("main", COMMIT)
# What a Hub repository keeps in Git LFS (the .gitattributes every new repository starts with, in part)
LFS_SUFFIXES = (".safetensors", ".h5", ".bin", ".msgpack", ".ot", ".onnx", ".zip", ".tar.gz", ".pt", ".ckpt")
API = re.compile(r"^/api/(models|datasets)/(.+?)(?:/(revision|tree)/([^/]+)(?:/(.*))?)?$")
RESOLVE = re.compile(r"^/(datasets/)?(.+?)/resolve/([^/]+)/(.+)$")


class _File:
    def __init__(self, local: str):
        self.local = local
        with open(local, "rb") as f:
            data = f.read()
        self.size = len(data)
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.lfs = local.endswith(LFS_SUFFIXES)
        if self.lfs:  # git holds the pointer; the Hub's listing gives the pointer's blob id and the real size
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n"
            self.pointer_size = len(pointer)
            self.blob_id = self._git_blob_id(pointer.encode())
        else:
            self.blob_id = self._git_blob_id(data)

    @staticmethod
    def _git_blob_id(data: bytes) -> str:
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    def body(self) -> bytes:
        with open(self.local, "rb") as f:
            return f.read()

    def tree_entry(self, path: str) -> dict:
        entry = {"type": "file", "oid": self.blob_id, "size": self.size, "path": path}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": self.pointer_size}
        return entry


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

    def _error(self, status: int, code: str, message: str, send_body: bool):
        body = json.dumps({"error": message}).encode()
        self._send(status, {"X-Error-Code": code, "X-Error-Message": message,
                            "Content-Type": "application/json; charset=utf-8"}, body, send_body)

    def _json(self, obj, send_body: bool):
        self._send(200, {"Content-Type": "application/json; charset=utf-8"}, json.dumps(obj).encode(), send_body)

    def _answer(self, send_body: bool):
        url = urlparse(self.path)
        path = unquote(url.path)
        s = self.standin
        (s.cdn_requests if self.cdn else s.requests).append((self.command, path))
        if self.cdn:
            return self._cdn(path.lstrip("/"), send_body)
        m = API.match(path)
        if m and self.command == "GET":
            kind, repo, what, revision, sub = m.groups()  # /api/models/{repo}: the info at main
            return self._api(kind[:-1], repo, what or "revision", revision or "main", sub or "", parse_qs(url.query),
                             send_body)
        m = RESOLVE.match(path)
        if m:
            dataset, repo, revision, name = m.groups()
            return self._resolve("dataset" if dataset else "model", repo, revision, name, send_body)
        self._error(404, "NotFound", "Sorry, we can't find the page you are looking for.", send_body)

    def _repo(self, repo_type, repo, revision, send_body):
        files = self.standin.repos.get((repo_type, repo))
        if files is None:
            self._error(401, "RepoNotFound", "Repository not found", send_body)
        elif revision not in REVISIONS:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", send_body)
        return files if files is not None and revision in REVISIONS else None

    def _api(self, repo_type, repo, what, revision, sub, query, send_body):
        files = self._repo(repo_type, repo, revision, send_body)
        if files is None:
            return
        if what == "revision":
            info = {"_id": hashlib.sha1(repo.encode()).hexdigest()[:24], "id": repo, "author": repo.split("/")[0],
                    "sha": COMMIT, "lastModified": "2024-01-01T00:00:00.000Z", "createdAt": "2024-01-01T00:00:00.000Z",
                    "private": False, "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": [],
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
        files = self._repo(repo_type, repo, revision, send_body)
        if files is None:
            return
        f = files.get(name)
        if f is None:
            return self._error(404, "EntryNotFound", f"{name} does not exist on \"{revision}\"", send_body)
        if f.lfs:
            location = f"{self.standin.cdn_endpoint}/{f.sha256}?download=true&filename={quote(os.path.basename(name))}"
            return self._send(302, {"X-Repo-Commit": COMMIT, "X-Linked-Etag": f'"{f.sha256}"',
                                    "X-Linked-Size": str(f.size), "ETag": f'W/"{f.blob_id}"', "Location": location,
                                    "Content-Type": "text/plain; charset=utf-8"}, b"", send_body)
        self._send(200, {"X-Repo-Commit": COMMIT, "ETag": f'"{f.blob_id}"', "Content-Length": str(f.size),
                         "Content-Type": "application/octet-stream"}, f.body() if send_body else b"", send_body)

    def _cdn(self, sha256, send_body):
        f = next((f for files in self.standin.repos.values() for f in files.values() if f.sha256 == sha256), None)
        if f is None:
            return self._send(404, {"Content-Type": "text/plain"}, b"Not Found", send_body)
        self._send(200, {"ETag": f'"{f.sha256}"', "Content-Length": str(f.size),
                         "Content-Type": "application/octet-stream"}, f.body() if send_body else b"", send_body)

    def do_HEAD(self):
        self._answer(send_body=False)

    def do_GET(self):
        self._answer(send_body=True)


class HubStandIn:
    def __init__(self):
        self.repos = {}          # (repo_type, repo) -> {path in repo: _File}
        self.requests = []       # (method, path) the Hub saw, for assertions
        self.cdn_requests = []   # (method, path) the CDN saw
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

    def add(self, repo: str, path_in_repo: str, local: str, repo_type: str = "model"):
        self.repos.setdefault((repo_type, repo), {})[path_in_repo] = _File(local)

    def add_folder(self, repo: str, folder: str, skip=()):
        """Every file under `folder` (subfolders too), at its relative path."""
        for root, _, names in os.walk(folder):
            for name in names:
                rel = os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/")
                if rel not in skip:
                    self.add(repo, rel, os.path.join(root, name))

    def _resolved(self, repo: str, repo_type: str, methods) -> set:
        prefix = ("/datasets/" if repo_type == "dataset" else "/") + repo + "/resolve/"
        return {p[len(prefix):].split("/", 1)[1] for m, p in self.requests if m in methods and p.startswith(prefix)}

    def requested(self, repo: str, repo_type: str = "model") -> set:
        """The paths in `repo` asked for at all (HEAD or GET of /resolve/)."""
        return self._resolved(repo, repo_type, ("HEAD", "GET"))

    def fetched(self, repo: str, repo_type: str = "model") -> set:
        """The files of `repo` whose content was downloaded: a GET of the file, or of its CDN
        copy after the Hub's redirect."""
        files = self.repos.get((repo_type, repo), {})
        got = self._resolved(repo, repo_type, ("GET",))
        cdn = {p.lstrip("/") for m, p in self.cdn_requests if m == "GET"}
        return {p for p, f in files.items() if (f.sha256 in cdn and p in self.requested(repo, repo_type)
                                                 if f.lfs else p in got)}

    def close(self):
        for server in (self.server, self.cdn):
            server.shutdown()
            server.server_close()
