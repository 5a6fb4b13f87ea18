#!/usr/bin/env python3
"""Per-kernel GPU time from an ncu CSV log (--metrics gpu__time_duration.sum --csv --log-file).

Usage: kernel_times.py NCU_CSV STEPS
Prints, per kernel (name without template arguments), the calls and microseconds per step and
the share of the total, then the total kernel time per step (compare it with the step's wall
time: the difference is launch gaps and idle time between kernels).
"""
import collections
import csv
import re
import sys


def short(name):
    name = re.sub(r"\(.*$", "", name)  # drop the parameter list
    depth, out = 0, []
    for ch in name:  # drop template arguments
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    name = "".join(out).strip()
    return name.split("::")[-1] or name


def main():
    path, steps = sys.argv[1], int(sys.argv[2])
    with open(path, newline="") as f:
        lines = [l for l in f if l.startswith('"')]
    rows = csv.DictReader(lines)
    time_ns = collections.defaultdict(float)
    calls = collections.Counter()
    for r in rows:
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        value = float(r["Metric Value"].replace(",", ""))
        unit = r.get("Metric Unit", "ns")
        scale = {"ns": 1, "nsecond": 1, "us": 1e3, "usecond": 1e3, "ms": 1e6, "msecond": 1e6}.get(unit, 1)
        k = short(r["Kernel Name"])
        time_ns[k] += value * scale
        calls[k] += 1
    total = sum(time_ns.values())
    if not total:
        print("kernel_times: no gpu__time_duration rows in", path)
        return 1
    print(f"{'kernel':48s} {'calls/step':>10s} {'us/step':>10s} {'share':>7s}")
    for k, t in sorted(time_ns.items(), key=lambda kv: -kv[1]):
        print(f"{k[:48]:48s} {calls[k] / steps:10.1f} {t / steps / 1e3:10.1f} {100 * t / total:6.1f}%")
    print(f"{'total':48s} {sum(calls.values()) / steps:10.1f} {total / steps / 1e3:10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
