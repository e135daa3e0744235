"""Scratch: sequence runs' rows (their --json files) compared row by row with the thirty-first session's logged
sequence (the baseline on this machine): clicks to 0.85 and first Dice per structure, per position and in all, then
how often each structure's first segmentation used each fusion rule from its 3rd volume on.

    python probe_thirtythird_sequence_rows.py ROWS.json ...
"""
import collections
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
baseline = [r for f in sorted(HERE.glob('head_sequence_thirtyfirst_middle_slice_litemedsam_starts_*.json'))
            for r in json.loads(f.read_text())]
index = {(r['case'], r['structure'], r['position']): r for r in baseline}
rows = [r for f in sys.argv[1:] for r in json.loads(Path(f).read_text())]
per = collections.defaultdict(lambda: [0, 0, 0.0, 0.0, 0])
for r in rows:
    before = index[(r['case'], r['structure'], r['position'])]
    for key in (r['structure'], 'all', f"volume {r['position']}"):
        x = per[key]
        x[0] += before['clicks_to_target']
        x[1] += r['clicks_to_target']
        x[2] += before['dices'][0]
        x[3] += r['dices'][0]
        x[4] += 1
for key, (a, b, da, db, n) in sorted(per.items()):
    print(f'{key:14} n={n:3} clicks {a:4} -> {b:4}  first Dice {da / n:.3f} -> {db / n:.3f}')
rules = collections.defaultdict(collections.Counter)
for r in rows:
    if r['position'] >= 3:
        rules[r['structure']][r.get('fusion_rule')] += 1
for name, counts in sorted(rules.items()):
    print(f'{name:14} rules used from the 3rd volume: ' + ', '.join(f'{k}: {v}' for k, v in sorted(counts.items())))
