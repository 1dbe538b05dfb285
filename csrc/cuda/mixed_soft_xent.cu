// mixed_soft_xent, CUDA traversal (math and checks in csrc/mixed_soft_xent.h).
// logits z [B,K] (fp32/fp64/fp16/bf16), target [B,K] floating or [B] integer, perm [B] int64 or None.
// One thread block per row: three sweeps (max, exp sums, gradient) over z_b, y_b, y_perm(b), the later ones served
// from L1/L2, with CUB block reductions. Per-row losses go to a [B] buffer; the loss is its sum (fixed reduction
// order, deterministic) / B. No host synchronisation: the public function checks perm/class indices once per index
// tensor on the host (infer_fast/ops/_index_check.py); the device asserts here only back up raw op calls.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>
#include <limits>

#include "mixed_soft_xent.h"

namespace infer_fast {
namespace {

namespace math = mixed_soft_xent_math;

__device__ __forceinline__ float dev_exp(float x) { return __expf(x); }
__device__ __forceinline__ double dev_exp(double x) { return ::exp(x); }

// Row maxima of the target (a) and logit (s) sides, and f = the sum of the row's values: a non-finite f flags a row
// holding inf or NaN (the exp of the shifted values would hide it), which then gets a NaN loss and gradient, as on
// the CPU and as softmax gives.
template <typename acc_t>
struct Pair {
  acc_t a, s, f;
};
template <typename acc_t>
struct PairMaxOp {
  __device__ __forceinline__ Pair<acc_t> operator()(const Pair<acc_t>& x, const Pair<acc_t>& y) const {
    return {x.a > y.a ? x.a : y.a, x.s > y.s ? x.s : y.s, x.f + y.f};
  }
};

// A flagged row: NaN gradient and NaN loss (written by the block's threads; returns for the whole block).
template <typename zt, typename acc_t>
__device__ inline void nan_row(zt* __restrict__ g, acc_t* __restrict__ row_loss, int64_t b, int64_t k, int block) {
  const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();
  for (int64_t i = threadIdx.x; i < k; i += block) g[b * k + i] = static_cast<zt>(nan);
  if (threadIdx.x == 0) row_loss[b] = nan;
}

template <typename acc_t>
struct Sums {
  acc_t a, s, w;  // sum exp(a'), sum exp(s'), sum exp(a') (a' - s')
};
template <typename acc_t>
struct SumsOp {
  __device__ __forceinline__ Sums<acc_t> operator()(const Sums<acc_t>& x, const Sums<acc_t>& y) const {
    return {x.a + y.a, x.s + y.s, x.w + y.w};
  }
};

template <typename acc_t>
struct RowParams {
  int64_t nb, k;
  acc_t wl, wr, inv_t, inv_tb;  // lam, 1 - lam, 1 / T, 1 / (T * B)
};

template <int BLOCK, typename zt, typename yt, typename acc_t>
__global__ void __launch_bounds__(BLOCK)
    soft_kernel(const zt* __restrict__ z, const yt* __restrict__ y, const int64_t* __restrict__ perm,
                zt* __restrict__ g, acc_t* __restrict__ row_loss, const RowParams<acc_t> prm) {
  using PairReduce = cub::BlockReduce<Pair<acc_t>, BLOCK>;
  using SumsReduce = cub::BlockReduce<Sums<acc_t>, BLOCK>;
  __shared__ union {
    typename PairReduce::TempStorage pair;
    typename SumsReduce::TempStorage sums;
  } tmp;
  __shared__ acc_t sh_max_a, sh_max_s, sh_ra, sh_rs;
  __shared__ bool sh_nan;

  const int64_t b = blockIdx.x, k = prm.k;
  const int64_t bp = perm ? perm[b] : b;
  CUDA_KERNEL_ASSERT(bp >= 0 && bp < prm.nb && "mixed_soft_xent: perm index out of range");
  const zt* zr = z + b * k;
  const yt* yb = y + b * k;
  const yt* yp = y + bp * k;

  Pair<acc_t> m{-std::numeric_limits<acc_t>::infinity(), -std::numeric_limits<acc_t>::infinity(), acc_t(0)};
  for (int64_t i = threadIdx.x; i < k; i += BLOCK) {
    const acc_t a = math::mixed(static_cast<acc_t>(yb[i]), static_cast<acc_t>(yp[i]), prm.wl, prm.wr, prm.inv_t);
    const acc_t s = static_cast<acc_t>(zr[i]) * prm.inv_t;
    m = PairMaxOp<acc_t>()(m, Pair<acc_t>{a, s, a + s});
  }
  m = PairReduce(tmp.pair).Reduce(m, PairMaxOp<acc_t>());
  if (threadIdx.x == 0) {
    sh_max_a = m.a;
    sh_max_s = m.s;
    sh_nan = !::isfinite(m.f);
  }
  __syncthreads();
  if (sh_nan) return nan_row(g, row_loss, b, k, BLOCK);
  const acc_t max_a = sh_max_a, max_s = sh_max_s;

  Sums<acc_t> sums{0, 0, 0};
  for (int64_t i = threadIdx.x; i < k; i += BLOCK) {
    const acc_t a =
        math::mixed(static_cast<acc_t>(yb[i]), static_cast<acc_t>(yp[i]), prm.wl, prm.wr, prm.inv_t) - max_a;
    const acc_t s = static_cast<acc_t>(zr[i]) * prm.inv_t - max_s;
    const acc_t ea = dev_exp(a);
    sums.a += ea;
    sums.s += dev_exp(s);
    sums.w += ea * (a - s);
  }
  sums = SumsReduce(tmp.sums).Reduce(sums, SumsOp<acc_t>());
  if (threadIdx.x == 0) {
    sh_ra = prm.inv_tb / sums.a;
    sh_rs = prm.inv_tb / sums.s;
    row_loss[b] = math::soft_row_kl(sums.w, sums.a, sums.s);
  }
  __syncthreads();
  const acc_t ra = sh_ra, rs = sh_rs;

  zt* gr = g + b * k;
  for (int64_t i = threadIdx.x; i < k; i += BLOCK) {
    const acc_t a =
        math::mixed(static_cast<acc_t>(yb[i]), static_cast<acc_t>(yp[i]), prm.wl, prm.wr, prm.inv_t) - max_a;
    const acc_t s = static_cast<acc_t>(zr[i]) * prm.inv_t - max_s;
    gr[i] = static_cast<zt>(dev_exp(s) * rs - dev_exp(a) * ra);
  }
}

template <int BLOCK, typename zt, typename acc_t>
__global__ void __launch_bounds__(BLOCK)
    hard_kernel(const zt* __restrict__ z, const int64_t* __restrict__ cls, const int64_t* __restrict__ perm,
                zt* __restrict__ g, acc_t* __restrict__ row_loss, const RowParams<acc_t> prm) {
  using Reduce = cub::BlockReduce<acc_t, BLOCK>;
  using PairReduce = cub::BlockReduce<Pair<acc_t>, BLOCK>;
  __shared__ union {
    typename PairReduce::TempStorage pair;
    typename Reduce::TempStorage sum;
  } tmp;
  __shared__ acc_t sh_max, sh_rs;
  __shared__ bool sh_nan;

  const int64_t b = blockIdx.x, k = prm.k;
  const int64_t bp = perm ? perm[b] : b;
  CUDA_KERNEL_ASSERT(bp >= 0 && bp < prm.nb && "mixed_soft_xent: perm index out of range");
  const int64_t c1 = cls[b], c2 = cls[bp];
  CUDA_KERNEL_ASSERT(c1 >= 0 && c1 < k && c2 >= 0 && c2 < k && "mixed_soft_xent: class index out of range");
  const zt* zr = z + b * k;

  // the a side is unused here: only the logits' max (s) and their finiteness sum (f)
  Pair<acc_t> m{acc_t(0), -std::numeric_limits<acc_t>::infinity(), acc_t(0)};
  for (int64_t i = threadIdx.x; i < k; i += BLOCK) {
    const acc_t s = static_cast<acc_t>(zr[i]) * prm.inv_t;
    m = PairMaxOp<acc_t>()(m, Pair<acc_t>{acc_t(0), s, s});
  }
  m = PairReduce(tmp.pair).Reduce(m, PairMaxOp<acc_t>());
  if (threadIdx.x == 0) {
    sh_max = m.s;
    sh_nan = !::isfinite(m.f);
  }
  __syncthreads();
  if (sh_nan) return nan_row(g, row_loss, b, k, BLOCK);
  const acc_t max_s = sh_max;

  acc_t sum = 0;
  for (int64_t i = threadIdx.x; i < k; i += BLOCK) sum += dev_exp(static_cast<acc_t>(zr[i]) * prm.inv_t - max_s);
  sum = Reduce(tmp.sum).Sum(sum);
  if (threadIdx.x == 0) {
    const acc_t log_sum = ::log(sum);
    const acc_t log_q1 = static_cast<acc_t>(zr[c1]) * prm.inv_t - max_s - log_sum;
    const acc_t log_q2 = static_cast<acc_t>(zr[c2]) * prm.inv_t - max_s - log_sum;
    row_loss[b] = math::hard_row_kl(c1, c2, prm.wl, prm.wr, log_q1, log_q2);
    sh_rs = prm.inv_tb / sum;
  }
  __syncthreads();
  const acc_t rs = sh_rs;

  zt* gr = g + b * k;
  for (int64_t i = threadIdx.x; i < k; i += BLOCK) {
    const acc_t q = dev_exp(static_cast<acc_t>(zr[i]) * prm.inv_t - max_s) * rs;
    gr[i] = static_cast<zt>(q - math::hard_p(i, c1, c2, prm.wl, prm.wr) * prm.inv_tb);
  }
}

// Rows of a few classes (CIFAR-10) waste most of a wide block; large K wants more threads per row.
template <typename F>
void with_block_size(int64_t k, const F& f) {
  if (k <= 64) {
    f(std::integral_constant<int, 32>{});
  } else if (k <= 1024) {
    f(std::integral_constant<int, 128>{});
  } else {
    f(std::integral_constant<int, 256>{});
  }
}

std::tuple<at::Tensor, at::Tensor> mixed_soft_xent_cuda(const at::Tensor& logits, const at::Tensor& target,
                                                        const std::optional<at::Tensor>& perm, double lam,
                                                        double temperature) {
  const bool hard = check_mixed_soft_xent_inputs(logits, target, perm, lam, temperature);
  const c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor z = logits.contiguous();
  const int64_t nb = z.size(0), k = z.size(1);
  TORCH_CHECK(nb <= std::numeric_limits<int32_t>::max(), "mixed_soft_xent: batch of ", nb,
              " rows exceeds the CUDA grid limit 2^31 - 1");
  const at::Tensor perm_c = perm.has_value() ? perm->contiguous() : at::Tensor();
  const int64_t* pidx = perm.has_value() ? perm_c.const_data_ptr<int64_t>() : nullptr;
  const at::Tensor y = hard ? target.to(at::kLong).contiguous() : target.contiguous();

  at::Tensor grad = at::empty({nb, k}, z.options());
  const auto acc_type = at::toOpMathType(z.scalar_type());
  at::Tensor row_loss = at::empty({nb}, z.options().dtype(acc_type));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "mixed_soft_xent_cuda", [&] {
    using zt = scalar_t;
    using acc_t = at::opmath_type<zt>;
    const RowParams<acc_t> prm{nb,
                               k,
                               static_cast<acc_t>(lam),
                               static_cast<acc_t>(1.0 - lam),
                               static_cast<acc_t>(1.0 / temperature),
                               static_cast<acc_t>(1.0 / (temperature * static_cast<double>(nb)))};
    const zt* zp = z.const_data_ptr<zt>();
    zt* gp = grad.mutable_data_ptr<zt>();
    acc_t* lp = row_loss.mutable_data_ptr<acc_t>();
    if (hard) {
      const int64_t* cls = y.const_data_ptr<int64_t>();
      with_block_size(k, [&](auto block) {
        hard_kernel<decltype(block)::value, zt, acc_t><<<nb, block.value, 0, stream>>>(zp, cls, pidx, gp, lp, prm);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    } else {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "mixed_soft_xent_cuda_target", [&] {
        using yt = scalar_t;
        const yt* yp = y.const_data_ptr<yt>();
        with_block_size(k, [&](auto block) {
          soft_kernel<decltype(block)::value, zt, yt, acc_t>
              <<<nb, block.value, 0, stream>>>(zp, yp, pidx, gp, lp, prm);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
    }
  });
  at::Tensor loss = row_loss.sum().div_(static_cast<double>(nb));
  return {loss, grad};
}

template <typename scalar_t, typename acc_t>
__global__ void scale_kernel(const scalar_t* __restrict__ src, const acc_t* __restrict__ scale,
                             scalar_t* __restrict__ dst, int64_t n) {
  const acc_t s = *scale;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = static_cast<scalar_t>(static_cast<acc_t>(src[i]) * s);
}

at::Tensor mixed_soft_xent_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& grad_logits) {
  check_mixed_soft_xent_backward_inputs(grad_loss, grad_logits);
  const c10::cuda::CUDAGuard guard(grad_logits.device());
  const at::Tensor g = grad_logits.contiguous();
  at::Tensor out = at::empty(g.sizes(), g.options());
  const int64_t n = g.numel();
  if (n == 0) return out;
  const auto acc_type = at::toOpMathType(g.scalar_type());
  const at::Tensor scale = grad_loss.reshape({}).to(acc_type);  // stays on the device: no synchronisation
  constexpr int kThreads = 256;
  const int64_t blocks = std::min<int64_t>((n + kThreads - 1) / kThreads, 65536);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "mixed_soft_xent_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scale_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, stream>>>(
        g.const_data_ptr<scalar_t>(), scale.const_data_ptr<acc_t>(), out.mutable_data_ptr<scalar_t>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(infer_fast, CUDA, m) {
  m.impl("mixed_soft_xent", &mixed_soft_xent_cuda);
  m.impl("_mixed_soft_xent_backward", &mixed_soft_xent_backward_cuda);
}

}  // namespace infer_fast
