"""NumPy reference implementations, float64 throughout (our own code, written from the math).

- `hf_forward`: Hugging Face GPT-2 (GPT2LMHeadModel) — Conv1D [in, out] weights, pre-LN,
  gelu_new, causal multi-head attention, tied head.
- `exercise_generate`: the exercise's simplified GPT-2 (`gpt2_generate`) exactly as specified:
  single head, -1e10 additive mask, ReLU FFN, (x - mean) / (std + eps) layer norm,
  np.random.choice sampling.
"""
import json
import struct

import numpy as np

# ---------------------------------------------------------------- safetensors

F16 = "F16"


def write_safetensors(path, tensors, dtype="F16"):
    """tensors: dict name -> array. int8 arrays are written as I8, the rest as `dtype` (F16 or F32).
    Little-endian data, header padded to 8 bytes."""
    header = {"__metadata__": {"format": "pt"}}
    blobs = []
    off = 0
    for name, arr in tensors.items():
        if np.asarray(arr).dtype == np.int8:
            a, dt = np.ascontiguousarray(arr), "I8"
        else:
            a, dt = np.ascontiguousarray(arr, dtype="<f2" if dtype == "F16" else "<f4"), dtype
        b = a.tobytes()
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors(path, stored=False):
    """name -> array: float64 (default), or with `stored` as stored (int8 stays int8, floats float32)."""
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        dt = {"F16": "<f2", "F32": "<f4", "I8": "i1"}[e["dtype"]]
        b, en = e["data_offsets"]
        a = np.frombuffer(raw[8 + n + b : 8 + n + en], dtype=dt).reshape(e["shape"])
        out[name] = (a.copy() if dt == "i1" else a.astype(np.float32)) if stored else a.astype(np.float64)
    return out


# ---------------------------------------------------------------- Hugging Face GPT-2


def layer_norm(x, g, b, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)  # biased, as torch
    return (x - mean) / np.sqrt(var + eps) * g + b


def gelu_new(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def hf_forward(w, cfg, ids):
    """Logits of every position, [T, vocab]. `w` maps canonical gpt2 names to float64 arrays."""
    T = len(ids)
    d, H, eps = cfg["n_embd"], cfg["n_head"], cfg["layer_norm_epsilon"]
    hd = d // H
    x = w["wte.weight"][ids] + w["wpe.weight"][:T]
    causal = np.triu(np.ones((T, T), dtype=bool), 1)
    for i in range(cfg["n_layer"]):
        p = lambda k: w[f"h.{i}.{k}"]  # noqa: E731
        h = layer_norm(x, p("ln_1.weight"), p("ln_1.bias"), eps)
        qkv = h @ p("attn.c_attn.weight") + p("attn.c_attn.bias")
        q, k, v = np.split(qkv, 3, axis=-1)
        q, k, v = (t.reshape(T, H, hd).transpose(1, 0, 2) for t in (q, k, v))
        s = q @ k.transpose(0, 2, 1) / np.sqrt(hd)
        s = np.where(causal, -np.inf, s)
        a = (softmax(s) @ v).transpose(1, 0, 2).reshape(T, d)
        x = x + a @ p("attn.c_proj.weight") + p("attn.c_proj.bias")
        h = layer_norm(x, p("ln_2.weight"), p("ln_2.bias"), eps)
        m = gelu_new(h @ p("mlp.c_fc.weight") + p("mlp.c_fc.bias"))
        x = x + m @ p("mlp.c_proj.weight") + p("mlp.c_proj.bias")
    x = layer_norm(x, w["ln_f.weight"], w["ln_f.bias"], eps)
    head = w.get("lm_head.weight", w["wte.weight"])
    return x @ head.T


def hf_greedy(w, cfg, ids, n_new):
    ids = list(ids)
    for _ in range(n_new):
        ids.append(int(np.argmax(hf_forward(w, cfg, ids)[-1])))
    return ids


# ---------------------------------------------------------------- the exercise's simplified GPT-2


def ex_layer_norm(x, g, b, eps=1e-5):
    mean = np.mean(x, axis=-1, keepdims=True)
    std = np.std(x, axis=-1, keepdims=True)
    return (x - mean) / (std + eps) * g + b


def ex_attention(x, Wq, Wk, Wv, Wo, bq, bk, bv, bo):
    q = x @ Wq + bq
    k = x @ Wk + bk
    v = x @ Wv + bv
    T = x.shape[0]
    mask = np.triu(np.ones((T, T)), 1) * -1e10
    scores = q @ k.T / np.sqrt(q.shape[-1]) + mask
    return softmax(scores) @ v @ Wo + bo


def ex_ffn(x, W1, b1, W2, b2):
    return np.maximum(0, x @ W1 + b1) @ W2 + b2


def ex_block(x, layer):
    Wq, Wk, Wv, Wo = layer["attnWeights"]
    bq, bk, bv, bo = layer["attnBiases"]
    x = x + ex_attention(ex_layer_norm(x, *layer["ln1"]), Wq, Wk, Wv, Wo, bq, bk, bv, bo)
    x = x + ex_ffn(ex_layer_norm(x, *layer["ln2"]), *layer["ffnWeights"])
    return x


def gpt2_generate(token_ids, wte, wpe, layers, ln_f_g, ln_f_b, n_tokens=10, temperature=1.0):
    token_ids = list(token_ids)
    for _ in range(n_tokens):
        x = wte[token_ids] + wpe[: len(token_ids)]
        for layer in layers:
            x = ex_block(x, layer)
        x = ex_layer_norm(x, ln_f_g, ln_f_b)
        logits = x[-1] @ wte.T / temperature
        probs = softmax(logits)
        token_ids.append(int(np.random.choice(len(probs), p=probs)))
    return token_ids
