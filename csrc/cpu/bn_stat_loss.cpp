// bn_stat_loss, CPU traversal. x [N, C, *spatial] (S = prod(spatial)), G groups of N/G samples.
//   forward : mean/var [G, C] and loss [G] in one pass over x. Contiguous x: each (n, c) row of S values is reduced
//             twice while it sits in cache (mean, then centred M2), rows are Chan-merged per (g, c).
//             Channels-last x ([N, S, C] in memory): chunks of rows are reduced the same way over a C-vector.
//   backward: dx = p[g,c] * (x - mean[g,c]) + q[g,c] in one read of x and one write of dx (x's dtype and layout).
// dtypes: x fp32/fp64/fp16/bf16, accumulation and statistics in at::opmath_type (fp32, fp64 for fp64 x).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>

#include "bn_stat_loss.h"

namespace infer_fast {
namespace {

// Elements handled per parallel task: large enough to amortise scheduling, small enough to stay in L1/L2.
constexpr int64_t kTaskElems = 16384;

// Independent accumulator lanes let the compiler vectorise the reductions without reassociating (no -ffast-math).
template <typename A>
constexpr int kLanes = 64 / sizeof(A);

template <typename T, typename A>
inline A row_sum(const T* p, int64_t len) {
  A acc[kLanes<A>] = {};
  int64_t i = 0;
  for (; i + kLanes<A> <= len; i += kLanes<A>)
    for (int j = 0; j < kLanes<A>; ++j) acc[j] += static_cast<A>(p[i + j]);
  A s = 0;
  for (int j = 0; j < kLanes<A>; ++j) s += acc[j];
  for (; i < len; ++i) s += static_cast<A>(p[i]);
  return s;
}

template <typename T, typename A>
inline A row_m2(const T* p, int64_t len, A mean) {
  A acc[kLanes<A>] = {};
  int64_t i = 0;
  for (; i + kLanes<A> <= len; i += kLanes<A>)
    for (int j = 0; j < kLanes<A>; ++j) {
      const A d = static_cast<A>(p[i + j]) - mean;
      acc[j] += d * d;
    }
  A s = 0;
  for (int j = 0; j < kLanes<A>; ++j) s += acc[j];
  for (; i < len; ++i) {
    const A d = static_cast<A>(p[i]) - mean;
    s += d * d;
  }
  return s;
}

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

template <typename T, typename A>
void forward_nchw(const T* x, int64_t n, int64_t c, int64_t s, int64_t groups, A* mean, A* var) {
  const int64_t rows = n * c, ng = n / groups;
  at::Tensor row_stats = at::empty({2, rows}, at::TensorOptions().dtype(c10::CppTypeToScalarType<A>::value));
  A* rmean = row_stats.data_ptr<A>();
  A* rm2 = rmean + rows;
  at::parallel_for(0, rows, std::max<int64_t>(1, kTaskElems / s), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const T* p = x + r * s;
      const A m = row_sum<T, A>(p, s) / static_cast<A>(s);
      rmean[r] = m;
      rm2[r] = row_m2<T, A>(p, s, m);
    }
  });
  at::parallel_for(0, groups * c, 16, [&](int64_t b, int64_t e) {
    for (int64_t gc = b; gc < e; ++gc) {
      const int64_t g = gc / c, k = gc % c;
      BnWelford<A> w;
      for (int64_t i = g * ng; i < (g + 1) * ng; ++i)
        w = bn_chan_merge(w, BnWelford<A>{static_cast<A>(s), rmean[i * c + k], rm2[i * c + k]});
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
  // Chan merge of the chunks of each group, vectorised over channels (all channels share the counts).
  at::parallel_for(0, groups, 1, [&](int64_t b, int64_t e) {
    for (int64_t g = b; g < e; ++g) {
      A* m = mean + g * c;
      A* m2 = var + g * c;
      A na = 0;
      for (int64_t k = 0; k < nchunk; ++k) {
        const A* pm = pbuf + (g * nchunk + k) * 2 * c;
        const A* pm2 = pm + c;
        const A nb = static_cast<A>(std::min(chunk, rows_g - k * chunk));
        const A nt = na + nb, fb = nb / nt, cross = na * fb;
        for (int64_t j = 0; j < c; ++j) {
          const A d = pm[j] - (k == 0 ? A(0) : m[j]);
          m[j] = (k == 0 ? pm[j] : m[j] + d * fb);
          m2[j] = (k == 0 ? pm2[j] : m2[j] + pm2[j] + d * d * cross);
        }
        na = nt;
      }
      for (int64_t j = 0; j < c; ++j) m2[j] /= na;
    }
  });
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
