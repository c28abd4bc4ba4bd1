"""Stand-in for `gcloud storage rsync --recursive SRC DST` between local folders: copies
new and changed files into DST (creating it), deletes nothing, fails if SRC is missing."""
import shutil
import sys

src, dst = sys.argv[1], sys.argv[2]
try:
    shutil.copytree(src, dst, dirs_exist_ok=True)
except FileNotFoundError:
    sys.exit(f"folder_bucket_sync: {src} does not exist")
