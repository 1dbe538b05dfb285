// bn_stat_loss: shared math (CPU and CUDA) and the one input check of both backends.
//   forward : per group g of N and channel c, mean[g,c] and biased var[g,c] of x over the group's samples and
//             spatial positions; loss[g] = ||var[g] - running_var||_2 + ||mean[g] - running_mean||_2.
//   backward: dx = p[g,c] * (x - mean[g,c]) + q[g,c], p = 2 a / M, q = b / M (see bn_backward_coef).
// Statistics are accumulated in at::opmath_type of x (fp32 for half/bf16, fp64 for fp64) and merged with Chan's
// formula; mean/var/loss come out in that accumulation dtype, dx in x's dtype and memory format.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <array>
#include <cmath>

namespace infer_fast {

// Running (count, mean, M2) of a set of values; M2 = sum of squared deviations from the mean.
template <typename A>
struct BnWelford {
  A n = 0;
  A mean = 0;
  A m2 = 0;
};

template <typename A>
C10_HOST_DEVICE inline void bn_welford_add(BnWelford<A>& w, A v) {
  w.n += A(1);
  const A d = v - w.mean;
  w.mean += d / w.n;
  w.m2 += d * (v - w.mean);
}

// Chan et al. merge of two partial statistics (either may be empty).
template <typename A>
C10_HOST_DEVICE inline BnWelford<A> bn_chan_merge(const BnWelford<A>& a, const BnWelford<A>& b) {
  if (b.n == A(0)) return a;
  if (a.n == A(0)) return b;
  BnWelford<A> r;
  r.n = a.n + b.n;
  const A d = b.mean - a.mean;
  const A fb = b.n / r.n;
  r.mean = a.mean + d * fb;
  r.m2 = a.m2 + b.m2 + d * d * a.n * fb;
  return r;
}

// V values at once (a vector load): their own (count, mean, M2), Chan-merged into w, so one division per V values
// instead of one per value. V is a power of two, so the mean's 1/V is exact.
template <typename A, int V>
C10_HOST_DEVICE inline void bn_welford_add_n(BnWelford<A>& w, const A (&v)[V]) {
  A s = 0;
  for (int k = 0; k < V; ++k) s += v[k];
  const A m = s * (A(1) / A(V));
  A m2 = 0;
  for (int k = 0; k < V; ++k) m2 += (v[k] - m) * (v[k] - m);
  w = bn_chan_merge(w, BnWelford<A>{A(V), m, m2});
}

// Reciprocal of an L2 norm for the backward, with a zero norm contributing zero gradient (as the backward of
// torch.linalg.vector_norm, which masks grad / norm where norm == 0).
template <typename A>
C10_HOST_DEVICE inline A bn_inv_norm(A sq_sum) {
  return sq_sum > A(0) ? A(1) / ::sqrt(sq_sum) : A(0);
}

// Coefficients of dx = p * (x - mean) + q for one (g, c), for L = sum_g gl[g] loss[g] + <gm, mean> + <gv, var>:
//   a = gl * (var - rv) / ||var_g - rv|| + gv,   b = gl * (mean - rm) / ||mean_g - rm|| + gm,
//   p = 2 a / M,   q = b / M,   M = elements per (g, c).
template <typename A>
C10_HOST_DEVICE inline void bn_backward_coef(A gl, A gm, A gv, A dmean, A dvar, A inv_norm_mean, A inv_norm_var,
                                             A inv_count, A& p, A& q) {
  const A a = gl * dvar * inv_norm_var + gv;
  const A b = gl * dmean * inv_norm_mean + gm;
  p = A(2) * a * inv_count;
  q = b * inv_count;
}

template <typename A>
C10_HOST_DEVICE inline A bn_dx(A x, A mean, A p, A q) {
  return p * (x - mean) + q;
}

namespace detail {
inline bool bn_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}
inline void bn_check_vec(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x, int64_t c) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == c, op, ": ", name, " must have shape [C] = [", c, "], got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", name,
              " must be float32 or float64, got ", t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " must be on x's device ", x.device(), ", got ", t.device());
}
inline void bn_check_stat(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x,
                          at::IntArrayRef shape, at::ScalarType acc) {
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == acc, op, ": ", name, " must be ", acc, " (the statistics dtype of x ",
              x.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " must be on x's device ", x.device(), ", got ", t.device());
}
}  // namespace detail

// x as the kernels read it: either [N, C, S] (contiguous) or [N, S, C] (channels-last) in memory.
struct BnView {
  at::Tensor x;  // dense in the chosen order
  bool channels_last;
  int64_t n, c, s;
};

inline BnView bn_view(const at::Tensor& x_in) {
  const int64_t n = x_in.size(0), c = x_in.size(1);
  const int64_t s = x_in.numel() / (n * c);
  if (x_in.is_contiguous()) return {x_in, s == 1, n, c, s};
  if (x_in.movedim(1, -1).is_contiguous()) return {x_in, true, n, c, s};
  at::Tensor x = x_in.contiguous();
  return {x, s == 1, n, c, s};
}

// dx in x's memory format: contiguous, or channels-last for a channels-last x (the fake kernel mirrors this).
inline at::Tensor bn_empty_like(const at::Tensor& x) {
  if (x.is_contiguous()) return at::empty(x.sizes(), x.options());
  return at::empty(x.movedim(1, -1).sizes(), x.options()).movedim(-1, 1);
}

inline at::ScalarType bn_stat_dtype(at::ScalarType x) { return x == at::kDouble ? at::kDouble : at::kFloat; }

// Checks shared by the forward and the backward op.
inline void check_bn_stat_loss_inputs(const at::Tensor& x, const at::Tensor& running_mean,
                                      const at::Tensor& running_var, int64_t groups,
                                      const char* op = "bn_stat_loss") {
  TORCH_CHECK(x.dim() >= 2 && x.dim() <= 5, op, ": x must have rank 2 to 5 ([N, C, *spatial]), got rank ", x.dim(),
              " with shape ", x.sizes());
  TORCH_CHECK(detail::bn_float_dtype(x.scalar_type()), op,
              ": x must be float32, float64, float16 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(x.numel() > 0, op, ": x must not be empty, got shape ", x.sizes());
  const int64_t c = x.size(1);
  detail::bn_check_vec(op, "running_mean", running_mean, x, c);
  detail::bn_check_vec(op, "running_var", running_var, x, c);
  TORCH_CHECK(groups >= 1, op, ": groups must be >= 1, got ", groups);
  TORCH_CHECK(x.size(0) % groups == 0, op, ": groups must divide the batch size N = ", x.size(0), ", got groups = ",
              groups);
}

// The backward op's extra arguments: gradients and saved statistics of shape [G] / [G, C] in the statistics dtype.
inline void check_bn_stat_loss_backward_inputs(const at::Tensor& grad_loss, const at::Tensor& grad_mean,
                                               const at::Tensor& grad_var, const at::Tensor& x,
                                               const at::Tensor& running_mean, const at::Tensor& running_var,
                                               const at::Tensor& mean, const at::Tensor& var, int64_t groups) {
  const char* op = "_bn_stat_loss_backward";
  check_bn_stat_loss_inputs(x, running_mean, running_var, groups, op);
  const auto acc = bn_stat_dtype(x.scalar_type());
  const int64_t c = x.size(1);
  const std::array<int64_t, 1> g_shape{groups};
  const std::array<int64_t, 2> gc_shape{groups, c};
  detail::bn_check_stat(op, "grad_loss", grad_loss, x, g_shape, acc);
  detail::bn_check_stat(op, "grad_mean", grad_mean, x, gc_shape, acc);
  detail::bn_check_stat(op, "grad_var", grad_var, x, gc_shape, acc);
  detail::bn_check_stat(op, "mean", mean, x, gc_shape, acc);
  detail::bn_check_stat(op, "var", var, x, gc_shape, acc);
}

}  // namespace infer_fast
