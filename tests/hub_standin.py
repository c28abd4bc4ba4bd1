"""A local stand-in for the Hugging Face Hub's file endpoints, on 127.0.0.1.

Speaks the part of the protocol huggingface_hub's downloads use:
HEAD/GET {endpoint}/{repo}/resolve/{revision}/{path} and the same under /datasets/,
answering with X-Repo-Commit, ETag and Content-Length; 404 with X-Error-Code for
anything it does not hold. Point HF_ENDPOINT at it.
"""
import hashlib
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubStandIn:
    def __init__(self):
        self.files = {}      # "/{prefix}{repo}/resolve/main/{path}" -> local file
        self.requests = []   # (method, path) seen, for assertions
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _answer(self, body: bool):
                path = unquote(urlparse(self.path).path)
                standin.requests.append((self.command, path))
                key = path.replace("/resolve/" + COMMIT + "/", "/resolve/main/")
                local = standin.files.get(key)
                if local is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                with open(local, "rb") as f:
                    data = f.read()
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, repo: str, path_in_repo: str, local: str, repo_type: str = "model"):
        prefix = "/datasets/" if repo_type == "dataset" else "/"
        self.files[f"{prefix}{repo}/resolve/main/{path_in_repo}"] = local

    def add_folder(self, repo: str, folder: str, skip=()):
        for name in os.listdir(folder):
            if name not in skip and os.path.isfile(os.path.join(folder, name)):
                self.add(repo, name, os.path.join(folder, name))

    def close(self):
        self.server.shutdown()
        self.server.server_close()
