"""One writer per run or search folder: run.lock, an flock naming its holder, with a heartbeat
for shared file systems where flock does not reach across hosts (docs/run-folder.md#one-writer)."""
import datetime
import json
import os
import sys
import time

from common.errors import RunDirError
from common.runs import LOCK, umask

LOCK_HEARTBEAT_SECONDS = 30
LOCK_STALE_SECONDS = 300  # another host's lock with no heartbeat for this long is taken over


class Lock:
    """The one writer of a run or search folder: `run.lock` in it, held with flock (the kernel
    releases it when the holder dies, however it dies) and naming its holder (host, pid,
    start, heartbeat); removed when the holder ends. A killed holder's file stays and is taken
    over with a note. flock does not reach across hosts on every shared file system (a bucket
    mount), so a lock that names another host counts until its heartbeat, refreshed every
    LOCK_HEARTBEAT_SECONDS, is LOCK_STALE_SECONDS old.
    (Python's standard library has flock but no lock file with a holder and a stale rule;
    the `filelock` package has no holder either.)"""

    def __init__(self, run_dir: str, flag: str = "--run-dir"):
        import atexit
        import socket
        import threading
        self.run_dir, self.path = run_dir, os.path.join(run_dir, LOCK)
        self.created = not os.path.exists(run_dir)
        os.makedirs(run_dir, exist_ok=True)
        self.fd = self._acquire(flag)
        holder, host = self._holder(), socket.gethostname()
        self.note = None
        if holder and holder.get("host") != host and time.time() - holder.get("heartbeat", 0) < LOCK_STALE_SECONDS:
            self._close()
            raise RunDirError(f"{flag} {run_dir}: in use by {_describe(holder)} ({self.path}; taken over once its "
                              f"heartbeat is {LOCK_STALE_SECONDS // 60} minutes old); wait for it to finish, or "
                              f"pass another {flag}")
        if holder:
            self.note = f"took over the lock of {_describe(holder)}, which is no longer running ({self.path})"
        self.me = {"host": host, "pid": os.getpid(), "since": time.time(), "argv": sys.argv}
        self._write()
        self._stop = threading.Event()
        threading.Thread(target=self._beat, daemon=True, name="run-lock-heartbeat").start()
        atexit.register(self.release, remove_created=True)

    def _acquire(self, flag: str) -> int:
        import fcntl
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~umask())
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.fd = fd
                holder = self._holder()
                self._close()
                raise RunDirError(f"{flag} {self.run_dir}: in use by {_describe(holder)} ({self.path}); wait for it "
                                  f"to finish, or pass another {flag}") from None
            except OSError:  # no flock on this file system: the file's content alone decides
                return fd
            try:  # the holder before us may have removed the file we opened: then lock the new one
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)

    def _holder(self):
        os.lseek(self.fd, 0, os.SEEK_SET)
        text = os.read(self.fd, 1 << 16).decode("utf-8", "replace").strip()
        try:
            holder = json.loads(text) if text else None
        except ValueError:
            return {"host": "?", "pid": "?", "heartbeat": 0}
        return holder if isinstance(holder, dict) else None

    def _write(self):
        content = json.dumps({**self.me, "heartbeat": time.time()}).encode()
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, content, 0)
            os.fsync(self.fd)  # a bucket mount uploads it then
        except OSError as e:  # (a full disk): name the file
            raise OSError(e.errno, e.strerror, self.path) from e

    def _beat(self):
        while not self._stop.wait(LOCK_HEARTBEAT_SECONDS):
            try:
                self._write()
            except OSError:  # a full disk, say: the run itself reports that
                pass

    def _close(self):
        os.close(self.fd)
        self.fd = None

    def release(self, remove_created: bool = False) -> None:
        """End the hold: remove the file (while still holding it), then let go. remove_created:
        also the folder, where this process made it and nothing else is in it (a refused run)."""
        if self.fd is None:
            return
        self._stop.set()
        try:
            os.remove(self.path)
        except OSError:
            pass
        self._close()
        if remove_created and self.created:
            try:
                os.rmdir(self.run_dir)  # only if empty
            except OSError:
                pass


_HELD = {}  # real path of a folder -> this process's Lock on it


def hold(run_dir: str, flag: str = "--run-dir") -> Lock:
    """This process's Lock on run_dir: taken now, or the one it holds already (a process that
    runs several scripts' main() in turn, as the tests and studies do, is still one writer)."""
    key = os.path.realpath(run_dir)
    if key not in _HELD or _HELD[key].fd is None:
        _HELD[key] = Lock(run_dir, flag)
    return _HELD[key]


def _describe(holder) -> str:
    if not holder:
        return "another process"
    since = datetime.datetime.fromtimestamp(holder["since"]).strftime("%Y-%m-%d %H:%M:%S") \
        if isinstance(holder.get("since"), (int, float)) else "?"
    return f"pid {holder.get('pid')} on {holder.get('host')} (since {since})"
