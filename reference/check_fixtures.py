"""Regenerates every fixture into a temporary folder and fails if any differs from the committed one.

Weights must be byte-identical; JSON must have the same structure, identical integers and strings,
and floats equal to 1e-9 relative (the last bits of float64 BLAS sums may differ between machines).
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
FILES = [
    "weights/tiny-random/model.safetensors",
    "weights/tiny-random/config.json",
    "test/fixtures/tiny.json",
    "test/fixtures/tiny_logits.f32",
    "test/fixtures/exercise.json",
    "test/fixtures/sampling.json",
    "test/fixtures/processors.json",
    "weights/tiny-random-q8/model.safetensors",
    "weights/tiny-random-q8/config.json",
    "test/fixtures/tiny_q8.json",
]


def same(a, b, path):
    if isinstance(a, float) or isinstance(b, float):
        if not (isinstance(a, (int, float)) and isinstance(b, (int, float))):
            return f"{path}: {a!r} vs {b!r}"
        return None if abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b)) else f"{path}: {a!r} vs {b!r}"
    if type(a) is not type(b):
        return f"{path}: type {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, dict):
        if a.keys() != b.keys():
            return f"{path}: keys {sorted(a.keys() ^ b.keys())} differ"
        for k in a:
            e = same(a[k], b[k], f"{path}.{k}")
            if e:
                return e
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{path}: length {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            e = same(x, y, f"{path}[{i}]")
            if e:
                return e
        return None
    return None if a == b else f"{path}: {a!r} vs {b!r}"


def main():
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, os.path.join(ROOT, "reference", "make_fixtures.py"), "--root", tmp], check=True, stdout=subprocess.DEVNULL)
        bad = []
        for f in FILES:
            mine, fresh = os.path.join(ROOT, f), os.path.join(tmp, f)
            if not os.path.exists(mine):
                bad.append(f"{f}: missing from the repository")
                continue
            if f.endswith(".json"):
                with open(mine) as a, open(fresh) as b:
                    e = same(json.load(a), json.load(b), f)
                if e:
                    bad.append(e)
            elif f.endswith(".f32"):
                x, y = np.fromfile(mine, "<f4"), np.fromfile(fresh, "<f4")
                if x.shape != y.shape or np.max(np.abs(x - y)) > 1e-6:
                    bad.append(f"{f}: differs")
            else:
                with open(mine, "rb") as a, open(fresh, "rb") as b:
                    if a.read() != b.read():
                        bad.append(f"{f}: bytes differ")
        if bad:
            print("fixtures differ from what reference/make_fixtures.py writes (regenerate with `npm run fixtures`, never edit by hand):")
            for b in bad:
                print("  " + b)
            sys.exit(1)
        print(f"fixtures OK: {len(FILES)} files match the NumPy reference")


if __name__ == "__main__":
    main()
