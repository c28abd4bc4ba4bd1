"""Stand-in for a bucket mounted as SkyPilot's MOUNT_CACHED (and Cloud Storage FUSE): the
mount is a local folder, and a file is uploaded to the bucket (another folder) only once
no process holds it open ("files only begin uploading after they are closed by all
processes", SkyPilot's storage docs). Uploads run every 0.2 s until the process is killed:
kill it together with the job, as a preemption kills the VM, and what was not uploaded
is lost.

    python tests/mount_cached_standin.py MOUNT BUCKET"""
import os
import shutil
import sys
import time

mount, bucket = sys.argv[1], sys.argv[2]
uploaded = {}


def open_files() -> set:
    """Every file any process has open (/proc/<pid>/fd), as lsof sees them."""
    paths = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                paths.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                pass
    return paths


while True:
    busy = open_files()
    for folder, _, names in os.walk(mount):
        for name in names:
            path = os.path.join(folder, name)
            try:
                stat = os.stat(path)
            except FileNotFoundError:
                continue
            key = (stat.st_size, stat.st_mtime_ns)
            if path in busy or uploaded.get(path) == key:
                continue
            target = os.path.join(bucket, os.path.relpath(path, mount))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            try:
                shutil.copyfile(path, target + ".part")
            except FileNotFoundError:  # renamed or removed meanwhile
                continue
            os.replace(target + ".part", target)
            uploaded[path] = key
    time.sleep(0.2)
