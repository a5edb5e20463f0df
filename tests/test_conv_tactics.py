"""The torch-cuda engine's per-convolution tactics (cvzoo/engines/conv_tactics.py). On CI (no GPU) the
rewrites run with a fixed choice instead of GPU timings, and the fused custom ops run their CPU form
(conv2d + relu); the graph rewriting is the same code the GPU runs."""
import pytest

torch = pytest.importorskip("torch")
from torch.fx.experimental.proxy_tensor import make_fx  # noqa: E402

from cvzoo.engines.conv_tactics import ConvTacticPass  # noqa: E402

aten = torch.ops.aten


def prefer(*order):
    """A chooser taking the first of `order` that a site offers."""
    return lambda site, tactics: next(t for t in order if t in tactics)


class Net(torch.nn.Module):
    """Every case the rewrites must take or leave: conv-relu, conv-add-relu (a basic residual block) on a
    1x1 conv, a depthwise conv and a 3-channel stem conv (cuDNN's fused form is not offered), and a 1x1
    conv whose output has a second consumer (fusing would lose it; a matrix product is fine)."""

    def __init__(self):
        super().__init__()
        c = torch.nn.Conv2d
        self.stem, self.a, self.b, self.dw, self.c = c(3, 16, 3), c(16, 16, 3, padding=1), c(16, 16, 1), \
            c(16, 16, 3, padding=1, groups=16), c(16, 24, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))              # 3 input channels: no fused form
        y = torch.relu(self.a(x))                 # 3x3: fused
        y = torch.relu(self.b(y) + x)             # 1x1 with residual: fused or mm
        y = torch.relu(self.dw(y))                # depthwise: neither
        z = self.c(y)                             # 1x1 used twice: mm only
        return torch.relu(z) + z.mean()


def traced(x):
    net = Net().eval().to(memory_format=torch.channels_last)
    with torch.no_grad():
        return net, net(x), make_fx(net)(x)


@pytest.mark.parametrize("order, expected", [
    (("fused", "cudnn"), {"fused": 2, "cudnn": 1}),          # a, b fused; c offers only cudnn/mm
    (("mm", "fused", "cudnn"), {"fused": 1, "mm": 2}),       # a fused; b and c as matrix products
    (("cudnn",), {"cudnn": 3}),
])
def test_rewrites_keep_the_function(order, expected):
    x = torch.randn(2, 3, 20, 20).to(memory_format=torch.channels_last)
    net, ref, gm = traced(x)
    tactics = ConvTacticPass(choose=prefer(*order))
    tactics(gm.graph)
    gm.graph.lint()
    gm.recompile()
    assert dict(tactics.chosen) == expected
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    fused = targets.count(torch.ops.cvzoo.conv_relu.default) + targets.count(torch.ops.cvzoo.conv_add_relu.default)
    assert fused == expected.get("fused", 0)
    assert targets.count(aten.addmm.default) == expected.get("mm", 0)
    assert targets.count(aten.convolution.default) == 5 - fused - expected.get("mm", 0)
    with torch.no_grad():
        assert torch.allclose(gm(x), ref, atol=1e-5)


# one worker compiles inductor's C++ for the session: from a cold cache (CI's, every run) each process's first kernel
# is slow to compile
@pytest.mark.xdist_group("inductor")
@pytest.mark.parametrize("order", [("fused", "cudnn"), ("mm", "cudnn")])
def test_inductor_runs_the_pass_after_freezing_folds_batchnorm(order):
    """Through torch.compile as the engine uses it: BatchNorm folds into the convs (freezing), then the
    post-grad pass sees conv -> relu and rewrites; the compiled model computes the eager function."""
    def block(cin, cout, k):
        return [torch.nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), torch.nn.BatchNorm2d(cout), torch.nn.ReLU()]
    net = torch.nn.Sequential(*block(8, 16, 3), *block(16, 16, 1)).eval().to(memory_format=torch.channels_last)
    for bn in (net[1], net[4]):  # non-trivial statistics, so a dropped BatchNorm would show
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 8, 12, 12).to(memory_format=torch.channels_last)
    tactics = ConvTacticPass(choose=prefer(*order))
    torch._dynamo.reset()
    with torch.no_grad(), torch._inductor.config.patch({"freezing": True, "cpp.weight_prepack": False,
                                                        "post_grad_custom_post_pass": tactics}):
        out = torch.compile(net)(x)
        ref = net(x)
    assert dict(tactics.chosen) == ({"fused": 2} if order[0] == "fused" else {"cudnn": 1, "mm": 1})
    assert torch.allclose(out, ref, atol=1e-4)
