#!/usr/bin/env python3
"""Print the vault benchmark table (markdown) from criterion's output.

Usage: python3 vhsm/benches/report.py [target/criterion]
For each benchmark group: the median time through the dispatcher, on the raw crate,
and the dispatcher overhead (dispatch / raw - 1)."""
import json
import os
import sys

root = sys.argv[1] if len(sys.argv) > 1 else "target/criterion"


def median_ns(group, func):
    path = os.path.join(root, group, func, "new", "estimates.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)["median"]["point_estimate"]


def fmt(ns):
    if ns is None:
        return "-"
    if ns >= 1e6:
        return f"{ns / 1e6:.3f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.0f} ns"


print("| Operation | Dispatcher | Raw crate | Overhead |")
print("|---|---|---|---|")
for group in sorted(os.listdir(root)):
    if group == "report" or not os.path.isdir(os.path.join(root, group)):
        continue
    d, r = median_ns(group, "dispatch"), median_ns(group, "raw")
    if d is None:
        continue
    overhead = f"{(d / r - 1) * 100:+.1f}%" if r else "-"
    print(f"| {group} | {fmt(d)} | {fmt(r)} | {overhead} |")
