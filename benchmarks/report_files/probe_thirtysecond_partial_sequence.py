import collections
import glob
import json
import re

A = []
for f in glob.glob('/work/main/benchmarks/report_files/head_sequence_thirtyfirst_middle_slice_litemedsam_starts_*.json'):
    A += json.load(open(f))
idx = {(r['case'], r['structure'], r['position']): r for r in A}
rows = []
for f in glob.glob('/tmp/s32/seq_asked_*.txt'):
    for text in open(f):
        m = re.match(r'(phantom\d+)\s+(\S+)\s+stored\s+volume (\d) .*first (\S+) clicks to 0.85\s+(\d+)', text)
        if m:
            rows.append(m.groups())
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
