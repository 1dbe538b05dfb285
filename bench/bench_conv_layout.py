"""Where UFC optimisation spends its time at 32 px: oneDNN convolution speed per layer and layout, and the share of
the convolutions in one infer_fast iteration.

    python bench/bench_conv_layout.py [--quick] [--json PATH]

Part 1 times the 3x3 convolutions of ResNet-18 (CIFAR stem) at batch 10 (the reference's one problem per
forward) and 40 (infer_fast's four), forward and input-gradient backward, NCHW vs channels-last, in GFLOP/s.
Part 2 profiles infer_fast's default path (bench_synthesis.py's cifar10 workload, 4 problems) with
torch.profiler and reports the convolutions' share of the CPU time; with part 1 this bounds what any change
outside the convolutions can gain.

Records: common.record(); part 1 one per batch, layer, layout (provider) and pass (mode), each timed under
common.time_fn's sampling rule (>= 10 samples and >= 0.2 s); part 2 one record from a single profile (samples = 1).
"""

from __future__ import annotations

import sys

import bench_synthesis as bs
import torch
import torch.nn.functional as F
from common import Stats, base_parser, markdown_table, record, time_fn, write_json

LAYERS = [(64, 64, 32, 1), (64, 128, 32, 2), (128, 128, 16, 1), (256, 256, 8, 1), (512, 512, 4, 1)]


def conv_table(batches: list[int], min_run_time: float) -> list[dict[str, object]]:
    """One record per batch, layer, layout and pass: ms per call (time_fn's sampling rule) and GFLOP/s."""
    rows = []
    for b in batches:
        for cin, cout, hw, stride in LAYERS:
            flops = 2 * b * cin * cout * 9 * (hw // stride) ** 2
            layer = f"{cin}->{cout} {hw}x{hw} s{stride}"
            for name, fmt in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
                x = torch.randn(b, cin, hw, hw).contiguous(memory_format=fmt)
                w = torch.randn(cout, cin, 3, 3).contiguous(memory_format=fmt)
                g = torch.randn_like(F.conv2d(x, w, None, stride, 1))
                passes = {
                    "forward": lambda x=x, w=w, s=stride: F.conv2d(x, w, None, s, 1),
                    "input_backward": lambda g=g, x=x, w=w, s=stride: torch.ops.aten.convolution_backward(
                        g, x, w, None, [s, s], [1, 1], [1, 1], False, [0, 0], 1, [True, False, False]),
                }
                for mode, fn in passes.items():
                    t = time_fn(fn, min_run_time=min_run_time)
                    rows.append(record("conv2d_3x3", name, mode, "time", "ms", "layer", layer, t, "cpu", batch=b,
                                       gflops_per_s=flops / t.p50 / 1e6))
    return rows


def conv_share(quick: bool) -> dict[str, object]:
    from torch.profiler import profile

    from infer_fast.synth.fold import SynthesisTeacher
    from infer_fast.synth.ufc import PixelGeometry, SynthesisSettings, optimise_batch

    w = bs.workloads(True)["cifar10"]
    model, base, problems, lo, hi = bs.build(w)
    teacher = SynthesisTeacher(model, probe_size=w.size, channels_last=True)

    def run(iterations):
        settings = SynthesisSettings(seed=0, iterations=iterations, log_every=iterations, **bs._common(w))
        optimise_batch(problems[:4], teacher, PixelGeometry(base, bs.MEAN, bs.STD, lo, hi), settings)

    run(2)
    iterations = 2 if quick else 4
    with profile() as prof:
        run(iterations)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mkldnn_convolution",
                                                                  "aten::convolution_backward"))
    share = 100 * conv / total
    # One profile over a few iterations: a single sample, recorded as such.
    return record("conv_share", "infer_fast", "full", "conv_share", "% of CPU time", "workload", w.name,
                  Stats.of([share]), "cpu", conv_share_pct=share, profiled_ms=total / 1e3,
                  profiled_iterations=iterations)


def main(argv=None) -> int:
    args = base_parser(__doc__.split("\n\n")[0]).parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = conv_table([40] if args.quick else [10, 40], 0.2 if args.quick else 0.5)
    print(markdown_table(rows, ["batch", "x_value", "provider", "mode", "p50", "samples", "spread", "gflops_per_s"]))
    share = conv_share(args.quick)
    print(f"\nconvolutions: {share['conv_share_pct']:.0f} % of the CPU time of infer_fast's cifar10 iterations "
          f"(4 problems per forward, channels-last, BN folded)")
    print(f"threads={torch.get_num_threads()} torch={torch.__version__} commit={rows[0]['commit']}")
    write_json(args.json, rows + [share])
    return 0


if __name__ == "__main__":
    sys.exit(main())
