"""The engine's sampling processors and generation loop in NumPy (float64), and their fixtures.

Order as in the JS engine (and Hugging Face): repetition penalty -> temperature -> top-k ->
top-p -> min-p -> np.random.choice over softmax. Greedy (temperature 0) is argmax after the
repetition penalty. The uniforms come from np.random.seed(seed), as the JS MT19937 port.
"""
import json
import os

import numpy as np

import gpt2_ref as ref


def sorted_desc(z):
    return np.lexsort((np.arange(len(z)), -z))  # by value descending, ties by index


def process(logits, context, o):
    z = logits.astype(np.float64).copy()
    rp = o.get("repetitionPenalty", 1.0)
    if rp != 1.0:
        for t in set(context):
            z[t] = z[t] / rp if z[t] > 0 else z[t] * rp
    t = o.get("temperature", 1.0)
    if t == 0:
        return z, True
    if t != 1.0:
        z = z / t
    k = o.get("topK", 0)
    if 0 < k < len(z):
        kth = np.sort(z)[::-1][k - 1]
        z[z < kth] = -np.inf
    p = o.get("topP", 1.0)
    if p < 1.0:
        probs = ref.softmax(z)
        order = sorted_desc(probs)
        cum = 0.0
        i = 0
        while i < len(order):
            if i > 0 and cum >= p:
                break
            cum += probs[order[i]]
            i += 1
        z[order[i:]] = -np.inf
    m = o.get("minP", 0.0)
    if m > 0:
        probs = ref.softmax(z)
        z[probs < m * probs.max()] = -np.inf
    return z, False


def generate(w, cfg, prompt, o):
    """Full recompute each step (no cache): the cache is the thing under test on the JS side."""
    if "seed" in o:
        np.random.seed(o["seed"])
    ids = list(prompt)
    out = []
    eos = o.get("eosTokenId", cfg["eos_token_id"])
    finish = "length"
    for _ in range(o["maxNewTokens"]):
        logits = ref.hf_forward(w, cfg, ids)[-1]
        z, greedy = process(logits, ids, o)
        tok = int(np.argmax(z)) if greedy else int(np.random.choice(len(z), p=ref.softmax(z)))
        if eos is not None and tok == eos:
            finish = "eos"
            break
        ids.append(tok)
        out.append(tok)
    return out, finish


OPTION_SETS = [
    {"temperature": 0},
    {"temperature": 0, "repetitionPenalty": 1.3},
    {"temperature": 1.0, "seed": 0},
    {"temperature": 0.7, "seed": 1},
    {"temperature": 1.3, "topK": 5, "seed": 2},
    {"temperature": 1.0, "topK": 1, "seed": 3},
    {"temperature": 1.0, "topP": 0.9, "seed": 4},
    {"temperature": 0.8, "topP": 0.5, "seed": 5},
    {"temperature": 1.0, "minP": 0.1, "seed": 6},
    {"temperature": 1.0, "repetitionPenalty": 1.5, "seed": 7},
    {"temperature": 1.2, "topK": 20, "topP": 0.8, "minP": 0.05, "repetitionPenalty": 1.2, "seed": 8},
]


def make_fixtures(root, w, cfg):
    prompts = [[464, 3290], [15496, 2159, 11, 314, 716]]
    cases = []
    for o in OPTION_SETS:
        for prompt in prompts:
            opts = dict(o, maxNewTokens=12)
            out, finish = generate(w, cfg, prompt, opts)
            cases.append({"prompt": prompt, "options": opts, "tokens": out, "finishReason": finish})
    # An eos case: make the first greedy token the eos id, so generation ends at once.
    first = generate(w, cfg, prompts[0], {"temperature": 0, "maxNewTokens": 3})[0]
    eos_case = {"prompt": prompts[0], "options": {"temperature": 0, "maxNewTokens": 10, "eosTokenId": first[1]},
                "tokens": first[:1], "finishReason": "eos"}
    cases.append(eos_case)
    with open(os.path.join(root, "test", "fixtures", "sampling.json"), "w") as f:
        json.dump({"model": "weights/tiny-random", "cases": cases}, f, indent=1, sort_keys=True)
        f.write("\n")
