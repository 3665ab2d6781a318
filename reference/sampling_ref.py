"""The engine's sampling processors and generation loop in NumPy (float64), and their fixtures.

Order as in the JS engine (src/generate/sampling.ts): logit bias -> repetition penalty ->
presence/frequency penalties -> temperature -> top-k -> top-p -> min-p -> np.random.choice over
softmax. Greedy (temperature 0) is argmax after the penalties. The uniforms come from
np.random.seed(seed), as the JS MT19937 port.

The logit bias is OpenAI's logit_bias (token id -> bias added to the raw logit). The presence and
frequency penalties are OpenAI's: z[j] -= frequency * c[j] + presence * (c[j] > 0), with c counting
the generated tokens only (context[prompt_len:]); the repetition penalty (HF) sees the prompt too.
"""
import json
import os

import numpy as np

import gpt2_ref as ref


def sorted_desc(z):
    return np.lexsort((np.arange(len(z)), -z))  # by value descending, ties by index


def process(logits, context, o, prompt_len=0):
    z = logits.astype(np.float64).copy()
    for tok, b in o.get("logitBias", {}).items():
        z[int(tok)] += b
    rp = o.get("repetitionPenalty", 1.0)
    if rp != 1.0:
        for t in set(context):
            z[t] = z[t] / rp if z[t] > 0 else z[t] * rp
    pp, fp = o.get("presencePenalty", 0.0), o.get("frequencyPenalty", 0.0)
    if pp != 0 or fp != 0:
        ids, counts = np.unique(np.asarray(context[prompt_len:], dtype=np.int64), return_counts=True)
        z[ids] -= fp * counts + pp
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
        z, greedy = process(logits, ids, o, len(prompt))
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
    # OpenAI's logit_bias and presence/frequency penalties, greedy (they move the argmax) and sampled.
    {"temperature": 0, "logitBias": {48367: -100, 46247: -100, 16134: 2.5}},
    {"temperature": 0, "presencePenalty": 2.0},
    {"temperature": 0, "frequencyPenalty": 1.0},
    {"temperature": 0, "presencePenalty": -1.0, "frequencyPenalty": -2.0},
    {"temperature": 1.0, "logitBias": {198: 6.0, 13: 3.5, 48367: -100}, "seed": 9},
    {"temperature": 0.9, "presencePenalty": 1.5, "frequencyPenalty": 0.8, "seed": 10},
    {"temperature": 1.1, "topK": 30, "topP": 0.9, "minP": 0.02, "repetitionPenalty": 1.2,
     "logitBias": {198: 2.0, 46247: -100}, "presencePenalty": 0.5, "frequencyPenalty": 1.0, "seed": 11},
]

# The penalties count generated tokens only: this prompt ends in the token greedy picks next (46247),
# so counting the prompt would change the first token, and here it must not.
PROMPT_ONLY_CASE = ([15496, 2159, 11, 314, 716, 46247], {"temperature": 0, "presencePenalty": 2.0, "frequencyPenalty": 2.0})


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
    prompt, o = PROMPT_ONLY_CASE
    opts = dict(o, maxNewTokens=6)
    out, finish = generate(w, cfg, prompt, opts)
    counted = process(ref.hf_forward(w, cfg, prompt)[-1], prompt, o, 0)[0]
    assert out[0] in prompt and int(np.argmax(counted)) != out[0], "the prompt-only case no longer tells the two rules apart"
    cases.append({"prompt": prompt, "options": opts, "tokens": out, "finishReason": finish})
    with open(os.path.join(root, "test", "fixtures", "sampling.json"), "w") as f:
        json.dump({"model": "weights/tiny-random", "cases": cases}, f, indent=1, sort_keys=True)
        f.write("\n")
    make_processor_fixtures(root)


# Processor-level cases on a small random vocabulary: the processed logits and seeded draws.
PROCESSOR_CASES = [
    ({"logitBias": {3: 100, 5: -100, 7: 0.5, 11: -2.25}}, 0),
    ({"temperature": 0, "logitBias": {0: -100, 9: 1.5}}, 0),
    ({"presencePenalty": 1.25}, 0),
    ({"presencePenalty": 1.25}, 6),
    ({"frequencyPenalty": 0.75}, 6),
    ({"presencePenalty": -2.0, "frequencyPenalty": 2.0}, 3),
    ({"temperature": 0, "presencePenalty": 2.0, "frequencyPenalty": 1.5}, 4),
    ({"repetitionPenalty": 1.4, "presencePenalty": 0.6, "frequencyPenalty": 0.3, "logitBias": {2: 4.0}}, 5),
    ({"temperature": 0.7, "topK": 12, "topP": 0.85, "minP": 0.05, "repetitionPenalty": 1.1,
      "logitBias": {1: 3.0, 4: -100}, "presencePenalty": 0.4, "frequencyPenalty": 0.9}, 5),
]


def make_processor_fixtures(root, V=64, draws=5):
    rng = np.random.default_rng(21)
    cases = []
    for i, (o, prompt_len) in enumerate(PROCESSOR_CASES):
        logits = rng.normal(0.0, 2.0, V)
        logits[0] = logits.max() + 1.0  # token 0 is the favourite (the greedy cases ban or penalise it)
        context = rng.choice(np.argsort(-logits)[:10], 13).tolist() + [0]  # likely tokens, repeated; 0 generated
        z, greedy = process(logits, context, o, prompt_len)
        assert not greedy or np.argmax(z) != np.argmax(logits), f"greedy processor case {i} does not move the argmax"
        seed = 100 + i
        np.random.seed(seed)
        picks = [int(np.argmax(z))] if greedy else [int(np.random.choice(V, p=ref.softmax(z))) for _ in range(draws)]
        cases.append({
            "options": o, "logits": logits.tolist(), "context": context, "promptLength": prompt_len, "seed": seed,
            "processed": [None if v == -np.inf else float(v) for v in z],  # null = -Infinity (filtered)
            "tokens": picks,
        })
    with open(os.path.join(root, "test", "fixtures", "processors.json"), "w") as f:
        json.dump({"vocab": V, "cases": cases}, f, indent=1, sort_keys=True)
        f.write("\n")
