// Every infer_fast op schema, in one TORCH_LIBRARY block. Kernels live in csrc/cpu/<op>.cpp and
// csrc/cuda/<op>.cu (TORCH_LIBRARY_IMPL); autograd and fake (meta) kernels are registered in Python
// (infer_fast/ops/<op>.py). Formulas, one line per op:
//   bn_stat_loss:          loss[g] = ||var_g(x) - running_var||_2 + ||mean_g(x) - running_mean||_2 over G groups of N
//   compensator_broadcast: out[i] = clamp((base[bidx[i]] * s - mean) / std + ufc[uidx[i]], lo, hi)  (uidx -1: no ufc)
//   mixed_soft_xent:       mean_b KL(p_b || softmax(z_b / T)),  p = softmax(mix(y) / T) or mix(onehot(y))
#include <torch/extension.h>
#include <torch/version.h>

#include <string>

#ifdef INFER_FAST_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

TORCH_LIBRARY(infer_fast, m) {
  // ---- bn_stat_loss -------------------------------------------------------------------------
  m.def("bn_stat_loss(Tensor x, Tensor running_mean, Tensor running_var, int groups) -> (Tensor, Tensor, Tensor)",
        {at::Tag::pt2_compliant_tag});
  m.def(
      "_bn_stat_loss_backward(Tensor grad_loss, Tensor grad_mean, Tensor grad_var, Tensor x, Tensor running_mean, "
      "Tensor running_var, Tensor mean, Tensor var, int groups) -> Tensor",
      {at::Tag::pt2_compliant_tag});

  // ---- compensator_broadcast -----------------------------------------------------------------
  m.def(
      "compensator_broadcast(Tensor base, Tensor ufc, Tensor base_index, Tensor ufc_index, Tensor mean, Tensor std, "
      "Tensor lo, Tensor hi) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "_compensator_broadcast_backward(Tensor grad_out, Tensor base, Tensor ufc, Tensor base_index, Tensor ufc_index, "
      "Tensor mean, Tensor std, Tensor lo, Tensor hi) -> Tensor",
      {at::Tag::pt2_compliant_tag});

  // ---- mixed_soft_xent -----------------------------------------------------------------------
  m.def(
      "mixed_soft_xent(Tensor logits, Tensor target, Tensor? perm, float lam, float temperature) -> (Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
  m.def("_mixed_soft_xent_backward(Tensor grad_loss, Tensor grad_logits) -> Tensor", {at::Tag::pt2_compliant_tag});
}

static bool cuda_enabled() {
#ifdef INFER_FAST_WITH_CUDA
  return true;
#else
  return false;
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "infer_fast fused kernels; the ops are reached as torch.ops.infer_fast.<name>";
  m.def("cuda_enabled", &cuda_enabled, "whether this build contains the CUDA kernels");
  m.attr("version") = INFER_FAST_VERSION;
  // What the headers said at compile time; infer_fast/_build.py (written by setup.py) holds the full strings and is
  // read before this module is loaded, so that a torch mismatch is a one-line error instead of an undefined symbol.
  m.attr("torch_version") = std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
                            std::to_string(TORCH_VERSION_PATCH);
#ifdef INFER_FAST_WITH_CUDA
  m.attr("cuda_version") = std::to_string(CUDART_VERSION / 1000) + "." + std::to_string(CUDART_VERSION % 1000 / 10);
#else
  m.attr("cuda_version") = pybind11::none();
#endif
}
