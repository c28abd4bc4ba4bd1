"""One writer per run or search folder: run.lock, an flock naming its holder, with a heartbeat
for shared file systems where flock does not reach across hosts (docs/run-folder.md#one-writer)."""
import contextlib
import datetime
import errno
import json
import os
import sys
import threading
import time

from common.errors import RunDirError
from common.runs import LOCK, UMASK

LOCK_HEARTBEAT_SECONDS = 30
LOCK_STALE_SECONDS = 300  # another machine's lock with no heartbeat for this long is taken over


def this_machine() -> str:
    """Host name and boot id: the same host after a reboot is told apart (its old pids mean
    nothing). Containers on one kernel share the boot id, and may share the host name; there
    the flock, which the kernel holds for every container alike, keeps a live holder's lock."""
    import socket
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f"{socket.gethostname()}/{f.read().strip()[:8]}"
    except OSError:
        return socket.gethostname()


def pid_running(pid: int) -> bool:
    """A process with this id runs on this machine (as any user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it runs, as another user
        pass
    return True


class Lock:
    """The one writer of a run or search folder: `run.lock` in it, held with flock (the kernel
    releases it when the holder dies, however it dies) and naming its holder (machine, pid,
    start, heartbeat); removed when the holder ends. A killed holder's file stays and is taken
    over with a note. flock does not reach across machines on every shared file system (a
    bucket mount), so a lock that names another machine counts until its heartbeat, rewritten
    every LOCK_HEARTBEAT_SECONDS, is LOCK_STALE_SECONDS old; one that names this machine
    counts while its pid runs. (Python has flock, but no lock file with a holder and a stale
    rule; nor has the `filelock` package.)"""

    def __init__(self, run_dir: str, flag: str = "--run-dir"):
        import atexit
        self.run_dir, self.path, self.flag = run_dir, os.path.join(run_dir, LOCK), flag
        self.created = not os.path.exists(run_dir)
        self._guard = threading.Lock()  # the heartbeat thread writes the same file descriptor
        try:
            os.makedirs(run_dir, exist_ok=True)
            self.fd = self._acquire()
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            # a folder the user may read but not write (another user's runs/, a read-only mount)
            raise RunDirError(f"{flag} {run_dir}: cannot write {LOCK} there ({e.strerror}): the one writer's lock; "
                              f"copy the folder to one you can write (cp -r) and pass that") from None
        holder, machine = self._holder(), this_machine()
        self.note = None
        if holder and not self._gone(holder, machine):
            self._refuse(holder, across_machines=holder.get("machine") != machine)
        if holder and holder.get("pid") != os.getpid():  # (the same pid: this program after os.execv)
            self.note = f"took over the lock of {_describe(holder)}, which is no longer running ({self.path})"
        self.me = {"machine": machine, "pid": os.getpid(), "since": time.time(), "argv": sys.argv}
        self._write()
        self._stop = threading.Event()
        self._beat_thread = threading.Thread(target=self._beat, daemon=True, name="run-lock-heartbeat")
        self._beat_thread.start()
        atexit.register(self.release, remove_created=True)

    def _acquire(self) -> int:
        import fcntl
        while True:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~UMASK)
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._refuse(self._holder())
            except OSError:  # no flock on this file system: the file's content alone decides
                return self.fd
            try:  # the holder before us may have removed the file we opened: then lock the new one
                if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                    return self.fd
            except FileNotFoundError:
                pass
            self._close()

    @staticmethod
    def _gone(holder: dict, machine: str) -> bool:
        """The holder named in the file no longer writes (we hold the flock, where there is one)."""
        if holder.get("machine") != machine:
            beat = holder.get("heartbeat")
            return not isinstance(beat, (int, float)) or time.time() - beat >= LOCK_STALE_SECONDS
        pid = holder.get("pid")
        return pid == os.getpid() or not isinstance(pid, int) or not pid_running(pid)

    def _refuse(self, holder, across_machines: bool = False):
        self._close()
        stale = (f"; taken over once its heartbeat is {LOCK_STALE_SECONDS // 60} minutes old" if across_machines
                 else "")
        raise RunDirError(f"{self.flag} {self.run_dir}: in use by {_describe(holder)} ({self.path}{stale}); wait "
                          f"for it to finish, or pass another {self.flag}") from None

    def _holder(self):
        os.lseek(self.fd, 0, os.SEEK_SET)
        text = os.read(self.fd, 1 << 16).decode("utf-8", "replace").strip()
        try:
            holder = json.loads(text) if text else None
        except ValueError:  # a file edited by hand, or cut short: nobody we can wait for
            return {"machine": "?", "pid": "?", "heartbeat": 0}
        return holder if isinstance(holder, dict) else None

    def _write(self):
        content = json.dumps({**self.me, "heartbeat": time.time()}).encode()
        with self._guard:
            if self.fd is None:
                return
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
        with self._guard:
            if self.fd is not None:
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


@contextlib.contextmanager
def held(run_dir: str, flag: str = "run folder"):
    """A finished run's folder held while the block writes in it (evaluate, calibrate,
    export): released after, unless this process held it before. A folder that does not
    exist is not made (the script refuses it in its own words)."""
    key = os.path.realpath(run_dir)
    if not os.path.isdir(run_dir) or (key in _HELD and _HELD[key].fd is not None):
        yield _HELD.get(key)
        return
    lock = hold(run_dir, flag)
    try:
        yield lock
    finally:
        lock.release()


def _describe(holder) -> str:
    if not holder:
        return "another process"
    since = datetime.datetime.fromtimestamp(holder["since"]).strftime("%Y-%m-%d %H:%M:%S") \
        if isinstance(holder.get("since"), (int, float)) else "?"
    where = str(holder.get("machine", holder.get("host", "?"))).split("/")[0]
    return f"pid {holder.get('pid')} on {where} (since {since})"
