"""Writes a GPT-2 124M-shaped random checkpoint (HF layout, F32) for benchmarks. Never committed.

    python3 bench/make_random_checkpoint.py [--out bench/models/gpt2-124m-random] [--layers 12 --heads 12 --embd 768]
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "reference"))
import gpt2_ref as ref  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "models", "gpt2-124m-random"))
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--embd", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--positions", type=int, default=1024)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    d, L, V, P = a.embd, a.layers, a.vocab, a.positions
    rng = np.random.default_rng(0)
    n = lambda *s, std=0.02: rng.standard_normal(s, dtype=np.float32) * np.float32(std)  # noqa: E731
    w = {"wte.weight": n(V, d), "wpe.weight": n(P, d, std=0.01)}
    for i in range(L):
        h = f"h.{i}."
        w[h + "ln_1.weight"] = np.ones(d, np.float32)
        w[h + "ln_1.bias"] = np.zeros(d, np.float32)
        w[h + "attn.c_attn.weight"] = n(d, 3 * d)
        w[h + "attn.c_attn.bias"] = np.zeros(3 * d, np.float32)
        w[h + "attn.c_proj.weight"] = n(d, d)
        w[h + "attn.c_proj.bias"] = np.zeros(d, np.float32)
        w[h + "ln_2.weight"] = np.ones(d, np.float32)
        w[h + "ln_2.bias"] = np.zeros(d, np.float32)
        w[h + "mlp.c_fc.weight"] = n(d, 4 * d)
        w[h + "mlp.c_fc.bias"] = np.zeros(4 * d, np.float32)
        w[h + "mlp.c_proj.weight"] = n(4 * d, d)
        w[h + "mlp.c_proj.bias"] = np.zeros(d, np.float32)
    w["ln_f.weight"] = np.ones(d, np.float32)
    w["ln_f.bias"] = np.zeros(d, np.float32)
    ref.write_safetensors(os.path.join(a.out, "model.safetensors"), w, "F32")
    cfg = {"model_type": "gpt2", "vocab_size": V, "n_positions": P, "n_ctx": P, "n_embd": d, "n_layer": L, "n_head": a.heads,
           "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "bos_token_id": 50256, "eos_token_id": 50256}
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    # The real GPT-2 vocabulary (shipped with the tiny test model), so text prompts work too.
    tiny = os.path.join(os.path.dirname(__file__), "..", "weights", "tiny-random")
    for name in ("vocab.json", "merges.txt"):
        with open(os.path.join(tiny, name), "rb") as src, open(os.path.join(a.out, name), "wb") as dst:
            dst.write(src.read())
    print(f"wrote {a.out} ({sum(v.size for v in w.values()):,} parameters)")


if __name__ == "__main__":
    main()
