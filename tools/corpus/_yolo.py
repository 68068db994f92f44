"""YOLOv8n written out in plain torch (no ultralytics package, no weights).

The architecture of Ultralytics' ``yolov8.yaml`` at scale ``n`` (depth 0.33,
width 0.25, max channels 1024): Conv = Conv2d + BatchNorm + SiLU, C2f blocks,
SPPF, the PAN neck (nearest Upsample + Concat) and the Detect head with DFL box
decoding and class sigmoid. At 640×640 with 80 classes the output is
``[1, 84, 8400]`` (xywh in pixels, then 80 class scores). Layer and module
names follow Ultralytics' so the parameter count (3.15 M) can be compared.

Random init; :func:`yolov8n` draws random batch-norm affine parameters and
sets the running statistics from two smooth random images (train-mode forward,
cumulative average), so activations through the 60-odd layers stay in a
realistic range.
Imported by ``_torch_export.py`` only (torch's environment).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _channels(c: int, width: float = 0.25, max_channels: int = 1024) -> int:
    """make_divisible(min(c, max) · width, 8)."""
    return int(math.ceil(min(c, max_channels) * width / 8) * 8)


def _depth(n: int, depth: float = 0.33) -> int:
    return max(round(n * depth), 1)


class Conv(nn.Module):
    """Conv2d (no bias, 'same' padding) + BatchNorm2d + SiLU."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, g: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=0.001, momentum=0.03)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c1: int, c2: int, shortcut: bool = True, e: float = 1.0):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 3, 1)
        self.cv2 = Conv(c_, c2, 3, 1)
        self.add = shortcut and c1 == c2

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """CSP bottleneck with 2 convolutions: split, n bottlenecks on the last half, concat all."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False, e: float = 0.5):
        super().__init__()
        self.c = int(c2 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut, e=1.0) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained 5×5 max pools, concatenated."""

    def __init__(self, c1: int, c2: int, k: int = 5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x):
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class DFL(nn.Module):
    """Distribution focal loss integral: softmax over 16 bins, expectation by a fixed 1×1 conv."""

    def __init__(self, c1: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(c1, dtype=torch.float).view(1, c1, 1, 1)
        self.c1 = c1

    def forward(self, x):
        b, _, a = x.shape
        return self.conv(x.view(b, 4, self.c1, a).transpose(2, 1).softmax(1)).view(b, 4, a)


def make_anchors(sizes: list[tuple[int, int]], strides: list[int], offset: float = 0.5):
    """Anchor centres [2, A] (grid units) and their strides [1, A]."""
    points, stride_list = [], []
    for (h, w), s in zip(sizes, strides):
        sy, sx = torch.meshgrid(torch.arange(h, dtype=torch.float) + offset,
                                torch.arange(w, dtype=torch.float) + offset, indexing="ij")
        points.append(torch.stack((sx, sy), -1).view(-1, 2))
        stride_list.append(torch.full((h * w, 1), float(s)))
    return torch.cat(points).transpose(0, 1), torch.cat(stride_list).transpose(0, 1)


class Detect(nn.Module):
    """Decoupled head per level (box: 4×16 DFL bins, class: nc logits); decoded output."""

    def __init__(self, nc: int, ch: tuple[int, ...], image_size: int, strides=(8, 16, 32)):
        super().__init__()
        self.nc, self.nl, self.reg_max = nc, len(ch), 16
        self.no = nc + self.reg_max * 4
        c2, c3 = max((16, ch[0] // 4, self.reg_max * 4)), max(ch[0], min(nc, 100))
        self.cv2 = nn.ModuleList(nn.Sequential(Conv(x, c2, 3), Conv(c2, c2, 3),
                                               nn.Conv2d(c2, 4 * self.reg_max, 1)) for x in ch)
        self.cv3 = nn.ModuleList(nn.Sequential(Conv(x, c3, 3), Conv(c3, c3, 3),
                                               nn.Conv2d(c3, nc, 1)) for x in ch)
        self.dfl = DFL(self.reg_max)
        anchors, stride_t = make_anchors([(image_size // s, image_size // s) for s in strides],
                                         list(strides))
        self.register_buffer("anchors", anchors)
        self.register_buffer("strides", stride_t)

    def forward(self, xs):
        b = xs[0].shape[0]
        x_cat = torch.cat([torch.cat((self.cv2[i](x), self.cv3[i](x)), 1).view(b, self.no, -1)
                           for i, x in enumerate(xs)], 2)
        box, cls = x_cat.split((self.reg_max * 4, self.nc), 1)
        lt, rb = self.dfl(box).chunk(2, 1)
        a = self.anchors.unsqueeze(0)
        x1y1, x2y2 = a - lt, a + rb
        dbox = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * self.strides
        return torch.cat((dbox, cls.sigmoid()), 1)


class YOLOv8(nn.Module):
    """Backbone (P1..P5, SPPF), PAN neck and Detect(P3, P4, P5), as yolov8.yaml lays it out."""

    def __init__(self, nc: int = 80, image_size: int = 640, width: float = 0.25,
                 depth: float = 0.33, max_channels: int = 1024):
        super().__init__()
        c = lambda n: _channels(n, width, max_channels)  # noqa: E731
        d = lambda n: _depth(n, depth)  # noqa: E731
        self.b0 = Conv(3, c(64), 3, 2)                  # P1/2
        self.b1 = Conv(c(64), c(128), 3, 2)             # P2/4
        self.b2 = C2f(c(128), c(128), d(3), True)
        self.b3 = Conv(c(128), c(256), 3, 2)            # P3/8
        self.b4 = C2f(c(256), c(256), d(6), True)
        self.b5 = Conv(c(256), c(512), 3, 2)            # P4/16
        self.b6 = C2f(c(512), c(512), d(6), True)
        self.b7 = Conv(c(512), c(1024), 3, 2)           # P5/32
        self.b8 = C2f(c(1024), c(1024), d(3), True)
        self.b9 = SPPF(c(1024), c(1024), 5)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.h12 = C2f(c(1024) + c(512), c(512), d(3))
        self.h15 = C2f(c(512) + c(256), c(256), d(3))   # P3 out
        self.h16 = Conv(c(256), c(256), 3, 2)
        self.h18 = C2f(c(256) + c(512), c(512), d(3))   # P4 out
        self.h19 = Conv(c(512), c(512), 3, 2)
        self.h21 = C2f(c(512) + c(1024), c(1024), d(3))  # P5 out
        self.detect = Detect(nc, (c(256), c(512), c(1024)), image_size)

    def forward(self, x):
        p3 = self.b4(self.b3(self.b2(self.b1(self.b0(x)))))
        p4 = self.b6(self.b5(p3))
        p5 = self.b9(self.b8(self.b7(p4)))
        h12 = self.h12(torch.cat((self.up(p5), p4), 1))
        h15 = self.h15(torch.cat((self.up(h12), p3), 1))
        h18 = self.h18(torch.cat((self.h16(h15), h12), 1))
        h21 = self.h21(torch.cat((self.h19(h18), p5), 1))
        return self.detect([h15, h18, h21])


def smooth_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """[n, 3, size, size] smooth random fields in [0, 1] (coarse noise, bilinear upsampled)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, max(size // 32, 2), max(size // 32, 2), generator=g)
    fine = torch.rand(n, 3, max(size // 4, 2), max(size // 4, 2), generator=g)
    up = lambda t: nn.functional.interpolate(t, size=(size, size), mode="bilinear",  # noqa: E731
                                             align_corners=False)
    return (0.8 * up(coarse) + 0.2 * up(fine)).clamp(0, 1)


def yolov8n(nc: int = 80, image_size: int = 640, seed: int = 0,
            stats_images: int = 2) -> YOLOv8:
    """YOLOv8n in eval mode: random weights, random BN affine, BN statistics from data."""
    torch.manual_seed(seed)
    model = YOLOv8(nc, image_size)
    g = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = 0.5 + torch.rand(m.num_features, generator=g)
            m.bias.data = 0.2 * torch.randn(m.num_features, generator=g)
            m.momentum = None  # cumulative average over the statistics batches
            m.reset_running_stats()
    model.train()
    with torch.no_grad():
        for i in range(stats_images):
            model(smooth_images(1, image_size, seed + 10 + i))
    return model.eval()
