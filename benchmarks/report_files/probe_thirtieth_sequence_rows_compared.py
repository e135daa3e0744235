"""The rows of a (partial) dataset-sequence log against the same rows (start, position, structure) of an earlier run's
JSON: the rows whose first Dice or clicks differ, and the clicks over the rows compared.

    python benchmarks/report_files/probe_thirtieth_sequence_rows_compared.py BEFORE.json AFTER.txt
"""
import json
import re
import sys

before = {(r["start"], r["position"], r["structure"]): r for r in json.load(open(sys.argv[1]))}
rows = [m.groups() for line in open(sys.argv[2])
        if (m := re.match(r"(\S+)\s+(\S+)\s+stored\s+volume (\d+) .* first ([\d.]+) clicks to 0.85\s+(\d+) final", line))]
total_before = total_after = 0
for n, (case, structure, position, first, clicks) in enumerate(rows):
    earlier = before[(n // 36, int(position), structure)]  # 6 volumes x 6 organs per start
    total_before += earlier["clicks_to_target"]
    total_after += int(clicks)
    if earlier["clicks_to_target"] != int(clicks) or abs(earlier["dices"][0] - float(first)) > 0.001:
        print(f"start {n // 36} volume {position} {case} {structure:13s} first {earlier['dices'][0]:.3f} -> {first} "
              f"clicks {earlier['clicks_to_target']} -> {clicks}")
print("rows", len(rows), "clicks before", total_before, "after", total_after)
