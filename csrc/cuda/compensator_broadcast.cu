// compensator_broadcast, CUDA: out[i] = clamp(base[bidx[i]] * s/std - mean/std + ufc[uidx[i]], lo, hi) per channel;
// backward grad_ufc[u] = sum_{i: uidx[i] == u} grad_out[i] * [lo <= pre_i <= hi], recomputing pre (no saved mask).
// Shapes: base [Nb,C,H,W] uint8|float, ufc [U,C,H,W] float, indices int64 [B], mean/std/lo/hi [C]; out [B,C,H,W].
// Forward: one thread per output element (grid y over images). Backward is deterministic without atomics: images
// are grouped by UFC with a stable sort (CSR), and one thread per UFC pixel sums its group in image order.
#include "compensator_broadcast.h"

#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

namespace infer_fast::compensator_broadcast {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxGridY = 65535;

// Per-channel a = s/std, b = -mean/std, lo, hi into shared memory (4 * C values) at block start.
template <typename acc>
__device__ inline void load_channels(acc* sh, const acc* mean, const acc* std, const acc* lo, const acc* hi,
                                     int64_t C, acc scale) {
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    channel_affine(scale, mean[c], std[c], sh[c], sh[C + c]);
    sh[2 * C + c] = lo[c];
    sh[3 * C + c] = hi[c];
  }
  __syncthreads();
}

template <typename bT, typename oT, typename acc>
__global__ void forward_kernel(const bT* __restrict__ base, const oT* __restrict__ ufc, oT* __restrict__ out,
                               const int64_t* __restrict__ bidx, const int64_t* __restrict__ uidx,
                               const acc* __restrict__ mean, const acc* __restrict__ std, const acc* __restrict__ lo,
                               const acc* __restrict__ hi, int64_t B, int64_t C, int64_t HW, bool channels_last,
                               int64_t bs0, int64_t us0, acc scale) {
  extern __shared__ __align__(16) unsigned char smem[];
  acc* sh = reinterpret_cast<acc*>(smem);
  load_channels(sh, mean, std, lo, hi, C, scale);
  const int64_t n = C * HW;
  for (int64_t i = blockIdx.y; i < B; i += gridDim.y) {
    const bT* x = base + bidx[i] * bs0;
    const int64_t u = uidx[i];
    const oT* uf = u >= 0 ? ufc + u * us0 : nullptr;
    oT* y = out + i * n;
    for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
      const int64_t c = channels_last ? e % C : e / HW;
      const acc shift = pixel_shift(sh[C + c], uf ? static_cast<acc>(uf[e]) : acc(0));
      const acc v = pre_value(static_cast<acc>(x[e]), sh[c], shift);
      y[e] = static_cast<oT>(clamp_value(v, sh[2 * C + c], sh[3 * C + c]));
    }
  }
}

template <typename bT, typename oT, typename acc>
__global__ void backward_kernel(const oT* __restrict__ grad, const bT* __restrict__ base, const oT* __restrict__ ufc,
                                oT* __restrict__ grad_ufc, const int64_t* __restrict__ bidx,
                                const int64_t* __restrict__ images, const int64_t* __restrict__ offsets,
                                const acc* __restrict__ mean, const acc* __restrict__ std, const acc* __restrict__ lo,
                                const acc* __restrict__ hi, int64_t U, int64_t C, int64_t HW, bool channels_last,
                                int64_t bs0, int64_t us0, int64_t gs0, bool grad_broadcast, acc scale) {
  extern __shared__ __align__(16) unsigned char smem[];
  acc* sh = reinterpret_cast<acc*>(smem);
  load_channels(sh, mean, std, lo, hi, C, scale);
  const int64_t n = C * HW;
  for (int64_t u = blockIdx.y; u < U; u += gridDim.y) {
    // group u + 1 of the CSR holds the images composed with UFC u (group 0: no compensator)
    const int64_t first = offsets[u + 1], last = offsets[u + 2];
    const oT* uf = ufc + u * us0;
    for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
      const int64_t c = channels_last ? e % C : e / HW;
      const acc a = sh[c], l = sh[2 * C + c], h = sh[3 * C + c];
      const acc shift = pixel_shift(sh[C + c], static_cast<acc>(uf[e]));
      acc sum = 0;
      for (int64_t j = first; j < last; ++j) {
        const int64_t i = images[j];
        const acc g = static_cast<acc>(grad[i * gs0 + (grad_broadcast ? 0 : e)]);
        sum += clamp_grad(g, pre_value(static_cast<acc>(base[bidx[i] * bs0 + e]), a, shift), l, h);
      }
      grad_ufc[u * n + e] = static_cast<oT>(sum);
    }
  }
}

template <typename F>
void dispatch_types(const at::Tensor& base, const at::Tensor& ufc, F&& fn) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ufc.scalar_type(), "compensator_broadcast_cuda", [&] {
    using oT = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kByte, base.scalar_type(),
                                    "compensator_broadcast_cuda_base", [&] { fn.template operator()<scalar_t, oT>(); });
  });
}

// Per-channel mean/std/lo/hi in the accumulation type (contiguous, on ufc's device) and the base pixel scale.
template <typename acc>
struct ChannelConstants {
  at::Tensor mean, std, lo, hi;
  acc scale;
};

template <typename acc>
ChannelConstants<acc> channel_constants(const at::Tensor& base, const at::Tensor& ufc, const at::Tensor& mean,
                                        const at::Tensor& std, const at::Tensor& lo, const at::Tensor& hi) {
  const auto opt = ufc.options().dtype(c10::CppTypeToScalarType<acc>::value);
  return {mean.to(opt).contiguous(), std.to(opt).contiguous(), lo.to(opt).contiguous(), hi.to(opt).contiguous(),
          base_is_uint8(base) ? acc(1) / acc(255) : acc(1)};
}

dim3 grid_for(int64_t n, int64_t rows) {
  const int64_t gx = std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t(1) << 20);
  return dim3(static_cast<unsigned>(std::max<int64_t>(gx, 1)), static_cast<unsigned>(std::min(rows, kMaxGridY)));
}

at::Tensor compensator_broadcast_cuda(const at::Tensor& base, const at::Tensor& ufc, const at::Tensor& base_index,
                                      const at::Tensor& ufc_index, const at::Tensor& mean, const at::Tensor& std,
                                      const at::Tensor& lo, const at::Tensor& hi) {
  check_compensator_broadcast_inputs(base, ufc, base_index, ufc_index, mean, std, lo, hi);
  const c10::cuda::CUDAGuard guard(ufc.device());
  const Prepared p = prepare_compensator_broadcast(base, ufc, base_index, ufc_index);
  const int64_t B = base_index.size(0), C = ufc.size(1), HW = ufc.size(2) * ufc.size(3);
  auto out = at::empty({B, C, ufc.size(2), ufc.size(3)}, ufc.options().memory_format(p.fmt));
  if (out.numel() == 0) return out;
  dispatch_types(p.base, p.ufc, [&]<typename bT, typename oT>() {
    using acc = at::opmath_type<oT>;
    const auto k = channel_constants<acc>(base, ufc, mean, std, lo, hi);
    forward_kernel<bT, oT, acc><<<grid_for(C * HW, B), kThreads, 4 * C * sizeof(acc),
                                  at::cuda::getCurrentCUDAStream()>>>(
        p.base.const_data_ptr<bT>(), p.ufc.const_data_ptr<oT>(), out.mutable_data_ptr<oT>(),
        p.base_index.const_data_ptr<int64_t>(), p.ufc_index.const_data_ptr<int64_t>(),
        k.mean.template const_data_ptr<acc>(), k.std.template const_data_ptr<acc>(),
        k.lo.template const_data_ptr<acc>(), k.hi.template const_data_ptr<acc>(), B, C, HW,
        p.fmt == at::MemoryFormat::ChannelsLast, p.base.stride(0), p.ufc.stride(0), k.scale);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor compensator_broadcast_backward_cuda(const at::Tensor& grad_out, const at::Tensor& base,
                                               const at::Tensor& ufc, const at::Tensor& base_index,
                                               const at::Tensor& ufc_index, const at::Tensor& mean,
                                               const at::Tensor& std, const at::Tensor& lo, const at::Tensor& hi) {
  check_compensator_broadcast_inputs(base, ufc, base_index, ufc_index, mean, std, lo, hi, &grad_out);
  const c10::cuda::CUDAGuard guard(ufc.device());
  const Prepared p = prepare_compensator_broadcast(base, ufc, base_index, ufc_index, &grad_out);
  const int64_t U = ufc.size(0), C = ufc.size(1), HW = ufc.size(2) * ufc.size(3);
  auto grad_ufc = at::empty(ufc.sizes(), ufc.options().memory_format(p.fmt));
  if (grad_ufc.numel() == 0) return grad_ufc;
  // CSR of images per group (group 0: uidx -1, group u + 1: UFC u); the stable sort keeps image order in a group
  const auto groups = p.ufc_index + 1;
  const auto images = std::get<1>(at::sort(groups, /*stable=*/true, /*dim=*/0, /*descending=*/false));
  const auto counts = at::bincount(groups, /*weights=*/{}, /*minlength=*/U + 1);
  const auto offsets = at::cat({at::zeros({1}, counts.options()), at::cumsum(counts, 0)});
  dispatch_types(p.base, p.ufc, [&]<typename bT, typename oT>() {
    using acc = at::opmath_type<oT>;
    const auto k = channel_constants<acc>(base, ufc, mean, std, lo, hi);
    backward_kernel<bT, oT, acc><<<grid_for(C * HW, U), kThreads, 4 * C * sizeof(acc),
                                   at::cuda::getCurrentCUDAStream()>>>(
        p.grad.const_data_ptr<oT>(), p.base.const_data_ptr<bT>(), p.ufc.const_data_ptr<oT>(),
        grad_ufc.mutable_data_ptr<oT>(), p.base_index.const_data_ptr<int64_t>(), images.const_data_ptr<int64_t>(),
        offsets.const_data_ptr<int64_t>(), k.mean.template const_data_ptr<acc>(),
        k.std.template const_data_ptr<acc>(), k.lo.template const_data_ptr<acc>(),
        k.hi.template const_data_ptr<acc>(), U, C, HW, p.fmt == at::MemoryFormat::ChannelsLast, p.base.stride(0),
        p.ufc.stride(0), p.grad.stride(0), p.grad_broadcast, k.scale);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_ufc;
}

}  // namespace
}  // namespace infer_fast::compensator_broadcast

TORCH_LIBRARY_IMPL(infer_fast, CUDA, m) {
  m.impl("compensator_broadcast", &infer_fast::compensator_broadcast::compensator_broadcast_cuda);
  m.impl("_compensator_broadcast_backward", &infer_fast::compensator_broadcast::compensator_broadcast_backward_cuda);
}
