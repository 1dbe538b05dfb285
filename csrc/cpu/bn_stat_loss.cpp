// bn_stat_loss, CPU traversal. x [N, C, *spatial] (S = prod(spatial)), G groups of N/G samples.
//   forward : mean/var [G, C] and loss [G] in one pass over x. Contiguous x: per (g, c), blocks of S-long rows are
//             summed (shifted by the first row's mean) in vector registers and Chan-merged. Channels-last x
//             ([N, S, C] in memory): chunks of rows are reduced twice while in cache (mean, then centred M2) over a
//             C-vector and Chan-merged per group.
//   backward: dx = p[g,c] * (x - mean[g,c]) + q[g,c] in one read of x and one write of dx (x's dtype and layout).
// dtypes: x fp32/fp64/fp16/bf16, accumulation and statistics in at::opmath_type (fp32, fp64 for fp64 x).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "bn_stat_loss.h"

namespace infer_fast {
namespace {

// Elements handled per parallel task: large enough to amortise scheduling, small enough to stay in L1/L2.
constexpr int64_t kTaskElems = 16384;

// 32-byte GCC/Clang vector of the accumulation type: explicit vectors, because a reduction loop is not
// auto-vectorised without -ffast-math and short rows (S = 16 at ResNet's last stage) are common.
template <typename A>
struct VecOf {
  typedef A type __attribute__((vector_size(32)));
  static constexpr int64_t width = 32 / sizeof(A);
};

template <typename A, typename T>
inline typename VecOf<A>::type load_vec(const T* p) {
  typename VecOf<A>::type v;
  if constexpr (std::is_same_v<T, A>) {
    std::memcpy(&v, p, sizeof(v));
  } else {
    for (int64_t j = 0; j < VecOf<A>::width; ++j) v[j] = static_cast<A>(p[j]);
  }
  return v;
}

template <typename A>
inline A hsum(typename VecOf<A>::type v) {
  A s = 0;
  for (int64_t j = 0; j < VecOf<A>::width; ++j) s += v[j];
  return s;
}

// Shifted moments of a row added into vector accumulators (s: sum of p - shift, q: sum of squares) and scalar tails;
// no horizontal reduction per row, so short rows (S = 16 at ResNet's last stage) cost only their loads.
template <typename A>
struct ShiftedMoments {
  using V = typename VecOf<A>::type;
  V s0 = {}, s1 = {}, q0 = {}, q1 = {};
  A st = 0, qt = 0;

  template <typename T>
  inline void add_row(const T* p, int64_t len, A shift) {
    constexpr int64_t W = VecOf<A>::width;
    int64_t i = 0;
    for (; i + 2 * W <= len; i += 2 * W) {
      const V d0 = load_vec<A>(p + i) - shift, d1 = load_vec<A>(p + i + W) - shift;
      s0 += d0;
      s1 += d1;
      q0 += d0 * d0;
      q1 += d1 * d1;
    }
    if (i + W <= len) {
      const V d0 = load_vec<A>(p + i) - shift;
      s0 += d0;
      q0 += d0 * d0;
      i += W;
    }
    for (; i < len; ++i) {
      const A d = static_cast<A>(p[i]) - shift;
      st += d;
      qt += d * d;
    }
  }
  A sum() const { return hsum<A>(s0 + s1) + st; }
  A sq() const { return hsum<A>(q0 + q1) + qt; }
};

// loss[g] = ||var[g] - rv|| + ||mean[g] - rm||.
template <typename A>
void bn_losses(const A* mean, const A* var, const A* rm, const A* rv, int64_t g_count, int64_t c, A* loss) {
  for (int64_t g = 0; g < g_count; ++g) {
    A sv = 0, sm = 0;
    for (int64_t k = 0; k < c; ++k) {
      const A dv = var[g * c + k] - rv[k];
      const A dm = mean[g * c + k] - rm[k];
      sv += dv * dv;
      sm += dm * dm;
    }
    loss[g] = std::sqrt(sv) + std::sqrt(sm);
  }
}

// Contiguous x: one task = a run of (g, c) pairs. The S-long rows of a (g, c) are accumulated as sums shifted by
// the first row's mean (a close estimate of the mean, so no cancellation) in blocks of about kTaskElems values;
// each block gives an exact (count, mean, M2) that is Chan-merged into the (g, c) statistics.
template <typename T, typename A>
void forward_nchw(const T* x, int64_t n, int64_t c, int64_t s, int64_t groups, A* mean, A* var) {
  const int64_t ng = n / groups, rows_per_block = std::max<int64_t>(1, kTaskElems / s);
  at::parallel_for(0, groups * c, std::max<int64_t>(1, kTaskElems / (ng * s)), [&](int64_t b, int64_t e) {
    for (int64_t gc = b; gc < e; ++gc) {
      const int64_t g = gc / c, k = gc % c;
      const T* first = x + ((g * ng) * c + k) * s;
      ShiftedMoments<A> m0;
      m0.add_row(first, s, A(0));
      const A shift = m0.sum() / static_cast<A>(s);
      BnWelford<A> w;
      for (int64_t i0 = 0; i0 < ng; i0 += rows_per_block) {
        const int64_t i1 = std::min(ng, i0 + rows_per_block);
        ShiftedMoments<A> acc;
        for (int64_t i = i0; i < i1; ++i) acc.add_row(first + i * c * s, s, shift);
        const A cnt = static_cast<A>((i1 - i0) * s), sum = acc.sum();
        w = bn_chan_merge(w, BnWelford<A>{cnt, shift + sum / cnt, std::max(A(0), acc.sq() - sum * sum / cnt)});
      }
      mean[gc] = w.mean;
      var[gc] = w.m2 / w.n;
    }
  });
}

template <typename T, typename A>
void forward_nhwc(const T* x, int64_t n, int64_t c, int64_t s, int64_t groups, A* mean, A* var) {
  const int64_t rows_g = (n / groups) * s;  // rows of C values per group
  const int64_t chunk = std::max<int64_t>(1, kTaskElems / c);
  const int64_t nchunk = (rows_g + chunk - 1) / chunk;
  at::Tensor part = at::empty({groups * nchunk, 2, c}, at::TensorOptions().dtype(c10::CppTypeToScalarType<A>::value));
  A* pbuf = part.data_ptr<A>();
  at::parallel_for(0, groups * nchunk, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t g = t / nchunk, k = t % nchunk;
      const int64_t r0 = g * rows_g + k * chunk, r1 = std::min(r0 + chunk, (g + 1) * rows_g);
      A* pm = pbuf + t * 2 * c;
      A* pm2 = pm + c;
      std::fill(pm, pm + 2 * c, A(0));
      for (int64_t r = r0; r < r1; ++r) {
        const T* p = x + r * c;
        for (int64_t j = 0; j < c; ++j) pm[j] += static_cast<A>(p[j]);
      }
      const A inv = A(1) / static_cast<A>(r1 - r0);
      for (int64_t j = 0; j < c; ++j) pm[j] *= inv;
      for (int64_t r = r0; r < r1; ++r) {
        const T* p = x + r * c;
        for (int64_t j = 0; j < c; ++j) {
          const A d = static_cast<A>(p[j]) - pm[j];
          pm2[j] += d * d;
        }
      }
    }
  });
  // Chan merge of the chunks of each group, vectorised over channels (all channels share the counts); serial, as it
  // touches only numel / chunk values.
  for (int64_t g = 0; g < groups; ++g) {
    A* m = mean + g * c;
    A* m2 = var + g * c;
    const A* p0 = pbuf + g * nchunk * 2 * c;
    std::copy(p0, p0 + c, m);
    std::copy(p0 + c, p0 + 2 * c, m2);
    A na = static_cast<A>(std::min(chunk, rows_g));
    for (int64_t k = 1; k < nchunk; ++k) {
      const A* pm = p0 + k * 2 * c;
      const A* pm2 = pm + c;
      const A nb = static_cast<A>(std::min(chunk, rows_g - k * chunk));
      const A nt = na + nb, fb = nb / nt, cross = na * fb;
      for (int64_t j = 0; j < c; ++j) {
        const A d = pm[j] - m[j];
        m[j] += d * fb;
        m2[j] += pm2[j] + d * d * cross;
      }
      na = nt;
    }
    for (int64_t j = 0; j < c; ++j) m2[j] /= na;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_stat_loss_cpu(const at::Tensor& x_in, const at::Tensor& running_mean,
                                                                const at::Tensor& running_var, int64_t groups) {
  check_bn_stat_loss_inputs(x_in, running_mean, running_var, groups);
  const BnView v = bn_view(x_in);
  const auto acc = bn_stat_dtype(x_in.scalar_type());
  const auto opts = x_in.options().dtype(acc);
  at::Tensor loss = at::empty({groups}, opts);
  at::Tensor mean = at::empty({groups, v.c}, opts);
  at::Tensor var = at::empty({groups, v.c}, opts);
  const at::Tensor rm = running_mean.to(acc).contiguous();
  const at::Tensor rv = running_var.to(acc).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.x.scalar_type(), "bn_stat_loss_cpu", [&] {
    using A = at::opmath_type<scalar_t>;
    const scalar_t* x = v.x.const_data_ptr<scalar_t>();
    if (v.channels_last)
      forward_nhwc<scalar_t, A>(x, v.n, v.c, v.s, groups, mean.data_ptr<A>(), var.data_ptr<A>());
    else
      forward_nchw<scalar_t, A>(x, v.n, v.c, v.s, groups, mean.data_ptr<A>(), var.data_ptr<A>());
    bn_losses<A>(mean.const_data_ptr<A>(), var.const_data_ptr<A>(), rm.const_data_ptr<A>(), rv.const_data_ptr<A>(),
                 groups, v.c, loss.data_ptr<A>());
  });
  return {loss, mean, var};
}

at::Tensor bn_stat_loss_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& grad_mean,
                                     const at::Tensor& grad_var, const at::Tensor& x_in,
                                     const at::Tensor& running_mean, const at::Tensor& running_var,
                                     const at::Tensor& mean, const at::Tensor& var, int64_t groups) {
  check_bn_stat_loss_backward_inputs(grad_loss, grad_mean, grad_var, x_in, running_mean, running_var, mean, var,
                                     groups);
  const BnView v = bn_view(x_in);
  const auto acc = bn_stat_dtype(x_in.scalar_type());
  const int64_t c = v.c, s = v.s, ng = v.n / groups;
  const at::Tensor rm = running_mean.to(acc).contiguous(), rv = running_var.to(acc).contiguous();
  const at::Tensor gl = grad_loss.contiguous(), gm = grad_mean.contiguous(), gv = grad_var.contiguous();
  const at::Tensor mc = mean.contiguous(), vc = var.contiguous();
  at::Tensor coef = at::empty({2, groups, c}, mean.options());
  at::Tensor dx = bn_empty_like(v.x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.x.scalar_type(), "bn_stat_loss_backward_cpu", [&] {
    using A = at::opmath_type<scalar_t>;
    const A *pmean = mc.const_data_ptr<A>(), *pvar = vc.const_data_ptr<A>();
    const A *prm = rm.const_data_ptr<A>(), *prv = rv.const_data_ptr<A>();
    const A *pgl = gl.const_data_ptr<A>(), *pgm = gm.const_data_ptr<A>(), *pgv = gv.const_data_ptr<A>();
    A* P = coef.data_ptr<A>();
    A* Q = P + groups * c;
    const A inv_count = A(1) / static_cast<A>(ng * s);
    for (int64_t g = 0; g < groups; ++g) {
      A sv = 0, sm = 0;
      for (int64_t k = 0; k < c; ++k) {
        const A dv = pvar[g * c + k] - prv[k], dm = pmean[g * c + k] - prm[k];
        sv += dv * dv;
        sm += dm * dm;
      }
      const A inv_nv = bn_inv_norm(sv), inv_nm = bn_inv_norm(sm);
      for (int64_t k = 0; k < c; ++k) {
        const int64_t i = g * c + k;
        bn_backward_coef<A>(pgl[g], pgm[i], pgv[i], pmean[i] - prm[k], pvar[i] - prv[k], inv_nm, inv_nv, inv_count,
                            P[i], Q[i]);
      }
    }
    const scalar_t* x = v.x.const_data_ptr<scalar_t>();
    scalar_t* out = dx.data_ptr<scalar_t>();
    if (v.channels_last) {
      at::parallel_for(0, v.n * s, std::max<int64_t>(1, kTaskElems / c), [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          const int64_t g = (r / s) / ng;
          const A *pp = P + g * c, *pq = Q + g * c, *pm = pmean + g * c;
          const scalar_t* xr = x + r * c;
          scalar_t* o = out + r * c;
          for (int64_t k = 0; k < c; ++k) o[k] = static_cast<scalar_t>(bn_dx<A>(xr[k], pm[k], pp[k], pq[k]));
        }
      });
    } else {
      at::parallel_for(0, v.n * c, std::max<int64_t>(1, kTaskElems / s), [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          const int64_t i = ((r / c) / ng) * c + r % c;
          const A p = P[i], q = Q[i], m = pmean[i];
          const scalar_t* xr = x + r * s;
          scalar_t* o = out + r * s;
          for (int64_t k = 0; k < s; ++k) o[k] = static_cast<scalar_t>(bn_dx<A>(xr[k], m, p, q));
        }
      });
    }
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(infer_fast, CPU, m) {
  m.impl("bn_stat_loss", &bn_stat_loss_cpu);
  m.impl("_bn_stat_loss_backward", &bn_stat_loss_backward_cpu);
}

}  // namespace infer_fast
