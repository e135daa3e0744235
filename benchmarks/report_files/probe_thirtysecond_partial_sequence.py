"""Scratch: the rows a sequence run printed (the stopped shape-beyond-box runs' logs here), compared row by row with the
thirty-first session's logged sequence: clicks to 0.85 and first Dice, per structure, per position and in all.

    python probe_thirtysecond_partial_sequence.py
"""
import collections
import json
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent


def print_against_baseline(rows) -> None:
    """Print, per structure, per position and in all, the baseline's clicks to 0.85 and first Dice against those of
    ``rows``: (case, structure, position, first Dice, clicks) each, as printed or as numbers."""
    baseline = []
    for f in HERE.glob('head_sequence_thirtyfirst_middle_slice_litemedsam_starts_*.json'):
        baseline += json.load(open(f))
    idx = {(r['case'], r['structure'], r['position']): r for r in baseline}
    per = collections.defaultdict(lambda: [0, 0, 0.0, 0.0, 0])
    for c, s, p, d, k in rows:
        r = idx[(c, s, int(p))]
        for key in (s, 'all', f'pos{p}'):
            x = per[key]
            x[0] += r['clicks_to_target']
            x[1] += int(k)
            x[2] += r['dices'][0]
            x[3] += float(d)
            x[4] += 1
    for key, (a, b, fa, fb, n) in sorted(per.items()):
        print(f'{key:14} n {n:3} clicks {a:4} -> {b:4}  first {fa/n:.3f} -> {fb/n:.3f}')


if __name__ == '__main__':
    rows = []
    for f in HERE.glob('head_sequence_thirtysecond_shape_beyond_box_litemedsam_starts_*_partial.txt'):
        for text in open(f):
            m = re.match(r'(phantom\d+)\s+(\S+)\s+stored\s+volume (\d) .*first (\S+) clicks to 0.85\s+(\d+)', text)
            if m:
                rows.append(m.groups())
    print_against_baseline(rows)
