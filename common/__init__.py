"""Shared library of the fine-tuning scripts. Import `common.env` before anything else."""
