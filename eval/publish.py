#!/usr/bin/env python
"""Publish a finished run's model: to the Hugging Face Hub, or to a local folder, as a
KerasHub task preset with its model card (README.md) and confusion matrix.

    python eval/publish.py runs/<run> --to hf://OWNER/NAME              # a private repository
    python eval/publish.py runs/<run> --to hf://OWNER/NAME --public
    python eval/publish.py runs/<run> --to published/my-model           # a local preset folder

Loading it back: `python eval/predict.py hf://OWNER/NAME --input FILE` (or the folder), or
with KerasHub alone, `keras_hub.models.TextClassifier.from_preset("hf://OWNER/NAME")`
(docs/using-the-model.md). The preset holds the weights in float32, KerasHub's tokenizer
and preprocessor, the label names and the calibrated temperature (common/preset.py).

The Hub token comes from where huggingface_hub looks (HF_TOKEN, or `hf auth login`'s
cache); it is never written to a file or a log. A repository is private unless --public,
and a model trained on the Financial PhraseBank goes public only under the PhraseBank's
license (CC BY-NC-SA 3.0), as its card states. Publishing again to the same repository adds
a commit (the Hub keeps the history); a repository holding something other than a model
published from here is refused. A local --to folder must be new, or a model published
there before (replaced whole: a killed publish leaves the earlier model, or the next publish
puts it back); anything else there is refused.
"""
import argparse
import contextlib
import errno
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import env  # noqa: E402,F401  (first)
from common import config, errors, run_lock, runs  # noqa: E402
from common.errors import FlagError, FinsentError  # noqa: E402
from common.finished_run import HUB_PREFIX  # noqa: E402


class PublishError(FinsentError):
    """The Hub refused or could not be reached: exit 2, one line."""


def parse(argv=None):
    p = config.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a finished run folder (runs/<name>)")
    p.add_argument("--to", required=True, help="hf://OWNER/NAME (a Hugging Face Hub model repository) or a local "
                                               "folder")
    visibility = p.add_mutually_exclusive_group()
    visibility.add_argument("--private", dest="public", action="store_false", default=False,
                            help="a new Hub repository is private (the default)")
    visibility.add_argument("--public", dest="public", action="store_true", help="a new Hub repository is public")
    p.add_argument("--message", default="", help="the Hub commit's message (default: names the run and its test "
                                                 "figures)")
    return p.parse_args(argv)


def check_license(run, card: str, public: bool) -> str:
    """The card's license; a PhraseBank model goes public only under the PhraseBank's."""
    from common import model_card
    license = model_card.card_license(card)
    run_dir = run.run_dir
    if public and not run.own_data and license != model_card.PHRASEBANK_LICENSE:
        raise FlagError(f"--public: {run_dir} was trained on the Financial PhraseBank, whose license "
                        f"({model_card.PHRASEBANK_LICENSE}) its model carries, but {card} states '{license}'; write the "
                        f"card again (python eval/export.py {errors.shell_quote(run_dir)}) or publish it --private")
    return license


def stage(run, folder: str, published_as: str, license: str) -> None:
    """The preset, card (stating `license`, the one check_license read) and images in `folder`."""
    from common import model_card, preset
    preset.write(run, folder)
    model_card.write(run.run_dir, license=license, published_as=published_as, folder=folder)
    reliability = os.path.join(run.run_dir, model_card.RELIABILITY_PNG)
    if os.path.exists(reliability):
        shutil.copyfile(reliability, os.path.join(folder, model_card.RELIABILITY_PNG))


def to_folder(run, target: str, license: str) -> str:
    """A local preset folder: staged in a hidden folder beside it, then renamed into place (an
    earlier one published there is replaced only once the new one is whole). The swap holds
    a lock on the parent folder (flock: another publish to the same place waits for it), and
    first tidies what a killed publish of this target left beside it (staging_leftovers)."""
    target = os.path.realpath(target)  # a link to an earlier publication: the folder it names is replaced
    check_target(target)
    parent = os.path.dirname(target)
    runs.check_writable(parent)
    os.makedirs(parent, exist_ok=True)
    tag = staging_tag(target)
    tmp = tempfile.mkdtemp(prefix=f"{tag}{os.getpid()}.", suffix=".tmp", dir=parent)
    try:
        stage(run, tmp, target, license)
        os.chmod(tmp, 0o777 & ~runs.UMASK)  # mkdtemp made it 0700; a shared folder's readers need the usual mode
        with parent_lock(parent):
            staging_leftovers(target)
            check_target(target)  # again: another process may have written there meanwhile
            old = tempfile.mkdtemp(prefix=f"{tag}{os.getpid()}.", suffix=".old", dir=parent)
            os.rmdir(old)  # a free name, for the earlier model while the new one is renamed in
            try:
                runs.publish_dir(tmp, target, aside=old)  # (a failed rename puts the earlier model back)
            except OSError as e:
                if e.errno in (errno.ENOTEMPTY, errno.EEXIST):  # an unlocked publish got there first
                    raise PublishError(f"--to {target}: another publish wrote it meanwhile (this file system "
                                       f"refuses locks); publish again") from None
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def staging_tag(target: str) -> str:
    """The start of a publish's hidden staging names beside `target`: its name (shortened, with
    a hash of the whole), the machine and the pid namespace, so that a later publish can tell
    the leftovers of a killed one (same tag, a pid that no longer runs) from anything else."""
    import hashlib
    name = os.path.basename(target)
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino  # containers on one kernel share boot id and host name
    except OSError:
        namespace = 0
    digest = hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f".{name[:40]}-{digest}.{run_lock.this_machine().replace('/', '-')}-{namespace}."


def staging_leftovers(target: str) -> None:
    """What a killed publish of `target` left beside it: its staging is removed; an earlier
    model it had moved aside (killed between the two renames of the swap) is put back if
    nothing took its place, else removed. Only names with this machine's tag and the pid of
    a process that no longer runs are touched."""
    import re
    parent, tag = os.path.dirname(target), staging_tag(target)
    for left in sorted(os.listdir(parent)):
        m = re.fullmatch(re.escape(tag) + r"(\d{1,9})\.[A-Za-z0-9_]+\.(tmp|old)", left)
        if not m or run_lock.pid_running(int(m.group(1))):
            continue
        path = os.path.join(parent, left)
        if m.group(2) == "old" and not os.path.lexists(target):
            os.replace(path, target)
            print(f"note: {target} put back: a publish killed while replacing it had moved it to {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def parent_lock(parent: str):
    """An exclusive flock on the parent folder while a publish swaps its target in; a file
    system that refuses flock publishes unlocked (the swap then reports a collision)."""
    import fcntl
    fd = os.open(parent, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another publish to {parent} to finish...", flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)


def check_target(target: str) -> None:
    """--to DIR: new, empty, or a model published here before; never anything else."""
    from common import preset
    if os.path.exists(target) and not (os.path.isdir(target) and (not os.listdir(target) or preset.is_preset(target))):
        raise FlagError(f"--to {target}: exists and is not a model published here; pass a new folder")


def to_hub(run, repo: str, public: bool, message: str, license: str) -> str:
    """Create the repository (private unless `public`) if it is not there, and upload the
    staged folder as one commit. Why not keras_hub.upload_preset: it creates the repository
    public (no private option), and writes its own generic README over ours where the
    repository has none."""
    import httpx2 as httpx  # huggingface_hub 2.4's HTTP client (its dependency)
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError
    from common import hub, preset
    token = get_token()  # HF_TOKEN, or the login cache: kept in memory only
    if not token:
        raise PublishError(f"--to hf://{repo}: no Hugging Face token; set HF_TOKEN or run `hf auth login` (a token "
                           f"with write access), then publish again")
    if not hub.reachable():
        raise PublishError(f"--to hf://{repo}: {hub.unreachable_note() or 'the Hub is unreachable'}; publish again "
                           f"once it is reachable")
    api = HfApi(token=token)
    try:
        created = api.create_repo(repo, private=not public, exist_ok=True)
        repo = created.repo_id
        existing = api.list_repo_files(repo)
        if [f for f in existing if f != ".gitattributes"] and preset.PRESET_INFO not in existing:
            raise PublishError(f"--to hf://{repo}: that repository holds other files ({', '.join(existing[:3])}...), "
                               f"not a model published from here; pass a new name")
        info = api.repo_info(repo)
        if not info.private and not public:  # private by default: never a public upload unasked
            raise PublishError(f"--to hf://{repo}: that repository is public; pass --public to publish to it, or "
                               f"another name for a private one")
        if info.private and public:
            print(f"note: hf://{repo} exists and is private; publishing does not change that (the repository's "
                  f"settings on the Hub do)")
        with tempfile.TemporaryDirectory(prefix="finsent-publish-") as folder:
            stage(run, folder, HUB_PREFIX + repo, license)
            commit = api.upload_folder(repo_id=repo, folder_path=folder, commit_message=message)
    except HFValidationError as e:
        raise PublishError(f"--to hf://{repo}: not a name the Hub takes ({errors.first_line(e)[:160]}); use "
                           f"OWNER/NAME with letters, digits, '-', '_' and '.'") from None
    except HfHubHTTPError as e:
        status = getattr(e.response, "status_code", None)
        why = {401: "the token was refused (set HF_TOKEN to a valid token)",
               403: f"this token may not write there (a write token of {repo.split('/')[0]}, or a member's)",
               400: "the Hub refused the name or the upload"}.get(status, "the Hub answered an error")
        said = errors.first_line(getattr(e, "server_message", None) or e)[:160]  # the Hub's reason, not httpx's
        raise PublishError(f"--to hf://{repo}: {why} (HTTP {status}: {said})") from None
    except (OSError, httpx.HTTPError) as e:  # connection lost mid-upload, timeouts (huggingface_hub 2.4's httpx2)
        raise PublishError(f"--to hf://{repo}: could not reach the Hub ({type(e).__name__}); publish again") from None
    return f"{HUB_PREFIX}{repo} ({commit.commit_url if hasattr(commit, 'commit_url') else commit})"


def main(argv=None):
    args = parse(argv)
    from common import finished_run, model_card, summary
    hub_repo = args.to[len(HUB_PREFIX):] if args.to.startswith(HUB_PREFIX) else None
    if hub_repo is not None and not hub_repo.strip():
        raise FlagError("--to hf://: name the repository, hf://OWNER/NAME")
    with run_lock.held(args.run_dir):  # not while another process writes the run folder
        run = finished_run.FinishedRun.open(args.run_dir)
        runs.require_finished(args.run_dir)
        card = os.path.join(args.run_dir, model_card.CARD)
        if not os.path.exists(card):  # a run finished before cards were written
            print(f"model card -> {model_card.write(args.run_dir)}")
        license = check_license(run, card, args.public)
        test = summary.read_metrics(args.run_dir)["test"]
        message = args.message or (f"{os.path.basename(os.path.normpath(args.run_dir))}: test accuracy "
                                   f"{test['accuracy']:.4f}, macro-F1 {test['macro_f1']:.4f}")
        where = (to_hub(run, hub_repo, args.public, message, license) if hub_repo is not None
                 else to_folder(run, args.to, license))
    print(f"published {args.run_dir} -> {where} (license {license}"
          f"{', private' if hub_repo is not None and not args.public else ''})")
    print(f"next: python eval/predict.py {errors.shell_quote(args.to)} --input FILE")  # quoted: a name may hold spaces, $()
    return where


if __name__ == "__main__":
    errors.run(main)
