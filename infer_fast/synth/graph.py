"""The CUDA-graph iteration of the synthesis (``--cuda-graphs``): torch's Adam in its capturable arithmetic and
a runner that warms up, captures one iteration and replays it."""

from __future__ import annotations

from collections.abc import Callable

import torch

GRAPH_WARMUP = 2  # eager iterations before the capture (torch's whole-network example runs 3; one creates it all)


def capturable_adam(param: torch.Tensor, lr: torch.Tensor, betas: tuple[float, float], eps: float) -> torch.optim.Adam:
    """torch's Adam in its capturable arithmetic (step count and bias corrections on the device, ``lr`` a device
    tensor) for ``param``, whose ``grad`` must exist. torch allows ``capturable=True`` on CUDA only;
    ``differentiable=True`` runs the same branch of its code on other devices (``foreach=False``: one code path
    everywhere), so that the CPU tests check the arithmetic a graph replays. It steps a detached alias of ``param``
    (same storage and grad) because the differentiable branch updates under grad mode, where autograd refuses an
    in-place write to a leaf that requires grad."""
    alias = param.detach()
    alias.grad = param.grad
    cuda = param.device.type == "cuda"
    return torch.optim.Adam([alias], lr=lr, betas=betas, eps=eps, foreach=False, capturable=cuda,
                            differentiable=not cuda)


class GraphRunner:
    """Runs ``body`` like a function: the first GRAPH_WARMUP calls eagerly on a side stream (they create Adam's
    state, the BLAS/cuDNN handles of that stream and the index checks' cache, which a capture cannot), then captures
    one call in a CUDA graph and replays it on every later call. Only valid while ``body`` reads and writes the same
    tensors every time (see optimise_batch's static formulation)."""

    def __init__(self, body: Callable[[], None], device: torch.device) -> None:
        self.body = body
        self.calls = 0
        self.side = torch.cuda.Stream(device)
        self.graph: torch.cuda.CUDAGraph | None = None

    def __call__(self) -> None:
        current = torch.cuda.current_stream(self.side.device)
        if self.graph is not None:
            self.graph.replay()
            return
        self.side.wait_stream(current)  # the inputs written on the current stream
        if self.calls < GRAPH_WARMUP:
            with torch.cuda.stream(self.side):
                self.body()
            self.calls += 1
        else:
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph, stream=self.side):  # the warm-up's stream: its handles exist
                    self.body()
            except RuntimeError as e:
                raise RuntimeError(f"--cuda-graphs: capturing the synthesis iteration failed ({e}); "
                                   "run without --cuda-graphs") from e
            self.graph = graph
            graph.replay()  # the capture only recorded this iteration
        current.wait_stream(self.side)
