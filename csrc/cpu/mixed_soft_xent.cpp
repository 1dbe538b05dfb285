// mixed_soft_xent, CPU traversal (math and checks in csrc/mixed_soft_xent.h).
// logits z [B,K] (fp32/fp64/fp16/bf16), target [B,K] floating or [B] integer, perm [B] int64 or None.
// Rows are independent: at::parallel_for over row blocks. Per row, z_b, y_b and y_perm(b) are read from memory
// once into two L1-resident scratch rows (opmath dtype); max, exp/sum and the gradient sweep run over the scratch
// and the gradient row is written once. Per-row losses are summed serially in float64 afterwards, so the loss does
// not depend on the thread count. The float exp is a Cephes polynomial the omp-simd loops vectorise.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "mixed_soft_xent.h"

namespace infer_fast {
namespace {

namespace math = mixed_soft_xent_math;

// Elements per parallel task: below this a row block is not worth a thread hand-off.
constexpr int64_t kGrainElems = 16384;

// exp(x) for the max-shifted arguments here (x <= 0): Cephes expf, 2^n * P(r), relative error ~ 2 ulp. Written
// without float compares, min/max or floor: under GCC's default -ftrapping-math those keep the loops scalar.
C10_ALWAYS_INLINE float exp_shifted(float x) {
  // x >= -87 (exp(-87) ~ 1.6e-38 is nothing next to a row sum >= 1; keeps 2^n normal): an unsigned min on the bit
  // pattern, since negative floats order by magnitude there and x = +0 stays below the bound.
  constexpr uint32_t kMinus87 = 0xC2AE0000u;
  x = std::bit_cast<float>(std::min(std::bit_cast<uint32_t>(x), kMinus87));
  constexpr float kShift = 12582912.0f;  // 1.5 * 2^23: t's low mantissa bits hold n = round(x / ln 2)
  const float t = std::fma(x, 1.44269504088896341f, kShift);
  const float n = t - kShift;
  float r = std::fma(n, -0.693359375f, x);
  r = std::fma(n, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = std::fma(p, r, 1.3981999507e-3f);
  p = std::fma(p, r, 8.3334519073e-3f);
  p = std::fma(p, r, 4.1665795894e-2f);
  p = std::fma(p, r, 1.6666665459e-1f);
  p = std::fma(p, r, 5.0000001201e-1f);
  p = std::fma(p, r * r, r + 1.0f);
  return p * std::bit_cast<float>((std::bit_cast<int32_t>(t) - std::bit_cast<int32_t>(kShift) + 127) << 23);
}
C10_ALWAYS_INLINE double exp_shifted(double x) { return std::exp(x); }

// A row holding inf/NaN (seen as a non-finite sum of its values: the exp's clamp would otherwise hide it) gets a NaN
// gradient and a NaN loss, as softmax would give.
template <typename zt>
float nan_row(zt* g, int64_t k) {
  std::fill(g, g + k, static_cast<zt>(std::numeric_limits<float>::quiet_NaN()));
  return std::numeric_limits<float>::quiet_NaN();
}

template <typename acc_t>
struct RowParams {
  int64_t k;
  acc_t wl, wr, inv_t, inv_tb;  // lam, 1 - lam, 1 / T, 1 / (T * B)
};

// One soft-target row; a and s are scratch rows of length k. Returns the row's KL.
template <typename zt, typename yt, typename acc_t>
acc_t soft_row(const zt* __restrict__ z, const yt* __restrict__ yb, const yt* __restrict__ yp, zt* __restrict__ g,
               acc_t* __restrict__ a, acc_t* __restrict__ s, const RowParams<acc_t>& prm) {
  const int64_t k = prm.k;
  acc_t max_a = -std::numeric_limits<acc_t>::infinity(), max_s = max_a, finite = 0;
#pragma omp simd reduction(max : max_a, max_s) reduction(+ : finite)
  for (int64_t i = 0; i < k; ++i) {
    const acc_t ai = math::mixed(static_cast<acc_t>(yb[i]), static_cast<acc_t>(yp[i]), prm.wl, prm.wr, prm.inv_t);
    const acc_t si = static_cast<acc_t>(z[i]) * prm.inv_t;
    a[i] = ai;
    s[i] = si;
    max_a = std::max(max_a, ai);
    max_s = std::max(max_s, si);
    finite += ai + si;
  }
  if (!std::isfinite(finite)) return nan_row(g, k);
  acc_t sum_a = 0, sum_s = 0, w = 0;
#pragma omp simd reduction(+ : sum_a, sum_s, w)
  for (int64_t i = 0; i < k; ++i) {
    const acc_t ai = a[i] - max_a, si = s[i] - max_s;
    const acc_t ea = exp_shifted(ai), es = exp_shifted(si);
    sum_a += ea;
    sum_s += es;
    w += ea * (ai - si);
    a[i] = ea;
    s[i] = es;
  }
  const acc_t ra = prm.inv_tb / sum_a, rs = prm.inv_tb / sum_s;
#pragma omp simd
  for (int64_t i = 0; i < k; ++i) g[i] = static_cast<zt>(s[i] * rs - a[i] * ra);
  return math::soft_row_kl(w, sum_a, sum_s);
}

// One hard-label row (classes c1 = y_b, c2 = y_perm(b)); s is a scratch row. Returns the row's KL.
template <typename zt, typename acc_t>
acc_t hard_row(const zt* __restrict__ z, int64_t c1, int64_t c2, zt* __restrict__ g, acc_t* __restrict__ s,
               const RowParams<acc_t>& prm) {
  const int64_t k = prm.k;
  acc_t max_s = -std::numeric_limits<acc_t>::infinity(), finite = 0;
#pragma omp simd reduction(max : max_s) reduction(+ : finite)
  for (int64_t i = 0; i < k; ++i) {
    const acc_t si = static_cast<acc_t>(z[i]) * prm.inv_t;
    s[i] = si;
    max_s = std::max(max_s, si);
    finite += si;
  }
  if (!std::isfinite(finite)) return nan_row(g, k);
  acc_t sum_s = 0;
#pragma omp simd reduction(+ : sum_s)
  for (int64_t i = 0; i < k; ++i) {
    const acc_t es = exp_shifted(s[i] - max_s);
    sum_s += es;
    s[i] = es;
  }
  const acc_t rs = prm.inv_tb / sum_s;
#pragma omp simd
  for (int64_t i = 0; i < k; ++i) g[i] = static_cast<zt>(s[i] * rs);
  for (const int64_t c : {c1, c2}) g[c] = static_cast<zt>(s[c] * rs - math::hard_p(c, c1, c2, prm.wl, prm.wr) * prm.inv_tb);
  const acc_t log_sum = std::log(sum_s);
  const acc_t log_q1 = static_cast<acc_t>(z[c1]) * prm.inv_t - max_s - log_sum;
  const acc_t log_q2 = static_cast<acc_t>(z[c2]) * prm.inv_t - max_s - log_sum;
  return math::hard_row_kl(c1, c2, prm.wl, prm.wr, log_q1, log_q2);
}

std::tuple<at::Tensor, at::Tensor> mixed_soft_xent_cpu(const at::Tensor& logits, const at::Tensor& target,
                                                       const std::optional<at::Tensor>& perm, double lam,
                                                       double temperature) {
  const bool hard = check_mixed_soft_xent_inputs(logits, target, perm, lam, temperature);
  const at::Tensor z = logits.contiguous();
  const int64_t nb = z.size(0), k = z.size(1);

  at::Tensor perm_c;
  const int64_t* pidx = nullptr;
  if (perm.has_value()) {
    perm_c = perm->contiguous();
    pidx = perm_c.data_ptr<int64_t>();
    for (int64_t b = 0; b < nb; ++b)
      TORCH_CHECK(pidx[b] >= 0 && pidx[b] < nb, "mixed_soft_xent: perm[", b, "] = ", pidx[b],
                  " is out of range, expected an index in [0, ", nb, ")");
  }
  // Class indices go to int64 (B values, negligible) so the row kernels need no index-type dispatch.
  const at::Tensor y = hard ? target.to(at::kLong).contiguous() : target.contiguous();
  if (hard) {
    const int64_t* cls = y.data_ptr<int64_t>();
    for (int64_t b = 0; b < nb; ++b)
      TORCH_CHECK(cls[b] >= 0 && cls[b] < k, "mixed_soft_xent: target[", b, "] = ", cls[b],
                  " is not a class index, expected one in [0, ", k, ")");
  }

  at::Tensor grad = at::empty({nb, k}, z.options());
  const auto acc_type = at::toOpMathType(z.scalar_type());
  at::Tensor loss = at::empty({}, z.options().dtype(acc_type));
  const int64_t grain = std::max<int64_t>(1, kGrainElems / k);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "mixed_soft_xent_cpu", [&] {
    using zt = scalar_t;
    using acc_t = at::opmath_type<zt>;
    const RowParams<acc_t> prm{k, static_cast<acc_t>(lam), static_cast<acc_t>(1.0 - lam),
                               static_cast<acc_t>(1.0 / temperature),
                               static_cast<acc_t>(1.0 / (temperature * static_cast<double>(nb)))};
    const zt* zp = z.const_data_ptr<zt>();
    zt* gp = grad.mutable_data_ptr<zt>();
    std::vector<acc_t> row_loss(nb);
    if (hard) {
      const int64_t* cls = y.const_data_ptr<int64_t>();
      at::parallel_for(0, nb, grain, [&](int64_t begin, int64_t end) {
        std::vector<acc_t> scratch(k);
        for (int64_t b = begin; b < end; ++b) {
          const int64_t c2 = cls[pidx ? pidx[b] : b];
          row_loss[b] = hard_row(zp + b * k, cls[b], c2, gp + b * k, scratch.data(), prm);
        }
      });
    } else {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "mixed_soft_xent_cpu_target", [&] {
        using yt = scalar_t;
        const yt* yp = y.const_data_ptr<yt>();
        at::parallel_for(0, nb, grain, [&](int64_t begin, int64_t end) {
          std::vector<acc_t> scratch(2 * k);
          for (int64_t b = begin; b < end; ++b) {
            const int64_t bp = pidx ? pidx[b] : b;
            row_loss[b] = soft_row(zp + b * k, yp + b * k, yp + bp * k, gp + b * k, scratch.data(),
                                   scratch.data() + k, prm);
          }
        });
      });
    }
    double total = 0.0;
    for (const acc_t v : row_loss) total += static_cast<double>(v);
    *loss.mutable_data_ptr<acc_t>() = static_cast<acc_t>(total / static_cast<double>(nb));
  });
  return {loss, grad};
}

// dst = src * scale over [begin, end) (the backward's single pass).
template <typename scalar_t, typename acc_t>
void scale_range(const scalar_t* __restrict__ src, scalar_t* __restrict__ dst, acc_t scale, int64_t begin,
                 int64_t end) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) dst[i] = static_cast<scalar_t>(static_cast<acc_t>(src[i]) * scale);
}

at::Tensor mixed_soft_xent_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& grad_logits) {
  check_mixed_soft_xent_backward_inputs(grad_loss, grad_logits);
  const at::Tensor g = grad_logits.contiguous();
  at::Tensor out = at::empty(g.sizes(), g.options());
  const int64_t n = g.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "mixed_soft_xent_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t scale = grad_loss.item().to<acc_t>();
    const scalar_t* src = g.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, 4 * kGrainElems,
                     [&](int64_t begin, int64_t end) { scale_range(src, dst, scale, begin, end); });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(infer_fast, CPU, m) {
  m.impl("mixed_soft_xent", &mixed_soft_xent_cpu);
  m.impl("_mixed_soft_xent_backward", &mixed_soft_xent_backward_cpu);
}

}  // namespace infer_fast
