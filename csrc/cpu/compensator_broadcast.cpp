// compensator_broadcast, CPU: out[i] = clamp(base[bidx[i]] * s/std - mean/std + ufc[uidx[i]], lo, hi) per channel;
// backward grad_ufc[u] = sum_{i: uidx[i] == u} grad_out[i] * [lo <= pre_i <= hi], recomputing pre (no saved mask).
// Shapes: base [Nb,C,H,W] uint8|float, ufc [U,C,H,W] float, indices int64 [B], mean/std/lo/hi [C]; out [B,C,H,W].
// Images are grouped by UFC (a counting sort, stable in i). Work units are (pixel chunk, group): the UFC chunk is
// read once per unit into an L1 buffer of shifts (b + u), then every image of the group streams through it with
// one fma + clamp per pixel. Backward sums a group in fixed image order: deterministic, no atomics.
#include "compensator_broadcast.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace infer_fast::compensator_broadcast {
namespace {

constexpr int64_t kMaxChunk = 2048;   // elements per work unit: its buffers stay in L1
constexpr int64_t kMinChunk = 256;    // smallest chunk when splitting finer for parallelism
constexpr int64_t kSerialWork = 1 << 16;  // below this many output elements, one thread

// A fresh output of B images is tens of MB: glibc maps it anew per call and first-touch faults of 4 KiB pages then
// cost more than the kernel itself. Ask for transparent huge pages on the buffer's 2 MiB-aligned interior (what
// PyTorch's THP_MEM_ALLOC_ENABLE does for every allocation); advice only, failure is harmless.
void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const size_t bytes = t.nbytes();
  if (bytes < 2 * kHuge) return;
  const auto p = reinterpret_cast<uintptr_t>(t.const_data_ptr());
  const uintptr_t b = (p + kHuge - 1) & ~(kHuge - 1), e = (p + bytes) & ~(kHuge - 1);
  if (e > b) (void)madvise(reinterpret_cast<void*>(b), e - b, MADV_HUGEPAGE);
#else
  (void)t;
#endif
}

// Images grouped by ufc_index: group 0 = no compensator (-1), group u + 1 = UFC u; images in increasing i.
struct Groups {
  std::vector<int64_t> offsets;  // size U + 2
  std::vector<int64_t> images;   // size B
};

Groups group_by_ufc(const int64_t* uidx, int64_t B, int64_t U) {
  Groups g;
  g.offsets.assign(U + 2, 0);
  for (int64_t i = 0; i < B; ++i) ++g.offsets[uidx[i] + 2];  // group uidx + 1 counted at its end slot
  for (int64_t k = 1; k < U + 2; ++k) g.offsets[k] += g.offsets[k - 1];
  std::vector<int64_t> cursor(g.offsets.begin(), g.offsets.end() - 1);
  g.images.resize(B);
  for (int64_t i = 0; i < B; ++i) g.images[cursor[uidx[i] + 1]++] = i;
  return g;
}

// How each image's n elements are cut into chunks. NCHW: chunks stay within one channel's H*W plane.
// channels_last: chunks are whole pixels (multiples of C) of the interleaved run.
struct Chunking {
  bool cl;
  int64_t C, HW, n, len, per_plane, count;

  Chunking(bool channels_last, int64_t C_, int64_t HW_, int64_t groups) : cl(channels_last), C(C_), HW(HW_) {
    n = C * HW;
    const int64_t want_units = 8 * at::get_num_threads();
    auto count_for = [&](int64_t l) {
      return cl ? (n + l - 1) / l : C * ((HW + l - 1) / l);
    };
    const int64_t unit = cl ? C : 64;  // whole pixels; vector-friendly plane chunks
    len = std::max<int64_t>(unit, kMaxChunk / unit * unit);
    while (len > kMinChunk && len > unit && count_for(len) * groups < want_units)
      len = std::max<int64_t>(unit, (len / 2) / unit * unit);
    if (!cl) len = std::min(len, std::max<int64_t>(HW, 1));
    per_plane = cl ? 0 : (HW + len - 1) / len;
    count = count_for(len);
  }

  // start offset within the image, length, and (NCHW) the channel of chunk k
  void get(int64_t k, int64_t& start, int64_t& l, int64_t& c) const {
    if (cl) {
      start = k * len;
      l = std::min(len, n - start);
      c = -1;
    } else {
      c = k / per_plane;
      const int64_t p0 = (k % per_plane) * len;
      start = c * HW + p0;
      l = std::min(len, HW - p0);
    }
  }
};

template <typename acc>
struct ChannelParams {
  std::vector<acc> a, b, lo, hi;
};

// The [4, C] table of channel_table() (rows a, b, lo, hi), read into per-row vectors.
template <typename acc>
ChannelParams<acc> channel_params(const at::Tensor& table) {
  const int64_t C = table.size(1);
  const acc* t = table.const_data_ptr<acc>();
  using V = std::vector<acc>;
  return {V(t, t + C), V(t + C, t + 2 * C), V(t + 2 * C, t + 3 * C), V(t + 3 * C, t + 4 * C)};
}

// Per-chunk L1 buffers: per-element scale, clamp bounds (depend on the chunk only) and shift (chunk and group).
template <typename acc>
struct ChunkBuffers {
  std::vector<acc> a, lo, hi, shift, sum;
  explicit ChunkBuffers(int64_t len) : a(len), lo(len), hi(len), shift(len), sum(len) {}

  void fill_channels(const ChannelParams<acc>& p, const Chunking& ch, int64_t start, int64_t l, int64_t c) {
    if (ch.cl) {
      // start is a multiple of C: element k belongs to channel k % C
      for (int64_t k = 0, cc = 0; k < l; ++k, cc = (cc + 1 == ch.C ? 0 : cc + 1))
        a[k] = p.a[cc], lo[k] = p.lo[cc], hi[k] = p.hi[cc];
    } else {
      std::fill_n(a.data(), l, p.a[c]);
      std::fill_n(lo.data(), l, p.lo[c]);
      std::fill_n(hi.data(), l, p.hi[c]);
    }
  }

  template <typename uT>
  void fill_shift(const ChannelParams<acc>& p, const Chunking& ch, int64_t l, int64_t c, const uT* __restrict u) {
    acc* __restrict s = shift.data();
    if (ch.cl) {
      for (int64_t k = 0, cc = 0; k < l; ++k, cc = (cc + 1 == ch.C ? 0 : cc + 1))
        s[k] = pixel_shift(p.b[cc], u ? static_cast<acc>(u[k]) : acc(0));
    } else if (u) {
      const acc b = p.b[c];
      for (int64_t k = 0; k < l; ++k) s[k] = pixel_shift(b, static_cast<acc>(u[k]));
    } else {
      std::fill_n(s, l, p.b[c]);
    }
  }
};

template <typename bT, typename oT, typename acc>
inline void compose_run(const bT* __restrict x, oT* __restrict y, int64_t l, const acc* __restrict a,
                        const acc* __restrict shift, const acc* __restrict lo, const acc* __restrict hi) {
  for (int64_t k = 0; k < l; ++k)
    y[k] = static_cast<oT>(clamp_value(pre_value(static_cast<acc>(x[k]), a[k], shift[k]), lo[k], hi[k]));
}

template <bool kBroadcast, typename bT, typename gT, typename acc>
inline void grad_run(const gT* __restrict g, const bT* __restrict x, acc* __restrict sum, int64_t l,
                     const acc* __restrict a, const acc* __restrict shift, const acc* __restrict lo,
                     const acc* __restrict hi) {
  if constexpr (kBroadcast) {
    const acc gv = static_cast<acc>(g[0]);
    for (int64_t k = 0; k < l; ++k)
      sum[k] += clamp_grad(gv, pre_value(static_cast<acc>(x[k]), a[k], shift[k]), lo[k], hi[k]);
  } else {
    for (int64_t k = 0; k < l; ++k)
      sum[k] += clamp_grad(static_cast<acc>(g[k]), pre_value(static_cast<acc>(x[k]), a[k], shift[k]), lo[k], hi[k]);
  }
}

template <typename bT, typename oT>
void forward_kernel(const Prepared& p, const ChannelParams<at::opmath_type<oT>>& prm, const Groups& grp,
                    at::Tensor& out) {
  using acc = at::opmath_type<oT>;
  const int64_t B = p.base_index.size(0), C = p.ufc.size(1), HW = p.ufc.size(2) * p.ufc.size(3);
  std::vector<int64_t> active;  // non-empty groups
  for (int64_t g = 0; g + 1 < static_cast<int64_t>(grp.offsets.size()); ++g)
    if (grp.offsets[g + 1] > grp.offsets[g]) active.push_back(g);
  const int64_t ng = static_cast<int64_t>(active.size());
  const Chunking ch(p.fmt == at::MemoryFormat::ChannelsLast, C, HW, ng);
  const int64_t n = ch.n, units = ch.count * ng;
  const bT* base = p.base.const_data_ptr<bT>();
  const oT* ufc = p.ufc.const_data_ptr<oT>();
  oT* y = out.mutable_data_ptr<oT>();
  const int64_t* bidx = p.base_index.const_data_ptr<int64_t>();
  const int64_t bs0 = p.base.stride(0), us0 = p.ufc.stride(0);
  const int64_t grain = B * n < kSerialWork ? units : 1;
  at::parallel_for(0, units, grain, [&](int64_t begin, int64_t end) {
    ChunkBuffers<acc> buf(ch.len);
    int64_t cur_chunk = -1, start = 0, l = 0, c = 0;
    for (int64_t id = begin; id < end; ++id) {
      const int64_t k = id / ng, g = active[id % ng];
      if (k != cur_chunk) {
        ch.get(k, start, l, c);
        buf.fill_channels(prm, ch, start, l, c);
        cur_chunk = k;
      }
      buf.fill_shift(prm, ch, l, c, g == 0 ? static_cast<const oT*>(nullptr) : ufc + (g - 1) * us0 + start);
      for (int64_t j = grp.offsets[g]; j < grp.offsets[g + 1]; ++j) {
        const int64_t i = grp.images[j];
        compose_run(base + bidx[i] * bs0 + start, y + i * n + start, l, buf.a.data(), buf.shift.data(),
                    buf.lo.data(), buf.hi.data());
      }
    }
  });
}

template <typename bT, typename oT>
void backward_kernel(const Prepared& p, const ChannelParams<at::opmath_type<oT>>& prm, const Groups& grp,
                     at::Tensor& grad_ufc) {
  using acc = at::opmath_type<oT>;
  const int64_t B = p.base_index.size(0), U = p.ufc.size(0), C = p.ufc.size(1);
  const int64_t HW = p.ufc.size(2) * p.ufc.size(3);
  const Chunking ch(p.fmt == at::MemoryFormat::ChannelsLast, C, HW, U);
  const int64_t n = ch.n, units = ch.count * U;
  const bT* base = p.base.const_data_ptr<bT>();
  const oT* ufc = p.ufc.const_data_ptr<oT>();
  const oT* g = p.grad.const_data_ptr<oT>();
  oT* gu = grad_ufc.mutable_data_ptr<oT>();
  const int64_t* bidx = p.base_index.const_data_ptr<int64_t>();
  const int64_t bs0 = p.base.stride(0), us0 = p.ufc.stride(0), gs0 = p.grad.stride(0);
  const bool bcast = p.grad_broadcast;
  const int64_t grain = B * n < kSerialWork ? units : 1;
  at::parallel_for(0, units, grain, [&](int64_t begin, int64_t end) {
    ChunkBuffers<acc> buf(ch.len);
    int64_t cur_chunk = -1, start = 0, l = 0, c = 0;
    for (int64_t id = begin; id < end; ++id) {
      const int64_t k = id / U, u = id % U;
      if (k != cur_chunk) {
        ch.get(k, start, l, c);
        buf.fill_channels(prm, ch, start, l, c);
        cur_chunk = k;
      }
      const int64_t first = grp.offsets[u + 1], last = grp.offsets[u + 2];
      acc* sum = buf.sum.data();
      std::fill_n(sum, l, acc(0));
      if (last > first) {
        buf.fill_shift(prm, ch, l, c, ufc + u * us0 + start);
        for (int64_t j = first; j < last; ++j) {
          const int64_t i = grp.images[j];
          const bT* x = base + bidx[i] * bs0 + start;
          if (bcast)
            grad_run<true>(g + i * gs0, x, sum, l, buf.a.data(), buf.shift.data(), buf.lo.data(), buf.hi.data());
          else
            grad_run<false>(g + i * gs0 + start, x, sum, l, buf.a.data(), buf.shift.data(), buf.lo.data(),
                            buf.hi.data());
        }
      }
      oT* dst = gu + u * n + start;
      for (int64_t e = 0; e < l; ++e) dst[e] = static_cast<oT>(sum[e]);
    }
  });
}

// base dtype x ufc dtype dispatch; `fn` is called as fn.template operator()<bT, oT>().
template <typename F>
void dispatch_types(const at::Tensor& base, const at::Tensor& ufc, F&& fn) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ufc.scalar_type(), "compensator_broadcast", [&] {
    using oT = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kByte, base.scalar_type(),
                                    "compensator_broadcast_base", [&] { fn.template operator()<scalar_t, oT>(); });
  });
}

at::Tensor compensator_broadcast_cpu(const at::Tensor& base, const at::Tensor& ufc, const at::Tensor& base_index,
                                     const at::Tensor& ufc_index, const at::Tensor& mean, const at::Tensor& std,
                                     const at::Tensor& lo, const at::Tensor& hi) {
  check_compensator_broadcast_inputs(base, ufc, base_index, ufc_index, mean, std, lo, hi);
  const Prepared p = prepare_compensator_broadcast(base, ufc, base_index, ufc_index);
  const int64_t B = base_index.size(0);
  auto out = at::empty({B, ufc.size(1), ufc.size(2), ufc.size(3)}, ufc.options().memory_format(p.fmt));
  if (out.numel() == 0) return out;
  advise_huge_pages(out);
  const Groups grp = group_by_ufc(p.ufc_index.const_data_ptr<int64_t>(), B, ufc.size(0));
  const at::Tensor table = channel_table(p.base, ufc, mean, std, lo, hi);
  dispatch_types(p.base, p.ufc, [&]<typename bT, typename oT>() {
    const auto prm = channel_params<at::opmath_type<oT>>(table);
    forward_kernel<bT, oT>(p, prm, grp, out);
  });
  return out;
}

at::Tensor compensator_broadcast_backward_cpu(const at::Tensor& grad_out, const at::Tensor& base,
                                              const at::Tensor& ufc, const at::Tensor& base_index,
                                              const at::Tensor& ufc_index, const at::Tensor& mean,
                                              const at::Tensor& std, const at::Tensor& lo, const at::Tensor& hi) {
  check_compensator_broadcast_inputs(base, ufc, base_index, ufc_index, mean, std, lo, hi, &grad_out);
  const Prepared p = prepare_compensator_broadcast(base, ufc, base_index, ufc_index, &grad_out);
  auto grad_ufc = at::empty(ufc.sizes(), ufc.options().memory_format(p.fmt));
  if (grad_ufc.numel() == 0) return grad_ufc;
  advise_huge_pages(grad_ufc);
  const Groups grp = group_by_ufc(p.ufc_index.const_data_ptr<int64_t>(), base_index.size(0), ufc.size(0));
  const at::Tensor table = channel_table(p.base, ufc, mean, std, lo, hi);
  dispatch_types(p.base, p.ufc, [&]<typename bT, typename oT>() {
    const auto prm = channel_params<at::opmath_type<oT>>(table);
    backward_kernel<bT, oT>(p, prm, grp, grad_ufc);
  });
  return grad_ufc;
}

}  // namespace
}  // namespace infer_fast::compensator_broadcast

TORCH_LIBRARY_IMPL(infer_fast, CPU, m) {
  m.impl("compensator_broadcast", &infer_fast::compensator_broadcast::compensator_broadcast_cpu);
  m.impl("_compensator_broadcast_backward", &infer_fast::compensator_broadcast::compensator_broadcast_backward_cpu);
}
