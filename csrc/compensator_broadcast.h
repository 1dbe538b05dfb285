// compensator_broadcast: shared math and the one input check of both backends.
//   out[i] = clamp(fma(base[bidx[i]], a_c, b_c + ufc[uidx[i]]), lo_c, hi_c),  a_c = s / std_c, b_c = -mean_c / std_c
//   (s = 1/255 for uint8 base, 1 for floating base; uidx[i] == -1: no compensator is added).
//   grad_ufc[u] = sum over {i : uidx[i] == u} of grad_out[i] * [lo_c <= pre_i <= hi_c]  (inclusive, as torch.clamp)
// Every image is a flat run of n = C*H*W elements in the output's memory format, which follows ufc's:
// channels_last when ufc is channels_last (and not also contiguous), contiguous otherwise.
// Math in at::opmath_type of ufc's dtype (fp32 for fp16/bf16/fp32, fp64 for fp64).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/macros/Macros.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace infer_fast::compensator_broadcast {

// Shift of one pixel: the normalisation's -mean/std plus the compensator (computed once per UFC pixel, then shared
// by every image composed with that UFC).
template <typename T>
C10_HOST_DEVICE inline T pixel_shift(T b, T u) {
  return b + u;
}

// Pre-clamp value: one fma per image pixel. An explicit fma on both backends, so that the forward and the
// backward's recomputed clamp mask agree bit-for-bit whatever the compiler contracts.
template <typename T>
C10_HOST_DEVICE inline T pre_value(T x, T a, T shift) {
#ifdef __CUDA_ARCH__
  return ::fma(x, a, shift);
#else
  return std::fma(x, a, shift);
#endif
}

// min(max(v, lo), hi) as torch.clamp computes it: NaN propagates, lo > hi gives hi.
template <typename T>
C10_HOST_DEVICE inline T clamp_value(T v, T lo, T hi) {
  v = v < lo ? lo : v;
  return v > hi ? hi : v;
}

// torch.clamp's gradient mask (min <= x <= max, false for NaN).
template <typename T>
C10_HOST_DEVICE inline T clamp_grad(T g, T pre, T lo, T hi) {
  return (pre >= lo && pre <= hi) ? g : T(0);
}

inline bool base_is_uint8(const at::Tensor& base) { return base.scalar_type() == at::kByte; }

// Per-channel constants of both backends, computed once per call with ATen ops on the tensors' device, in the
// accumulation type: a [4, C] table of rows a = s / std, b = -mean / std, lo, hi. IEEE division on either device
// (the build has no fast-math), so CPU and CUDA compose with the same a and b and a pixel that lands exactly on lo or
// hi gets the same clamp mask on both.
inline at::Tensor channel_table(const at::Tensor& base, const at::Tensor& ufc, const at::Tensor& mean,
                                const at::Tensor& std, const at::Tensor& lo, const at::Tensor& hi) {
  const auto acc = at::toOpMathType(ufc.scalar_type());
  const auto m = mean.to(acc), s = std.to(acc);
  // 1/255 rounded to acc first, then divided by std: the same two roundings on every device
  const double scale = acc == at::kDouble ? 1.0 / 255.0 : static_cast<double>(1.0f / 255.0f);
  const auto a = at::full_like(s, base_is_uint8(base) ? scale : 1.0).div_(s);
  return at::stack({a, m.neg().div_(s), lo.to(acc), hi.to(acc)}).contiguous();
}

// Memory format of the output and of grad_ufc: ufc's when it is channels_last, else contiguous.
inline at::MemoryFormat output_format(const at::Tensor& ufc) {
  return (!ufc.is_contiguous() && ufc.is_contiguous(at::MemoryFormat::ChannelsLast)) ? at::MemoryFormat::ChannelsLast
                                                                                      : at::MemoryFormat::Contiguous;
}

// True when every image t[i] is one dense run of C*H*W elements laid out in `fmt` (any stride along dim 0).
inline bool images_dense(const at::Tensor& t, at::MemoryFormat fmt) {
  const int64_t C = t.size(1), H = t.size(2), W = t.size(3);
  int64_t want[4];
  if (fmt == at::MemoryFormat::ChannelsLast) {
    want[1] = 1, want[2] = W * C, want[3] = C;
  } else {
    want[1] = H * W, want[2] = W, want[3] = 1;
  }
  for (int d = 1; d < 4; ++d)
    if (t.size(d) > 1 && t.stride(d) != want[d]) return false;
  return true;
}

// True when grad_out is constant within each image (C, H, W strides all 0): autograd's expanded grads of sum/mean.
inline bool images_broadcast(const at::Tensor& t) {
  return t.stride(1) == 0 && t.stride(2) == 0 && t.stride(3) == 0;
}

inline bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// Index values are checked here for CPU tensors only (a serial pass over host memory). On CUDA that check would cost
// a device->host copy per call; the public function (infer_fast/ops/compensator_broadcast.py) checks each index tensor
// once on the host instead, with this same message, and the kernels device-assert as a backstop for raw op calls.
inline void check_index_range(const at::Tensor& idx, const char* name, int64_t lo, int64_t hi_excl) {
  if (!idx.is_cpu()) return;
  auto c = idx.contiguous();
  const int64_t* p = c.const_data_ptr<int64_t>();
  int64_t mn = p[0], mx = p[0];
  for (int64_t k = 1; k < c.numel(); ++k) mn = std::min(mn, p[k]), mx = std::max(mx, p[k]);
  TORCH_CHECK(mn >= lo && mx < hi_excl, "compensator_broadcast: ", name, " values must lie in [", lo, ", ", hi_excl - 1,
              "], got min ", mn, " and max ", mx);
}

// The one input check of both backends (forward; the backward also passes grad_out).
inline void check_compensator_broadcast_inputs(const at::Tensor& base, const at::Tensor& ufc,
                                               const at::Tensor& base_index, const at::Tensor& ufc_index,
                                               const at::Tensor& mean, const at::Tensor& std, const at::Tensor& lo,
                                               const at::Tensor& hi, const at::Tensor* grad_out = nullptr) {
  TORCH_CHECK(base.dim() == 4, "compensator_broadcast: base must be [Nb, C, H, W], got ", base.dim(), "-D ",
              base.sizes());
  TORCH_CHECK(ufc.dim() == 4, "compensator_broadcast: ufc must be [U, C, H, W], got ", ufc.dim(), "-D ", ufc.sizes());
  TORCH_CHECK(base.scalar_type() == at::kByte || is_float_dtype(base.scalar_type()),
              "compensator_broadcast: base must be uint8 or float16/bfloat16/float32/float64, got ",
              base.scalar_type());
  TORCH_CHECK(is_float_dtype(ufc.scalar_type()),
              "compensator_broadcast: ufc must be float16/bfloat16/float32/float64, got ", ufc.scalar_type());
  TORCH_CHECK(base.sizes().slice(1) == ufc.sizes().slice(1),
              "compensator_broadcast: base and ufc must share [C, H, W], got base ", base.sizes(), " and ufc ",
              ufc.sizes());
  const auto dev = ufc.device();
  TORCH_CHECK(base.device() == dev, "compensator_broadcast: base must be on ufc's device ", dev, ", got ",
              base.device());
  const int64_t C = ufc.size(1);
  for (auto [t, name] : {std::pair{&base_index, "base_index"}, std::pair{&ufc_index, "ufc_index"}}) {
    TORCH_CHECK(t->dim() == 1 && t->scalar_type() == at::kLong, "compensator_broadcast: ", name,
                " must be a 1-D int64 tensor, got ", t->dim(), "-D ", t->scalar_type());
    TORCH_CHECK(t->device() == dev, "compensator_broadcast: ", name, " must be on ufc's device ", dev, ", got ",
                t->device());
  }
  const int64_t B = base_index.size(0);
  TORCH_CHECK(B > 0, "compensator_broadcast: empty batch (base_index has 0 entries)");
  TORCH_CHECK(ufc_index.size(0) == B, "compensator_broadcast: base_index and ufc_index must have the same length, got ",
              B, " and ", ufc_index.size(0));
  for (auto [t, name] :
       {std::pair{&mean, "mean"}, std::pair{&std, "std"}, std::pair{&lo, "lo"}, std::pair{&hi, "hi"}}) {
    TORCH_CHECK(t->dim() == 1 && t->size(0) == C, "compensator_broadcast: ", name, " must be [C] = [", C, "], got ",
                t->sizes());
    TORCH_CHECK(is_float_dtype(t->scalar_type()), "compensator_broadcast: ", name, " must be floating, got ",
                t->scalar_type());
    TORCH_CHECK(t->device() == dev, "compensator_broadcast: ", name, " must be on ufc's device ", dev, ", got ",
                t->device());
  }
  if (grad_out) {
    const auto& g = *grad_out;
    TORCH_CHECK(g.dim() == 4 && g.size(0) == B && g.sizes().slice(1) == ufc.sizes().slice(1),
                "compensator_broadcast backward: grad_out must be [B, C, H, W] = [", B, ", ", ufc.sizes().slice(1),
                "], got ", g.sizes());
    TORCH_CHECK(g.scalar_type() == ufc.scalar_type(), "compensator_broadcast backward: grad_out must have ufc's dtype ",
                ufc.scalar_type(), ", got ", g.scalar_type());
    TORCH_CHECK(g.device() == dev, "compensator_broadcast backward: grad_out must be on ufc's device ", dev, ", got ",
                g.device());
  }
  check_index_range(base_index, "base_index", 0, base.size(0));
  check_index_range(ufc_index, "ufc_index", -1, ufc.size(0));
}

// Inputs brought to the layout the kernels read: ufc in the output format; base images dense in that format
// (a base in another layout is gathered to the B used images only, never converted whole); grad_out dense or
// broadcast per image.
struct Prepared {
  at::MemoryFormat fmt;
  at::Tensor base, ufc, base_index, ufc_index, grad;
  bool grad_broadcast = false;
};

inline Prepared prepare_compensator_broadcast(const at::Tensor& base, const at::Tensor& ufc,
                                              const at::Tensor& base_index, const at::Tensor& ufc_index,
                                              const at::Tensor* grad_out = nullptr) {
  Prepared p;
  p.fmt = output_format(ufc);
  p.ufc = ufc.contiguous(p.fmt);
  p.ufc_index = ufc_index.contiguous();
  if (images_dense(base, p.fmt)) {
    p.base = base;
    p.base_index = base_index.contiguous();
  } else {
    p.base = base.index_select(0, base_index).contiguous(p.fmt);
    p.base_index = at::arange(base_index.size(0), base_index.options());
  }
  if (grad_out) {
    if (images_broadcast(*grad_out)) {
      p.grad = *grad_out;
      p.grad_broadcast = true;
    } else {
      p.grad = images_dense(*grad_out, p.fmt) ? *grad_out : grad_out->contiguous(p.fmt);
    }
  }
  return p;
}

}  // namespace infer_fast::compensator_broadcast
