"""The upload side of the Hub stand-in (tests/hub_standin.py) through the real huggingface_hub
client, as an upload from this project would reach the Hub: HF_ENDPOINT at the stand-in, the token
in HF_TOKEN. In fresh processes: huggingface_hub reads HF_ENDPOINT when it is imported. What the
client raises for each refusal is asserted here by type, status and the Hub's message."""
import hashlib
import json
import os
import subprocess
import sys

import pytest

from tests.hub_standin import NAME_RULE, HubStandIn

ALICE, BOB = "hf_standin_alice_0123456789", "hf_standin_bob_0123456789"

# Runs first in every fresh process: `error(fn)` is what the client raised, as JSON (None if nothing)
PRELUDE = """
import hashlib, json, os
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
api = HfApi()
def error(fn):
    try:
        fn()
    except Exception as e:
        r = getattr(e, "response", None)
        return {"type": type(e).__name__, "status": getattr(r, "status_code", None),
                "server_message": getattr(e, "server_message", None), "message": str(e)}
def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()
"""


@pytest.fixture()
def hub(tmp_path):
    h = HubStandIn(tokens={ALICE: ("alice", "alice-lab"), BOB: ("bob",)})
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH")}
    env.update(HF_ENDPOINT=h.endpoint, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE="0",
               HF_HUB_DISABLE_TELEMETRY="1")  # HF_HOME under tmp_path: no saved token either
    yield h, env
    h.close()


def _py(code: str, env: dict, token: str = None):
    """Run PRELUDE + `code` (which prints one JSON line last) in a fresh Python; its output, parsed."""
    p = subprocess.run([sys.executable, "-c", PRELUDE + code], capture_output=True, text=True, timeout=300,
                       env={**env, **({"HF_TOKEN": token} if token else {})})
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _uploads(h) -> list:
    return [p for m, p in h.requests if m == "POST"]


def test_private_repo_two_uploads_download_the_same_bytes(hub, tmp_path):
    """create_repo(private) twice (the second answered 409, which exist_ok=True carries on past),
    two upload_folder commits (a file over 10 MB among them), then hf_hub_download and
    snapshot_download give back the bytes; every file went as "regular" content in the commit."""
    h, env = hub
    folder = tmp_path / "run"
    folder.mkdir()
    big = os.urandom(10 * 1024 * 1024 + 12345)
    (folder / "model.weights.h5").write_bytes(big)
    (folder / "notes.txt").write_text("accuracy 0.91\n")
    first = _py(f"""
out = {{"whoami": api.whoami()["name"]}}
out["url"] = api.create_repo("alice/run", private=True, exist_ok=True)
out["again"] = api.create_repo("alice/run", private=True, exist_ok=True)
out["commit"] = api.upload_folder(repo_id="alice/run", folder_path={str(folder)!r}, commit_message="First run").oid
print(json.dumps(out))
""", env, ALICE)
    assert first["whoami"] == "alice" and first["url"] == first["again"] == f"{h.endpoint}/alice/run"
    assert h.private("alice/run")
    (folder / "metrics.json").write_text('{"f1": 0.9}')
    second = _py(f"""
out = {{"commit": api.upload_folder(repo_id="alice/run", folder_path={str(folder)!r},
                                   commit_message="Add metrics").oid}}
info = api.repo_info("alice/run")
out.update(sha=info.sha, private=info.private)
out["files"] = {{p: sha(hf_hub_download("alice/run", p)) for p in ("model.weights.h5", "notes.txt", "metrics.json")}}
snap = snapshot_download("alice/run")
out["snapshot"] = {{p: sha(os.path.join(snap, p)) for p in sorted(os.listdir(snap))}}
old = snapshot_download("alice/run", revision={first["commit"]!r})
out["old"] = sorted(os.listdir(old))
print(json.dumps(out))
""", env, ALICE)
    commits = h.commits("alice/run")
    assert [(m, paths) for _, m, paths in commits] == [
        ("initial commit", [".gitattributes"]),
        ("First run", [".gitattributes", "model.weights.h5", "notes.txt"]),
        ("Add metrics", [".gitattributes", "metrics.json", "model.weights.h5", "notes.txt"])]
    assert [c for c, _, _ in commits[1:]] == [first["commit"], second["commit"]] == [first["commit"], second["sha"]]
    assert second["private"] is True
    local = {p: (folder / p).read_bytes() for p in ("model.weights.h5", "notes.txt", "metrics.json")}
    assert second["files"] == {p: _sha(d) for p, d in local.items()}
    assert {p: d for p, d in h.files("alice/run").items() if p != ".gitattributes"} == local
    assert second["snapshot"] == {".gitattributes": _sha(h.files("alice/run")[".gitattributes"]),
                                  **{p: _sha(d) for p, d in local.items()}}
    assert second["old"] == [".gitattributes", "model.weights.h5", "notes.txt"]  # the first commit, by its id
    assert "model.weights.h5" in h.fetched("alice/run") and h.cdn_requests  # weights through the CDN redirect
    # the protocol: no LFS or Xet upload anywhere, only preupload + commit
    assert _uploads(h) == ["/api/repos/create"] * 2 + ["/api/models/alice/run/preupload/main",
                                                       "/api/models/alice/run/commit/main"] * 2
    assert not any("xet" in p or "lfs" in p for _, p in h.requests + h.cdn_requests)
    assert set(h.authorizations) == {f"Bearer {ALICE}"}
    assert not any(ALICE.encode() in data for data in h.files("alice/run").values())


def test_no_token_is_401_and_an_unknown_token_too(hub, tmp_path):
    h, env = hub
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("x")
    _py('api.create_repo("alice/run", private=True); print(json.dumps(None))', env, ALICE)
    code = f"""
print(json.dumps({{"create": error(lambda: api.create_repo("alice/run", private=True, exist_ok=True)),
                  "upload": error(lambda: api.upload_folder(repo_id="alice/run",
                                                            folder_path={str(tmp_path / "run")!r})),
                  "whoami": error(api.whoami)}}))
"""
    anonymous = _py(code, env)
    # create: a plain HfHubHTTPError with the Hub's 401; the repository (private) stays hidden after it
    assert anonymous["create"]["type"] == "HfHubHTTPError" and anonymous["create"]["status"] == 401
    assert anonymous["create"]["server_message"] == "Invalid username or password."
    assert anonymous["upload"]["type"] == "RepositoryNotFoundError" and anonymous["upload"]["status"] == 401
    assert anonymous["whoami"]["type"] == "LocalTokenNotFoundError"  # refused before any request
    unknown = _py(code, env, "hf_not_a_token")
    assert unknown["create"]["type"] == "HfHubHTTPError" and unknown["create"]["status"] == 401
    assert unknown["create"]["server_message"] == "Invalid credentials in Authorization header"
    assert unknown["whoami"]["type"] == "HfHubHTTPError" and unknown["whoami"]["status"] == 401
    assert [m for _, m, _ in h.commits("alice/run")] == ["initial commit"]


def test_another_owners_namespace_is_403(hub, tmp_path):
    h, env = hub
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("x")
    h.add("bob/public", "notes.txt", str(tmp_path / "run" / "notes.txt"))  # bob's, readable by all
    out = _py(f"""
print(json.dumps({{"create": error(lambda: api.create_repo("bob/run", private=True, exist_ok=True)),
                  "upload": error(lambda: api.upload_folder(repo_id="bob/public",
                                                            folder_path={str(tmp_path / "run")!r}))}}))
""", env, ALICE)
    assert out["create"]["type"] == "HfHubHTTPError" and out["create"]["status"] == 403
    assert out["create"]["server_message"] == 'You don\'t have the rights to create a model under the namespace "bob"'
    assert out["create"]["message"].startswith('403 Forbidden: You don\'t have the rights to create a model under '
                                               'the namespace "bob".')
    assert out["upload"]["type"] == "HfHubHTTPError" and out["upload"]["status"] == 403
    assert "create_pr=1" in out["upload"]["server_message"]
    assert ("model", "bob/run") not in h.repos and len(h.commits("bob/public")) == 1


def test_refused_names(hub):
    """huggingface_hub 2.4.0 refuses every name the Hub's rule refuses before sending anything
    (HFValidationError, a ValueError); below HfApi, the stand-in answers the Hub's 400, which the
    client's own error handling turns into BadRequestError."""
    h, env = hub
    names = ["a--b", "a..b", "-ab", "ab.", "ab.git", "a" * 97]
    out = _py(f"""
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status
def raw(name):
    hf_raise_for_status(get_session().post(api.endpoint + "/api/repos/create", headers=build_hf_headers(),
                                           json={{"name": name, "organization": "alice", "type": "model"}}))
print(json.dumps({{"client": [error(lambda: api.create_repo("alice/" + n)) for n in {names!r}],
                  "raw": [error(lambda: raw(n)) for n in {names!r}]}}))
""", env, ALICE)
    assert [e["type"] for e in out["client"]] == ["HFValidationError"] * len(names)
    assert [(e["type"], e["status"], e["server_message"]) for e in out["raw"]] == [
        ("BadRequestError", 400, NAME_RULE)] * len(names)
    assert out["raw"][0]["message"] == "Bad request:\n" + NAME_RULE
    assert _uploads(h) == ["/api/repos/create"] * len(names) and not h.repos  # only the raw ones reached it
