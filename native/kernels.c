/*
 * gpt2-tfjs WASM SIMD kernels. Compiled to a tiny WebAssembly module that *imports the memory of
 * tfjs-backend-wasm*, so it reads and writes tensors where the backend keeps them (no copies).
 *
 * Rules for this file (checked by native/build.sh): no libc, no static data, no stack use. Every
 * function works only through the pointers it is given; the module must have no data segment and
 * must never touch the __stack_pointer, or it would scribble on the backend's heap.
 *
 * Every exported function's argument list is written once more, by name, in src/model/wasm/abi.ts
 * (the table the TS callers and the worker thread follow; a test checks names and arity against the
 * built module): change both together.
 */
#include <wasm_simd128.h>

typedef float f32;
typedef int i32_t;

/* a * b + c. Built twice (native/build.sh): with -DGPT2_FMA as relaxed SIMD's f32x4.relaxed_madd
 * (one fused instruction where the CPU has FMA), else as a multiply and an add. */
#ifdef GPT2_FMA
#define MADD(a, b, c) wasm_f32x4_relaxed_madd((a), (b), (c))
#else
#define MADD(a, b, c) wasm_f32x4_add(wasm_f32x4_mul((a), (b)), (c))
#endif
#define EXPORT(name) __attribute__((export_name(#name)))

/* ---------- exp, tanh-free gelu_new ---------- */

/* expf for x in float32 range, ~1 ulp-ish (rel err < 2e-7): 2^n * p(r), r = x - n ln2 in [-ln2/2, ln2/2]. */
static inline v128_t v_exp(v128_t x) {
  const v128_t hi = wasm_f32x4_splat(88.3762626647949f), lo = wasm_f32x4_splat(-87.3365447505531f);
  x = wasm_f32x4_pmax(wasm_f32x4_pmin(x, hi), lo);
  v128_t n = wasm_f32x4_nearest(wasm_f32x4_mul(x, wasm_f32x4_splat(1.44269504088896341f)));
  /* r = x - n*ln2 in two steps (Cody-Waite) */
  v128_t r = wasm_f32x4_sub(x, wasm_f32x4_mul(n, wasm_f32x4_splat(0.693359375f)));
  r = wasm_f32x4_sub(r, wasm_f32x4_mul(n, wasm_f32x4_splat(-2.12194440e-4f)));
  v128_t p = wasm_f32x4_splat(1.9875691500e-4f);
  p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(1.3981999507e-3f));
  p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(8.3334519073e-3f));
  p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(4.1665795894e-2f));
  p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(1.6666665459e-1f));
  p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(5.0000001201e-1f));
  v128_t r2 = wasm_f32x4_mul(r, r);
  p = wasm_f32x4_add(wasm_f32x4_add(wasm_f32x4_mul(p, r2), r), wasm_f32x4_splat(1.0f));
  /* scale by 2^n: build the exponent bits; n in [-126, 127] after the clamp above */
  v128_t e = wasm_i32x4_shl(wasm_i32x4_add(wasm_i32x4_trunc_sat_f32x4(n), wasm_i32x4_splat(127)), 23);
  return wasm_f32x4_mul(p, e);
}

static inline f32 s_exp(f32 x) { return wasm_f32x4_extract_lane(v_exp(wasm_f32x4_splat(x)), 0); }

/* gelu_new(x) = x * sigmoid(2*sqrt(2/pi)*(x + 0.044715 x^3)) = x / (1 + exp(-u)) */
static inline v128_t v_gelu(v128_t x) {
  const v128_t c = wasm_f32x4_splat(1.5957691216057308f); /* 2*sqrt(2/pi) */
  const v128_t c3 = wasm_f32x4_splat(0.0713548162726009f); /* 0.044715 * c */
  v128_t u = wasm_f32x4_mul(x, wasm_f32x4_add(wasm_f32x4_mul(wasm_f32x4_mul(x, x), c3), c));
  v128_t e = v_exp(wasm_f32x4_neg(u));
  return wasm_f32x4_div(x, wasm_f32x4_add(wasm_f32x4_splat(1.0f), e));
}
static inline f32 s_gelu(f32 x) { return wasm_f32x4_extract_lane(v_gelu(wasm_f32x4_splat(x)), 0); }

/* act: 0 none, 1 gelu_new, 2 relu */
static inline v128_t v_act(v128_t x, int act) {
  if (act == 1) return v_gelu(x);
  if (act == 2) return wasm_f32x4_pmax(x, wasm_f32x4_splat(0.0f));
  return x;
}
static inline f32 s_act(f32 x, int act) {
  if (act == 1) return s_gelu(x);
  if (act == 2) return x > 0.0f ? x : 0.0f;
  return x;
}

/* ---------- linear: y[M,N] = act(x[M,K] @ W[K,N] + b[N]) ---------- */

/* Few rows (decode): stream W once, row by row (sequential reads the prefetcher loves); each W row
 * chunk is reused from L1 for all M rows. y holds the running sums (a TILE-wide slice stays in L1). */
#define TILE 1024
static void linear_rows(const f32* x, const f32* W, const f32* b, f32* y, int M, int K, int N, int ld, int ldx) {
  /* equal tiles of at most TILE columns (a short last tile would stream W rows in tiny pieces) */
  int ntiles = (N + TILE - 1) / TILE;
  int tile = ((N + ntiles - 1) / ntiles + 15) & ~15;
  for (int j0 = 0; j0 < N; j0 += tile) {
    int nb = N - j0 < tile ? N - j0 : tile;
    int nv = nb & ~15;
    for (int m = 0; m < M; m++) {
      f32* ym = y + m * ld + j0;
      if (b) for (int j = 0; j < nb; j++) ym[j] = b[j0 + j];
      else for (int j = 0; j < nb; j++) ym[j] = 0.0f;
    }
    int k = 0;
    for (; k + 4 <= K; k += 4) {
      const f32* w0 = W + (long)k * ld + j0;
      const f32* w1 = w0 + ld;
      const f32* w2 = w1 + ld;
      const f32* w3 = w2 + ld;
      int m = 0;
      /* two rows of x at a time: each W vector loaded once serves both */
      for (; m + 2 <= M; m += 2) {
        const f32* xa = x + m * ldx + k;
        const f32* xb = xa + ldx;
        v128_t a0 = wasm_f32x4_splat(xa[0]), a1 = wasm_f32x4_splat(xa[1]), a2 = wasm_f32x4_splat(xa[2]), a3 = wasm_f32x4_splat(xa[3]);
        v128_t b0 = wasm_f32x4_splat(xb[0]), b1 = wasm_f32x4_splat(xb[1]), b2 = wasm_f32x4_splat(xb[2]), b3 = wasm_f32x4_splat(xb[3]);
        f32* ya = y + m * ld + j0;
        f32* yb = ya + ld;
        int j = 0;
        for (; j + 4 <= nb; j += 4) {
          v128_t v0 = wasm_v128_load(w0 + j), v1 = wasm_v128_load(w1 + j), v2 = wasm_v128_load(w2 + j), v3 = wasm_v128_load(w3 + j);
          v128_t ta = MADD(a1, v1, MADD(a0, v0, wasm_v128_load(ya + j)));
          v128_t tb = MADD(b1, v1, MADD(b0, v0, wasm_v128_load(yb + j)));
          wasm_v128_store(ya + j, MADD(a3, v3, MADD(a2, v2, ta)));
          wasm_v128_store(yb + j, MADD(b3, v3, MADD(b2, v2, tb)));
        }
        for (; j < nb; j++) {
          ya[j] += xa[0] * w0[j] + xa[1] * w1[j] + xa[2] * w2[j] + xa[3] * w3[j];
          yb[j] += xb[0] * w0[j] + xb[1] * w1[j] + xb[2] * w2[j] + xb[3] * w3[j];
        }
      }
      for (; m < M; m++) {
        const f32* xm = x + m * ldx + k;
        v128_t s0 = wasm_f32x4_splat(xm[0]), s1 = wasm_f32x4_splat(xm[1]);
        v128_t s2 = wasm_f32x4_splat(xm[2]), s3 = wasm_f32x4_splat(xm[3]);
        f32* ym = y + m * ld + j0;
        int j = 0;
        for (; j < nv; j += 16) {
          for (int u = 0; u < 16; u += 4) {
            v128_t t0 = MADD(s0, wasm_v128_load(w0 + j + u), wasm_v128_load(ym + j + u));
            t0 = MADD(s1, wasm_v128_load(w1 + j + u), t0);
            v128_t t1 = wasm_f32x4_mul(s2, wasm_v128_load(w2 + j + u));
            t1 = MADD(s3, wasm_v128_load(w3 + j + u), t1);
            wasm_v128_store(ym + j + u, wasm_f32x4_add(t0, t1));
          }
        }
        for (; j < nb; j++) ym[j] += xm[0] * w0[j] + xm[1] * w1[j] + xm[2] * w2[j] + xm[3] * w3[j];
      }
    }
    for (; k < K; k++) {
      const f32* w0 = W + (long)k * ld + j0;
      for (int m = 0; m < M; m++) {
        f32 xv = x[m * ldx + k];
        f32* ym = y + m * ld + j0;
        for (int j = 0; j < nb; j++) ym[j] += xv * w0[j];
      }
    }
  }
}

/* Many rows (prefill): 4x8 register tile. For each 8-column panel and block of KC rows, the W panel
 * is first copied to `pack` (contiguous): W's row stride is often a multiple of 4 KB (N = 3072), and
 * reading the panel in place would map every row to the same L1 set. */
#define KC 256
#ifndef MIN_TILED_ROWS
#define MIN_TILED_ROWS 16
#endif
static void linear_tiles(const f32* x, const f32* W, const f32* b, f32* y, int M4, int K, int N, int ld, int ldx, f32* pack) {
  int N8 = N & ~7;
  for (int j = 0; j < N8; j += 8) {
    for (int k0 = 0; k0 < K; k0 += KC) {
      int k1 = k0 + KC < K ? k0 + KC : K;
      const f32* src = W + (long)k0 * ld + j;
      for (int k = 0; k < k1 - k0; k++, src += ld) {
        wasm_v128_store(pack + k * 8, wasm_v128_load(src));
        wasm_v128_store(pack + k * 8 + 4, wasm_v128_load(src + 4));
      }
      for (int m = 0; m < M4; m += 4) {
        f32* y0 = y + m * ld + j;
        f32* y1 = y0 + ld;
        f32* y2 = y1 + ld;
        f32* y3 = y2 + ld;
        v128_t a00, a01, a10, a11, a20, a21, a30, a31;
        if (k0 == 0) {
          v128_t b0 = b ? wasm_v128_load(b + j) : wasm_f32x4_splat(0.0f);
          v128_t b1 = b ? wasm_v128_load(b + j + 4) : wasm_f32x4_splat(0.0f);
          a00 = a10 = a20 = a30 = b0;
          a01 = a11 = a21 = a31 = b1;
        } else {
          a00 = wasm_v128_load(y0); a01 = wasm_v128_load(y0 + 4);
          a10 = wasm_v128_load(y1); a11 = wasm_v128_load(y1 + 4);
          a20 = wasm_v128_load(y2); a21 = wasm_v128_load(y2 + 4);
          a30 = wasm_v128_load(y3); a31 = wasm_v128_load(y3 + 4);
        }
        const f32* x0 = x + m * ldx + k0;
        const f32* x1 = x0 + ldx;
        const f32* x2 = x1 + ldx;
        const f32* x3 = x2 + ldx;
        const f32* pk = pack;
        for (int k = 0; k < k1 - k0; k++, pk += 8) {
          v128_t w0 = wasm_v128_load(pk), w1 = wasm_v128_load(pk + 4);
          v128_t s;
          s = wasm_v128_load32_splat(x0 + k); a00 = MADD(s, w0, a00); a01 = MADD(s, w1, a01);
          s = wasm_v128_load32_splat(x1 + k); a10 = MADD(s, w0, a10); a11 = MADD(s, w1, a11);
          s = wasm_v128_load32_splat(x2 + k); a20 = MADD(s, w0, a20); a21 = MADD(s, w1, a21);
          s = wasm_v128_load32_splat(x3 + k); a30 = MADD(s, w0, a30); a31 = MADD(s, w1, a31);
        }
        wasm_v128_store(y0, a00); wasm_v128_store(y0 + 4, a01);
        wasm_v128_store(y1, a10); wasm_v128_store(y1 + 4, a11);
        wasm_v128_store(y2, a20); wasm_v128_store(y2 + 4, a21);
        wasm_v128_store(y3, a30); wasm_v128_store(y3 + 4, a31);
      }
    }
  }
  /* the last N % 8 columns */
  for (int m = 0; m < M4; m++)
    for (int jj = N8; jj < N; jj++) {
      f32 s = b ? b[jj] : 0.0f;
      for (int k = 0; k < K; k++) s += x[m * ldx + k] * W[(long)k * ld + jj];
      y[m * ld + jj] = s;
    }
}

static void apply_act(f32* y, int n, int act) {
  if (act == 0) return;
  int j = 0;
  for (; j + 4 <= n; j += 4) wasm_v128_store(y + j, v_act(wasm_v128_load(y + j), act));
  for (; j < n; j++) y[j] = s_act(y[j], act);
}

/* y[:, 0:n] = act(x[:, 0:K] @ W[0:K, 0:n] + b[0:n]). W and y have row stride `ld` (>= n), x has row
 * stride `ldx` (>= K): a caller may hand each thread a column slice (W + j0, b + j0, y + j0) or a
 * slice of the inner dimension (x + k0, W + k0 * ld, no bias, act 0, summed afterwards by reduce_act).
 * pack: KC * 8 floats, used when M >= 16. */
EXPORT(linear)
void linear(const f32* x, const f32* W, const f32* b, f32* y, int M, int K, int n, int ld, int ldx, int act, f32* pack) {
  int M4 = M >= MIN_TILED_ROWS ? (M & ~3) : 0; /* rows handled by the register-tiled path */
  if (M4) linear_tiles(x, W, b, y, M4, K, n, ld, ldx, pack);
  if (M > M4) linear_rows(x + M4 * ldx, W, b, y + M4 * ld, M - M4, K, n, ld, ldx);
  if (act) for (int m = 0; m < M; m++) apply_act(y + m * ld, n, act);
}

/* y[M, N] = act(b + sum_c parts[c]) with parts [nparts, M, N] summed in index order (so the result
 * does not depend on which thread computed which part). b may be 0. */
EXPORT(reduce_act)
void reduce_act(f32* y, const f32* parts, int nparts, int M, int N, const f32* b, int act) {
  long stride = (long)M * N;
  for (int m = 0; m < M; m++) {
    f32* ym = y + (long)m * N;
    const f32* pm = parts + (long)m * N;
    int j = 0;
    for (; j + 4 <= N; j += 4) {
      v128_t s = b ? wasm_v128_load(b + j) : wasm_f32x4_splat(0.0f);
      for (int c = 0; c < nparts; c++) s = wasm_f32x4_add(s, wasm_v128_load(pm + c * stride + j));
      wasm_v128_store(ym + j, v_act(s, act));
    }
    for (; j < N; j++) {
      f32 s = b ? b[j] : 0.0f;
      for (int c = 0; c < nparts; c++) s += pm[c * stride + j];
      ym[j] = s_act(s, act);
    }
  }
}

/* ---------- layer norm over the last axis: y = (x - mean) / sqrt(var + eps) * g + b ---------- */

EXPORT(layer_norm)
void layer_norm(const f32* x, const f32* g, const f32* b, f32* y, int M, int D, f32 eps) {
  for (int m = 0; m < M; m++) {
    const f32* xm = x + m * D;
    f32* ym = y + m * D;
    f32 s = 0.0f;
    for (int j = 0; j < D; j++) s += xm[j];
    f32 mean = s / D;
    f32 v = 0.0f;
    for (int j = 0; j < D; j++) { f32 c = xm[j] - mean; v += c * c; }
    f32 r = 1.0f / __builtin_sqrtf(v / D + eps);
    for (int j = 0; j < D; j++) ym[j] = (xm[j] - mean) * r * g[j] + b[j];
  }
}

/* ---------- decode attention: one query per row against the cached keys/values ----------
 * q [B, D] (D = H*hd), k/v [B, ldkv, D] with row b's keys at [b, 0..Tk), mask [B, Tk] additive or 0,
 * out [B, D], scratch >= Tk + 4 floats. Scores are scaled by `scale`. Heads [h0, h1) only (threads
 * split heads). Four keys at a time for the scores; the weighted sum of values keeps 32 output lanes
 * in registers across all positions. */
static inline f32 hsum(v128_t a) {
  return wasm_f32x4_extract_lane(a, 0) + wasm_f32x4_extract_lane(a, 1) + wasm_f32x4_extract_lane(a, 2) + wasm_f32x4_extract_lane(a, 3);
}

static void scores_from(const f32* qh, const f32* kh, const f32* mb, f32* sc, int t, int Tk, int D, int hd, f32 scale) {
  const v128_t vs = wasm_f32x4_splat(scale);
  if ((hd & 3) == 0) {
    for (; t + 4 <= Tk; t += 4) {
      const f32* k0 = kh + (long)t * D;
      const f32* k1 = k0 + D;
      const f32* k2 = k1 + D;
      const f32* k3 = k2 + D;
      v128_t a0 = wasm_f32x4_splat(0.0f), a1 = a0, a2 = a0, a3 = a0;
      for (int j = 0; j < hd; j += 4) {
        v128_t qv = wasm_v128_load(qh + j);
        a0 = MADD(qv, wasm_v128_load(k0 + j), a0);
        a1 = MADD(qv, wasm_v128_load(k1 + j), a1);
        a2 = MADD(qv, wasm_v128_load(k2 + j), a2);
        a3 = MADD(qv, wasm_v128_load(k3 + j), a3);
      }
      /* 4x4 transpose-add: r = [sum a0, sum a1, sum a2, sum a3] */
      v128_t s01 = wasm_f32x4_add(wasm_i32x4_shuffle(a0, a1, 0, 4, 1, 5), wasm_i32x4_shuffle(a0, a1, 2, 6, 3, 7));
      v128_t s23 = wasm_f32x4_add(wasm_i32x4_shuffle(a2, a3, 0, 4, 1, 5), wasm_i32x4_shuffle(a2, a3, 2, 6, 3, 7));
      v128_t r = wasm_f32x4_add(wasm_i32x4_shuffle(s01, s23, 0, 1, 4, 5), wasm_i32x4_shuffle(s01, s23, 2, 3, 6, 7));
      r = wasm_f32x4_mul(r, vs);
      if (mb) r = wasm_f32x4_add(r, wasm_v128_load(mb + t));
      wasm_v128_store(sc + t, r);
    }
  }
  for (; t < Tk; t++) {
    const f32* kt = kh + (long)t * D;
    f32 s = 0.0f;
    for (int j = 0; j < hd; j++) s += qh[j] * kt[j];
    sc[t] = s * scale + (mb ? mb[t] : 0.0f);
  }
}

static void scores_into(const f32* qh, const f32* kh, const f32* mb, f32* sc, int Tk, int D, int hd, f32 scale) {
  scores_from(qh, kh, mb, sc, 0, Tk, D, hd, scale);
}

/* sc[t] = exp(sc[t] - max) / sum, in place */
static void softmax_inplace(f32* sc, int Tk) {
  f32 mx = -3.4e38f;
  for (int t = 0; t < Tk; t++) mx = sc[t] > mx ? sc[t] : mx;
  v128_t vm = wasm_f32x4_splat(mx), vsum = wasm_f32x4_splat(0.0f);
  int t = 0;
  for (; t + 4 <= Tk; t += 4) {
    v128_t e = v_exp(wasm_f32x4_sub(wasm_v128_load(sc + t), vm));
    wasm_v128_store(sc + t, e);
    vsum = wasm_f32x4_add(vsum, e);
  }
  f32 sum = hsum(vsum);
  for (; t < Tk; t++) { f32 e = s_exp(sc[t] - mx); sc[t] = e; sum += e; }
  v128_t inv = wasm_f32x4_splat(1.0f / sum);
  t = 0;
  for (; t + 4 <= Tk; t += 4) wasm_v128_store(sc + t, wasm_f32x4_mul(wasm_v128_load(sc + t), inv));
  for (; t < Tk; t++) sc[t] *= 1.0f / sum;
}

/* sum_t p[t] * v[t*D]: one output lane past the vector blocks (attend_head's and attend_group's alike) */
static __attribute__((noinline)) f32 lane_sum(const f32* p, const f32* v, int Tk, int D) {
  f32 s = 0.0f;
  for (int t = 0; t < Tk; t++) s += p[t] * v[(long)t * D];
  return s;
}

/* oh[0:hd] = sum_t p[t] * vh[t*D + 0:hd] */
static void weighted_sum(const f32* p, const f32* vh, f32* oh, int Tk, int D, int hd) {
  int c = 0;
  for (; c + 32 <= hd; c += 32) {
    v128_t o0 = wasm_f32x4_splat(0.0f), o1 = o0, o2 = o0, o3 = o0, o4 = o0, o5 = o0, o6 = o0, o7 = o0;
    const f32* vt = vh + c;
    for (int t = 0; t < Tk; t++, vt += D) {
      v128_t pt = wasm_v128_load32_splat(p + t);
      o0 = MADD(pt, wasm_v128_load(vt), o0);
      o1 = MADD(pt, wasm_v128_load(vt + 4), o1);
      o2 = MADD(pt, wasm_v128_load(vt + 8), o2);
      o3 = MADD(pt, wasm_v128_load(vt + 12), o3);
      o4 = MADD(pt, wasm_v128_load(vt + 16), o4);
      o5 = MADD(pt, wasm_v128_load(vt + 20), o5);
      o6 = MADD(pt, wasm_v128_load(vt + 24), o6);
      o7 = MADD(pt, wasm_v128_load(vt + 28), o7);
    }
    f32* o = oh + c;
    wasm_v128_store(o, o0); wasm_v128_store(o + 4, o1); wasm_v128_store(o + 8, o2); wasm_v128_store(o + 12, o3);
    wasm_v128_store(o + 16, o4); wasm_v128_store(o + 20, o5); wasm_v128_store(o + 24, o6); wasm_v128_store(o + 28, o7);
  }
  for (; c < hd; c++) oh[c] = lane_sum(p, vh + c, Tk, D);
}

/* head h of one query (qi, D floats) against n cached positions (row stride D) -> oi[h*hd : +hd] */
static inline void attend_head(const f32* qi, const f32* kb, const f32* vb, const f32* mb, f32* oi, f32* scratch, int n, int D, int hd, f32 scale, int h) {
  scores_into(qi + h * hd, kb + h * hd, mb, scratch, n, D, hd, scale);
  softmax_inplace(scratch, n);
  weighted_sum(scratch, vb + h * hd, oi + h * hd, n, D, hd);
}

/* Head h of g (2..4) consecutive queries of one sequence (query r at qi + r*ldq, output oi + r*ldo)
 * seeing n0 + r positions of kb/vb (row stride D), mask row mb: each query's scores, softmax and
 * weighted sum in the same order as attend_head's (the same bits: every score and output lane is the
 * same chain of multiply-adds), but each key and value is loaded once for two or four queries (prefill
 * attention read the cache once per query: 13-16 GMAC/s on two threads). scratch: 4 rows of
 * (n0 + g + 6) & ~3 floats. Needs hd % 4 == 0. */
static void attend_group(const f32* qi, int ldq, const f32* kb, const f32* vb, const f32* mb, f32* oi, int ldo, f32* scratch,
                         int g, int n0, int D, int hd, f32 scale, int h) {
  int ld = (n0 + g + 6) & ~3;
  const f32* kh = kb + h * hd;
  const f32* vh = vb + h * hd;
  const v128_t vs = wasm_f32x4_splat(scale);
  int t4 = n0 & ~3; /* keys [0, t4) in blocks of 4 for every query: each sees at least n0 */
  for (int r0 = 0; r0 < g; r0 += 2) {
    int two = r0 + 1 < g;
    const f32* qa = qi + (long)r0 * ldq + h * hd;
    const f32* qb = two ? qa + ldq : qa; /* a lone last query computed twice, stored once */
    f32* sa = scratch + (long)r0 * ld;
    f32* sb = two ? sa + ld : sa;
    for (int t = 0; t < t4; t += 4) {
      const f32* k0 = kh + (long)t * D;
      const f32* k1 = k0 + D;
      const f32* k2 = k1 + D;
      const f32* k3 = k2 + D;
      v128_t a0 = wasm_f32x4_splat(0.0f), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
      for (int j = 0; j < hd; j += 4) {
        v128_t x0 = wasm_v128_load(k0 + j), x1 = wasm_v128_load(k1 + j), x2 = wasm_v128_load(k2 + j), x3 = wasm_v128_load(k3 + j);
        v128_t qv = wasm_v128_load(qa + j);
        a0 = MADD(qv, x0, a0); a1 = MADD(qv, x1, a1); a2 = MADD(qv, x2, a2); a3 = MADD(qv, x3, a3);
        qv = wasm_v128_load(qb + j);
        b0 = MADD(qv, x0, b0); b1 = MADD(qv, x1, b1); b2 = MADD(qv, x2, b2); b3 = MADD(qv, x3, b3);
      }
      v128_t s01 = wasm_f32x4_add(wasm_i32x4_shuffle(a0, a1, 0, 4, 1, 5), wasm_i32x4_shuffle(a0, a1, 2, 6, 3, 7));
      v128_t s23 = wasm_f32x4_add(wasm_i32x4_shuffle(a2, a3, 0, 4, 1, 5), wasm_i32x4_shuffle(a2, a3, 2, 6, 3, 7));
      v128_t ra = wasm_f32x4_mul(wasm_f32x4_add(wasm_i32x4_shuffle(s01, s23, 0, 1, 4, 5), wasm_i32x4_shuffle(s01, s23, 2, 3, 6, 7)), vs);
      s01 = wasm_f32x4_add(wasm_i32x4_shuffle(b0, b1, 0, 4, 1, 5), wasm_i32x4_shuffle(b0, b1, 2, 6, 3, 7));
      s23 = wasm_f32x4_add(wasm_i32x4_shuffle(b2, b3, 0, 4, 1, 5), wasm_i32x4_shuffle(b2, b3, 2, 6, 3, 7));
      v128_t rb = wasm_f32x4_mul(wasm_f32x4_add(wasm_i32x4_shuffle(s01, s23, 0, 1, 4, 5), wasm_i32x4_shuffle(s01, s23, 2, 3, 6, 7)), vs);
      if (mb) { v128_t m = wasm_v128_load(mb + t); ra = wasm_f32x4_add(ra, m); rb = wasm_f32x4_add(rb, m); }
      wasm_v128_store(sa + t, ra);
      wasm_v128_store(sb + t, rb);
    }
  }
  /* each query's own last keys, as scores_into would take them; then its softmax */
  for (int r = 0; r < g; r++) {
    scores_from(qi + (long)r * ldq + h * hd, kh, mb, scratch + (long)r * ld, t4, n0 + r, D, hd, scale);
    softmax_inplace(scratch + (long)r * ld, n0 + r);
  }
  /* o_r = sum_t p_r[t] v[t]: 8 lanes of every query at once over [0, n0), then each query's last ones */
  int c32 = hd & ~31;
  for (int c = 0; c < c32; c += 8) {
    /* named accumulators, not an array: an array went to the stack (one per instance, at the same
     * address in every thread's instance: the threads overwrote each other's sums) */
    v128_t o00 = wasm_f32x4_splat(0.0f), o01 = o00, o10 = o00, o11 = o00, o20 = o00, o21 = o00, o30 = o00, o31 = o00;
    const f32* vt = vh + c;
    const f32* p0 = scratch;
    const f32* p1 = g > 1 ? p0 + ld : p0;
    const f32* p2 = g > 2 ? p0 + 2 * ld : p1;
    const f32* p3 = g > 3 ? p0 + 3 * ld : p2;
    for (int t = 0; t < n0; t++, vt += D) {
      v128_t w0 = wasm_v128_load(vt), w1 = wasm_v128_load(vt + 4);
      v128_t pt = wasm_v128_load32_splat(p0 + t);
      o00 = MADD(pt, w0, o00); o01 = MADD(pt, w1, o01);
      pt = wasm_v128_load32_splat(p1 + t);
      o10 = MADD(pt, w0, o10); o11 = MADD(pt, w1, o11);
      pt = wasm_v128_load32_splat(p2 + t);
      o20 = MADD(pt, w0, o20); o21 = MADD(pt, w1, o21);
      pt = wasm_v128_load32_splat(p3 + t);
      o30 = MADD(pt, w0, o30); o31 = MADD(pt, w1, o31);
    }
    for (int r = 0; r < g; r++) {
      const f32* pr = scratch + (long)r * ld;
      v128_t u0 = r == 0 ? o00 : r == 1 ? o10 : r == 2 ? o20 : o30;
      v128_t u1 = r == 0 ? o01 : r == 1 ? o11 : r == 2 ? o21 : o31;
      const f32* vr = vh + (long)n0 * D + c;
      for (int t = n0; t < n0 + r; t++, vr += D) {
        v128_t pt = wasm_v128_load32_splat(pr + t);
        u0 = MADD(pt, wasm_v128_load(vr), u0);
        u1 = MADD(pt, wasm_v128_load(vr + 4), u1);
      }
      f32* out = oi + (long)r * ldo + h * hd + c;
      wasm_v128_store(out, u0);
      wasm_v128_store(out + 4, u1);
    }
  }
  for (int r = 0; r < g; r++) { /* lanes past the 32-blocks: as weighted_sum's scalar tail */
    const f32* pr = scratch + (long)r * ld;
    for (int c = c32; c < hd; c++) oi[(long)r * ldo + h * hd + c] = lane_sum(pr, vh + c, n0 + r, D);
  }
}

/* Causal attention of T new queries per row against the cache: query i of row b sees positions
 * [0, past + i] of k/v [B, ldkv, D] (the new keys already written there at [past, past + T)).
 * q [B*T, D], mask [B, past + T] additive (padding) or 0, out [B*T, D], scratch >= 4 * ((past + T + 7) & ~3)
 * floats. Heads [h0, h1) only (threads split heads). T = 1 is the decode step; a prefill takes its queries
 * four at a time (attend_group). */
EXPORT(attend)
void attend(const f32* q, const f32* k, const f32* v, const f32* mask, f32* out, f32* scratch,
            int B, int T, int past, int H, int hd, int ldkv, f32 scale, int h0, int h1) {
  int D = H * hd;
  int Tk = past + T;
  for (int bi = 0; bi < B; bi++) {
    const f32* kb = k + (long)bi * ldkv * D;
    const f32* vb = v + (long)bi * ldkv * D;
    const f32* mb = mask ? mask + bi * Tk : 0;
    for (int i = 0; i < T;) {
      const f32* qi = q + (long)(bi * T + i) * D;
      f32* oi = out + (long)(bi * T + i) * D;
      int n = past + i + 1; /* causal: keys up to this query's own position */
      int g = T - i < 4 ? T - i : 4;
      if (g < 2 || (hd & 3)) g = 1;
      for (int h = h0; h < h1; h++) {
        if (g == 1) attend_head(qi, kb, vb, mb, oi, scratch, n, D, hd, scale, h);
        else attend_group(qi, D, kb, vb, mb, oi, D, scratch, g, n, D, hd, scale, h);
      }
      i += g;
    }
  }
}

/* ---------- cache bookkeeping: plain copies (JS copyWithin on a shared heap is slow) ---------- */

EXPORT(copy_f32)
void copy_f32(f32* dst, const f32* src, int n) {
  int j = 0;
  for (; j + 16 <= n; j += 16) {
    v128_t a = wasm_v128_load(src + j), b = wasm_v128_load(src + j + 4), c = wasm_v128_load(src + j + 8), d = wasm_v128_load(src + j + 12);
    wasm_v128_store(dst + j, a); wasm_v128_store(dst + j + 4, b); wasm_v128_store(dst + j + 8, c); wasm_v128_store(dst + j + 12, d);
  }
  for (; j < n; j++) dst[j] = src[j];
}

EXPORT(zero_f32)
void zero_f32(f32* dst, int n) {
  int j = 0;
  v128_t z = wasm_f32x4_splat(0.0f);
  for (; j + 4 <= n; j += 4) wasm_v128_store(dst + j, z);
  for (; j < n; j++) dst[j] = 0.0f;
}

/* ---------- linear on panel-packed float32 weights ----------
 *
 * W held as panels of 16 columns: panel p is K rows of 16 floats, (k, c) at W[(p*K + k)*16 + c], N padded
 * to 16 with zero columns. A panel is one contiguous stream: a decode step reads every weight once,
 * sequentially (measured: 27-31 GB/s from one core, against 17-18 for the row-major [K, N] walk of
 * linear_rows above, which streams four rows at a time). W points at the first panel of the n columns. */

/* one row against one panel: even and odd k in separate accumulators (two FMA chains per lane) */
static inline void panel_row(const f32* xm, const f32* wp, int K, v128_t* c0, v128_t* c1, v128_t* c2, v128_t* c3) {
  v128_t a0 = wasm_f32x4_splat(0.0f), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
  int k = 0;
  for (; k + 2 <= K; k += 2, wp += 32) {
    v128_t s = wasm_v128_load32_splat(xm + k), t = wasm_v128_load32_splat(xm + k + 1);
    a0 = MADD(s, wasm_v128_load(wp), a0); a1 = MADD(s, wasm_v128_load(wp + 4), a1);
    a2 = MADD(s, wasm_v128_load(wp + 8), a2); a3 = MADD(s, wasm_v128_load(wp + 12), a3);
    b0 = MADD(t, wasm_v128_load(wp + 16), b0); b1 = MADD(t, wasm_v128_load(wp + 20), b1);
    b2 = MADD(t, wasm_v128_load(wp + 24), b2); b3 = MADD(t, wasm_v128_load(wp + 28), b3);
  }
  if (k < K) {
    v128_t s = wasm_v128_load32_splat(xm + k);
    a0 = MADD(s, wasm_v128_load(wp), a0); a1 = MADD(s, wasm_v128_load(wp + 4), a1);
    a2 = MADD(s, wasm_v128_load(wp + 8), a2); a3 = MADD(s, wasm_v128_load(wp + 12), a3);
  }
  *c0 = wasm_f32x4_add(a0, b0); *c1 = wasm_f32x4_add(a1, b1); *c2 = wasm_f32x4_add(a2, b2); *c3 = wasm_f32x4_add(a3, b3);
}

/* y[0:nc] = act(v + b) for 4 columns, nc of them valid */
static inline void store4(f32* y, v128_t v, const f32* b, int nc, int act) {
  if (nc >= 4) {
    if (b) v = wasm_f32x4_add(v, wasm_v128_load(b));
    wasm_v128_store(y, v_act(v, act));
    return;
  }
  f32 v0 = wasm_f32x4_extract_lane(v, 0), v1 = wasm_f32x4_extract_lane(v, 1), v2 = wasm_f32x4_extract_lane(v, 2);
  if (nc > 0) y[0] = s_act(b ? v0 + b[0] : v0, act);
  if (nc > 1) y[1] = s_act(b ? v1 + b[1] : v1, act);
  if (nc > 2) y[2] = s_act(b ? v2 + b[2] : v2, act);
}

#define PKC 256
/* Many rows, a full panel: per half panel (8 columns) and block of PKC k, a 4-row x 8-column register
 * tile; y holds the running sums between k blocks; bias added on the last block (act applied after). */
#define TILE_OUT(yr, lo, hi)                                                          \
  do {                                                                                \
    if (last && bh) { lo = wasm_f32x4_add(lo, wasm_v128_load(bh)); hi = wasm_f32x4_add(hi, wasm_v128_load(bh + 4)); } \
    wasm_v128_store(yr, lo); wasm_v128_store((yr) + 4, hi);                           \
  } while (0)
static void panel_tiles(const f32* x, const f32* wp, const f32* b, f32* y, int M, int K, int ld, int ldx) {
  for (int h = 0; h < 2; h++) {
    const f32* wh = wp + 8 * h;
    const f32* bh = b ? b + 8 * h : 0;
    for (int k0 = 0; k0 < K; k0 += PKC) {
      int k1 = k0 + PKC < K ? k0 + PKC : K;
      int last = k1 == K;
      for (int m = 0; m < M; m += 4) {
        /* a last tile of 1-3 rows repeats its last row in the missing ones: the same inputs, the same
         * sums, stored twice to the same place (a remainder row on its own read the whole panel from L2) */
        int r1 = m + 1 < M ? 1 : 0, r2 = m + 2 < M ? 2 : r1, r3 = m + 3 < M ? 3 : r2;
        f32* y0 = y + (long)m * ld + 8 * h;
        f32* y1 = y0 + (long)r1 * ld;
        f32* y2 = y0 + (long)r2 * ld;
        f32* y3 = y0 + (long)r3 * ld;
        v128_t a00, a01, a10, a11, a20, a21, a30, a31;
        if (k0 == 0) {
          a00 = a01 = a10 = a11 = a20 = a21 = a30 = a31 = wasm_f32x4_splat(0.0f);
        } else {
          a00 = wasm_v128_load(y0); a01 = wasm_v128_load(y0 + 4);
          a10 = wasm_v128_load(y1); a11 = wasm_v128_load(y1 + 4);
          a20 = wasm_v128_load(y2); a21 = wasm_v128_load(y2 + 4);
          a30 = wasm_v128_load(y3); a31 = wasm_v128_load(y3 + 4);
        }
        const f32* x0 = x + (long)m * ldx;
        const f32* x1 = x0 + (long)r1 * ldx;
        const f32* x2 = x0 + (long)r2 * ldx;
        const f32* x3 = x0 + (long)r3 * ldx;
        const f32* w = wh + (long)k0 * 16;
        for (int k = k0; k < k1; k++, w += 16) {
          v128_t w0 = wasm_v128_load(w), w1 = wasm_v128_load(w + 4);
          v128_t s;
          s = wasm_v128_load32_splat(x0 + k); a00 = MADD(s, w0, a00); a01 = MADD(s, w1, a01);
          s = wasm_v128_load32_splat(x1 + k); a10 = MADD(s, w0, a10); a11 = MADD(s, w1, a11);
          s = wasm_v128_load32_splat(x2 + k); a20 = MADD(s, w0, a20); a21 = MADD(s, w1, a21);
          s = wasm_v128_load32_splat(x3 + k); a30 = MADD(s, w0, a30); a31 = MADD(s, w1, a31);
        }
        TILE_OUT(y0, a00, a01);
        TILE_OUT(y1, a10, a11);
        TILE_OUT(y2, a20, a21);
        TILE_OUT(y3, a30, a31);
      }
    }
  }
}
#undef TILE_OUT

/* y[m, 0:n] += r[m, 0:n] (the residual, row stride ld), after the bias and activation: the same float
 * additions, in the same order, as a separate add of r to the product's output */
static void add_residual(f32* y, const f32* r, int M, int n, int ld) {
  for (int m = 0; m < M; m++) {
    f32* ym = y + (long)m * ld;
    const f32* rm = r + (long)m * ld;
    int j = 0;
    for (; j + 4 <= n; j += 4) wasm_v128_store(ym + j, wasm_f32x4_add(wasm_v128_load(ym + j), wasm_v128_load(rm + j)));
    for (; j < n; j++) ym[j] = ym[j] + rm[j];
  }
}

/* panel p of y[:, 0:n] = act(x @ W + b) (+ r): every row of the 16 columns (or fewer, at the end) it holds */
static void linear_panel(const f32* x, const f32* W, const f32* b, f32* y, int M, int K, int n, int ld, int ldx, int act, const f32* r, int p) {
  /* 4-row tiles from 4 rows on (batched decode reads each panel once per 4 rows, not per row), a last
   * tile of 2-3 rows too (measured, 124M decode: 7 rows 46 -> 39 ms); a lone last row, and one to three
   * rows in all, go row by row (a tile multiplies 4 rows: 5 rows took 34 ms so, 36 with a tile) */
  const f32* wp = W + (long)p * K * 16;
  int j = p * 16;
  int nc = n - j < 16 ? n - j : 16;
  const f32* bj = b ? b + j : 0;
  int tiled = nc == 16 && M >= 4 ? (M & 3) == 1 ? M - 1 : M : 0; /* a short last panel (the head's) takes the row path: y has no room past n */
  if (tiled) panel_tiles(x, wp, bj, y + j, tiled, K, ld, ldx);
  for (int m = tiled; m < M; m++) {
    v128_t c0, c1, c2, c3;
    panel_row(x + (long)m * ldx, wp, K, &c0, &c1, &c2, &c3);
    f32* ym = y + (long)m * ld + j;
    store4(ym, c0, bj, nc, act);
    if (nc > 4) store4(ym + 4, c1, bj ? bj + 4 : 0, nc - 4, act);
    if (nc > 8) store4(ym + 8, c2, bj ? bj + 8 : 0, nc - 8, act);
    if (nc > 12) store4(ym + 12, c3, bj ? bj + 12 : 0, nc - 12, act);
  }
  if (tiled && act) for (int m = 0; m < tiled; m++) apply_act(y + (long)m * ld + j, nc, act);
  if (r) add_residual(y + j, r + j, M, nc, ld); /* every row of this panel, tiled or not */
}

EXPORT(linear_p)
void linear_p(const f32* x, const f32* W, const f32* b, f32* y, int M, int K, int n, int ld, int ldx, int act, const f32* r) {
  int panels = (n + 15) >> 4;
  for (int p = 0; p < panels; p++) linear_panel(x, W, b, y, M, K, n, ld, ldx, act, r, p);
}

/* out[i, 0:K] = W[0:K, ids[i]]: rows of the tied embedding, read from the head's panels */
EXPORT(gather_p)
void gather_p(const f32* W, const i32_t* ids, f32* out, int n, int K) {
  for (int i = 0; i < n; i++) {
    int v = ids[i];
    const f32* col = W + (long)(v >> 4) * K * 16 + (v & 15);
    f32* o = out + (long)i * K;
    for (int k = 0; k < K; k++) o[k] = col[k * 16];
  }
}

/* ---------- int8 (q8) linear: dynamic activation quantization, int8 x int8 -> int32 ----------
 *
 * Weights: int8, symmetric, one float scale per output column (ws). They are held packed for these
 * kernels in *panels* of 16 columns: panel p is (K4/4) groups of 16 int32 words, word (g, c) holding
 * the 4 bytes W[4g..4g+3, 16p + c]. So a panel is contiguous (one sequential stream per panel), a
 * k-group of a panel is one 64-byte line, and i32x4.dot_i16x8_s pairs the 4 bytes of a word with
 * 4 activations. K4 = K rounded up to 4 (zero rows), N rounded up to 16 (zero columns).
 *
 * Activations: each row of x is quantized on the fly (quantize_rows): xs = max|x| / 127,
 * xq = round_half_even(x * (127 / max|x|)) as int16 in [-127, 127]. The products are exact in int32,
 * and y = act(f32(acc) * (xs * ws) + b) in float32 with a separate multiply and add (no fused
 * multiply-add), so both builds give the same bits and NumPy can simulate them exactly
 * (reference/quantize_ref.py). */

typedef signed char i8;
typedef short i16;
typedef int i32;

/* The q8 kernels are exact to the letter of their float32 formulas (the build's -ffast-math would turn
 * mx / 127 into mx * (1/127) and regroup f32(acc) * (xs * ws)): tests compare them bit for bit. The
 * pragma covers code below it; wasm_simd128.h's intrinsics are defined above it, so the epilogue's
 * float products use these two instead. */
#pragma clang fp reassociate(off) reciprocal(off)
static inline v128_t mul_exact(v128_t a, v128_t b) { return (v128_t)((__f32x4)a * (__f32x4)b); }

EXPORT(quantize_rows)
void quantize_rows(const f32* x, i16* xq, f32* xs, int M, int K, int ldx, int K4) {
  for (int m = 0; m < M; m++) {
    const f32* xm = x + (long)m * ldx;
    i16* qm = xq + (long)m * K4;
    v128_t vmx = wasm_f32x4_splat(0.0f);
    int k = 0;
    for (; k + 4 <= K; k += 4) vmx = wasm_f32x4_pmax(vmx, wasm_f32x4_abs(wasm_v128_load(xm + k)));
    f32 mx = wasm_f32x4_extract_lane(vmx, 0);
    for (int l = 1; l < 4; l++) { f32 v = l == 1 ? wasm_f32x4_extract_lane(vmx, 1) : l == 2 ? wasm_f32x4_extract_lane(vmx, 2) : wasm_f32x4_extract_lane(vmx, 3); mx = v > mx ? v : mx; }
    for (; k < K; k++) { f32 a = xm[k] < 0 ? -xm[k] : xm[k]; mx = a > mx ? a : mx; }
    if (!(mx > 0.0f)) { /* all zero (NaN/Inf are refused earlier, by the sampler) */
      xs[m] = 0.0f;
      for (k = 0; k < K4; k++) qm[k] = 0;
      continue;
    }
    f32 inv = 127.0f / mx;
    xs[m] = mx / 127.0f;
    const v128_t vinv = wasm_f32x4_splat(inv), lim = wasm_i32x4_splat(127), nlim = wasm_i32x4_splat(-127);
    k = 0;
    for (; k + 8 <= K; k += 8) {
      v128_t a = wasm_i32x4_trunc_sat_f32x4(wasm_f32x4_nearest(mul_exact(wasm_v128_load(xm + k), vinv)));
      v128_t c = wasm_i32x4_trunc_sat_f32x4(wasm_f32x4_nearest(mul_exact(wasm_v128_load(xm + k + 4), vinv)));
      a = wasm_i32x4_max(wasm_i32x4_min(a, lim), nlim);
      c = wasm_i32x4_max(wasm_i32x4_min(c, lim), nlim);
      wasm_v128_store(qm + k, wasm_i16x8_narrow_i32x4(a, c));
    }
    for (; k < K; k++) {
      f32 r = wasm_f32x4_extract_lane(wasm_f32x4_nearest(wasm_f32x4_splat(xm[k] * inv)), 0);
      qm[k] = (i16)(r > 127.0f ? 127 : r < -127.0f ? -127 : (int)r);
    }
    for (; k < K4; k++) qm[k] = 0;
  }
}

/* [a0 a1 | a2 a3]: the two lanes of each column summed -> 4 columns */
static inline v128_t pair_sum(v128_t lo, v128_t hi) {
  return wasm_i32x4_add(wasm_i32x4_shuffle(lo, hi, 0, 2, 4, 6), wasm_i32x4_shuffle(lo, hi, 1, 3, 5, 7));
}

/* y[0:nc] = act(f32(acc) * (xs * ws) + b) for 4 columns (nc of them valid): the scaling in exact
 * float32 products, then store4's bias add (a lone add: nothing for -ffast-math to regroup) */
static inline void q8_store4(f32* y, v128_t acc, f32 xs, const f32* ws, const f32* b, int nc, int act) {
  store4(y, mul_exact(wasm_f32x4_convert_i32x4(acc), mul_exact(wasm_f32x4_splat(xs), wasm_v128_load(ws))), b, nc, act);
}

#define DOT(w16, xp) wasm_i32x4_dot_i16x8(w16, xp)

/* One row against a whole panel (16 columns): decode. */
static void q8_panel_row(const i16* xq, f32 xs, const i32* wp, int G, const f32* ws, const f32* b, f32* y, int nc, int act) {
  v128_t a0 = wasm_i32x4_splat(0), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  for (int g = 0; g < G; g++, wp += 16) {
    v128_t xp = wasm_v128_load64_splat(xq + 4 * g);
    v128_t w0 = wasm_v128_load(wp), w1 = wasm_v128_load(wp + 4), w2 = wasm_v128_load(wp + 8), w3 = wasm_v128_load(wp + 12);
    a0 = wasm_i32x4_add(a0, DOT(wasm_i16x8_extend_low_i8x16(w0), xp));
    a1 = wasm_i32x4_add(a1, DOT(wasm_i16x8_extend_high_i8x16(w0), xp));
    a2 = wasm_i32x4_add(a2, DOT(wasm_i16x8_extend_low_i8x16(w1), xp));
    a3 = wasm_i32x4_add(a3, DOT(wasm_i16x8_extend_high_i8x16(w1), xp));
    a4 = wasm_i32x4_add(a4, DOT(wasm_i16x8_extend_low_i8x16(w2), xp));
    a5 = wasm_i32x4_add(a5, DOT(wasm_i16x8_extend_high_i8x16(w2), xp));
    a6 = wasm_i32x4_add(a6, DOT(wasm_i16x8_extend_low_i8x16(w3), xp));
    a7 = wasm_i32x4_add(a7, DOT(wasm_i16x8_extend_high_i8x16(w3), xp));
  }
  q8_store4(y, pair_sum(a0, a1), xs, ws, b, nc, act);
  if (nc > 4) q8_store4(y + 4, pair_sum(a2, a3), xs, ws + 4, b ? b + 4 : 0, nc - 4, act);
  if (nc > 8) q8_store4(y + 8, pair_sum(a4, a5), xs, ws + 8, b ? b + 8 : 0, nc - 8, act);
  if (nc > 12) q8_store4(y + 12, pair_sum(a6, a7), xs, ws + 12, b ? b + 12 : 0, nc - 12, act);
}

/* Two rows against half a panel (8 columns, h = 0 or 1): each weight vector serves both rows. */
static void q8_half_rows2(const i16* xa, const i16* xb, f32 sa, f32 sb, const i32* wp, int G, int h,
                          const f32* ws, const f32* b, f32* ya, f32* yb, int nc, int act) {
  v128_t a0 = wasm_i32x4_splat(0), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
  wp += 8 * h;
  for (int g = 0; g < G; g++, wp += 16) {
    v128_t w0 = wasm_v128_load(wp), w1 = wasm_v128_load(wp + 4);
    v128_t l0 = wasm_i16x8_extend_low_i8x16(w0), h0 = wasm_i16x8_extend_high_i8x16(w0);
    v128_t l1 = wasm_i16x8_extend_low_i8x16(w1), h1 = wasm_i16x8_extend_high_i8x16(w1);
    v128_t pa = wasm_v128_load64_splat(xa + 4 * g), pb = wasm_v128_load64_splat(xb + 4 * g);
    a0 = wasm_i32x4_add(a0, DOT(l0, pa)); a1 = wasm_i32x4_add(a1, DOT(h0, pa));
    a2 = wasm_i32x4_add(a2, DOT(l1, pa)); a3 = wasm_i32x4_add(a3, DOT(h1, pa));
    b0 = wasm_i32x4_add(b0, DOT(l0, pb)); b1 = wasm_i32x4_add(b1, DOT(h0, pb));
    b2 = wasm_i32x4_add(b2, DOT(l1, pb)); b3 = wasm_i32x4_add(b3, DOT(h1, pb));
  }
  q8_store4(ya, pair_sum(a0, a1), sa, ws, b, nc, act);
  if (nc > 4) q8_store4(ya + 4, pair_sum(a2, a3), sa, ws + 4, b ? b + 4 : 0, nc - 4, act);
  if (yb) {
    q8_store4(yb, pair_sum(b0, b1), sb, ws, b, nc, act);
    if (nc > 4) q8_store4(yb + 4, pair_sum(b2, b3), sb, ws + 4, b ? b + 4 : 0, nc - 4, act);
  }
}

/* y[:, 0:n] = act(dequant(xq) @ dequant(W[:, 0:n]) + b[0:n]); W points at the first panel of the n
 * columns (n's first column is a multiple of 16: callers split work by panels), ws and b likewise
 * offset; y has row stride ld. */
EXPORT(linear_q8)
void linear_q8(const i16* xq, const f32* xs, const i32* W, const f32* ws, const f32* b, f32* y, int M, int K4, int n, int ld, int act) {
  int G = K4 >> 2;
  int panels = (n + 15) >> 4;
  for (int p = 0; p < panels; p++) {
    const i32* wp = W + (long)p * G * 16;
    int j = p * 16;
    int nc = n - j < 16 ? n - j : 16;
    const f32* bj = b ? b + j : 0;
    if (M == 1) { q8_panel_row(xq, xs[0], wp, G, ws + j, bj, y + j, nc, act); continue; }
    for (int h = 0; h < 2; h++) {
      int nh = nc - 8 * h;
      if (nh <= 0) break;
      if (nh > 8) nh = 8;
      for (int m = 0; m < M; m += 2) {
        int two = m + 1 < M;
        q8_half_rows2(xq + (long)m * K4, xq + (long)(two ? m + 1 : m) * K4, xs[m], xs[two ? m + 1 : m], wp, G, h,
                      ws + j + 8 * h, bj ? bj + 8 * h : 0, y + (long)m * ld + j + 8 * h, two ? y + (long)(m + 1) * ld + j + 8 * h : 0, nh, act);
      }
    }
  }
}

/* Weight-only variant (measured against linear_q8, not used by the engine: see docs/q8.md): float
 * activations times int8 weights widened to float in registers, y = act(ws * (x @ q) + b). Few rows. */
EXPORT(linear_q8w)
void linear_q8w(const f32* x, const i32* W, const f32* ws, const f32* b, f32* y, int M, int K4, int n, int ld, int act) {
  int G = K4 >> 2;
  int panels = (n + 15) >> 4;
  for (int p = 0; p < panels; p++) {
    for (int h = 0; h < 2; h++) {
      int j = p * 16 + 8 * h;
      if (j >= n) break;
      int nh = n - j < 8 ? n - j : 8;
      for (int m = 0; m < M; m++) {
        const f32* xm = x + (long)m * K4;
        const i32* wp = W + (long)p * G * 16 + 8 * h;
        v128_t a0 = wasm_f32x4_splat(0.0f), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
        for (int g = 0; g < G; g++, wp += 16) {
          v128_t xv = wasm_v128_load(xm + 4 * g);
          v128_t w0 = wasm_v128_load(wp), w1 = wasm_v128_load(wp + 4);
          v128_t l0 = wasm_i16x8_extend_low_i8x16(w0), h0 = wasm_i16x8_extend_high_i8x16(w0);
          v128_t l1 = wasm_i16x8_extend_low_i8x16(w1), h1 = wasm_i16x8_extend_high_i8x16(w1);
          a0 = MADD(wasm_f32x4_convert_i32x4(wasm_i32x4_extend_low_i16x8(l0)), xv, a0);
          a1 = MADD(wasm_f32x4_convert_i32x4(wasm_i32x4_extend_high_i16x8(l0)), xv, a1);
          a2 = MADD(wasm_f32x4_convert_i32x4(wasm_i32x4_extend_low_i16x8(h0)), xv, a2);
          a3 = MADD(wasm_f32x4_convert_i32x4(wasm_i32x4_extend_high_i16x8(h0)), xv, a3);
          a4 = MADD(wasm_f32x4_convert_i32x4(wasm_i32x4_extend_low_i16x8(l1)), xv, a4);
          a5 = MADD(wasm_f32x4_convert_i32x4(wasm_i32x4_extend_high_i16x8(l1)), xv, a5);
          a6 = MADD(wasm_f32x4_convert_i32x4(wasm_i32x4_extend_low_i16x8(h1)), xv, a6);
          a7 = MADD(wasm_f32x4_convert_i32x4(wasm_i32x4_extend_high_i16x8(h1)), xv, a7);
        }
        f32* ym = y + (long)m * ld + j;
        v128_t s0 = wasm_f32x4_add(wasm_i32x4_shuffle(a0, a1, 0, 4, 1, 5), wasm_i32x4_shuffle(a0, a1, 2, 6, 3, 7));
        v128_t s1 = wasm_f32x4_add(wasm_i32x4_shuffle(a2, a3, 0, 4, 1, 5), wasm_i32x4_shuffle(a2, a3, 2, 6, 3, 7));
        v128_t c0 = wasm_f32x4_add(wasm_i32x4_shuffle(s0, s1, 0, 1, 4, 5), wasm_i32x4_shuffle(s0, s1, 2, 3, 6, 7));
        v128_t s2 = wasm_f32x4_add(wasm_i32x4_shuffle(a4, a5, 0, 4, 1, 5), wasm_i32x4_shuffle(a4, a5, 2, 6, 3, 7));
        v128_t s3 = wasm_f32x4_add(wasm_i32x4_shuffle(a6, a7, 0, 4, 1, 5), wasm_i32x4_shuffle(a6, a7, 2, 6, 3, 7));
        v128_t c1 = wasm_f32x4_add(wasm_i32x4_shuffle(s2, s3, 0, 1, 4, 5), wasm_i32x4_shuffle(s2, s3, 2, 3, 6, 7));
        c0 = wasm_f32x4_mul(c0, wasm_v128_load(ws + j));
        c1 = wasm_f32x4_mul(c1, wasm_v128_load(ws + j + 4));
        if (nh == 8) {
          if (b) { c0 = wasm_f32x4_add(c0, wasm_v128_load(b + j)); c1 = wasm_f32x4_add(c1, wasm_v128_load(b + j + 4)); }
          wasm_v128_store(ym, v_act(c0, act));
          wasm_v128_store(ym + 4, v_act(c1, act));
        } else {
          for (int c = 0; c < nh; c++) {
            f32 v = c == 0 ? wasm_f32x4_extract_lane(c0, 0) : c == 1 ? wasm_f32x4_extract_lane(c0, 1) : c == 2 ? wasm_f32x4_extract_lane(c0, 2) : c == 3 ? wasm_f32x4_extract_lane(c0, 3)
                  : c == 4 ? wasm_f32x4_extract_lane(c1, 0) : c == 5 ? wasm_f32x4_extract_lane(c1, 1) : c == 6 ? wasm_f32x4_extract_lane(c1, 2) : wasm_f32x4_extract_lane(c1, 3);
            ym[c] = s_act(b ? v + b[j + c] : v, act);
          }
        }
      }
    }
  }
}

/* out[i, 0:K] = ws[v] * W[0:K, v] for v = ids[i]: rows of the tied q8 embedding, read from the head's panels. */
EXPORT(gather_q8)
void gather_q8(const i32* W, const f32* ws, const i32* ids, f32* out, int n, int K, int K4) {
  int G = K4 >> 2;
  for (int i = 0; i < n; i++) {
    int v = ids[i];
    const i8* col = (const i8*)(W + (long)(v >> 4) * G * 16 + (v & 15));
    f32 s = ws[v];
    f32* o = out + (long)i * K;
    for (int k = 0; k < K; k++) o[k] = (f32)col[(k >> 2) * 64 + (k & 3)] * s;
  }
}

/* dst[m, 0:n] = src[m, 0:n] for m < M, rows of stride ldd / lds: a column block of a matrix (the q|k|v split
 * of c_attn's output; tfjs's own slice copies through JS typed arrays, slow on a shared heap). */
EXPORT(copy_cols)
void copy_cols(f32* dst, const f32* src, int M, int n, int ldd, int lds) {
  for (int m = 0; m < M; m++) copy_f32(dst + (long)m * ldd, src + (long)m * lds, n);
}

/* ---------- one transformer block of a step in one call ----------
 *
 * Every thread of the team runs block_step at once (thread tid of nth) and they meet at a barrier
 * between stages. One call per block instead of ~10 tfjs ops and 5 jobs posted and awaited from JS:
 * the dispatch, the JS between the products and each job's start and end on the other threads are
 * gone. Each piece of work calls the same code as the separate kernels (layer_norm, linear_panel,
 * attend_head) in the same order per output element: the same bits, whichever thread computes it.
 *
 * The N rows are any mix: a batch's decode rows (one new position each, each with its own cache row)
 * and the positions of prompt chunks (several rows on one cache row, at consecutive positions). Row n's
 * descriptor (desc[4n..4n+3]) says where its cache row starts (keys, values: [cap, D] each), its
 * position there (its key/value are written at pos, it attends to [0, pos]) and its additive mask row
 * (>= pos + 1 floats, or 0); then, after the N descriptors, one int per row: the queries of the group
 * it starts (up to 4 consecutive positions of one cache row, attended together: attend_group), 1 alone,
 * 0 inside a group. Where rows share a cache row (`shared`: prompt chunks), every row's
 * key/value is written before any row attends, so a prompt position sees the chunk's earlier positions,
 * as the separate kernels' causal attention does; in a plain decode step each row writes its own as it
 * attends (one barrier fewer per block).
 *
 * A stage's pieces (rows, weight panels, or one head of one row) are cut into nth contiguous ranges,
 * one per thread, each with its own counter: a thread streams its own range in order (one sequential
 * read of the weights per thread), then takes what is left of the others' (a late or preempted thread
 * does not hold the stage up by more than the piece it is on).
 *
 * ctl: CTL_INTS(nth) control words (zeroed by the caller; the weight table at CTL_TABLE), then the
 * floats: h [N, D], qkv [N, 3D], a [N, D], x1 [N, D], h2 [N, D], f [N, F], four softmax rows of
 * (maxTk + 7) & ~3 floats per thread (maxTk: the most positions a row attends to). */
#define CTL_BAR 0     /* threads arrived at the barrier */
#define CTL_GEN 16    /* barrier generation (its own cache line) */
#define CTL_ERR 32    /* set when a barrier gave up waiting, or the caller's part failed */
#define CTL_TABLE 48  /* ln_1 g, b; c_attn w, b; attn c_proj w, b; ln_2 g, b; c_fc w, b; mlp c_proj w, b */
#define STAGES 8
#define CTL_NEXT(nth, stage, owner) (64 + ((stage) * (nth) + (owner)) * 16) /* each counter on its own line */
#define CTL_INTS(nth) (64 + STAGES * (nth) * 16)
#define CTL_SLEEP 40   /* threads blocked in the barrier's wait (same line as CTL_ERR: both rare) */
#define SPINS 65536    /* polls (~0.1 ms) before a thread that may block waits instead */
#define WAITS 10000    /* rounds of SPINS polls and a 1 ms wait: ~10 s, then give up (16x the rounds, no waits, for a thread that may not block) */

/* All nth threads meet here. A thread polls for a while, then (where it may block: not a browser's main
 * thread) sleeps in memory.atomic.wait so that a preempted partner gets the core back sooner; the last to
 * arrive wakes sleepers. Returns 0 (and sets CTL_ERR, which the others see) when a thread never comes. */
static int team_barrier(i32_t* ctl, int nth, int may_block) {
  if (nth == 1) return 1;
  int gen = __atomic_load_n(ctl + CTL_GEN, __ATOMIC_ACQUIRE);
  if (__atomic_fetch_add(ctl + CTL_BAR, 1, __ATOMIC_ACQ_REL) == nth - 1) {
    __atomic_store_n(ctl + CTL_BAR, 0, __ATOMIC_RELAXED);
    __atomic_fetch_add(ctl + CTL_GEN, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(ctl + CTL_SLEEP, __ATOMIC_SEQ_CST)) __builtin_wasm_memory_atomic_notify(ctl + CTL_GEN, nth);
    return 1;
  }
  for (int round = 0, rounds = may_block ? WAITS : 16 * WAITS; round < rounds; round++) {
    for (int spin = 0; spin < SPINS; spin++) {
      if (__atomic_load_n(ctl + CTL_GEN, __ATOMIC_ACQUIRE) != gen) return 1;
      if (__atomic_load_n(ctl + CTL_ERR, __ATOMIC_RELAXED)) return 0;
    }
    if (may_block) {
      __atomic_fetch_add(ctl + CTL_SLEEP, 1, __ATOMIC_SEQ_CST);
      __builtin_wasm_memory_atomic_wait32(ctl + CTL_GEN, gen, 1000000LL); /* returns at once if GEN moved */
      __atomic_fetch_sub(ctl + CTL_SLEEP, 1, __ATOMIC_SEQ_CST);
    }
  }
  __atomic_store_n(ctl + CTL_ERR, 1, __ATOMIC_RELAXED);
  return 0;
}

/* The next piece of `total` for thread tid in stage `stage`: its own range first, then the others'
 * in turn; -1 when none is left. *u is the range being taken from (0 = own), kept by the caller. */
static inline int next_piece(i32_t* ctl, int stage, int total, int tid, int nth, int* u) {
  while (*u < nth) {
    int owner = tid + *u < nth ? tid + *u : tid + *u - nth;
    int hi = (int)((long long)total * (owner + 1) / nth);
    int c = (int)((long long)total * owner / nth) + __atomic_fetch_add(ctl + CTL_NEXT(nth, stage, owner), 1, __ATOMIC_RELAXED);
    if (c < hi) return c;
#ifdef NO_STEAL
    return -1;
#endif
    (*u)++;
  }
  return -1;
}
#define FOR_PIECES(c, stage, total) for (int u_ = 0, c; (c = next_piece(ctl, (stage), (total), tid, nth, &u_)) >= 0;)

EXPORT(block_step)
void block_step(const f32* x, f32* y, i32_t* ctl, const i32_t* desc, int N, int maxTk, int shared,
                int H, int D, int F, f32 eps, f32 scale, int act, int tid, int nth, int may_block) {
  const f32* const* P = (const f32* const*)(ctl + CTL_TABLE);
  f32* h = (f32*)(ctl + CTL_INTS(nth));
  f32* qkv = h + (long)N * D;
  f32* a = qkv + 3L * N * D;
  f32* x1 = a + (long)N * D;
  f32* h2 = x1 + (long)N * D;
  f32* f = h2 + (long)N * D;
  f32* soft = f + (long)N * F + (long)tid * 4 * ((maxTk + 7) & ~3);
  const i32_t* grp = desc + 4L * N; /* per row: queries of its group when it starts one (1-4), else 0 */
  int hd = D / H;
  int pd = (D + 15) >> 4, pf = (F + 15) >> 4; /* panels of a D- and an F-wide output */
#define ROW_K(n) ((f32*)(__SIZE_TYPE__)(unsigned)desc[4 * (n)])
#define ROW_V(n) ((f32*)(__SIZE_TYPE__)(unsigned)desc[4 * (n) + 1])
#define ROW_POS(n) desc[4 * (n) + 2]
#define ROW_MASK(n) ((const f32*)(__SIZE_TYPE__)(unsigned)desc[4 * (n) + 3])
#define ROW_GROUP(n) grp[n]
  /* h = ln_1(x) */
  FOR_PIECES(m, 0, N) layer_norm(x + (long)m * D, P[0], P[1], h + (long)m * D, 1, D, eps);
  if (!team_barrier(ctl, nth, may_block)) return;
  /* qkv = h @ c_attn + b */
  FOR_PIECES(p, 1, (3 * D + 15) >> 4) linear_panel(h, P[2], P[3], qkv, N, D, 3 * D, 3 * D, D, 0, 0, p);
  if (!team_barrier(ctl, nth, may_block)) return;
  /* every row's key and value into its cache row at its position, all before any row attends when
   * rows share a cache row (prompt chunks); else each (row, head) piece writes its own just before */
  if (shared) {
    FOR_PIECES(n, 2, N) {
      const f32* row = qkv + 3L * n * D;
      copy_f32(ROW_K(n) + (long)ROW_POS(n) * D, row + D, D);
      copy_f32(ROW_V(n) + (long)ROW_POS(n) * D, row + 2 * D, D);
    }
    if (!team_barrier(ctl, nth, may_block)) return;
  }
  /* per row and head: attention over [0, pos] */
#ifndef SKIP_ATTN
  FOR_PIECES(c, 3, N * H) {
    int n = c / H, hh = c % H;
    const f32* row = qkv + 3L * n * D;
    if (!shared) {
      copy_f32(ROW_K(n) + (long)ROW_POS(n) * D + hh * hd, row + D + hh * hd, hd);
      copy_f32(ROW_V(n) + (long)ROW_POS(n) * D + hh * hd, row + 2 * D + hh * hd, hd);
    }
    int g = ROW_GROUP(n);
    if (g == 1) attend_head(row, ROW_K(n), ROW_V(n), ROW_MASK(n), a + (long)n * D, soft, ROW_POS(n) + 1, D, hd, scale, hh);
    else if (g > 1) attend_group(row, 3 * D, ROW_K(n), ROW_V(n), ROW_MASK(n), a + (long)n * D, D, soft, g, ROW_POS(n) + 1, D, hd, scale, hh);
  }
#endif
#undef ROW_K
#undef ROW_V
#undef ROW_POS
#undef ROW_MASK
#undef ROW_GROUP
  if (!team_barrier(ctl, nth, may_block)) return;
  /* x1 = x + a @ c_proj + b */
  FOR_PIECES(p, 4, pd) linear_panel(a, P[4], P[5], x1, N, D, D, D, D, 0, x, p);
  if (!team_barrier(ctl, nth, may_block)) return;
  /* h2 = ln_2(x1) */
  FOR_PIECES(m, 5, N) layer_norm(x1 + (long)m * D, P[6], P[7], h2 + (long)m * D, 1, D, eps);
  if (!team_barrier(ctl, nth, may_block)) return;
  /* f = act(h2 @ c_fc + b) */
  FOR_PIECES(p, 6, pf) linear_panel(h2, P[8], P[9], f, N, D, F, F, D, act, 0, p);
  if (!team_barrier(ctl, nth, may_block)) return;
  /* y = x1 + f @ c_proj + b */
  FOR_PIECES(p, 7, pd) linear_panel(f, P[10], P[11], y, N, F, D, D, F, 0, x1, p);
}
