#!/usr/bin/env python
"""Mean +- std (and n) over seeds, per configuration, of finished runs.

    python eval/summarize.py runs/                 # every finished run below runs/
    python eval/summarize.py runs/study-*/all --part validation
    python eval/summarize.py runs/seeds/default --errors   # test sentences most seeds get wrong

Runs are grouped by every flag that differs between them except the seed (and paths);
single runs on ~226 test sentences differ by about +-1.5 points from seed alone, so
compare means, not single runs.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import env  # noqa: E402,F401  (first)
from common import config, errors, summary  # noqa: E402


def main(argv=None):
    p = config.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", help="run folders, or folders holding runs")
    p.add_argument("--part", choices=["test", "validation"], default="test")
    p.add_argument("--errors", action="store_true", help="also list, per configuration, the test sentences at least "
                   "half of its seeds got wrong (needs eval/evaluate.py RUN on each run first)")
    args = p.parse_args(argv)
    found, loaded = summary.find_runs(args.paths), []
    for d in found:  # a folder whose files are not as its run wrote them: named, and the rest summarized
        try:
            loaded.append(summary.load(d))
        except errors.RunDirError as e:
            print(f"skipped: {e}", file=sys.stderr, flush=True)
    if not loaded:
        raise errors.RunDirError(f"none of the {len(found)} run folder(s) found under {' '.join(args.paths)} could be "
                                 f"read (each is named above); restore their files, or pass other folders")
    groups = summary.group(loaded)
    text = summary.table(groups, args.part)
    if args.errors:
        for (script, flags), rs in groups.items():
            name = script + "".join(f" {k}={v}" for k, v in flags)
            text += f"\n## {name}\n\n" + summary.shared_errors(rs)
    print(text)
    return text


if __name__ == "__main__":
    errors.run(main)
