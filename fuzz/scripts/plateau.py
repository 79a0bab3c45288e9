#!/usr/bin/env python3
"""Summarises libFuzzer logs written by rounds.sh: per target, executions, final edges
(`cov`) and features (`ft`), and when the last new edge was found.

    python3 fuzz/scripts/plateau.py [LOG_DIR]      (default /tmp/fz/logs)

A target is called *plateaued* when no new edge appeared during the last half of its total
fuzzing time (all rounds together) and that half is at least five minutes long: a target
keeps finding features (new hit counts of known edges) long after, but no new code.
"""
import glob
import os
import re
import sys
from collections import defaultdict

# Each line is prefixed by rounds.sh with the wall-clock second it was printed.
STAMP = re.compile(r"^(\d+\.\d+) (.*)$", re.S)
LINE = re.compile(r"^#(\d+)\s+(\S+)\s+cov: (\d+) ft: (\d+)")
DONE = re.compile(r"^Done (\d+) runs in (\d+) second")


def rounds(log_dir):
    by_target = defaultdict(list)
    for path in glob.glob(os.path.join(log_dir, "*.log")):
        name = os.path.basename(path)[: -len(".log")]
        target, _, rnd = name.rpartition(".")
        if rnd.isdigit():
            by_target[target].append((int(rnd), path))
    return {t: [p for _, p in sorted(v)] for t, v in sorted(by_target.items())}


def parse(path):
    """(seconds, execs, [(second in round, cov, ft)], crashed) of one round.

    The round's clock starts at libFuzzer's INITED line (the seed corpus loaded)."""
    points, execs, crashed = [], 0, False
    start = end = None
    with open(path, errors="replace") as f:
        for raw in f:
            m = STAMP.match(raw)
            if not m:
                continue
            t, line = float(m.group(1)), m.group(2)
            end = t
            m = LINE.match(line)
            if m:
                if m.group(2) == "INITED" or start is None:
                    start = t
                execs = int(m.group(1))
                points.append((t - start, int(m.group(3)), int(m.group(4))))
            m = DONE.match(line)
            if m:
                execs = int(m.group(1))
            if "==ERROR" in line or "panicked at" in line or "deadly signal" in line:
                crashed = True
    seconds = (end - start) if start is not None else 0
    return seconds, execs, points, crashed


def main():
    log_dir = sys.argv[1] if len(sys.argv) > 1 else "/tmp/fz/logs"
    print(
        "| target | rounds | seconds | executions | edges / features "
        "| new edges in the last half | last new edge at | plateau | crashes |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|---|--:|")
    for target, paths in rounds(log_dir).items():
        total_s, total_x, crashes = 0, 0, 0
        last_cov, last_new_at, final = 0, 0.0, (0, 0)
        # (time, edges) whenever the edge count grew, over all rounds.
        growth = []
        for path in paths:
            seconds, execs, points, crashed = parse(path)
            crashes += crashed
            for t, cov, ft in points:
                at = total_s + t
                if cov > last_cov:
                    last_cov, last_new_at = cov, at
                    growth.append((at, cov))
                final = (cov, ft)
            total_s += seconds
            total_x += execs
        quiet = total_s - last_new_at
        half = [cov for at, cov in growth if at <= total_s / 2]
        late = final[0] - (half[-1] if half else 0)
        plateau = "yes" if total_s and quiet >= max(300, total_s / 2) else "no"
        print(
            f"| `{target}` | {len(paths)} | {total_s:.0f} | {total_x:,} | {final[0]:,} / {final[1]:,} "
            f"| {late:,} | {last_new_at:.0f} s | {plateau} ({quiet:.0f} s quiet) | {crashes} |"
        )


if __name__ == "__main__":
    main()
