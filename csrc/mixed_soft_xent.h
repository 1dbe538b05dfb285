// mixed_soft_xent: shared math and input checks for the CPU and CUDA kernels.
//   loss = mean_b KL(p_b || q_b),  q_b = softmax(z_b / T),  grad_logits = (q - p) / (T * B)
//   soft targets y [B,K] (floating): p_b = softmax(mix_b / T),  mix_b = lam * y_b + (1 - lam) * y_perm(b)
//   hard targets y [B] (integer):     p_b = lam * onehot(y_b) + (1 - lam) * onehot(y_perm(b)),  0 log 0 = 0
// Per row, with shifted a' = mix/T - max, s' = z/T - max, e_a = exp(a'), S_a = sum e_a (same for s):
//   KL = sum_k e_a (a' - s') / S_a - log S_a + log S_s   (no log of p or q is ever formed).
// Accumulation in at::opmath_type of the logits (fp32 for half/bf16/fp32, fp64 for fp64).
#pragma once

#include <ATen/ATen.h>
#include <c10/macros/Macros.h>

#include <cmath>
#include <optional>

namespace infer_fast {
namespace mixed_soft_xent_math {

// Mixed, temperature-scaled target logit; wl = lam, wr = 1 - lam, both already in acc_t (as the reference does).
template <typename acc_t>
C10_HOST_DEVICE inline acc_t mixed(acc_t y, acc_t y_perm, acc_t wl, acc_t wr, acc_t inv_t) {
  return (wl * y + wr * y_perm) * inv_t;
}

// Row KL from the three sums of the soft case.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t soft_row_kl(acc_t w, acc_t sum_a, acc_t sum_s) {
  return w / sum_a - std::log(sum_a) + std::log(sum_s);
}

// p * (log p - log q) with the 0 * log 0 = 0 convention (p == 0 contributes nothing, whatever log q is).
template <typename acc_t>
C10_HOST_DEVICE inline acc_t kl_term(acc_t p, acc_t log_q) {
  return p > acc_t(0) ? p * (std::log(p) - log_q) : acc_t(0);
}

// Row KL of the hard case: p has mass wl at class c1 and wr at class c2 (one entry wl + wr when c1 == c2);
// log_q(c) = z_c / T - max_s - log S_s.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t hard_row_kl(int64_t c1, int64_t c2, acc_t wl, acc_t wr, acc_t log_q1, acc_t log_q2) {
  if (c1 == c2) return kl_term(wl + wr, log_q1);
  return kl_term(wl, log_q1) + kl_term(wr, log_q2);
}

// Target probability of class k in the hard case.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t hard_p(int64_t k, int64_t c1, int64_t c2, acc_t wl, acc_t wr) {
  return (k == c1 ? wl : acc_t(0)) + (k == c2 ? wr : acc_t(0));
}

}  // namespace mixed_soft_xent_math

// Every metadata check of the op, shared by both backends. Values of perm/targets are range-checked serially by
// the CPU traversal; on CUDA the public function checks them once per index tensor on the host, with the same
// message (infer_fast/ops/mixed_soft_xent.py), and the kernels device-assert as a backstop.
// Returns true for hard (integer class index) targets.
inline bool check_mixed_soft_xent_inputs(const at::Tensor& logits, const at::Tensor& target,
                                         const std::optional<at::Tensor>& perm, double lam, double temperature) {
  TORCH_CHECK(logits.dim() == 2, "mixed_soft_xent: logits must be 2-D [B, K], got ", logits.dim(), "-D shape ",
              logits.sizes());
  const auto st = logits.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
              "mixed_soft_xent: logits must be float32, float64, float16 or bfloat16, got ", st);
  const int64_t b = logits.size(0), k = logits.size(1);
  TORCH_CHECK(b > 0, "mixed_soft_xent: empty batch (logits shape ", logits.sizes(), ")");
  TORCH_CHECK(k > 0, "mixed_soft_xent: logits need at least one class, got shape ", logits.sizes());
  TORCH_CHECK(target.device() == logits.device(), "mixed_soft_xent: target must be on logits' device ",
              logits.device(), ", got ", target.device());
  const bool hard = !at::isFloatingType(target.scalar_type());
  if (hard) {
    const auto tt = target.scalar_type();
    TORCH_CHECK(at::isIntegralType(tt, /*includeBool=*/false),
                "mixed_soft_xent: target must be floating [B, K] soft targets or integer [B] class indices, got ", tt);
    TORCH_CHECK(target.dim() == 1 && target.size(0) == b, "mixed_soft_xent: integer target must have shape [", b,
                "] (one class index per logits row), got ", target.sizes());
  } else {
    const auto tt = target.scalar_type();
    TORCH_CHECK(tt == at::kFloat || tt == at::kDouble || tt == at::kHalf || tt == at::kBFloat16,
                "mixed_soft_xent: soft target must be float32, float64, float16 or bfloat16, got ", tt);
    TORCH_CHECK(target.dim() == 2, "mixed_soft_xent: soft target must be 2-D [B, K] = [", b, ", ", k, "], got ",
                target.dim(), "-D shape ", target.sizes());
    TORCH_CHECK(target.size(0) == b, "mixed_soft_xent: target batch size ", target.size(0),
                " does not match logits batch size ", b);
    TORCH_CHECK(target.size(1) == k, "mixed_soft_xent: target has ", target.size(1),
                " classes, logits have ", k);
  }
  if (perm.has_value()) {
    const auto& p = *perm;
    TORCH_CHECK(p.scalar_type() == at::kLong, "mixed_soft_xent: perm must be int64, got ", p.scalar_type());
    TORCH_CHECK(p.dim() == 1 && p.size(0) == b, "mixed_soft_xent: perm must have shape [", b,
                "] (one index per logits row), got ", p.sizes());
    TORCH_CHECK(p.device() == logits.device(), "mixed_soft_xent: perm must be on logits' device ", logits.device(),
                ", got ", p.device());
  }
  TORCH_CHECK(std::isfinite(temperature) && temperature > 0.0,
              "mixed_soft_xent: temperature must be finite and > 0, got ", temperature);
  TORCH_CHECK(lam >= 0.0 && lam <= 1.0, "mixed_soft_xent: lam must be in [0, 1], got ", lam);
  return hard;
}

inline void check_mixed_soft_xent_backward_inputs(const at::Tensor& grad_loss, const at::Tensor& grad_logits) {
  TORCH_CHECK(grad_loss.numel() == 1, "_mixed_soft_xent_backward: grad_loss must be a scalar, got shape ",
              grad_loss.sizes());
  TORCH_CHECK(at::isFloatingType(grad_loss.scalar_type()),
              "_mixed_soft_xent_backward: grad_loss must be floating, got ", grad_loss.scalar_type());
  TORCH_CHECK(grad_logits.dim() == 2, "_mixed_soft_xent_backward: grad_logits must be 2-D [B, K], got shape ",
              grad_logits.sizes());
  TORCH_CHECK(grad_loss.device() == grad_logits.device(),
              "_mixed_soft_xent_backward: grad_loss and grad_logits must share a device, got ", grad_loss.device(),
              " and ", grad_logits.device());
}

}  // namespace infer_fast
