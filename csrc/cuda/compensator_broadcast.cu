// compensator_broadcast, CUDA: out[i] = clamp(base[bidx[i]] * s/std - mean/std + ufc[uidx[i]], lo, hi) per channel;
// backward grad_ufc[u] = sum_{i: uidx[i] == u} grad_out[i] * [lo <= pre_i <= hi], recomputing pre (no saved mask).
// Shapes: base [Nb,C,H,W] uint8|float, ufc [U,C,H,W] float, indices int64 [B], mean/std/lo/hi [C]; out [B,C,H,W].
// Forward: one thread per output element (grid y over images; an element's channel by 32-bit invariant division).
// Backward is deterministic without atomics: images are grouped by UFC with a stable sort (CSR), and one thread per
// UFC pixel sums its group in image order. When that grid is too small to fill the GPU (few UFCs, small images, many
// images per UFC: CIFAR/Tiny-sized problems), each group's images are also cut into `splits` contiguous runs (grid
// z): every run's sum goes to a float buffer and a second kernel adds the runs in order, so the result depends on the
// group sizes and the split count only, never on scheduling.
// No host synchronisation: index ranges are checked once on the host by the Python function (device asserts here),
// the CSR offsets come from a binary search in the sorted keys, and the channel table is computed on the device.
#include "compensator_broadcast.h"

#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/detail/IntegerDivider.cuh>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

namespace infer_fast::compensator_broadcast {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxGridY = 65535;
constexpr size_t kMaxSharedTable = 48 * 1024;  // dynamic shared memory available without an opt-in
constexpr int64_t kBlocksPerSm = 4;             // backward: split image runs until the grid has this many per SM
constexpr int64_t kMinImagesPerSplit = 8;       // ... but keep at least this many images (on average) per run
constexpr int64_t kMaxSplits = 64;

// Channel of element e of one image: e % C (channels-last) or e / HW (NCHW), as a 32-bit multiply-high division by
// an invariant (an image has fewer than 2^31 elements, checked on the host).
struct ChannelOf {
  at::cuda::detail::IntDivider<uint32_t> div;
  bool channels_last;
  ChannelOf(int64_t C, int64_t HW, bool cl) : div(static_cast<uint32_t>(cl ? C : HW)), channels_last(cl) {}
  __device__ __forceinline__ uint32_t operator()(uint32_t e) const {
    return channels_last ? div.mod(e) : div.div(e);
  }
};

void check_image_size(int64_t n) {
  TORCH_CHECK(n <= std::numeric_limits<int32_t>::max(), "compensator_broadcast (CUDA): an image of C*H*W = ", n,
              " elements exceeds the kernels' 32-bit per-image index (at most 2^31 - 1)");
}

// The [4, C] channel table (rows a, b, lo, hi): copied to shared memory when it fits (launched with its size as
// dynamic shared memory), else read from global memory through the read-only cache (thousands of channels).
template <typename acc>
__device__ inline const acc* load_table(const acc* __restrict__ table, int64_t C, bool in_smem) {
  extern __shared__ __align__(16) unsigned char smem[];
  if (!in_smem) return table;
  acc* sh = reinterpret_cast<acc*>(smem);
  for (int64_t k = threadIdx.x; k < 4 * C; k += blockDim.x) sh[k] = table[k];
  __syncthreads();
  return sh;
}

template <typename bT, typename oT, typename acc>
__global__ void forward_kernel(const bT* __restrict__ base, const oT* __restrict__ ufc, oT* __restrict__ out,
                               const int64_t* __restrict__ bidx, const int64_t* __restrict__ uidx,
                               const acc* __restrict__ table, bool in_smem, int64_t B, int64_t Nb, int64_t U,
                               int64_t C, uint32_t n, ChannelOf channel_of, int64_t bs0, int64_t us0) {
  const acc* sh = load_table(table, C, in_smem);
  for (int64_t i = blockIdx.y; i < B; i += gridDim.y) {
    const int64_t bi = bidx[i], u = uidx[i];
    CUDA_KERNEL_ASSERT(bi >= 0 && bi < Nb && u >= -1 && u < U && "compensator_broadcast: index out of range");
    const bT* x = base + bi * bs0;
    const oT* uf = u >= 0 ? ufc + u * us0 : nullptr;
    oT* y = out + i * int64_t(n);
    for (uint32_t e = blockIdx.x * blockDim.x + threadIdx.x; e < n; e += gridDim.x * blockDim.x) {
      const uint32_t c = channel_of(e);
      const acc shift = pixel_shift(sh[C + c], uf ? static_cast<acc>(uf[e]) : acc(0));
      const acc v = pre_value(static_cast<acc>(x[e]), sh[c], shift);
      y[e] = static_cast<oT>(clamp_value(v, sh[2 * C + c], sh[3 * C + c]));
    }
  }
}

// Block (pixels, u, z) sums run z of UFC u's images: all of them when gridDim.z == 1 (written to grad_ufc), else
// images [first + z * len, first + (z + 1) * len) of the group, len = ceil(group size / gridDim.z), into partial.
template <typename bT, typename oT, typename acc>
__global__ void backward_kernel(const oT* __restrict__ grad, const bT* __restrict__ base, const oT* __restrict__ ufc,
                                oT* __restrict__ grad_ufc, acc* __restrict__ partial,
                                const int64_t* __restrict__ bidx, const int64_t* __restrict__ images,
                                const int64_t* __restrict__ offsets, const acc* __restrict__ table, bool in_smem,
                                int64_t Nb, int64_t U, int64_t C, uint32_t n, ChannelOf channel_of, int64_t bs0,
                                int64_t us0, int64_t gs0, bool grad_broadcast) {
  const acc* sh = load_table(table, C, in_smem);
  for (int64_t u = blockIdx.y; u < U; u += gridDim.y) {
    // group u + 1 of the CSR holds the images composed with UFC u (group 0: no compensator)
    int64_t first = offsets[u + 1], last = offsets[u + 2];
    if (gridDim.z > 1) {
      const int64_t len = (last - first + gridDim.z - 1) / gridDim.z;
      first = min(last, first + blockIdx.z * len);
      last = min(last, first + len);
    }
    const oT* uf = ufc + u * us0;
    for (uint32_t e = blockIdx.x * blockDim.x + threadIdx.x; e < n; e += gridDim.x * blockDim.x) {
      const uint32_t c = channel_of(e);
      const acc a = sh[c], l = sh[2 * C + c], h = sh[3 * C + c];
      const acc shift = pixel_shift(sh[C + c], static_cast<acc>(uf[e]));
      acc sum = 0;
      for (int64_t j = first; j < last; ++j) {
        const int64_t i = images[j], bi = bidx[i];
        CUDA_KERNEL_ASSERT(bi >= 0 && bi < Nb && "compensator_broadcast: base_index out of range");
        const acc g = static_cast<acc>(grad[i * gs0 + (grad_broadcast ? 0 : e)]);
        sum += clamp_grad(g, pre_value(static_cast<acc>(base[bi * bs0 + e]), a, shift), l, h);
      }
      if (gridDim.z > 1)
        partial[(static_cast<int64_t>(blockIdx.z) * U + u) * n + e] = sum;
      else
        grad_ufc[u * int64_t(n) + e] = static_cast<oT>(sum);
    }
  }
}

// grad_ufc[k] = sum of the runs' partial sums in run order (k over the U * n elements).
template <typename oT, typename acc>
__global__ void sum_runs_kernel(const acc* __restrict__ partial, oT* __restrict__ grad_ufc, int64_t total,
                                int64_t splits) {
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < total;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    acc sum = 0;
    for (int64_t z = 0; z < splits; ++z) sum += partial[z * total + k];
    grad_ufc[k] = static_cast<oT>(sum);
  }
}

// Runs per group for the backward: 1 when the (pixels x UFCs) grid already gives every SM kBlocksPerSm blocks, else
// enough to do so, with at least kMinImagesPerSplit images per run on average. From sizes only (no device read).
int64_t backward_splits(int64_t grid_blocks, int64_t B, int64_t U) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t want = (kBlocksPerSm * sms + grid_blocks - 1) / grid_blocks;
  const int64_t per_group = (B + U - 1) / U;
  return std::max<int64_t>(1, std::min({want, per_group / kMinImagesPerSplit, kMaxSplits}));
}

template <typename F>
void dispatch_types(const at::Tensor& base, const at::Tensor& ufc, F&& fn) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ufc.scalar_type(), "compensator_broadcast_cuda", [&] {
    using oT = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kByte, base.scalar_type(),
                                    "compensator_broadcast_cuda_base", [&] { fn.template operator()<scalar_t, oT>(); });
  });
}

// Dynamic shared memory for the channel table: its size when it fits, else 0 (the kernels then read it in place).
size_t table_smem(const at::Tensor& table) {
  const size_t bytes = table.nbytes();
  return bytes <= kMaxSharedTable ? bytes : 0;
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
  check_image_size(C * HW);
  const at::Tensor table = channel_table(p.base, ufc, mean, std, lo, hi);
  const size_t smem = table_smem(table);
  dispatch_types(p.base, p.ufc, [&]<typename bT, typename oT>() {
    using acc = at::opmath_type<oT>;
    forward_kernel<bT, oT, acc><<<grid_for(C * HW, B), kThreads, smem, at::cuda::getCurrentCUDAStream()>>>(
        p.base.const_data_ptr<bT>(), p.ufc.const_data_ptr<oT>(), out.mutable_data_ptr<oT>(),
        p.base_index.const_data_ptr<int64_t>(), p.ufc_index.const_data_ptr<int64_t>(),
        table.const_data_ptr<acc>(), smem > 0, B, p.base.size(0), ufc.size(0), C, static_cast<uint32_t>(C * HW),
        ChannelOf(C, HW, p.fmt == at::MemoryFormat::ChannelsLast), p.base.stride(0), p.ufc.stride(0));
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
  check_image_size(C * HW);
  // CSR of images per group (group 0: uidx -1, group u + 1: UFC u); the stable sort keeps image order in a group.
  // offsets[g] = number of keys below g, found by binary search in the sorted keys: no count ever reaches the host.
  const auto sorted = at::sort(p.ufc_index + 1, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor& keys = std::get<0>(sorted);
  const at::Tensor& images = std::get<1>(sorted);
  const auto offsets = at::searchsorted(keys, at::arange(U + 2, keys.options()));
  const at::Tensor table = channel_table(p.base, ufc, mean, std, lo, hi);
  const size_t smem = table_smem(table);
  const int64_t B = base_index.size(0), n = C * HW;
  dim3 grid = grid_for(n, U);
  const int64_t splits = backward_splits(static_cast<int64_t>(grid.x) * grid.y, B, U);
  grid.z = static_cast<unsigned>(splits);
  const auto stream = at::cuda::getCurrentCUDAStream();
  dispatch_types(p.base, p.ufc, [&]<typename bT, typename oT>() {
    using acc = at::opmath_type<oT>;
    at::Tensor partial;
    if (splits > 1) partial = at::empty({splits, U * n}, ufc.options().dtype(at::toOpMathType(ufc.scalar_type())));
    backward_kernel<bT, oT, acc><<<grid, kThreads, smem, stream>>>(
        p.grad.const_data_ptr<oT>(), p.base.const_data_ptr<bT>(), p.ufc.const_data_ptr<oT>(),
        grad_ufc.mutable_data_ptr<oT>(), splits > 1 ? partial.mutable_data_ptr<acc>() : nullptr,
        p.base_index.const_data_ptr<int64_t>(), images.const_data_ptr<int64_t>(), offsets.const_data_ptr<int64_t>(),
        table.const_data_ptr<acc>(), smem > 0, p.base.size(0), U, C, static_cast<uint32_t>(n),
        ChannelOf(C, HW, p.fmt == at::MemoryFormat::ChannelsLast), p.base.stride(0), p.ufc.stride(0),
        p.grad.stride(0), p.grad_broadcast);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (splits > 1) {
      const int64_t total = U * n;
      const auto blocks = static_cast<unsigned>(std::min<int64_t>((total + kThreads - 1) / kThreads, 1 << 16));
      sum_runs_kernel<oT, acc>
          <<<blocks, kThreads, 0, stream>>>(partial.const_data_ptr<acc>(), grad_ufc.mutable_data_ptr<oT>(), total,
                                            splits);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return grad_ufc;
}

}  // namespace
}  // namespace infer_fast::compensator_broadcast

TORCH_LIBRARY_IMPL(infer_fast, CUDA, m) {
  m.impl("compensator_broadcast", &infer_fast::compensator_broadcast::compensator_broadcast_cuda);
  m.impl("_compensator_broadcast_backward", &infer_fast::compensator_broadcast::compensator_broadcast_backward_cuda);
}
