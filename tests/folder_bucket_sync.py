"""Stand-in for `gcloud storage rsync --recursive [--exclude REGEX]
[--delete-unmatched-destination-objects] SRC DST` between local folders: copies new and
changed files into DST (creating it), deletes unmatched destination files only when asked,
leaves files whose relative path matches --exclude alone, fails if SRC is missing.

FOLDER_SYNC_DELAY=s sleeps s seconds before each file (a slow network), and the file
FOLDER_SYNC_MARK, if set, exists while a copy into a path containing 'backup' is under way
(so a test can kill a VM in the middle of uploading a checkpoint)."""
import argparse
import filecmp
import os
import re
import shutil
import sys
import time

p = argparse.ArgumentParser()
p.add_argument("--recursive", action="store_true")
p.add_argument("--exclude", default=None)
p.add_argument("--delete-unmatched-destination-objects", action="store_true")
p.add_argument("src")
p.add_argument("dst")
args = p.parse_args()
if not os.path.isdir(args.src):
    sys.exit(f"folder_bucket_sync: {args.src} does not exist")
excluded = re.compile(args.exclude).match if args.exclude else (lambda _: False)
delay = float(os.environ.get("FOLDER_SYNC_DELAY", "0"))
mark = os.environ.get("FOLDER_SYNC_MARK")


def files(root):
    out = set()
    for d, _, names in os.walk(root):
        for n in names:
            rel = os.path.relpath(os.path.join(d, n), root)
            if not excluded(rel):
                out.add(rel)
    return out


src_files = files(args.src)
os.makedirs(args.dst, exist_ok=True)
for rel in sorted(src_files):
    s, d = os.path.join(args.src, rel), os.path.join(args.dst, rel)
    if os.path.exists(d) and filecmp.cmp(s, d, shallow=False):
        continue
    busy = mark and "backup" in os.path.join(args.dst, rel)
    if busy:
        open(mark, "w").close()
    time.sleep(delay)
    os.makedirs(os.path.dirname(d), exist_ok=True)
    try:
        shutil.copy2(s, d)
    except FileNotFoundError:  # the source changed under us (a checkpoint replaced): as gcloud, skip it
        pass
    if busy:
        os.remove(mark)
if args.delete_unmatched_destination_objects:
    for rel in files(args.dst) - src_files:
        os.remove(os.path.join(args.dst, rel))
