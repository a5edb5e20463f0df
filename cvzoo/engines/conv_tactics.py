"""Per-convolution tactic choice inside torch.compile, the way TensorRT picks a kernel per layer.

After inductor's `freezing` folds BatchNorm into the convolutions, each conv runs as cuDNN's convolution
followed by a Triton kernel that adds the bias and applies what comes next (activation, residual add).
Measured on an H100 (docs/benchmarks.md), neither of two alternatives wins everywhere:

- "fused": cuDNN's conv + bias (+ residual) + ReLU in one call (`torch.cudnn_convolution_relu`,
  `torch.cudnn_convolution_add_relu`): fusing every such conv made ese_vovnet39b 9% faster at batch 256,
  dla34 12% and ese_vovnet19b_dw 36% slower;
- "mm": a 1x1 convolution over a channels-last tensor is a matrix product (N*H*W, C) x (C, K): all 1x1
  convs on cuBLAS (inductor's global `conv_1x1_as_mm` switch) made cspresnet50 9% faster and the other
  models 2-7% slower.

So this inductor post-grad pass, run on the frozen graph, times each conv's candidates on the GPU at
the shapes being compiled (each candidate captured in a CUDA graph, the bias/residual/ReLU pass that the
unfused forms still need included) and rewrites the conv into the fastest:

    relu(convolution(x, w, b))        -> cvzoo::conv_relu(x, w, b, ...)          "fused"
    relu(convolution(x, w, b) + z)    -> cvzoo::conv_add_relu(x, w, z, b, ...)   "fused"
    convolution(x, w, b), 1x1         -> addmm(b, x as (NHW, C), w as (C, K))    "mm"

Isolated timings predict the compiled network's time where launches dominate (small batches under CUDA
graphs: dla34 batch 1 0.63 -> 0.43 ms); at batch 256 they mislead (a network ran up to 37% slower, see
docs/benchmarks.md), so the torch-cuda engine runs this pass for batch <= 8 only.

The fused forms are torch custom ops: cuDNN on CUDA tensors, plain conv2d + relu elsewhere, so the
rewrite runs (and is tested) on a CPU with a fixed choice instead of timings.
"""
from __future__ import annotations

from collections import Counter
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch._inductor.custom_graph_pass import CustomGraphPass

aten = torch.ops.aten


@torch.library.custom_op("cvzoo::conv_relu", mutates_args=())
def conv_relu(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: list[int],
              padding: list[int], dilation: list[int], groups: int) -> torch.Tensor:
    if x.is_cuda:
        return torch.cudnn_convolution_relu(x, weight, bias, stride, padding, dilation, groups)
    return torch.relu(F.conv2d(x, weight, bias, stride, padding, dilation, groups))


@conv_relu.register_fake
def _(x, weight, bias, stride, padding, dilation, groups):
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)  # meta conv: cuDNN's shape and layout


@torch.library.custom_op("cvzoo::conv_add_relu", mutates_args=())
def conv_add_relu(x: torch.Tensor, weight: torch.Tensor, z: torch.Tensor, bias: Optional[torch.Tensor],
                  stride: list[int], padding: list[int], dilation: list[int], groups: int) -> torch.Tensor:
    if x.is_cuda:
        return torch.cudnn_convolution_add_relu(x, weight, z, 1.0, bias, stride, padding, dilation, groups)
    return torch.relu(F.conv2d(x, weight, bias, stride, padding, dilation, groups) + z)


@conv_add_relu.register_fake
def _(x, weight, z, bias, stride, padding, dilation, groups):
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


class Site:
    """One convolution of the graph and the rewrites open to it. Inputs are read from the graph when
    needed: rewriting an earlier site replaces nodes this one may consume."""

    def __init__(self, conv: torch.fx.Node):
        self.conv = conv
        _, _, _, self.stride, self.padding, self.dilation, _, _, self.groups = conv.args
        self.out, self.weight, self.input = (conv.meta["val"], conv.args[1].meta["val"], conv.args[0].meta["val"])
        self.relu: Optional[torch.fx.Node] = None  # the ReLU that "fused" replaces
        self.add: Optional[torch.fx.Node] = None   # the residual add in between, if any

    @property
    def x(self):
        return self.conv.args[0]

    @property
    def w(self):
        return self.conv.args[1]

    @property
    def b(self):
        return self.conv.args[2]

    @property
    def z(self):  # the residual
        if self.add is None:
            return None
        return self.add.args[1] if self.add.args[0] is self.conv else self.add.args[0]

    def tactics(self) -> list[str]:
        found = ["cudnn"]
        if self.relu is not None:
            found.append("fused")
        if (self.weight.shape[2:] == (1, 1) and tuple(self.stride) == (1, 1) and tuple(self.padding) == (0, 0)
                and self.groups == 1 and self.input.is_contiguous(memory_format=torch.channels_last)):
            found.append("mm")
        return found

    def describe(self) -> str:
        k, c, kh, kw = self.weight.shape
        return f"{c}->{k} {kh}x{kw}/{self.stride[0]} @{self.out.shape[2]}x{self.out.shape[3]}"


def _plain_conv(node) -> bool:
    if not isinstance(node, torch.fx.Node) or node.op != "call_function" or node.target is not aten.convolution.default:
        return False
    _, w, _, stride, _, _, transposed, _, _ = node.args
    return (not transposed and len(stride) == 2 and isinstance(w, torch.fx.Node)
            and all(isinstance(n, torch.fx.Node) and "val" in n.meta for n in (node, w, node.args[0])))


def find_sites(graph: torch.fx.Graph) -> list[Site]:
    """Every 2-D convolution, with the ReLU (and residual add) it can absorb. cuDNN's fused form is
    offered for dense convs with channel counts a multiple of 8 (fp16/bf16 tensor-core tiles) and an output
    larger than 1x1 (where channels-last and contiguous coincide)."""
    sites = {n: Site(n) for n in graph.nodes if _plain_conv(n)}
    for relu in graph.nodes:
        if relu.op != "call_function" or relu.target not in (aten.relu.default, aten.relu_.default):
            continue
        src, add, z = relu.args[0], None, None
        if isinstance(src, torch.fx.Node) and src.target is aten.add.Tensor and len(src.users) == 1 \
                and len(src.args) == 2 and not src.kwargs:
            add = src
            src = next((a for a in add.args if a in sites), None)
            z = add.args[1] if src is add.args[0] else add.args[0]
            zval = z.meta.get("val") if isinstance(z, torch.fx.Node) else None
            if src is None or zval is None or zval.shape != src.meta["val"].shape or zval.dtype != src.meta["val"].dtype:
                continue
        site = sites.get(src)
        if site is None or len(src.users) != 1:
            continue
        k, c = site.weight.shape[:2]
        if site.groups == 1 and k % 8 == 0 and c % 8 == 0 and site.out.shape[2] * site.out.shape[3] > 1:
            site.relu, site.add = relu, add
    return list(sites.values())


def rewrite(graph: torch.fx.Graph, site: Site, tactic: str) -> None:
    """Replace the site's nodes with the chosen tactic's (no-op for "cudnn")."""
    s = site
    conv_args = (list(s.stride), list(s.padding), list(s.dilation), s.groups)
    if tactic == "fused":
        with graph.inserting_before(s.relu):
            if s.add is None:
                new = graph.call_function(torch.ops.cvzoo.conv_relu.default, (s.x, s.w, s.b, *conv_args))
            else:
                new = graph.call_function(torch.ops.cvzoo.conv_add_relu.default, (s.x, s.w, s.z, s.b, *conv_args))
        new.meta.update(s.relu.meta)
        s.relu.replace_all_uses_with(new)
        for node in (s.relu, s.add, s.conv):  # each had the next as its only user
            if node is not None:
                graph.erase_node(node)
    elif tactic == "mm":
        n, c, h, w = s.input.shape
        k = s.weight.shape[0]

        def call(target, *args, val=None):
            node = graph.call_function(target, args)
            node.meta["val"] = val if val is not None else target(args[0].meta["val"], *args[1:])  # views
            return node
        with graph.inserting_before(s.conv):
            rows = call(aten.view.default, call(aten.permute.default, s.x, [0, 2, 3, 1]), [n * h * w, c])
            wt = call(aten.permute.default, call(aten.view.default, s.w, [k, c]), [1, 0])
            product = rows.meta["val"].new_empty((n * h * w, k))
            y = (call(aten.addmm.default, s.b, rows, wt, val=product) if s.b is not None
                 else call(aten.mm.default, rows, wt, val=product))
            out = call(aten.permute.default, call(aten.view.default, y, [n, h, w, k]), [0, 3, 1, 2])
        s.conv.replace_all_uses_with(out)
        graph.erase_node(s.conv)


def time_tactics(site: Site, tactics: list[str], repeats: int = 10) -> dict[str, float]:
    """GPU milliseconds per call of each tactic at the site's shapes, each captured in a CUDA graph (how the
    engine runs small batches; at large batches launch gaps are negligible either way). Unfused forms
    include the one pointwise pass (bias, residual, activation) that inductor leaves after them."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    def real(val):
        return torch.empty_strided(val.shape, val.stride(), dtype=val.dtype, device="cuda").normal_()
    with unset_fake_temporarily(), torch.inference_mode():
        x, w = real(site.input), real(site.weight)
        b = real(site.b.meta["val"]) if isinstance(site.b, torch.fx.Node) else None
        z = real(site.z.meta["val"]) if site.add is not None else None
        args = (site.stride, site.padding, site.dilation, site.groups)
        epilogue = z if z is not None else (b.view(1, -1, 1, 1) if b is not None else None)

        def unfused(y):
            return y.add_(epilogue) if epilogue is not None else y.relu_()
        n, c, h, wd = x.shape
        k = w.shape[0]
        run = {"cudnn": lambda: unfused(torch.convolution(x, w, None, *args[:3], False, [0, 0], args[3])),
               "fused": (lambda: torch.cudnn_convolution_add_relu(x, w, z, 1.0, b, *args)) if z is not None
               else (lambda: torch.cudnn_convolution_relu(x, w, b, *args)),
               "mm": lambda: unfused(torch.mm(x.permute(0, 2, 3, 1).reshape(n * h * wd, c), w.view(k, c).t())
                                     .view(n, h, wd, k).permute(0, 3, 1, 2))}
        times = {}
        for tactic in tactics:
            try:
                for _ in range(3):  # cuDNN autotuning (benchmark mode) happens here, outside the capture
                    run[tactic]()
                torch.cuda.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    for _ in range(repeats):
                        run[tactic]()
                graph.replay()
                best = float("inf")
                for _ in range(3):
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    graph.replay()
                    end.record()
                    end.synchronize()
                    best = min(best, start.elapsed_time(end) / repeats)
                times[tactic] = best
            except RuntimeError:  # e.g. no cuDNN engine for this fused shape: not a candidate
                torch.cuda.synchronize()
        return times


def fuse_every_relu() -> "ConvTacticPass":
    """A pass that fuses every conv-bias(-residual)-ReLU it can, untimed (a whole-graph recipe)."""
    return ConvTacticPass(choose=lambda site, tactics: "fused" if "fused" in tactics else "cudnn",
                          tactics=("cudnn", "fused"))


class ConvTacticPass(CustomGraphPass):
    """The pass inductor runs after freezing (config `post_grad_custom_post_pass`). `choose` maps a site
    and its candidate tactics to one; by default the fastest measured on the GPU. `chosen` counts the
    choices of every graph this pass compiled, `log` has one line per convolution."""

    def __init__(self, choose: Optional[Callable[[Site, list[str]], str]] = None, tactics=("cudnn", "fused", "mm")):
        self.choose, self.allowed = choose, tuple(tactics)
        self.chosen: Counter = Counter()
        self.log: list[str] = []

    def __call__(self, graph: torch.fx.Graph) -> None:
        for site in find_sites(graph):
            tactics = [t for t in site.tactics() if t in self.allowed]
            if tactics == ["cudnn"]:  # nothing to choose
                continue
            if self.choose is not None:
                tactic, note = self.choose(site, tactics), ""
            else:
                times = time_tactics(site, tactics) if site.input.is_cuda else {}
                tactic = min(times, key=times.get) if times else "cudnn"
                note = " ".join(f"{t} {ms * 1000:.1f}us" for t, ms in times.items())
            self.chosen[tactic] += 1
            self.log.append(f"{site.describe()}: {tactic}  ({note})" if note else f"{site.describe()}: {tactic}")
            rewrite(graph, site, tactic)

    def uuid(self) -> bytes:  # part of inductor's FX-graph cache key; timings differ per machine
        return f"cvzoo-conv-tactics-v1-{self.allowed}-{id(self)}".encode()
