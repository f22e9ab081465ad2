#!/usr/bin/env python3
"""Longest functions in src/ (lines from the `fn` line to its closing brace), test modules
excluded: a function is skipped when it sits after a `#[cfg(test)]` line in its file, or in a
file named tests.rs. Braces inside strings and comments are not special-cased, which is close
enough for ranking. Run from the repository root: `python3 scripts/dev/longfn.py [ROOT [N]]`."""
import os, re, sys
root = sys.argv[1] if len(sys.argv) > 1 else '.'
n = int(sys.argv[2]) if len(sys.argv) > 2 else 10
out = []
for dp, _, fs in os.walk(os.path.join(root, 'src')):
    for f in fs:
        if not f.endswith('.rs') or f == 'tests.rs':
            continue
        p = os.path.join(dp, f)
        lines = open(p).read().split('\n')
        test_from = next((i for i, l in enumerate(lines) if l.strip() == '#[cfg(test)]'), len(lines))
        i = 0
        while i < test_from:
            m = re.match(r'\s*(pub(\([a-z]+\))? )?(async )?(const )?(unsafe )?fn ([a-z_0-9]+)', lines[i])
            if m:
                depth, started, j = 0, False, i
                while j < len(lines):
                    code = re.sub(r'"([^"\\]|\\.)*"', '""', lines[j].split('//')[0])
                    code = re.sub(r"'(\\.|[^'\\])'", "''", code)
                    if not started and ';' in code and '{' not in code:
                        break
                    depth += code.count('{') - code.count('}')
                    if '{' in code:
                        started = True
                    if started and depth <= 0:
                        out.append((j - i + 1, os.path.relpath(p, root), m.group(6)))
                        break
                    j += 1
            i += 1
for length, p, name in sorted(out, reverse=True)[:n]:
    print(f"{length:4} {p} {name}")
