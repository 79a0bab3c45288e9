#!/usr/bin/env python3
"""Drives modsec_harness over the labeled corpora and benign chat bodies and prints the
side-by-side tables (see run.sh for the whole procedure).

Rows are counted as `edgeward eval` counts them (rulesets/EVAL.md): an attack row is
detected and a benign row a false positive when the engine refuses it; rows that do not
parse are skipped and reported; crs_v4_regression attack rows are counted only when the
CRS rule they test is known to sit at paranoia level 1 (the level both engines run at), so
the others are not sent at all.
"""

import argparse
import base64
import json
import math
import os
import random
import struct
import subprocess
import sys

PARANOIA = 1
SIZES_KIB = [1, 2, 4, 8, 16, 32, 64]
WARM = 20

# The shape of benches/src chat_body_with(.., Text::Plain): an OpenAI chat request whose
# user message is plain prose, nothing a WAF should mind.
HEAD = ('{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful '
        'assistant for a logistics company."},{"role":"user","content":"')
TAIL = '"}],"max_tokens":512,"temperature":0.2,"stream":false}'
PLAIN = ("The committee reviewed the quarterly figures and noted that shipping costs rose "
         "along the northern routes, while demand in the coastal cities stayed flat. ")
CHAT_HEADERS = [
    ("Host", "api.example.internal"),
    ("Content-Type", "application/json"),
    ("Authorization", "Bearer sk-test-0000000000000000"),
    ("User-Agent", "OpenAI/Python 1.54.0"),
    ("Accept", "application/json"),
]
# Everyday words for distinct bodies, neutral like PLAIN: the table's `refused` columns
# show that neither engine minds them.
WORDS = ("the a of and to in for on with from by about after before over under near "
         "committee report figures costs shipping routes demand cities coastal northern "
         "quarterly budget plan team meeting roadmap hiring release product customer order "
         "warehouse truck delivery week month year price market sales growth rose fell "
         "stayed flat noted reviewed summarised discussed agreed expected higher lower steady "
         "morning afternoon region office staff schedule weather harbour rail freight").split()


def chat_body(size, seed=None):
    want = max(0, size - len(HEAD) - len(TAIL))
    if seed is None:
        text = PLAIN * (want // len(PLAIN) + 1)
    else:
        rng = random.Random(seed)
        parts = []
        n = 0
        while n < want:
            sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 16)))
            parts.append(sentence.capitalize() + ". ")
            n += len(parts[-1])
        text = "".join(parts)
    return (HEAD + text[:want] + TAIL).encode()


def frame(method, uri, headers, body):
    def field(b):
        return struct.pack("<I", len(b)) + b

    out = [field(method.encode()), field(uri.encode()), struct.pack("<I", len(headers))]
    for n, v in headers:
        out.append(field(n.encode()))
        out.append(field(v.encode()))
    out.append(field(body))
    return b"".join(out)


def row_request(row):
    """(method, uri, headers, body bytes) of a corpus row, as cli/src/corpus.rs reads it."""
    if row.get("body_b64") is not None:
        body = base64.b64decode(row["body_b64"], validate=True)
    else:
        body = (row.get("body") or "").encode()
    headers = [(str(n), str(v)) for n, v in row.get("headers") or []]
    return row.get("method") or "GET", row["uri"], headers, body


def crs_levels(corpora):
    levels = {}
    path = os.path.join(corpora, "meta", "crs_v4_regression.paranoia.jsonl")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    v = json.loads(line)
                    # Rows whose rule level is unknown (null) are never counted, as in eval.
                    if isinstance(v.get("rule_paranoia_level"), int):
                        levels[v["id"]] = v["rule_paranoia_level"]
    return levels


def run_harness(args, frames, repeat, warmup):
    """Per engine: list of (index, flagged, status, ns)."""
    out = subprocess.run(
        [args.harness, args.conf, frames, str(repeat), str(warmup)],
        check=True, stdout=subprocess.PIPE, text=True,
    ).stdout
    res = {"ms": [], "ew": []}
    for line in out.splitlines():
        e, i, flagged, status, ns = line.split()
        res[e].append((int(i), flagged == "1", int(status), int(ns)))
    return res


def quantile(sorted_ns, q):
    # Nearest rank: the smallest sample with at least a fraction q of them at or below it.
    if not sorted_ns:
        return float("nan")
    return sorted_ns[max(0, math.ceil(q * len(sorted_ns)) - 1)]


def rate(n, d):
    return "-" if d == 0 else f"{100.0 * n / d:.1f}%"


def us(ns):
    return f"{ns / 1000:.1f}" if ns < 10_000_000 else f"{ns / 1000:.0f}"


def corpus_files(corpora, smoke):
    names = sorted(n for n in os.listdir(corpora) if n.endswith(".jsonl"))
    if smoke:
        names = [n for n in names if n == "crs_v4_regression.jsonl"] or names[:1]
    return names


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("corpora")
    ap.add_argument("--harness", required=True)
    ap.add_argument("--conf", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--repeat", type=int, default=0,
                    help="measurements per body size (default: by size, see below)")
    args = ap.parse_args()

    levels = crs_levels(args.corpora)
    notes = []
    head = (f"{'file':<30} {'rows':>6} | {'ModSec TPR':>10} {'FPR':>6} {'med us':>8} {'p99 us':>8}"
            f" | {'edgeward TPR':>12} {'FPR':>6} {'med us':>7} {'p99 us':>7} | {'ratio':>6}")
    print(f"Corpora: ModSecurity {ms_version()} + CRS {crs_version()} PL{PARANOIA} vs "
          f"edgeward default policy PL{PARANOIA}; us per request, in-process")
    print(head)
    print("-" * len(head))
    totals = {e: [0, 0, 0, 0] for e in ("ms", "ew")}
    all_ns = {"ms": [], "ew": []}
    for name in corpus_files(args.corpora, args.smoke):
        stem = name[:-len(".jsonl")]
        labels, frames, skipped_pl, unreadable, nul_uri = [], [], 0, 0, 0
        with open(os.path.join(args.corpora, name), encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    req = row_request(row)
                except (ValueError, KeyError, TypeError):
                    unreadable += 1
                    continue
                attack = row.get("label") == "attack"
                if stem == "crs_v4_regression" and attack and \
                        levels.get(row.get("id"), PARANOIA + 1) > PARANOIA:
                    skipped_pl += 1
                    continue
                nul_uri += "\0" in req[1]
                labels.append(attack)
                frames.append(frame(*req))
                if args.smoke and len(frames) == 20:
                    break
        path = os.path.join(args.work, stem + ".frames")
        with open(path, "wb") as f:
            f.write(b"".join(frames))
        res = run_harness(args, path, 1, 3)
        cols = []
        for e in ("ms", "ew"):
            c = [0, 0, 0, 0]  # attacks, detected, benign, false positives
            statuses = {}
            for i, flagged, status, _ in res[e]:
                a = labels[i]
                c[0 if a else 2] += 1
                c[1 if a else 3] += flagged
                if flagged:
                    statuses[status] = statuses.get(status, 0) + 1
            ns = sorted(r[3] for r in res[e])
            all_ns[e] += ns
            for k in range(4):
                totals[e][k] += c[k]
            cols.append((c, quantile(ns, 0.5), quantile(ns, 0.99)))
            odd = {s: n for s, n in statuses.items() if s != 403}
            if odd:
                notes.append(f"{stem}: {'ModSecurity' if e == 'ms' else 'edgeward'} refused "
                             f"with statuses other than 403: "
                             + ", ".join(f"{s}x{n}" for s, n in sorted(odd.items())))
        (mc, mmed, mp99), (ec, emed, ep99) = cols
        print(f"{stem:<30} {len(labels):>6} | {rate(mc[1], mc[0]):>10} {rate(mc[3], mc[2]):>6} "
              f"{us(mmed):>8} {us(mp99):>8} | {rate(ec[1], ec[0]):>12} {rate(ec[3], ec[2]):>6} "
              f"{us(emed):>7} {us(ep99):>7} | {mmed / emed:>5.0f}x")
        if skipped_pl:
            notes.append(f"{stem}: {skipped_pl} attack rows not sent, their CRS rule being above "
                         f"PL{PARANOIA} or of unknown level (counting rule of rulesets/EVAL.md)")
        if unreadable:
            notes.append(f"{stem}: {unreadable} unreadable rows skipped")
        if nul_uri:
            notes.append(f"{stem}: {nul_uri} URIs contain a NUL byte, which ModSecurity's C "
                         "API (C strings) sees cut short")
    print("-" * len(head))
    m, e = totals["ms"], totals["ew"]
    for k in all_ns:
        all_ns[k].sort()
    mmed, emed = quantile(all_ns["ms"], 0.5), quantile(all_ns["ew"], 0.5)
    print(f"{'all rows':<30} {m[0] + m[2]:>6} | {rate(m[1], m[0]):>10} {rate(m[3], m[2]):>6} "
          f"{us(mmed):>8} {us(quantile(all_ns['ms'], 0.99)):>8} | {rate(e[1], e[0]):>12} "
          f"{rate(e[3], e[2]):>6} {us(emed):>7} {us(quantile(all_ns['ew'], 0.99)):>7} | "
          f"{mmed / emed:>5.0f}x")
    print(f"  detected: ModSecurity {m[1]}/{m[0]}, edgeward {e[1]}/{e[0]}; "
          f"false positives: ModSecurity {m[3]}/{m[2]}, edgeward {e[3]}/{e[2]}")

    sizes = SIZES_KIB[:1] if args.smoke else SIZES_KIB
    for distinct in (False, True):
        print()
        body_table(args, sizes, distinct)
    if notes:
        print("\nNotes:")
        for n in notes:
            print("  " + n)


def body_table(args, sizes, distinct):
    """Benign chat bodies per size. The same body repeated is the issue's measure; distinct
    bodies (every run a different text of the same size) add what first sight of a text
    costs, since edgeward keeps per-scratch caches (lazy DFA states, clean short fields)
    that a repeated body keeps warm."""
    print("Benign chat bodies, POST /v1/chat/completions (application/json), "
          + ("every run a different text" if distinct else "same body repeated")
          + "; us per request")
    bhead = (f"{'body':>6} {'runs':>5} | {'ModSec med':>10} {'p99':>9} {'MB/s':>6} {'refused':>7}"
             f" | {'edgeward med':>12} {'p99':>7} {'MB/s':>6} {'refused':>7} | {'ratio':>6}")
    print(bhead)
    print("-" * len(bhead))
    for kib in sizes:
        # ModSecurity takes milliseconds per large body: fewer runs there keep the whole
        # comparison to minutes while p99 still rests on at least 100 samples.
        repeat = args.repeat or (20 if args.smoke else (1000 if kib <= 4 else 300))
        path = os.path.join(args.work, f"chat-{kib}k{'-distinct' if distinct else ''}.frames")
        # Distinct bodies are warmed by WARM extra bodies sent first and left out, so that
        # every measured body is seen once.
        bodies = ([chat_body(kib * 1024, seed) for seed in range(WARM + repeat)] if distinct
                  else [chat_body(kib * 1024)])
        with open(path, "wb") as f:
            for body in bodies:
                headers = CHAT_HEADERS + [("Content-Length", str(len(body)))]
                f.write(frame("POST", "/v1/chat/completions", headers, body))
        res = (run_harness(args, path, 1, 0) if distinct else run_harness(args, path, repeat, WARM))
        row = []
        for en in ("ms", "ew"):
            kept = [r for r in res[en] if not distinct or r[0] >= WARM]
            ns = sorted(r[3] for r in kept)
            refused = sum(r[1] for r in kept)
            med = quantile(ns, 0.5)
            row.append((med, quantile(ns, 0.99), kib * 1024 / (med / 1e9) / 1e6, refused))
        (mm, mp, mb, mr), (em, ep, eb, er) = row
        print(f"{kib:>4}Ki {repeat:>5} | {us(mm):>10} {us(mp):>9} {mb:>6.1f} {mr:>7} | "
              f"{us(em):>12} {us(ep):>7} {eb:>6.0f} {er:>7} | {mm / em:>5.0f}x")


def ms_version():
    return dpkg_version("libmodsecurity3")


def crs_version():
    return dpkg_version("modsecurity-crs")


def dpkg_version(pkg):
    try:
        return subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], check=True,
                              stdout=subprocess.PIPE, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "?"


if __name__ == "__main__":
    sys.exit(main())
