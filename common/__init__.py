"""Shared library of the fine-tuning scripts. Import `common.env` before anything else."""
import os

# The repository's root, and the shared data folder that sits beside it (override: FPB_SHARED_DIR).
# Here, not in common/env.py: scripts that must not import TensorFlow need them too.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DIR = os.environ.get("FPB_SHARED_DIR", os.path.join(os.path.dirname(REPO_ROOT), "shared"))
