// bn_stat_loss, CUDA traversal. x [N, C, *spatial] (S = prod(spatial)), G groups of N/G samples.
//   forward : partial Welford statistics per (g, c, split) (CUB block reduction with Chan's merge; channels-last x
//             reads coalesced along C), then one block per group merges the splits, writes mean/var and loss[g].
//   backward: one block per group computes the [C] coefficients, then one grid-stride pass
//             dx = p[g,c] * (x - mean[g,c]) + q[g,c] in x's dtype and memory format.
// dtypes: x fp32/fp64/fp16/bf16, accumulation and statistics in at::opmath_type (fp32, fp64 for fp64 x).
// Index arithmetic: when x has fewer than 2^31 elements, element -> (sample, channel) is a 32-bit multiply-high
// division by an invariant (at::cuda::detail::IntDivider<uint32_t>); 64-bit division only for larger tensors.
// Loads: 16-byte vectors (8 bytes per thread for half/bf16 in the channels-last statistics) whenever x is 16-byte
// aligned and a vector cannot straddle a plane (NCHW: S % V == 0) or a pixel (channels-last: C % V == 0), on the 32-bit
// index path; scalar otherwise. One index division per vector, and in the NCHW statistics one Welford division per
// vector (bn_welford_add_n).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/detail/IntegerDivider.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "bn_stat_loss.h"

namespace infer_fast {
namespace {

constexpr int kThreads = 256;
constexpr int kRowsPerBlockNhwc = kThreads / 32;  // channels-last: 32 channels x 8 rows per block
constexpr int64_t kMinPerSplit = 4096;            // elements per block before splitting a (g, c) further
constexpr int64_t kMaxGridYZ = 65535;             // gridDim.y and gridDim.z limit

template <typename I>
using Divider = at::cuda::detail::IntDivider<I>;

// V elements as one aligned load/store (at::native::memory::aligned_vector, whose header needs --extended-lambda).
template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T val[V];
};

// Elements per 16-byte vector, and per thread in the channels-last statistics (at most 4 channels' Welford states).
template <typename T>
constexpr int kVec = static_cast<int>(16 / sizeof(T));
template <typename T>
constexpr int kVecNhwc = std::min(4, kVec<T>);

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

// The vector kernels' common condition: a 16-byte aligned start and 32-bit element indices.
bool vector_ready(const void* p, int64_t numel) {
  return aligned16(p) && numel <= std::numeric_limits<int32_t>::max();
}

// 32-bit index arithmetic (fast invariant division) when every element offset fits, else 64-bit.
template <typename F>
void with_index_type(int64_t numel, const F& f) {
  if (numel <= std::numeric_limits<int32_t>::max())
    f(uint32_t{});
  else
    f(int64_t{});
}

template <typename A>
struct ChanMergeOp {
  __device__ __forceinline__ BnWelford<A> operator()(const BnWelford<A>& a, const BnWelford<A>& b) const {
    return bn_chan_merge(a, b);
  }
};

// Contiguous x: block (g*C + c, split) reduces elements [split*per_split, ...) of the group's N/G rows of channel c.
// V > 1: V consecutive elements per load (S % V == 0 and per_split % V == 0, so a vector stays within one plane).
template <typename T, typename A, typename I, int V>
__global__ void stats_nchw_kernel(const T* __restrict__ x, int64_t c, int64_t s, int64_t ng, int64_t per_split,
                                  Divider<I> div_s, BnWelford<A>* __restrict__ part) {
  const int64_t gc = blockIdx.x, g = gc / c, ch = gc % c;
  const int64_t total = ng * s, b = blockIdx.y * per_split;
  const int64_t e = b + per_split < total ? b + per_split : total;
  const T* base = x + (g * ng * c + ch) * s;
  const int64_t row = c * s;
  BnWelford<A> w;
  for (I i = static_cast<I>(b + threadIdx.x * V); i < static_cast<I>(e); i += kThreads * V) {
    const auto nr = div_s.divmod(i);  // (sample within the group, position within its plane)
    const T* src = base + static_cast<int64_t>(nr.div) * row + nr.mod;
    if constexpr (V == 1) {
      bn_welford_add(w, static_cast<A>(*src));
    } else {
      const auto vec = *reinterpret_cast<const Vec<T, V>*>(src);
      A vals[V];
#pragma unroll
      for (int k = 0; k < V; ++k) vals[k] = static_cast<A>(vec.val[k]);
      bn_welford_add_n(w, vals);
    }
  }
  using Reduce = cub::BlockReduce<BnWelford<A>, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  w = Reduce(tmp).Reduce(w, ChanMergeOp<A>{});
  if (threadIdx.x == 0) part[gc * gridDim.y + blockIdx.y] = w;
}

// Channels-last x ([N*S, C] rows): block (32*V channels, g, split), threads (32, each V adjacent channels) x (8
// rows), coalesced on C; V > 1 needs C % V == 0 (a vector stays within one pixel). Groups beyond gridDim.y's limit
// are strided over (groups = N with a large N).
template <typename T, typename A, int V>
__global__ void stats_nhwc_kernel(const T* __restrict__ x, int64_t c, int64_t groups, int64_t rows_g,
                                  int64_t per_split, BnWelford<A>* __restrict__ part) {
  const int64_t ch0 = (blockIdx.x * 32 + threadIdx.x) * V, b = blockIdx.z * per_split;
  const int64_t e = b + per_split < rows_g ? b + per_split : rows_g;
  // Column reduction over the 8 rows through shared memory (plain arrays: __shared__ needs trivial types); channel
  // k of thread x sits at [k * 32 + x], so a warp's stores hit 32 distinct banks.
  __shared__ A sn[kRowsPerBlockNhwc][32 * V], smean[kRowsPerBlockNhwc][32 * V], sm2[kRowsPerBlockNhwc][32 * V];
  for (int64_t g = blockIdx.y; g < groups; g += gridDim.y) {
    BnWelford<A> w[V];
    if (ch0 < c) {
      for (int64_t r = b + threadIdx.y; r < e; r += kRowsPerBlockNhwc) {
        const auto vec = *reinterpret_cast<const Vec<T, V>*>(x + (g * rows_g + r) * c + ch0);
#pragma unroll
        for (int k = 0; k < V; ++k) bn_welford_add(w[k], static_cast<A>(vec.val[k]));
      }
    }
#pragma unroll
    for (int k = 0; k < V; ++k) {
      sn[threadIdx.y][k * 32 + threadIdx.x] = w[k].n;
      smean[threadIdx.y][k * 32 + threadIdx.x] = w[k].mean;
      sm2[threadIdx.y][k * 32 + threadIdx.x] = w[k].m2;
    }
    __syncthreads();
    if (threadIdx.y == 0 && ch0 < c) {
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const int j = k * 32 + threadIdx.x;
        for (int y = 1; y < kRowsPerBlockNhwc; ++y)
          w[k] = bn_chan_merge(w[k], BnWelford<A>{sn[y][j], smean[y][j], sm2[y][j]});
        part[(g * c + ch0 + k) * gridDim.z + blockIdx.z] = w[k];
      }
    }
    __syncthreads();  // the next group reuses the shared rows
  }
}

// One block per group: merge the splits of each channel, write mean/var, and loss[g] from the two norms.
template <typename A>
__global__ void finalize_kernel(const BnWelford<A>* __restrict__ part, int64_t splits, const A* __restrict__ rm,
                                const A* __restrict__ rv, int64_t c, A* __restrict__ mean, A* __restrict__ var,
                                A* __restrict__ loss) {
  const int64_t g = blockIdx.x;
  A sv = 0, sm = 0;
  for (int64_t ch = threadIdx.x; ch < c; ch += kThreads) {
    BnWelford<A> w;
    for (int64_t k = 0; k < splits; ++k) w = bn_chan_merge(w, part[(g * c + ch) * splits + k]);
    const A v = w.m2 / w.n;
    mean[g * c + ch] = w.mean;
    var[g * c + ch] = v;
    const A dv = v - rv[ch], dm = w.mean - rm[ch];
    sv += dv * dv;
    sm += dm * dm;
  }
  using Reduce = cub::BlockReduce<A, kThreads>;
  __shared__ typename Reduce::TempStorage tmp_v, tmp_m;
  const A tv = Reduce(tmp_v).Sum(sv);
  const A tm = Reduce(tmp_m).Sum(sm);
  if (threadIdx.x == 0) loss[g] = sqrt(tv) + sqrt(tm);
}

// One block per group: the norms, then p/q per channel (bn_backward_coef).
template <typename A>
__global__ void coef_kernel(const A* __restrict__ gl, const A* __restrict__ gm, const A* __restrict__ gv,
                            const A* __restrict__ mean, const A* __restrict__ var, const A* __restrict__ rm,
                            const A* __restrict__ rv, int64_t c, A inv_count, A* __restrict__ p, A* __restrict__ q) {
  const int64_t g = blockIdx.x;
  A sv = 0, sm = 0;
  for (int64_t ch = threadIdx.x; ch < c; ch += kThreads) {
    const A dv = var[g * c + ch] - rv[ch], dm = mean[g * c + ch] - rm[ch];
    sv += dv * dv;
    sm += dm * dm;
  }
  using Reduce = cub::BlockReduce<A, kThreads>;
  __shared__ typename Reduce::TempStorage tmp_v, tmp_m;
  __shared__ A inv_norm[2];
  const A tv = Reduce(tmp_v).Sum(sv);
  const A tm = Reduce(tmp_m).Sum(sm);
  if (threadIdx.x == 0) {
    inv_norm[0] = bn_inv_norm(tm);
    inv_norm[1] = bn_inv_norm(tv);
  }
  __syncthreads();
  for (int64_t ch = threadIdx.x; ch < c; ch += kThreads) {
    const int64_t i = g * c + ch;
    bn_backward_coef<A>(gl[g], gm[i], gv[i], mean[i] - rm[ch], var[i] - rv[ch], inv_norm[0], inv_norm[1], inv_count,
                        p[i], q[i]);
  }
}

// dx in x's memory order: NCHW i = (n*C + ch)*S + pos, channels-last i = (n*S + pos)*C + ch; row gi = g*C + ch.
// V > 1: V consecutive elements per load and store, sharing (n, ch) in NCHW (S % V == 0) or n with channels
// ch..ch+V-1 in channels-last (C % V == 0).
template <typename T, typename A, bool kChannelsLast, typename I, int V>
__global__ void dx_kernel(const T* __restrict__ x, T* __restrict__ dx, const A* __restrict__ p,
                          const A* __restrict__ q, const A* __restrict__ mean, I numel, I c, Divider<I> div_c,
                          Divider<I> div_s, Divider<I> div_ng) {
  const I stride = static_cast<I>(gridDim.x) * kThreads * V;
  for (I i = (static_cast<I>(blockIdx.x) * kThreads + threadIdx.x) * V; i < numel; i += stride) {
    I n, ch;
    if constexpr (kChannelsLast) {
      const auto r = div_c.divmod(i);
      n = div_s.div(r.div), ch = r.mod;
    } else {
      const auto r = div_c.divmod(div_s.div(i));
      n = r.div, ch = r.mod;
    }
    const int64_t gi = static_cast<int64_t>(div_ng.div(n)) * c + ch;
    if constexpr (V == 1) {
      dx[i] = static_cast<T>(bn_dx<A>(static_cast<A>(x[i]), mean[gi], p[gi], q[gi]));
    } else {
      const auto in = *reinterpret_cast<const Vec<T, V>*>(x + i);
      Vec<T, V> out;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const int64_t j = kChannelsLast ? gi + k : gi;
        out.val[k] = static_cast<T>(bn_dx<A>(static_cast<A>(in.val[k]), mean[j], p[j], q[j]));
      }
      *reinterpret_cast<Vec<T, V>*>(dx + i) = out;
    }
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Splits per (g, c) so that the grid has a few blocks per SM, each with at least kMinPerSplit elements.
int64_t num_splits(int64_t blocks, int64_t per_block_elems) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t want = ceil_div(4 * sms, blocks);
  return std::max<int64_t>(1, std::min<int64_t>({want, ceil_div(per_block_elems, kMinPerSplit), 65535}));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_stat_loss_cuda(const at::Tensor& x_in,
                                                                 const at::Tensor& running_mean,
                                                                 const at::Tensor& running_var, int64_t groups) {
  check_bn_stat_loss_inputs(x_in, running_mean, running_var, groups);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const BnView v = bn_view(x_in);
  const auto acc = bn_stat_dtype(x_in.scalar_type());
  const auto opts = x_in.options().dtype(acc);
  const int64_t c = v.c, s = v.s, ng = v.n / groups;
  at::Tensor loss = at::empty({groups}, opts);
  at::Tensor mean = at::empty({groups, c}, opts);
  at::Tensor var = at::empty({groups, c}, opts);
  const at::Tensor rm = running_mean.to(acc).contiguous(), rv = running_var.to(acc).contiguous();
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.x.scalar_type(), "bn_stat_loss_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    const scalar_t* x = v.x.const_data_ptr<scalar_t>();
    int64_t splits;
    at::Tensor part;
    const bool aligned = vector_ready(x, v.x.numel());
    if (v.channels_last) {
      constexpr int V = kVecNhwc<scalar_t>;
      const bool vec = aligned && c % V == 0;
      const int64_t rows_g = ng * s, cblocks = ceil_div(c, 32 * (vec ? V : 1));
      splits = num_splits(cblocks * groups, rows_g * 32);
      const int64_t per_split = ceil_div(rows_g, splits);
      part = at::empty({groups * c * splits, 3}, opts);
      const dim3 grid(static_cast<unsigned>(cblocks), static_cast<unsigned>(std::min(groups, kMaxGridYZ)),
                      static_cast<unsigned>(splits));
      const auto kernel = vec ? stats_nhwc_kernel<scalar_t, A, V> : stats_nhwc_kernel<scalar_t, A, 1>;
      kernel<<<grid, dim3(32, kRowsPerBlockNhwc), 0, stream>>>(x, c, groups, rows_g, per_split,
                                                              reinterpret_cast<BnWelford<A>*>(part.data_ptr<A>()));
    } else {
      constexpr int V = kVec<scalar_t>;
      const bool vec = aligned && s % V == 0;
      const int64_t total = ng * s;
      splits = num_splits(groups * c, total);
      // a vector never straddles two splits: per_split is a multiple of V (total is when S % V == 0)
      int64_t per_split = ceil_div(total, splits);
      if (vec) {
        per_split = ceil_div(per_split, V) * V;
        splits = ceil_div(total, per_split);
      }
      part = at::empty({groups * c * splits, 3}, opts);
      const dim3 grid(static_cast<unsigned>(groups * c), static_cast<unsigned>(splits));
      auto* out = reinterpret_cast<BnWelford<A>*>(part.data_ptr<A>());
      if (vec) {
        stats_nchw_kernel<scalar_t, A, uint32_t, V>
            <<<grid, kThreads, 0, stream>>>(x, c, s, ng, per_split, Divider<uint32_t>(static_cast<uint32_t>(s)), out);
      } else {
        with_index_type(v.x.numel(), [&](auto idx) {
          using I = decltype(idx);
          stats_nchw_kernel<scalar_t, A, I, 1>
              <<<grid, kThreads, 0, stream>>>(x, c, s, ng, per_split, Divider<I>(static_cast<I>(s)), out);
        });
      }
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    finalize_kernel<A><<<static_cast<unsigned>(groups), kThreads, 0, stream>>>(
        reinterpret_cast<const BnWelford<A>*>(part.const_data_ptr<A>()), splits, rm.const_data_ptr<A>(),
        rv.const_data_ptr<A>(), c, mean.data_ptr<A>(), var.data_ptr<A>(), loss.data_ptr<A>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, mean, var};
}

at::Tensor bn_stat_loss_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& grad_mean,
                                      const at::Tensor& grad_var, const at::Tensor& x_in,
                                      const at::Tensor& running_mean, const at::Tensor& running_var,
                                      const at::Tensor& mean, const at::Tensor& var, int64_t groups) {
  check_bn_stat_loss_backward_inputs(grad_loss, grad_mean, grad_var, x_in, running_mean, running_var, mean, var,
                                     groups);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const BnView v = bn_view(x_in);
  const auto acc = bn_stat_dtype(x_in.scalar_type());
  const int64_t c = v.c, s = v.s, ng = v.n / groups, numel = v.x.numel();
  const at::Tensor rm = running_mean.to(acc).contiguous(), rv = running_var.to(acc).contiguous();
  const at::Tensor gl = grad_loss.contiguous(), gm = grad_mean.contiguous(), gv = grad_var.contiguous();
  const at::Tensor mc = mean.contiguous(), vc = var.contiguous();
  at::Tensor coef = at::empty({2, groups, c}, mean.options());
  at::Tensor dx = bn_empty_like(v.x);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.x.scalar_type(), "bn_stat_loss_backward_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    A* p = coef.data_ptr<A>();
    A* q = p + groups * c;
    coef_kernel<A><<<static_cast<unsigned>(groups), kThreads, 0, stream>>>(
        gl.const_data_ptr<A>(), gm.const_data_ptr<A>(), gv.const_data_ptr<A>(), mc.const_data_ptr<A>(),
        vc.const_data_ptr<A>(), rm.const_data_ptr<A>(), rv.const_data_ptr<A>(), c, A(1) / static_cast<A>(ng * s), p,
        q);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
    const scalar_t* x = v.x.const_data_ptr<scalar_t>();
    scalar_t* out = dx.data_ptr<scalar_t>();
    constexpr int V = kVec<scalar_t>;
    const bool vec = vector_ready(x, numel) && aligned16(out) && (v.channels_last ? c : s) % V == 0;
    const auto blocks =
        static_cast<unsigned>(std::min<int64_t>(ceil_div(numel, kThreads * (vec ? V : 1)), sms * 32));
    const auto launch = [&](auto kernel, auto idx) {
      using I = decltype(idx);
      const Divider<I> div_c(static_cast<I>(c)), div_s(static_cast<I>(s)), div_ng(static_cast<I>(ng));
      kernel<<<blocks, kThreads, 0, stream>>>(x, out, p, q, mc.const_data_ptr<A>(), static_cast<I>(numel),
                                              static_cast<I>(c), div_c, div_s, div_ng);
    };
    if (vec) {
      launch(v.channels_last ? dx_kernel<scalar_t, A, true, uint32_t, V> : dx_kernel<scalar_t, A, false, uint32_t, V>,
             uint32_t{});
    } else {
      with_index_type(numel, [&](auto idx) {
        using I = decltype(idx);
        launch(v.channels_last ? dx_kernel<scalar_t, A, true, I, 1> : dx_kernel<scalar_t, A, false, I, 1>, idx);
      });
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(infer_fast, CUDA, m) {
  m.impl("bn_stat_loss", &bn_stat_loss_cuda);
  m.impl("_bn_stat_loss_backward", &bn_stat_loss_backward_cuda);
}

}  // namespace infer_fast
