"""Writes the tiny test model and every jest fixture from the NumPy reference.

    python3 reference/make_fixtures.py [--root DIR]

Outputs (under --root, default the repository root):
  weights/tiny-random/{config.json,model.safetensors}   deterministic random GPT-2, F16
  test/fixtures/tiny.json, tiny_logits.f32               HF-GPT-2 parity fixtures
  test/fixtures/exercise.json                            the exercise's gpt2_generate fixtures
  test/fixtures/sampling.json, processors.json           sampling_ref.py: generation and processor fixtures
  weights/tiny-random-q8/{config.json,model.safetensors}  quantize_ref.py: the tiny model in the q8 format
  test/fixtures/tiny_q8.json                              q8 logits: dequantized weights, and the kernels' w8a8
Fixtures are generated, never hand-edited; reference/check_fixtures.py regenerates and diffs them.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import gpt2_ref as ref  # noqa: E402
import quantize_ref as qref  # noqa: E402
import sampling_ref  # noqa: E402

TINY = {
    "model_type": "gpt2",
    "architectures": ["GPT2LMHeadModel"],
    "vocab_size": 50257,
    "n_positions": 64,
    "n_ctx": 64,
    "n_embd": 32,
    "n_layer": 2,
    "n_head": 4,
    "n_inner": None,
    "activation_function": "gelu_new",
    "layer_norm_epsilon": 1e-5,
    "bos_token_id": 50256,
    "eos_token_id": 50256,
}


def tiny_weights(cfg, seed=1234):
    """Random weights scaled so logits are well spread (greedy choices are not near-ties)."""
    rng = np.random.default_rng(seed)
    d, V, P, f = cfg["n_embd"], cfg["vocab_size"], cfg["n_positions"], 4 * cfg["n_embd"]
    n = lambda *shape, s: rng.normal(0.0, s, size=shape)  # noqa: E731
    w = {"wte.weight": n(V, d, s=0.5), "wpe.weight": n(P, d, s=0.3)}
    for i in range(cfg["n_layer"]):
        h = f"h.{i}."
        w[h + "ln_1.weight"] = 1.0 + n(d, s=0.1)
        w[h + "ln_1.bias"] = n(d, s=0.1)
        w[h + "attn.c_attn.weight"] = n(d, 3 * d, s=0.3)
        w[h + "attn.c_attn.bias"] = n(3 * d, s=0.1)
        w[h + "attn.c_proj.weight"] = n(d, d, s=0.2)
        w[h + "attn.c_proj.bias"] = n(d, s=0.1)
        w[h + "ln_2.weight"] = 1.0 + n(d, s=0.1)
        w[h + "ln_2.bias"] = n(d, s=0.1)
        w[h + "mlp.c_fc.weight"] = n(d, f, s=0.2)
        w[h + "mlp.c_fc.bias"] = n(f, s=0.1)
        w[h + "mlp.c_proj.weight"] = n(f, d, s=0.1)
        w[h + "mlp.c_proj.bias"] = n(d, s=0.1)
    w["ln_f.weight"] = 1.0 + n(d, s=0.1)
    w["ln_f.bias"] = n(d, s=0.1)
    # What the file stores (F16) is what both sides compute with.
    return {k: v.astype(np.float16) for k, v in w.items()}


def r(x, digits=9):
    return float(round(float(x), digits))


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")


def make_tiny(root):
    cfg = TINY
    mdir = os.path.join(root, "weights", "tiny-random")
    os.makedirs(mdir, exist_ok=True)
    w16 = tiny_weights(cfg)
    ref.write_safetensors(os.path.join(mdir, "model.safetensors"), w16, "F16")
    with open(os.path.join(mdir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    w = {k: v.astype(np.float64) for k, v in w16.items()}

    rng = np.random.default_rng(7)
    prompts = [[464, 3290], [50256], [15496, 2159, 11, 314, 716, 257, 3303, 13], rng.integers(0, 50257, 31).tolist()]
    cols = sorted(set(rng.integers(0, 50257, 512).tolist()))
    cases = []
    for ids in prompts:
        logits = ref.hf_forward(w, cfg, ids)
        lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        top2 = np.sort(logits, -1)[:, -2:]
        cases.append({
            "ids": [int(i) for i in ids],
            "columns": cols,
            "logits": [[r(v) for v in row[cols]] for row in logits],
            "argmax": [int(i) for i in logits.argmax(-1)],
            "top2Margin": [r(t[1] - t[0]) for t in top2],
            "logsumexp": [r(v) for v in lse],
        })
    full = ref.hf_forward(w, cfg, prompts[2])
    full.astype("<f4").tofile(os.path.join(root, "test", "fixtures", "tiny_logits.f32"))

    greedy = []
    for ids in prompts[:3]:
        out = ref.hf_greedy(w, cfg, ids, 32)
        greedy.append({"prompt": [int(i) for i in ids], "newTokens": 32, "ids": out})
    # score(): mean next-token cross-entropy over non-overlapping windows of n_positions tokens.
    score_ids = np.random.default_rng(11).integers(0, 50257, 150).tolist()
    total, count = 0.0, 0
    for s in range(0, len(score_ids) - 1, cfg["n_positions"]):
        win = score_ids[s : s + cfg["n_positions"]]
        lg = ref.hf_forward(w, cfg, win)
        lse = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
        nll = lse[:-1] - lg[np.arange(len(win) - 1), win[1:]]
        total += nll.sum()
        count += len(win) - 1
    write_json(os.path.join(root, "test", "fixtures", "tiny.json"), {
        "score": {"ids": score_ids, "loss": r(total / count), "tokens": count},
        "model": "weights/tiny-random",
        "fullLogits": {"file": "tiny_logits.f32", "ids": prompts[2], "shape": [len(prompts[2]), cfg["vocab_size"]]},
        "cases": cases,
        "greedy": greedy,
    })
    return w, cfg


def make_tiny_q8(root, w16, cfg):
    """The tiny model quantized from its stored (F16) weights, and q8 logits both ways."""
    mdir = os.path.join(root, "weights", "tiny-random-q8")
    os.makedirs(mdir, exist_ok=True)
    t = qref.quantize_model({k: v.astype(np.float32) for k, v in w16.items()}, cfg["n_layer"])
    qref.write_safetensors(os.path.join(mdir, "model.safetensors"), t)
    with open(os.path.join(mdir, "config.json"), "w") as f:
        json.dump({**cfg, "quantization_config": qref.QUANTIZATION_CONFIG}, f, indent=2)
        f.write("\n")
    rng = np.random.default_rng(8)
    prompts = [[464, 3290], [15496, 2159, 11, 314, 716, 257, 3303, 13], rng.integers(0, 50257, 40).tolist()]
    cols = sorted(set(rng.integers(0, 50257, 256).tolist()))
    cases = []
    for ids in prompts:
        case = {"ids": [int(i) for i in ids], "columns": cols}
        for key, aq in (("dequant", False), ("w8a8", True)):
            lg = qref.q8_forward(t, cfg, ids, aq)
            top2 = np.sort(lg, -1)[:, -2:]
            case[key] = {"logits": [[r(v) for v in row[cols]] for row in lg], "argmax": [int(i) for i in lg.argmax(-1)],
                         "top2Margin": [r(x[1] - x[0]) for x in top2]}
        cases.append(case)
    greedy = []
    for ids in prompts[:2]:
        g = {"prompt": [int(i) for i in ids], "newTokens": 24}
        for key, aq in (("dequant", False), ("w8a8", True)):
            out = list(ids)
            for _ in range(24):
                out.append(int(np.argmax(qref.q8_forward(t, cfg, out, aq)[-1])))
            g[key] = out
        greedy.append(g)
    write_json(os.path.join(root, "test", "fixtures", "tiny_q8.json"), {"model": "weights/tiny-random-q8", "cases": cases, "greedy": greedy})


def make_exercise(root):
    rng = np.random.default_rng(99)
    V, d, f, P, L = 50, 16, 64, 32, 2
    f32 = lambda *shape, s=0.5: rng.normal(0.0, s, size=shape).astype(np.float32).astype(np.float64)  # noqa: E731
    wte, wpe = f32(V, d, s=1.0), f32(P, d, s=0.5)
    layers = []
    for _ in range(L):
        layers.append({
            "attnWeights": [f32(d, d), f32(d, d), f32(d, d), f32(d, d)],
            "attnBiases": [f32(d, s=0.1) for _ in range(4)],
            "ffnWeights": [f32(d, f), f32(f, s=0.1), f32(f, d), f32(d, s=0.1)],
            "ln1": [1.0 + f32(d, s=0.1), f32(d, s=0.1)],
            "ln2": [1.0 + f32(d, s=0.1), f32(d, s=0.1)],
        })
    ln_f_g, ln_f_b = 1.0 + f32(d, s=0.1), f32(d, s=0.1)
    cases = []
    for seed in [0, 1, 42, 1234, 2**32 - 1]:
        for temperature in [0.5, 1.0, 1.7]:
            for plen in [1, 3, 7]:
                prompt = [int(i) for i in np.random.default_rng(seed + plen).integers(0, V, plen)]
                np.random.seed(seed)
                out = ref.gpt2_generate(prompt, wte, wpe, layers, ln_f_g, ln_f_b, n_tokens=12, temperature=temperature)
                cases.append({"seed": seed, "temperature": temperature, "prompt": prompt, "nTokens": 12, "expected": out})
    tolist = lambda a: a.tolist()  # noqa: E731
    write_json(os.path.join(root, "test", "fixtures", "exercise.json"), {
        "wte": tolist(wte), "wpe": tolist(wpe), "lnFG": tolist(ln_f_g), "lnFB": tolist(ln_f_b),
        "layers": [{k: [tolist(a) for a in v] for k, v in l.items()} for l in layers],
        "randomSample42": [float(x) for x in (np.random.seed(42), np.random.random_sample(5))[1]],
        "cases": cases,
    })


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=os.path.join(os.path.dirname(__file__), ".."))
    args = ap.parse_args()
    os.makedirs(os.path.join(args.root, "test", "fixtures"), exist_ok=True)
    w, cfg = make_tiny(args.root)
    make_tiny_q8(args.root, tiny_weights(TINY), cfg)
    make_exercise(args.root)
    sampling_ref.make_fixtures(args.root, w, cfg)
    print("fixtures written under", os.path.abspath(args.root))


if __name__ == "__main__":
    main()
