"""The q8 format and its arithmetic, in NumPy (our own code, written from the math).

Format (docs/q8.md): every Conv1D weight [in, out] is int8, symmetric, one float32 scale per output
column (`<name>_scale`, [out]); wte and wpe are int8 with one scale per row ([rows]); biases and
layer norms stay float. config.json carries QUANTIZATION_CONFIG.

  scale = max|w| / 127 (float32 division)      q = clip(rint(w / scale), -127, 127)  (float32, half to even)
  a zero column/row has scale 0 and q 0.

- `quantize_cols` / `quantize_rows`: bit-exact with the converter (src/model/quantize.ts).
- `dequantize`: f32(q) * scale, the float weights every backend without int8 kernels computes with.
- `q8_forward(..., act_quant=True)`: the wasm kernels' integer arithmetic, simulated exactly: each row
  of a linear's input quantized as kernels.c quantize_rows does, int32 products, then
  f32(acc) * (xs * ws) + b in float32.
"""
import numpy as np

import gpt2_ref as ref

QUANTIZATION_CONFIG = {
    "quant_method": "gpt2-tfjs-q8",
    "version": 1,
    "bits": 8,
    "weights": "int8 symmetric, one float32 scale per output channel: <name>_scale [out]",
    "embeddings": "int8 symmetric, one float32 scale per row: wte.weight_scale [vocab], wpe.weight_scale [n_positions]",
}

LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
F32 = np.float32


def quantize_cols(w):
    """w [K, N] -> (int8 [K, N], float32 scales [N])."""
    w = np.asarray(w, dtype=F32)
    s = (np.abs(w).max(axis=0) / F32(127)).astype(F32)
    safe = np.where(s == 0, F32(1), s)
    q = np.clip(np.rint(w / safe), -127, 127)
    q[:, s == 0] = 0
    return q.astype(np.int8), s


def quantize_rows(w):
    q, s = quantize_cols(np.asarray(w).T)
    return np.ascontiguousarray(q.T), s


def quantize_model(w, n_layer):
    """float weights by canonical name -> the q8 file's tensors (int8 arrays and float32 arrays)."""
    out = {}
    for name, a in w.items():
        out[name] = np.asarray(a, dtype=F32)
    for i in range(n_layer):
        for l in LINEARS:
            k = f"h.{i}.{l}.weight"
            out[k], out[k + "_scale"] = quantize_cols(w[k])
    for k in ("wte.weight", "wpe.weight"):
        out[k], out[k + "_scale"] = quantize_rows(w[k])
    return out


def dequantize(t, n_layer):
    """The q8 file's tensors -> float64 weights (f32(q) * scale, as every float backend holds them)."""
    w = {k: v.astype(np.float64) for k, v in t.items() if not k.endswith("_scale")}
    for i in range(n_layer):
        for l in LINEARS:
            k = f"h.{i}.{l}.weight"
            w[k] = (t[k].astype(F32) * t[k + "_scale"][None, :]).astype(np.float64)
    for k in ("wte.weight", "wpe.weight"):
        w[k] = (t[k].astype(F32) * t[k + "_scale"][:, None]).astype(np.float64)
    return w


def write_safetensors(path, tensors):
    """int8 arrays as I8, everything else as F32."""
    ref.write_safetensors(path, tensors, "F32")


def read_safetensors(path):
    """name -> array in the stored dtype (int8 stays int8, floats become float32)."""
    return ref.read_safetensors(path, stored=True)


def quantize_act(x):
    """Rows of x (float32) as kernels.c quantize_rows: (int16 values, float32 row scales)."""
    x = np.asarray(x, dtype=F32)
    mx = np.abs(x).max(axis=-1)
    safe = np.where(mx > 0, mx, F32(1))
    inv = (F32(127) / safe).astype(F32)
    q = np.clip(np.rint((x * inv[:, None]).astype(F32)), -127, 127).astype(np.int64)
    q[mx == 0] = 0
    xs = np.where(mx > 0, (mx / F32(127)).astype(F32), F32(0)).astype(F32)
    return q, xs


def linear_w8a8(x, q, ws, b):
    """kernels.c linear_q8: int32 accumulation, then f32(acc) * (xs * ws) + b in float32."""
    xq, xs = quantize_act(x)
    acc = xq @ q.astype(np.int64)  # exact (|acc| < 2^31 for GPT-2 sizes)
    y = acc.astype(F32) * (xs[:, None] * ws[None, :]).astype(F32)
    if b is not None:
        y = (y + b.astype(F32)).astype(F32)
    return y.astype(np.float64)


def q8_forward(t, cfg, ids, act_quant):
    """Logits of every position from the q8 tensors `t`: on dequantized weights (act_quant False: the
    float backends), or with the wasm kernels' integer arithmetic (act_quant True)."""
    n_layer = cfg["n_layer"]
    w = dequantize(t, n_layer)
    if not act_quant:
        return ref.hf_forward(w, cfg, ids)
    T = len(ids)
    d, H, eps = cfg["n_embd"], cfg["n_head"], cfg["layer_norm_epsilon"]
    hd = d // H
    lin = lambda x, k, bias=True: linear_w8a8(x, t[k + ".weight"], t[k + ".weight_scale"], t[k + ".bias"] if bias else None)  # noqa: E731
    x = w["wte.weight"][ids] + w["wpe.weight"][:T]
    causal = np.triu(np.ones((T, T), dtype=bool), 1)
    for i in range(n_layer):
        p = lambda k: w[f"h.{i}.{k}"]  # noqa: E731
        h = ref.layer_norm(x, p("ln_1.weight"), p("ln_1.bias"), eps)
        q, k, v = np.split(lin(h, f"h.{i}.attn.c_attn"), 3, axis=-1)
        q, k, v = (a.reshape(T, H, hd).transpose(1, 0, 2) for a in (q, k, v))
        s = np.where(causal, -np.inf, q @ k.transpose(0, 2, 1) / np.sqrt(hd))
        a = (ref.softmax(s) @ v).transpose(1, 0, 2).reshape(T, d)
        x = x + lin(a, f"h.{i}.attn.c_proj")
        h = ref.layer_norm(x, p("ln_2.weight"), p("ln_2.bias"), eps)
        x = x + lin(ref.gelu_new(lin(h, f"h.{i}.mlp.c_fc")), f"h.{i}.mlp.c_proj")
    x = ref.layer_norm(x, w["ln_f.weight"], w["ln_f.bias"], eps)
    return linear_w8a8(x, t["wte.weight"].T, t["wte.weight_scale"], None)
