"""Scratch: sequence runs' rows (their --json files) compared row by row with the thirty-first session's logged
sequence (the baseline on this machine): clicks to 0.85 and first Dice per structure, per position and in all, then
how often each structure's first segmentation used each fusion rule from its 3rd volume on.

    python probe_thirtythird_sequence_rows.py ROWS.json ...
"""
import collections
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from probe_thirtysecond_partial_sequence import print_against_baseline  # noqa: E402

rows = [r for f in sys.argv[1:] for r in json.loads(Path(f).read_text())]
print_against_baseline((r['case'], r['structure'], r['position'], r['dices'][0], r['clicks_to_target']) for r in rows)
rules = collections.defaultdict(collections.Counter)
for r in rows:
    if r['position'] >= 3:
        rules[r['structure']][r.get('fusion_rule')] += 1
for name, counts in sorted(rules.items()):
    print(f'{name:14} rules used from the 3rd volume: ' + ', '.join(f'{k}: {v}' for k, v in sorted(counts.items())))
