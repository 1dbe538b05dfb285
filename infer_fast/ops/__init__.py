"""Typed entry points of the fused ops (one module per op; each registers fake and autograd kernels)."""
