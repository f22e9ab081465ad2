#!/usr/bin/env python3
"""Import graph among the top-level modules of src/: module M (src/M.rs and src/M/**) depends on
N when its code (comments excluded) names `crate::N` (or `crate::{N, ...}`, on the line it opens). Prints the edges,
then every cycle (strongly connected component of more than one module); exits 1 when there is
one. Run from the repository root: `python3 scripts/dev/modgraph.py`."""
import os, re, sys
root = sys.argv[1] if len(sys.argv) > 1 else '.'
src = os.path.join(root, 'src')
mods = sorted({f[:-3] if f.endswith('.rs') else f for f in os.listdir(src)} - {'main', 'lib'})
def files(m):
    out = []
    if os.path.isfile(os.path.join(src, m + '.rs')): out.append(os.path.join(src, m + '.rs'))
    d = os.path.join(src, m)
    if os.path.isdir(d):
        for dp, _, fs in os.walk(d):
            out += [os.path.join(dp, f) for f in fs if f.endswith('.rs')]
    return out
g = {}
for m in mods:
    deps = set()
    for f in files(m):
        for line in open(f):
            code = line.split('//')[0]
            deps |= set(re.findall(r'crate::([a-z_]+)', code))
            for group in re.findall(r'crate::\{([^}]*)\}?', code):
                deps |= set(re.findall(r'(?:^|,)\s*([a-z_]+)', group))
    g[m] = sorted(d for d in deps if d != m and d in mods) + sorted('<root>::' + d for d in deps if d not in mods and d != m)
for m in mods:
    print(f"{m:10} -> {' '.join(g[m])}")
# Tarjan
idx, low, st, on, sccs, n = {}, {}, [], set(), [], [0]
def sc(v):
    idx[v] = low[v] = n[0]; n[0] += 1; st.append(v); on.add(v)
    for w in g[v]:
        if w not in g: continue
        if w not in idx: sc(w); low[v] = min(low[v], low[w])
        elif w in on: low[v] = min(low[v], idx[w])
    if low[v] == idx[v]:
        c = []
        while True:
            w = st.pop(); on.discard(w); c.append(w)
            if w == v: break
        if len(c) > 1: sccs.append(sorted(c))
for m in mods:
    if m not in idx: sc(m)
print('cycles:', sccs if sccs else 'none')
sys.exit(1 if sccs else 0)
