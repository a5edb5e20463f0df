"""A DLA written from ucbdrive/dla's documented module layout (the names its checkpoints carry):
base_layer, level0/1 conv levels, level2-5 Trees with tree1/tree2/root/project, and a 1x1-conv `fc`.
Like the original, every Tree whose channels change owns a `project` (also non-leaf trees, where it is
computed but unused). Used only to generate foreign-layout state dicts for converter tests."""
import torch
from torch import nn


class Basic(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x, residual=None):
        residual = x if residual is None else residual
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + residual)


class Root(nn.Module):
    def __init__(self, cin, cout, residual):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.residual = residual

    def forward(self, *xs):
        x = self.bn(self.conv(torch.cat(xs, 1)))
        return torch.relu(x + xs[0] if self.residual else x)


class Tree(nn.Module):
    def __init__(self, levels, cin, cout, stride=1, level_root=False, root_dim=0, root_residual=False):
        super().__init__()
        root_dim = root_dim or 2 * cout
        if level_root:
            root_dim += cin
        if levels == 1:
            self.tree1, self.tree2 = Basic(cin, cout, stride), Basic(cout, cout)
            self.root = Root(root_dim, cout, root_residual)
        else:
            self.tree1 = Tree(levels - 1, cin, cout, stride, root_residual=root_residual)
            self.tree2 = Tree(levels - 1, cout, cout, root_dim=root_dim + cout, root_residual=root_residual)
        self.level_root, self.levels = level_root, levels
        self.downsample = nn.MaxPool2d(stride, stride) if stride > 1 else None
        self.project = (nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
                        if cin != cout else None)

    def forward(self, x, residual=None, children=None):
        children = [] if children is None else children
        bottom = self.downsample(x) if self.downsample else x
        residual = self.project(bottom) if self.project else bottom
        if self.level_root:
            children.append(bottom)
        x1 = self.tree1(x, residual)
        if self.levels == 1:
            return self.root(self.tree2(x1), x1, *children)
        children.append(x1)
        return self.tree2(x1, children=children)


def conv_level(cin, cout, convs, stride=1):
    mods = []
    for i in range(convs):
        mods += [nn.Conv2d(cin, cout, 3, stride if i == 0 else 1, 1, bias=False), nn.BatchNorm2d(cout),
                 nn.ReLU(inplace=True)]
        cin = cout
    return nn.Sequential(*mods)


class DLA34(nn.Module):
    def __init__(self, num_classes=1000, levels=(1, 1, 1, 2, 2, 1), ch=(16, 32, 64, 128, 256, 512)):
        super().__init__()
        self.base_layer = nn.Sequential(nn.Conv2d(3, ch[0], 7, 1, 3, bias=False), nn.BatchNorm2d(ch[0]),
                                        nn.ReLU(inplace=True))
        self.level0 = conv_level(ch[0], ch[0], levels[0])
        self.level1 = conv_level(ch[0], ch[1], levels[1], stride=2)
        self.level2 = Tree(levels[2], ch[1], ch[2], 2, level_root=False)
        self.level3 = Tree(levels[3], ch[2], ch[3], 2, level_root=True)
        self.level4 = Tree(levels[4], ch[3], ch[4], 2, level_root=True)
        self.level5 = Tree(levels[5], ch[4], ch[5], 2, level_root=True)
        self.fc = nn.Conv2d(ch[-1], num_classes, 1)

    def forward(self, x):
        x = self.base_layer(x)
        for i in range(6):
            x = getattr(self, f"level{i}")(x)
        return self.fc(x.mean((2, 3), keepdim=True)).flatten(1)
