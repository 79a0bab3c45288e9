#!/usr/bin/env python3
"""Detection and false-positive rates of a whole `edgeward eval` run restricted to the
model's validation split (rows the model never trained on), from the run's `--misses` file.

    ./target/release/edgeward eval --misses /tmp/misses.jsonl ../shared/corpora
    python3 models/prompt/split_report.py /tmp/misses.jsonl [--corpora DIR] [--split valid]
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("misses")
    ap.add_argument("--corpora", default=os.path.join(train.HERE, "..", "..", "..", "shared", "corpora"))
    ap.add_argument("--split", default="valid", choices=["valid", "train"])
    args = ap.parse_args()
    missed = set()
    with open(args.misses, encoding="utf-8") as fh:
        for line in fh:
            m = json.loads(line)
            missed.add((m["file"], m["id"]))
    rows = [r for r in train.load(args.corpora) if r["split"] == args.split]
    by = {}
    for r in rows:
        d = by.setdefault(r["file"], [0, 0, 0, 0])
        wrong = (r["file"], r["id"]) in missed
        if r["label"]:
            d[0] += 1
            d[1] += not wrong
        else:
            d[2] += 1
            d[3] += wrong
    print(f"{args.split} split of the model, whole ruleset")
    print(f"  {'file':34} {'attacks':>7} {'TPR':>7} {'benign':>7} {'FPR':>7}")
    pb = pf = 0
    for f in train.ATTACK_FILES + train.MIXED_FILES + train.BENIGN_FILES:
        d = by.get(f, [0, 0, 0, 0])
        tpr = f"{100 * d[1] / d[0]:.1f}%" if d[0] else "-"
        fpr = f"{100 * d[3] / d[2]:.2f}%" if d[2] else "-"
        print(f"  {f:34} {d[0]:7} {tpr:>7} {d[2]:7} {fpr:>7}")
        if f in train.BENIGN_FILES:
            pb += d[2]
            pf += d[3]
    print(f"  {'benign files pooled':34} {'':7} {'':7} {pb:7} {100 * pf / max(pb, 1):6.2f}%")


if __name__ == "__main__":
    main()
