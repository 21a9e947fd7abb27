#!/usr/bin/env python3
"""Prints a markdown table of side-by-side benchmark runs.

Usage: bench-table.py FILE BASE OTHER
FILE holds lines "VARIANT | WORKLOAD | JSON" (the JSON a `rs2p-bench
child` run prints); BASE and OTHER name the two variants. Each numeric
metric gets its median [min-max] per variant and the ratio OTHER/BASE.
Used by bench-ab.sh (before/after) and bench-signing.sh (unsigned/signed).
"""
import collections
import json
import statistics
import sys

path, base, other = sys.argv[1:4]
d = collections.defaultdict(lambda: collections.defaultdict(list))
for line in open(path):
    v, w, j = [x.strip() for x in line.split("|", 2)]
    for k, val in json.loads(j).items():
        d[w][(v, k)].append(val)
print(f"| workload | metric | {base}: median [min-max] | {other}: median [min-max] | {other}/{base} |")
print("|---|---|---|---|---|")
for w in d:
    for k in sorted({k for (_, k) in d[w]}):
        b, a = d[w].get((base, k), []), d[w].get((other, k), [])
        if not b or not a or k == "secs" or not isinstance(b[0], (int, float)):
            continue
        mb, ma = statistics.median(b), statistics.median(a)
        ratio = f"{ma / mb:.3f}" if mb else "-"
        print(f"| `{w}` | {k} | {mb:,.1f} [{min(b):,.0f}-{max(b):,.0f}] | {ma:,.1f} [{min(a):,.0f}-{max(a):,.0f}] | {ratio} |")
