// XLA:CPU FFI kernels for hydrajax (float32, NHWC). Compiled on first use by
// hydrajax/models/cpu_kernels.py; every kernel has a pure-XLA twin in layers.py that gives
// the same bits and is used wherever this library cannot be built or loaded.
//
// crp_depthwise: the Light-Weight RefineNet crp1 block (a chain of 4 stages, each a 5x5
// stride-1 max-pool with -inf padding 2, separable H then W, times a per-channel scale):
//   top_0 = x;  top_k = s_k * maxpool5x5(top_{k-1});  y = (((x + top_1) + top_2) + top_3) + top_4
// XLA runs this as 8 whole-image passes plus the sum; here each band of rows streams
// through all four stages with five-row rings per stage, so x is read once and y written once.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kStages = 4;
constexpr int kPad = 2;  // 5x5 window

inline float fmax_like_xla(float a, float b) { return a > b ? a : b; }

// m[i] = max over the n (1..5) rows p[0..n-1] of p[q][i], i < len.
void max_rows(const float* const* p, int n, float* __restrict m, int64_t len) {
  const float* __restrict p0 = p[0];
  const float* __restrict p1 = p[n > 1 ? 1 : 0];
  const float* __restrict p2 = p[n > 2 ? 2 : 0];
  const float* __restrict p3 = p[n > 3 ? 3 : 0];
  const float* __restrict p4 = p[n > 4 ? 4 : 0];
  for (int64_t i = 0; i < len; ++i) {
    float v = fmax_like_xla(p0[i], p1[i]);
    v = fmax_like_xla(v, p2[i]);
    v = fmax_like_xla(v, p3[i]);
    m[i] = fmax_like_xla(v, p4[i]);
  }
}

// For each column j: top[j] = s * max(hmax[j-2 .. j+2]) over valid columns (the -inf
// padding never wins), and acc[j] = base[j] + top[j] (base may be acc itself).
void pool_w_scale_add(const float* __restrict hmax, const float* __restrict s,
                      float* __restrict top, const float* base, float* acc, int64_t w,
                      int64_t c) {
  for (int64_t j = 0; j < w; ++j) {
    const int64_t lo = std::max<int64_t>(0, j - kPad), hi = std::min<int64_t>(w - 1, j + kPad);
    const float* rows[5];
    int n = 0;
    for (int64_t q = lo; q <= hi; ++q) rows[n++] = hmax + q * c;
    const float* __restrict r0 = rows[0];
    const float* __restrict r1 = rows[n > 1 ? 1 : 0];
    const float* __restrict r2 = rows[n > 2 ? 2 : 0];
    const float* __restrict r3 = rows[n > 3 ? 3 : 0];
    const float* __restrict r4 = rows[n > 4 ? 4 : 0];
    float* __restrict t = top + j * c;
    const float* b = base ? base + j * c : nullptr;
    float* a = acc ? acc + j * c : nullptr;
    for (int64_t i = 0; i < c; ++i) {
      float v = fmax_like_xla(r0[i], r1[i]);
      v = fmax_like_xla(v, r2[i]);
      v = fmax_like_xla(v, r3[i]);
      t[i] = fmax_like_xla(v, r4[i]) * s[i];
    }
    if (a)
      for (int64_t i = 0; i < c; ++i) a[i] = b[i] + t[i];
  }
}

// One band: output rows [a, b) of image `img` (h x w x c). Stage k's rows are computed for
// [a - 2(4-k), b + 2(4-k)) clipped to the image, so the band needs no neighbour's data.
void crp_band(const float* x, const float* s, float* y, int64_t h, int64_t w, int64_t c,
              int64_t a, int64_t b) {
  const int64_t row = w * c;
  // rings[k - 1] holds top_k rows (k = 1..3) at slot r % 5; top_0 is x itself.
  std::vector<float> rings(static_cast<size_t>(3 * 5 * row));
  std::vector<float> hmax(static_cast<size_t>(row)), top(static_cast<size_t>(row));
  auto ring = [&](int k, int64_t r) { return rings.data() + ((k - 1) * 5 + r % 5) * row; };
  auto src_row = [&](int k, int64_t r) -> const float* {
    return k == 0 ? x + r * row : ring(k, r);
  };
  // next[k]: the next row of stage k to produce; lo_k/hi_k its range.
  int64_t next[kStages + 1], hi[kStages + 1];
  for (int k = 1; k <= kStages; ++k) {
    next[k] = std::max<int64_t>(0, a - kPad * (kStages - k));
    hi[k] = std::min<int64_t>(h, b + kPad * (kStages - k));
  }
  next[0] = h;  // x: every row is available
  hi[0] = h;
  bool progress = true;
  while (progress) {
    progress = false;
    for (int k = 1; k <= kStages; ++k) {
      // Produce stage-k rows while their whole window of stage k-1 exists.
      while (next[k] < hi[k]) {
        const int64_t r = next[k];
        const int64_t w_hi = std::min<int64_t>(h - 1, r + kPad);
        const int64_t have = next[k - 1];  // stage k-1 rows below this exist
        if (w_hi >= have) break;
        // Its ring slot must be free: stage k+1 still reads stage-k rows >= next[k+1] - 2.
        if (k < kStages && next[k + 1] < hi[k + 1] && r >= next[k + 1] - kPad + 5) break;
        const int64_t w_lo = std::max<int64_t>(0, r - kPad);
        const float* rows[5];
        int nrows = 0;
        for (int64_t q = w_lo; q <= w_hi; ++q) rows[nrows++] = src_row(k - 1, q);
        max_rows(rows, nrows, hmax.data(), row);
        float* dst = (k < kStages) ? ring(k, r) : top.data();
        const bool mine = r >= a && r < b;  // rows of y this band writes
        float* out = y + r * row;
        pool_w_scale_add(hmax.data(), s + (k - 1) * c, dst, k == 1 ? x + r * row : out,
                         mine ? out : nullptr, w, c);
        ++next[k];
        progress = true;
      }
    }
  }
}

// Runs fn(item) for item in [0, n) on the caller plus XLA's intra-op pool. The caller takes
// items too and waits only for items other threads have started, so a busy pool cannot
// deadlock it; tasks that start late find nothing left and never touch the buffers.
template <typename F>
void parallel_for(ffi::ThreadPool& pool, int64_t n, F fn) {
  struct State {
    std::atomic<int64_t> next{0}, done{0};
  };
  auto state = std::make_shared<State>();
  const int64_t helpers = std::min<int64_t>(n - 1, std::max<int64_t>(0, pool.num_threads() - 1));
  auto fn_ptr = std::make_shared<F>(fn);
  for (int64_t t = 0; t < helpers; ++t) {
    pool.Schedule([state, fn_ptr, n]() {
      for (int64_t i; (i = state->next.fetch_add(1)) < n;) {
        (*fn_ptr)(i);
        state->done.fetch_add(1);
      }
    });
  }
  for (int64_t i; (i = state->next.fetch_add(1)) < n;) {
    fn(i);
    state->done.fetch_add(1);
  }
  while (state->done.load() < n) std::this_thread::yield();
}

ffi::Error CrpDepthwiseImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                            ffi::Buffer<ffi::F32> scales, ffi::ResultBuffer<ffi::F32> y) {
  const auto dims = x.dimensions();
  if (dims.size() != 4) return ffi::Error::InvalidArgument("crp_depthwise: x must be NHWC");
  const int64_t n = dims[0], h = dims[1], w = dims[2], c = dims[3];
  const auto sdims = scales.dimensions();
  if (sdims.size() != 2 || sdims[0] != kStages || sdims[1] != c)
    return ffi::Error::InvalidArgument("crp_depthwise: scales must be (4, C)");
  if (n * h * w * c == 0) return ffi::Error::Success();
  // Bands of >= 16 rows, about two per thread: the halo (8 rows) is recomputed per band.
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t per_image = std::max<int64_t>(
      1, std::min<int64_t>(h / 16, (2 * threads + n - 1) / n));
  const int64_t band = (h + per_image - 1) / per_image;
  const float* xp = x.typed_data();
  const float* sp = scales.typed_data();
  float* yp = y->typed_data();
  parallel_for(pool, n * per_image, [=](int64_t item) {
    const int64_t img = item / per_image, a = (item % per_image) * band;
    const int64_t b = std::min<int64_t>(h, a + band);
    if (a < b) {
      const int64_t off = img * h * w * c;
      crp_band(xp + off, sp, yp + off, h, w, c, a, b);
    }
  });
  return ffi::Error::Success();
}

// m = max(m, p) elementwise; with `arg`, arg = k where p won (strictly: the first maximum
// of a window keeps its offset, as the XLA form's `views[k] > out`).
void max_into(float* __restrict m, const float* __restrict p, int8_t* __restrict arg, int8_t k,
              int64_t len) {
  if (arg) {
    for (int64_t i = 0; i < len; ++i) {
      const bool better = p[i] > m[i];
      m[i] = better ? p[i] : m[i];
      arg[i] = better ? k : arg[i];
    }
  } else {
    for (int64_t i = 0; i < len; ++i) m[i] = fmax_like_xla(m[i], p[i]);
  }
}

// max_pool5x5 (PyTorch MaxPool2d(5, 1, 2)) as layers.max_pool_5x5 computes it: a 5x1 pool
// along H, then 1x5 along W, each keeping the first maximum of its window (strict >), and
// with `args` the int8 window offset each pass took, for the backward.
void pool_rows(const float* x, float* y, int8_t* a1, int8_t* a2, int64_t h, int64_t w,
               int64_t c, int64_t r0, int64_t r1, float* m1) {
  const int64_t row = w * c;
  for (int64_t r = r0; r < r1; ++r) {
    // H pass: m1 = max over rows r-2 .. r+2 (window offset k = q - r + 2).
    const int64_t lo = std::max<int64_t>(0, r - kPad), hi = std::min<int64_t>(h - 1, r + kPad);
    std::memcpy(m1, x + lo * row, row * sizeof(float));
    int8_t* arg1 = a1 ? a1 + r * row : nullptr;
    if (arg1) std::memset(arg1, static_cast<int>(lo - r + kPad), row);
    for (int64_t q = lo + 1; q <= hi; ++q) {
      max_into(m1, x + q * row, arg1, static_cast<int8_t>(q - r + kPad), row);
    }
    // W pass over m1.
    float* out = y + r * row;
    int8_t* arg2 = a2 ? a2 + r * row : nullptr;
    for (int64_t j = 0; j < w; ++j) {
      const int64_t jlo = std::max<int64_t>(0, j - kPad), jhi = std::min<int64_t>(w - 1, j + kPad);
      float* __restrict o = out + j * c;
      std::memcpy(o, m1 + jlo * c, c * sizeof(float));
      int8_t* __restrict ar = arg2 ? arg2 + j * c : nullptr;
      if (ar) std::memset(ar, static_cast<int>(jlo - j + kPad), c);
      for (int64_t q = jlo + 1; q <= jhi; ++q) {
        max_into(o, m1 + q * c, ar, static_cast<int8_t>(q - j + kPad), c);
      }
    }
  }
}

// The pool's backward from its two offset maps: the W pass's cotangent dm1, then the H
// pass's, both as sums over the 5 outputs whose window holds the input, in the order
// layers._max_pool_1d_vjp_bwd adds them (output i+2 first, i-2 last).
void pool_backward_rows(const float* g, const int8_t* a1, const int8_t* a2, float* dx,
                        int64_t h, int64_t w, int64_t c, int64_t r0, int64_t r1,
                        float* ring) {
  const int64_t row = w * c;
  // dm1 rows r0-2 .. r1+1 (clipped), at ring slot q % 5.
  auto dm1_row = [&](int64_t q) { return ring + (q % 5) * row; };
  auto make_dm1 = [&](int64_t q) {
    float* d = dm1_row(q);
    const float* gq = g + q * row;
    const int8_t* aq = a2 + q * row;
    for (int64_t jp = 0; jp < w; ++jp) {
      float* __restrict o = d + jp * c;
      std::fill(o, o + c, 0.0f);
      for (int64_t j = jp + kPad; j >= jp - kPad; --j) {
        if (j < 0 || j >= w) continue;
        const int8_t k = static_cast<int8_t>(jp - j + kPad);
        const float* __restrict gj = gq + j * c;
        const int8_t* __restrict aj = aq + j * c;
        for (int64_t i = 0; i < c; ++i) o[i] += aj[i] == k ? gj[i] : 0.0f;
      }
    }
  };
  int64_t made = std::max<int64_t>(0, r0 - kPad);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t lo = std::max<int64_t>(0, r - kPad), hi = std::min<int64_t>(h - 1, r + kPad);
    for (; made <= hi; ++made) make_dm1(made);
    float* __restrict o = dx + r * row;
    std::fill(o, o + row, 0.0f);
    for (int64_t q = hi; q >= lo; --q) {
      const int8_t k = static_cast<int8_t>(r - q + kPad);
      const float* __restrict d = dm1_row(q);
      const int8_t* __restrict aq = a1 + q * row;
      for (int64_t i = 0; i < row; ++i) o[i] += aq[i] == k ? d[i] : 0.0f;
    }
  }
}

// Row chunks of >= 4 rows, a few per thread, over all images: (image, first row, end row).
template <typename F>
void for_row_chunks(ffi::ThreadPool& pool, int64_t n, int64_t h, F fn) {
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t per_image = std::max<int64_t>(
      1, std::min<int64_t>(h / 4, (4 * threads + n - 1) / n));
  const int64_t chunk = (h + per_image - 1) / per_image;
  parallel_for(pool, n * per_image, [=](int64_t item) {
    const int64_t img = item / per_image, r0 = (item % per_image) * chunk;
    const int64_t r1 = std::min<int64_t>(h, r0 + chunk);
    if (r0 < r1) fn(img, r0, r1);
  });
}

// The pool of x into y, with the offset maps when a1 and a2 are given.
ffi::Error run_pool(ffi::ThreadPool& pool, const ffi::Buffer<ffi::F32>& x, float* yp,
                    int8_t* a1p, int8_t* a2p) {
  const auto d = x.dimensions();
  if (d.size() != 4) return ffi::Error::InvalidArgument("max_pool: x must be NHWC");
  const int64_t n = d[0], h = d[1], w = d[2], c = d[3];
  if (n * h * w * c == 0) return ffi::Error::Success();
  const float* xp = x.typed_data();
  for_row_chunks(pool, n, h, [=](int64_t img, int64_t r0, int64_t r1) {
    std::vector<float> m1(static_cast<size_t>(w * c));
    const int64_t off = img * h * w * c;
    pool_rows(xp + off, yp + off, a1p ? a1p + off : nullptr, a2p ? a2p + off : nullptr, h, w,
              c, r0, r1, m1.data());
  });
  return ffi::Error::Success();
}

ffi::Error MaxPoolImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                       ffi::ResultBuffer<ffi::F32> y) {
  return run_pool(pool, x, y->typed_data(), nullptr, nullptr);
}

ffi::Error MaxPoolArgImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                          ffi::ResultBuffer<ffi::F32> y, ffi::ResultBuffer<ffi::S8> a1,
                          ffi::ResultBuffer<ffi::S8> a2) {
  return run_pool(pool, x, y->typed_data(), a1->typed_data(), a2->typed_data());
}

ffi::Error MaxPoolBwdImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> g,
                          ffi::Buffer<ffi::S8> a1, ffi::Buffer<ffi::S8> a2,
                          ffi::ResultBuffer<ffi::F32> dx) {
  const auto d = g.dimensions();
  if (d.size() != 4) return ffi::Error::InvalidArgument("max_pool_bwd: g must be NHWC");
  const int64_t n = d[0], h = d[1], w = d[2], c = d[3];
  if (n * h * w * c == 0) return ffi::Error::Success();
  const float* gp = g.typed_data();
  const int8_t* a1p = a1.typed_data();
  const int8_t* a2p = a2.typed_data();
  float* dp = dx->typed_data();
  for_row_chunks(pool, n, h, [=](int64_t img, int64_t r0, int64_t r1) {
    std::vector<float> ring(static_cast<size_t>(5 * w * c));
    const int64_t off = img * h * w * c;
    pool_backward_rows(gp + off, a1p + off, a2p + off, dp + off, h, w, c, r0, r1, ring.data());
  });
  return ffi::Error::Success();
}

// Depthwise 3x3 conv, padding 1, stride s: y[i, j] = sum_ab x[s*i+a-1, s*j+b-1] k[a, b]
// (taps outside the image are zero), per channel; k is (3, 3, C).
constexpr int64_t kRowsPerItem = 4;  // work items of fixed size: the same sums on any pool

// f(tap, pixel) for each tap (a * 3 + b) of output (i, j) that reads inside the h x w image,
// in tap order; pixel = r * w + q for the input pixel (r, q) = (s*i + a - 1, s*j + b - 1).
template <typename F>
inline void for_taps(int64_t i, int64_t j, int64_t h, int64_t w, int64_t s, F f) {
  for (int64_t a = 0; a < 3; ++a) {
    const int64_t r = s * i + a - 1;
    if (r < 0 || r >= h) continue;
    for (int64_t b = 0; b < 3; ++b) {
      const int64_t q = s * j + b - 1;
      if (q >= 0 && q < w) f(a * 3 + b, r * w + q);
    }
  }
}

void dw_forward_rows(const float* x, const float* k, float* y, int64_t h, int64_t w, int64_t c,
                     int64_t wo, int64_t s, int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; ++i) {
    for (int64_t j = 0; j < wo; ++j) {
      float* __restrict o = y + (i * wo + j) * c;
      bool first = true;
      for_taps(i, j, h, w, s, [&](int64_t tap, int64_t pixel) {
        const float* __restrict xv = x + pixel * c;
        const float* __restrict kv = k + tap * c;
        if (first) {
          for (int64_t l = 0; l < c; ++l) o[l] = xv[l] * kv[l];
          first = false;
        } else {
          for (int64_t l = 0; l < c; ++l) o[l] += xv[l] * kv[l];
        }
      });
      if (first) std::fill(o, o + c, 0.0f);
    }
  }
}

// dx[p, q] = sum of g[i, j] k[a, b] over the outputs (i, j) whose tap (a, b) read x[p, q].
void dw_dx_rows(const float* g, const float* k, float* dx, int64_t h, int64_t w, int64_t c,
                int64_t ho, int64_t wo, int64_t s, int64_t p0, int64_t p1) {
  for (int64_t p = p0; p < p1; ++p) {
    for (int64_t q = 0; q < w; ++q) {
      float* __restrict o = dx + (p * w + q) * c;
      std::fill(o, o + c, 0.0f);
      for (int64_t a = 0; a < 3; ++a) {
        const int64_t ri = p + 1 - a;
        if (ri < 0 || ri % s || ri / s >= ho) continue;
        const int64_t i = ri / s;
        for (int64_t b = 0; b < 3; ++b) {
          const int64_t rj = q + 1 - b;
          if (rj < 0 || rj % s || rj / s >= wo) continue;
          const float* __restrict gv = g + (i * wo + rj / s) * c;
          const float* __restrict kv = k + (a * 3 + b) * c;
          for (int64_t l = 0; l < c; ++l) o[l] += gv[l] * kv[l];
        }
      }
    }
  }
}

// dk partial over output rows [i0, i1): acc[ab, l] += sum_j g[i, j, l] x[s*i+a-1, s*j+b-1, l],
// each row summed in float, rows added in double.
void dw_dk_rows(const float* x, const float* g, double* acc, float* row_acc, int64_t h,
                int64_t w, int64_t c, int64_t wo, int64_t s, int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; ++i) {
    std::fill(row_acc, row_acc + 9 * c, 0.0f);
    for (int64_t j = 0; j < wo; ++j) {
      const float* __restrict gv = g + (i * wo + j) * c;
      for_taps(i, j, h, w, s, [&](int64_t tap, int64_t pixel) {
        const float* __restrict xv = x + pixel * c;
        float* __restrict ra = row_acc + tap * c;
        for (int64_t l = 0; l < c; ++l) ra[l] += gv[l] * xv[l];
      });
    }
    for (int64_t l = 0; l < 9 * c; ++l) acc[l] += row_acc[l];
  }
}

struct DwShape {
  int64_t n, h, w, c, ho, wo, s;
};

ffi::Error dw_shape(const ffi::Buffer<ffi::F32>& x, const ffi::Buffer<ffi::F32>& k,
                    int64_t stride, DwShape* out) {
  const auto d = x.dimensions();
  const auto kd = k.dimensions();
  if (d.size() != 4) return ffi::Error::InvalidArgument("depthwise: x must be NHWC");
  if (kd.size() != 3 || kd[0] != 3 || kd[1] != 3 || kd[2] != d[3])
    return ffi::Error::InvalidArgument("depthwise: kernel must be (3, 3, C)");
  if (stride < 1) return ffi::Error::InvalidArgument("depthwise: stride must be >= 1");
  *out = {d[0], d[1], d[2], d[3], (d[1] - 1) / stride + 1, (d[2] - 1) / stride + 1, stride};
  return ffi::Error::Success();
}

// fn(item, image, r0, r1) over items of kRowsPerItem rows [r0, r1) of each of n images of
// `rows` rows: the same split on any pool, so per-item partial sums are deterministic.
template <typename F>
void for_row_items(ffi::ThreadPool& pool, int64_t n, int64_t rows, F fn) {
  const int64_t per_image = (rows + kRowsPerItem - 1) / kRowsPerItem;
  parallel_for(pool, n * per_image, [=](int64_t item) {
    const int64_t r0 = (item % per_image) * kRowsPerItem;
    fn(item, item / per_image, r0, std::min(rows, r0 + kRowsPerItem));
  });
}

ffi::Error DepthwiseImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> k,
                         ffi::ResultBuffer<ffi::F32> y, int64_t stride) {
  DwShape sh;
  if (auto e = dw_shape(x, k, stride, &sh); e.failure()) return e;
  if (sh.n * sh.h * sh.w * sh.c == 0) return ffi::Error::Success();
  const float* xp = x.typed_data();
  const float* kp = k.typed_data();
  float* yp = y->typed_data();
  for_row_items(pool, sh.n, sh.ho, [=](int64_t, int64_t img, int64_t i0, int64_t i1) {
    dw_forward_rows(xp + img * sh.h * sh.w * sh.c, kp, yp + img * sh.ho * sh.wo * sh.c, sh.h,
                    sh.w, sh.c, sh.wo, sh.s, i0, i1);
  });
  return ffi::Error::Success();
}

ffi::Error DepthwiseBwdImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                            ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> g,
                            ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dk,
                            int64_t stride) {
  DwShape sh;
  if (auto e = dw_shape(x, k, stride, &sh); e.failure()) return e;
  const int64_t c = sh.c;
  float* dkp = dk->typed_data();
  std::fill(dkp, dkp + 9 * c, 0.0f);
  if (sh.n * sh.h * sh.w * c == 0) return ffi::Error::Success();
  const float* xp = x.typed_data();
  const float* kp = k.typed_data();
  const float* gp = g.typed_data();
  float* dxp = dx->typed_data();
  for_row_items(pool, sh.n, sh.h, [=](int64_t, int64_t img, int64_t p0, int64_t p1) {
    dw_dx_rows(gp + img * sh.ho * sh.wo * c, kp, dxp + img * sh.h * sh.w * c, sh.h, sh.w, c,
               sh.ho, sh.wo, sh.s, p0, p1);
  });
  // dk: one double partial per fixed item, summed in item order (deterministic).
  const int64_t out_items = (sh.ho + kRowsPerItem - 1) / kRowsPerItem;
  std::vector<double> partial(static_cast<size_t>(sh.n * out_items * 9 * c), 0.0);
  double* pp = partial.data();
  for_row_items(pool, sh.n, sh.ho, [=](int64_t item, int64_t img, int64_t i0, int64_t i1) {
    std::vector<float> row_acc(static_cast<size_t>(9 * c));
    dw_dk_rows(xp + img * sh.h * sh.w * c, gp + img * sh.ho * sh.wo * c, pp + item * 9 * c,
               row_acc.data(), sh.h, sh.w, c, sh.wo, sh.s, i0, i1);
  });
  std::vector<double> total(static_cast<size_t>(9 * c), 0.0);
  for (int64_t item = 0; item < sh.n * out_items; ++item)
    for (int64_t l = 0; l < 9 * c; ++l) total[l] += pp[item * 9 * c + l];
  for (int64_t l = 0; l < 9 * c; ++l) dkp[l] = static_cast<float>(total[l]);
  return ffi::Error::Success();
}

}  // namespace

// The handlers' bindings: XLA's intra-op thread pool first, then operands and results.
using F32 = ffi::Buffer<ffi::F32>;
using S8 = ffi::Buffer<ffi::S8>;
inline auto BindWithPool() { return ffi::Ffi::Bind().Ctx<ffi::ThreadPool>(); }

XLA_FFI_DEFINE_HANDLER_SYMBOL(HjCrpDepthwise, CrpDepthwiseImpl,
                              BindWithPool().Arg<F32>().Arg<F32>().Ret<F32>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(HjMaxPool, MaxPoolImpl,
                              BindWithPool().Arg<F32>().Ret<F32>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(HjMaxPoolArg, MaxPoolArgImpl,
                              BindWithPool().Arg<F32>().Ret<F32>().Ret<S8>().Ret<S8>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(HjMaxPoolBwd, MaxPoolBwdImpl,
                              BindWithPool().Arg<F32>().Arg<S8>().Arg<S8>().Ret<F32>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(HjDepthwise, DepthwiseImpl,
                              BindWithPool().Arg<F32>().Arg<F32>().Ret<F32>()
                                  .Attr<int64_t>("stride"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(HjDepthwiseBwd, DepthwiseBwdImpl,
                              BindWithPool().Arg<F32>().Arg<F32>().Arg<F32>().Ret<F32>().Ret<F32>()
                                  .Attr<int64_t>("stride"));
