#!/usr/bin/env python3
"""Generate convkit's PyTorch golden cases.

Regenerating: ``python3 scripts/gen_golden.py`` (from the repository root, with PyTorch 2.x,
NumPy and safetensors installed) rewrites ``crates/convkit/tests/data/golden.safetensors`` and
``crates/convkit/tests/data/golden.json``; ``cargo test -p convkit --release --test golden``
then checks the reference engine against them. The output is deterministic for a given seed
(``--seed``, default 20161123, the date of Dumoulin & Visin's guide), so re-running it on an
unchanged script reproduces the committed files byte for byte (same PyTorch/NumPy versions).

What a case is: one convolution layer (conv1d, conv2d, conv_transpose1d or conv_transpose2d)
with every ``convkit::ConvSpec`` field, an input ``x``, a weight ``w``, an optional bias ``b``,
the forward output ``y``, a random output gradient ``dy`` and the three gradients ``dx``,
``dw``, ``db`` of ``sum(y * dy)`` from autograd. Inputs are drawn as float32 values, PyTorch
runs on them in float64 (so the golden values are exact up to f64 rounding), and every tensor is
stored as float32 under the key ``<case key>.<tensor>`` (e.g. ``c0042.dw``).

The JSON file holds ``{"seed", "torch_version", "cases": [...], "rejects": [...]}``; each case has
``key, name, rank (1|2), transposed, in_channels, out_channels, kernel [kh,kw], stride,
dilation, padding ({"explicit": [t,b,l,r]} | "valid" | "same" | "same_tf"), padding_mode
(zeros|reflect|replicate|circular), groups, bias, output_padding [h,w], output_size ([h,w] or
null), input_shape`` (N,C,L for 1D, N,C,H,W for 2D). ``rejects`` lists layers (same fields,
no tensors, plus PyTorch's ``error`` message) that PyTorch refuses: one or more per error kind,
then the random draws PyTorch refused; convkit must refuse every one of them too. 1D cases store pairs with height 1 for
kernel/stride/dilation/output_size and 0 for top/bottom padding and output_padding height.

How each padding is made in PyTorch (so the golden data does not depend on convkit's own
formulas): symmetric zeros padding, 'valid' and 'same' through ``F.conv*`` directly; symmetric
or 'same' border modes through ``nn.Conv*d(padding_mode=...)``; per-side (asymmetric) padding as
``F.pad(x, ..., mode)`` then a convolution with padding 0; TensorFlow SAME with the pads computed
here by TF's rule (out = ceil(i/s), total = max((out-1)s + d(k-1) + 1 - i, 0), floor(total/2)
before, the rest after), then ``F.pad``; ``output_size`` through ``nn.ConvTranspose*d.forward
(x, output_size=...)``; per-side cropping of a transposed convolution (a convkit extension)
as the padding-0 transposed output, extended with zeros by output_padding, then cropped.
"""

import argparse
import json
import os
import random
import sys
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import save_file
from torch import nn
from torch.func import functional_call

DEFAULT_OUT = os.path.normpath(os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "crates", "convkit", "tests", "data"))
MODES = ["zeros", "reflect", "replicate", "circular"]
# Keep the committed data small: skip random combinations above this many stored floats.
MAX_FLOATS_PER_CASE = 6000
# What PyTorch raises for an impossible layer.
TORCH_ERRORS = (RuntimeError, ValueError, TypeError)


# ----------------------------------------------------------------------------------------------
# Case description helpers
# ----------------------------------------------------------------------------------------------

def pair(v):
    return [v, v] if isinstance(v, int) else list(v)


def case(
    tag,
    rank=2,
    transposed=False,
    cin=2,
    cout=3,
    k=3,
    s=1,
    d=1,
    pad=0,
    mode="zeros",
    groups=1,
    bias=True,
    op=0,
    output_size=None,
    n=1,
    size=(7, 7),
):
    """One case. `pad` is an int, (ph, pw), a 4-list [t, b, l, r], or 'valid'/'same'/'same_tf'.

    For rank 1, scalar k/s/d/op apply to the length axis and `size` is the length (int),
    `pad` an int, (l, r) pair given as a 2-list, or a rule; `output_size` an int.
    """
    if rank == 1:
        k, s, d, op = [1, k], [1, s], [1, d], [0, op]
        if isinstance(pad, int):
            pad = {"explicit": [0, 0, pad, pad]}
        elif isinstance(pad, list):
            pad = {"explicit": [0, 0, pad[0], pad[1]]}
        if output_size is not None:
            output_size = [1, output_size]
        shape = [n, cin, size]
    else:
        k, s, d, op = pair(k), pair(s), pair(d), pair(op)
        if isinstance(pad, int):
            pad = {"explicit": [pad, pad, pad, pad]}
        elif isinstance(pad, tuple):
            pad = {"explicit": [pad[0], pad[0], pad[1], pad[1]]}
        elif isinstance(pad, list):
            pad = {"explicit": list(pad)}
        if output_size is not None:
            output_size = pair(output_size)
        shape = [n, cin, size[0], size[1]]
    return {
        "tag": tag,
        "rank": rank,
        "transposed": transposed,
        "in_channels": cin,
        "out_channels": cout,
        "kernel": k,
        "stride": s,
        "dilation": d,
        "padding": pad,
        "padding_mode": mode,
        "groups": groups,
        "bias": bias,
        "output_padding": op,
        "output_size": output_size,
        "input_shape": shape,
    }


def describe(c):
    """A short human-readable name (unique once the key is prefixed)."""
    kind = ("convT" if c["transposed"] else "conv") + ("1d" if c["rank"] == 1 else "2d")
    ax = (lambda p: f"{p[1]}") if c["rank"] == 1 else (
        lambda p: f"{p[0]}" if p[0] == p[1] else f"{p[0]}x{p[1]}"
    )
    parts = [c["tag"], kind, f"c{c['in_channels']}-{c['out_channels']}", "k" + ax(c["kernel"])]
    if c["stride"] != [1, 1]:
        parts.append("s" + ax(c["stride"]))
    if c["dilation"] != [1, 1]:
        parts.append("d" + ax(c["dilation"]))
    p = c["padding"]
    if isinstance(p, str):
        parts.append(p)
    else:
        t, b, l, r = p["explicit"]
        if c["rank"] == 1:
            parts.append(f"p{l}" if l == r else f"p{l},{r}")
        elif t == b == l == r:
            parts.append(f"p{t}")
        else:
            parts.append(f"p{t},{b},{l},{r}")
    if c["padding_mode"] != "zeros":
        parts.append(c["padding_mode"])
    if c["groups"] != 1:
        parts.append(f"g{c['groups']}")
    if c["output_padding"] != [0, 0]:
        parts.append("op" + ax(c["output_padding"]))
    if c["output_size"] is not None:
        parts.append("osz" + ax(c["output_size"]))
    if not c["bias"]:
        parts.append("nobias")
    parts.append("n{}_{}".format(c["input_shape"][0], "x".join(map(str, c["input_shape"][2:]))))
    return "_".join(parts)


# ----------------------------------------------------------------------------------------------
# The cases
# ----------------------------------------------------------------------------------------------

def structured_cases():
    cs = []
    # Plain conv2d: kernels (square, non-square, even), strides, odd sizes.
    for k in [1, 2, 3, 4, 5, (1, 3), (3, 1), (2, 5), (5, 2)]:
        cs.append(case("kernel", k=k, size=(7, 9)))
    for s in [2, 3, (1, 2), (2, 1), (3, 2)]:
        for k in [3, (2, 4)]:
            cs.append(case("stride", k=k, s=s, size=(9, 8)))
    for p in [1, 2, (0, 1), (2, 1), 4]:
        cs.append(case("padsym", k=3, pad=p, size=(5, 6)))
    for d in [2, 3, (1, 2), (3, 1)]:
        cs.append(case("dilation", k=3, d=d, size=(9, 9)))
    # Dilation together with stride and padding.
    for k, s, d, p in [(3, 2, 2, 0), (3, 2, 2, 2), (3, (2, 3), (2, 1), 1), ((2, 3), 3, 2, (1, 2)),
                       (3, 3, 3, 3), (2, 2, 3, 1), (4, (1, 2), (2, 3), 0)]:
        cs.append(case("dilstride", k=k, s=s, d=d, pad=p, size=(11, 12)))
    # Odd and tiny sizes: 1x1 input with padding, k equal to the input, 1-wide images.
    cs.append(case("tiny", k=1, size=(1, 1)))
    cs.append(case("tiny", k=3, pad=1, size=(1, 1)))
    cs.append(case("tiny", k=(3, 5), size=(3, 5)))
    cs.append(case("tiny", k=(1, 3), size=(1, 7), s=(1, 2)))
    cs.append(case("tiny", k=(3, 1), size=(7, 1), pad=(1, 0)))
    cs.append(case("tiny", cin=1, cout=1, k=2, s=3, size=(2, 2)))
    # Batch > 1 and bias on/off.
    for n in [2, 3]:
        for bias in [True, False]:
            cs.append(case("batch", n=n, bias=bias, k=3, s=2, pad=1, size=(6, 7)))
    cs.append(case("nobias", bias=False, k=(3, 2), size=(5, 5)))
    cs.append(case("channels", cin=1, cout=1, k=3, size=(6, 6)))
    cs.append(case("channels", cin=5, cout=1, k=3, size=(6, 5)))
    cs.append(case("channels", cin=1, cout=6, k=2, size=(5, 6)))
    # Asymmetric per-side zeros padding.
    for p in [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 2, 1, 3],
              [3, 0, 2, 1], [1, 2, 3, 4], [2, 1, 0, 3]]:
        cs.append(case("padsides", k=3, pad=p, size=(5, 6)))
    for p, s, d in [([1, 2, 0, 1], 2, 1), ([0, 3, 2, 0], (2, 3), 1), ([2, 1, 1, 2], 1, 2),
                    ([3, 1, 0, 2], 2, (2, 1))]:
        cs.append(case("padsides", k=3, pad=p, s=s, d=d, size=(7, 8)))
    # Padding modes: symmetric, asymmetric, with stride/dilation, and at the limits.
    for mode in ["reflect", "replicate", "circular"]:
        for p in [1, 2, (1, 2), (2, 0)]:
            cs.append(case("mode", k=3, pad=p, mode=mode, size=(5, 6)))
        for p in [[1, 0, 2, 0], [0, 2, 1, 3], [2, 1, 0, 1]]:
            cs.append(case("modesides", k=3, pad=p, mode=mode, size=(5, 6)))
        cs.append(case("modestride", k=3, s=2, pad=1, mode=mode, size=(7, 6)))
        cs.append(case("modedil", k=3, d=2, pad=2, mode=mode, size=(6, 7)))
        cs.append(case("modedilstride", k=(3, 2), s=(2, 3), d=(1, 2), pad=(1, 2), mode=mode,
                       size=(7, 9)))
        cs.append(case("modebatch", n=2, bias=False, k=3, pad=1, mode=mode, groups=2, cin=2,
                       cout=4, size=(4, 5)))
    # Limits: reflect pad = size - 1, circular pad = size, replicate far beyond.
    for h, w in [(3, 4), (2, 2), (4, 3)]:
        cs.append(case("reflectmax", k=3, pad=(h - 1, w - 1), mode="reflect", size=(h, w)))
        cs.append(case("circularmax", k=3, pad=(h, w), mode="circular", size=(h, w)))
    cs.append(case("reflectmax", k=3, pad=[2, 0, 0, 3], mode="reflect", size=(3, 4)))
    cs.append(case("circularmax", k=3, pad=[0, 3, 4, 1], mode="circular", size=(3, 4)))
    cs.append(case("reflectmax", k=(2, 1), pad=(1, 0), mode="reflect", size=(2, 1)))
    cs.append(case("circularmax", k=2, pad=(1, 1), mode="circular", size=(1, 1)))
    cs.append(case("replicatefar", k=3, pad=(5, 4), mode="replicate", size=(2, 3)))
    cs.append(case("replicatefar", k=3, pad=3, mode="replicate", size=(1, 1)))
    cs.append(case("zerosfar", k=2, pad=(4, 3), size=(2, 2)))
    # 'valid' and PyTorch 'same' (odd and even kernels: k=4 puts the extra cell bottom/right).
    for k, s in [(3, 1), ((2, 4), 1), (3, 2), ((3, 1), (2, 3))]:
        cs.append(case("valid", k=k, s=s, pad="valid", size=(7, 8)))
    for k, d in [(3, 1), (4, 1), (2, 1), ((2, 5), 1), (3, 2), (4, (2, 3)), ((1, 4), 1), (5, 1)]:
        cs.append(case("same", k=k, d=d, pad="same", size=(6, 7)))
    for mode in ["reflect", "replicate", "circular"]:
        cs.append(case("samemode", k=4, pad="same", mode=mode, size=(5, 6)))
        cs.append(case("samemode", k=3, d=2, pad="same", mode=mode, size=(5, 6)))
    cs.append(case("samegroups", cin=4, cout=4, groups=4, k=(3, 4), pad="same", size=(5, 5)))
    # TensorFlow SAME: stride 1, 2, 3, divisible or not, dilation, border modes.
    for k, s, d, hw in [(3, 2, 1, (7, 8)), (3, 2, 1, (8, 7)), (4, 2, 1, (6, 6)), (1, 2, 1, (5, 6)),
                        (3, 3, 1, (7, 9)), (5, (2, 3), 1, (9, 7)), (3, 2, 2, (9, 8)),
                        ((2, 3), (1, 2), (2, 1), (6, 9)), (3, 1, 1, (5, 5)), (2, 1, 1, (5, 4)),
                        (2, 4, 1, (3, 5)), (3, 2, 1, (1, 2))]:
        cs.append(case("sametf", k=k, s=s, d=d, pad="same_tf", size=hw))
    for mode in ["reflect", "replicate", "circular"]:
        cs.append(case("sametfmode", k=3, s=2, pad="same_tf", mode=mode, size=(6, 7)))
    # Groups, depthwise, depthwise with depth multiplier.
    for cin, cout, g in [(4, 6, 2), (6, 3, 3), (4, 8, 4), (6, 6, 2)]:
        cs.append(case("groups", cin=cin, cout=cout, groups=g, k=3, pad=1, size=(5, 6)))
    cs.append(case("groups", cin=4, cout=4, groups=2, k=(2, 3), s=(2, 1), d=(1, 2), pad=[1, 0, 2, 1],
                   size=(7, 7)))
    for c_, m in [(3, 1), (4, 1), (3, 2), (2, 3), (5, 1)]:
        cs.append(case("depthwise", cin=c_, cout=c_ * m, groups=c_, k=3, pad=1, size=(6, 5)))
    cs.append(case("depthwise", cin=3, cout=6, groups=3, k=3, s=2, pad=1, n=2, size=(7, 8)))
    cs.append(case("depthwise", cin=4, cout=4, groups=4, k=5, d=2, pad="same", size=(6, 6),
                   bias=False))
    cs.append(case("depthwise", cin=2, cout=4, groups=2, k=(3, 5), s=(1, 2), pad=(1, 2),
                   mode="reflect", size=(5, 7)))
    # ---------------- conv1d ----------------
    for k in [1, 2, 3, 5]:
        cs.append(case("c1d", rank=1, k=k, size=11))
    for s, d in [(2, 1), (3, 1), (1, 2), (2, 3), (3, 2)]:
        cs.append(case("c1dsd", rank=1, k=3, s=s, d=d, pad=1, size=13))
    for p in [2, [0, 2], [3, 1], [1, 0]]:
        cs.append(case("c1dpad", rank=1, k=3, pad=p, size=7))
    for mode in ["reflect", "replicate", "circular"]:
        cs.append(case("c1dmode", rank=1, k=3, pad=2, mode=mode, size=6))
        cs.append(case("c1dmode", rank=1, k=4, s=2, pad=[3, 1], mode=mode, size=7))
    cs.append(case("c1dreflectmax", rank=1, k=3, pad=4, mode="reflect", size=5))
    cs.append(case("c1dcircularmax", rank=1, k=3, pad=5, mode="circular", size=5))
    cs.append(case("c1dcircularmax", rank=1, k=2, pad=[0, 1], mode="circular", size=1))
    for k, d in [(3, 1), (4, 1), (3, 3)]:
        cs.append(case("c1dsame", rank=1, k=k, d=d, pad="same", size=9))
    cs.append(case("c1dsame", rank=1, k=4, pad="same", mode="reflect", size=6))
    cs.append(case("c1dvalid", rank=1, k=4, s=2, pad="valid", size=10))
    for k, s, size in [(3, 2, 9), (4, 3, 10), (2, 2, 7)]:
        cs.append(case("c1dsametf", rank=1, k=k, s=s, pad="same_tf", size=size))
    cs.append(case("c1dsametf", rank=1, k=3, s=2, pad="same_tf", mode="replicate", size=8))
    cs.append(case("c1dgroups", rank=1, cin=4, cout=6, groups=2, k=3, pad=1, size=9))
    cs.append(case("c1ddepthwise", rank=1, cin=3, cout=6, groups=3, k=5, pad=2, n=2, size=10))
    cs.append(case("c1ddepthwise", rank=1, cin=4, cout=4, groups=4, k=3, s=2, d=2, bias=False,
                   size=12))
    cs.append(case("c1dbatch", rank=1, n=3, bias=False, k=3, s=2, size=9))
    # ---------------- conv_transpose2d ----------------
    for k, s in [(3, 1), (3, 2), (4, 2), (2, 2), (3, 3), ((2, 3), (1, 2)), ((3, 2), (3, 1)),
                 (1, 2), (5, 2)]:
        cs.append(case("tr", transposed=True, k=k, s=s, size=(4, 5)))
    for k, s, p in [(3, 2, 1), (4, 2, 1), (3, 1, 2), (5, 3, (2, 1)), ((3, 4), (2, 3), (1, 2))]:
        cs.append(case("trpad", transposed=True, k=k, s=s, pad=p, size=(4, 5)))
    # output_padding < stride.
    for k, s, p, op in [(3, 2, 1, 1), (3, 3, 1, 2), (3, 3, 0, 1), ((3, 2), (2, 3), (1, 0), (1, 2)),
                        (4, 2, 0, 1), (3, 2, 0, (0, 1)), (1, 3, 0, 2)]:
        cs.append(case("trop", transposed=True, k=k, s=s, pad=p, op=op, size=(4, 5)))
    # output_padding >= stride but < dilation (PyTorch allows it).
    for k, s, d, p, op in [(3, 1, 2, 0, 1), (3, 1, 3, 1, 2), (2, 2, 3, 0, 2),
                           ((2, 3), (1, 2), (3, 2), 0, (2, 1)), (3, 1, 4, 2, 3)]:
        cs.append(case("tropdil", transposed=True, k=k, s=s, d=d, pad=p, op=op, size=(4, 5)))
    for k, s, d, p in [(3, 1, 2, 0), (3, 2, 2, 1), (2, 3, 2, 1), ((3, 2), (2, 1), (1, 3), (1, 2))]:
        cs.append(case("trdil", transposed=True, k=k, s=s, d=d, pad=p, size=(4, 4)))
    for cin, cout, g in [(4, 6, 2), (3, 3, 3), (6, 4, 2), (2, 4, 2), (4, 2, 2)]:
        cs.append(case("trgroups", transposed=True, cin=cin, cout=cout, groups=g, k=3, s=2, pad=1,
                       op=1, size=(4, 3)))
    cs.append(case("trgroups", transposed=True, cin=4, cout=4, groups=4, k=(2, 3), s=(2, 1),
                   d=(2, 2), op=(1, 1), size=(3, 4)))
    # output_size: every reachable size from min to min + s - 1.
    for osz in [(7, 9), (8, 10), (7, 10), (8, 9)]:
        cs.append(case("troutsize", transposed=True, k=3, s=2, pad=1, output_size=osz,
                       size=(4, 5)))
    for osz in [(11, 14), (12, 15), (13, 16)]:
        cs.append(case("troutsize", transposed=True, k=4, s=3, pad=1, output_size=osz,
                       size=(4, 5)))
    cs.append(case("troutsize", transposed=True, cin=4, cout=2, groups=2, k=3, s=(2, 3), d=(2, 1),
                   output_size=(11, 14), size=(4, 4)))
    # Batch, bias off, channels.
    cs.append(case("trbatch", transposed=True, n=2, k=3, s=2, pad=1, op=1, size=(3, 4)))
    cs.append(case("trbatch", transposed=True, n=3, bias=False, k=(2, 3), s=2, size=(3, 3)))
    cs.append(case("trnobias", transposed=True, bias=False, cin=1, cout=1, k=3, s=2, size=(2, 2)))
    cs.append(case("trtiny", transposed=True, k=3, s=1, pad=1, size=(1, 1)))
    cs.append(case("trtiny", transposed=True, k=1, s=1, size=(1, 1)))
    # The seed: a 2x2 map through 3x3 stride 2 transposed comes back 5x5.
    cs.append(case("trseed", transposed=True, cin=1, cout=1, k=3, s=2, size=(2, 2)))
    # Per-side cropping (convkit extension; PyTorch reference = crop of the padding-0 output).
    for p, s, op in [([1, 0, 0, 2], 2, 0), ([0, 1, 2, 1], 1, 0), ([2, 0, 1, 0], 2, 1),
                     ([1, 2, 0, 1], (2, 3), (1, 2))]:
        cs.append(case("trsides", transposed=True, k=3, s=s, pad=p, op=op, size=(4, 4)))
    # ---------------- conv_transpose1d ----------------
    for k, s, p in [(3, 1, 0), (3, 2, 1), (4, 2, 1), (2, 3, 0), (5, 2, 2)]:
        cs.append(case("tr1d", rank=1, transposed=True, k=k, s=s, pad=p, size=6))
    for k, s, d, p, op in [(3, 2, 1, 1, 1), (3, 3, 1, 0, 2), (3, 1, 2, 0, 1), (2, 2, 3, 1, 2),
                           (3, 2, 2, 1, 1)]:
        cs.append(case("tr1dop", rank=1, transposed=True, k=k, s=s, d=d, pad=p, op=op, size=5))
    cs.append(case("tr1dgroups", rank=1, transposed=True, cin=4, cout=6, groups=2, k=3, s=2,
                   pad=1, size=5))
    cs.append(case("tr1dgroups", rank=1, transposed=True, cin=3, cout=6, groups=3, k=4, s=2, d=2,
                   op=1, bias=False, n=2, size=5))
    for osz in [11, 12]:
        cs.append(case("tr1doutsize", rank=1, transposed=True, k=3, s=2, pad=0, output_size=osz,
                       size=5))
    cs.append(case("tr1doutsize", rank=1, transposed=True, k=4, s=3, pad=2, output_size=17,
                   size=6))
    cs.append(case("tr1dsides", rank=1, transposed=True, k=3, s=2, pad=[2, 0], op=1, size=5))
    cs.append(case("tr1dbatch", rank=1, transposed=True, n=3, k=3, s=2, pad=1, size=4))
    return cs


def rejected_cases():
    """Layers PyTorch refuses (one or more per error kind); convkit must refuse them too."""
    r = []
    r.append(case("rej_groups_in", cin=3, cout=4, groups=2))
    r.append(case("rej_groups_out", cin=4, cout=3, groups=2))
    r.append(case("rej_groups_1d", rank=1, cin=3, cout=3, groups=2, size=7))
    r.append(case("rej_same_stride", k=3, s=2, pad="same"))
    r.append(case("rej_same_stride", k=3, s=(1, 2), pad="same"))
    r.append(case("rej_same_stride_1d", rank=1, k=3, s=2, pad="same", size=7))
    r.append(case("rej_op", transposed=True, k=3, s=2, op=2, size=(3, 3)))
    r.append(case("rej_op", transposed=True, k=3, s=1, d=2, op=2, size=(3, 3)))
    r.append(case("rej_op", transposed=True, k=3, s=(2, 1), op=(1, 1), size=(3, 3)))
    r.append(case("rej_op_1d", rank=1, transposed=True, k=3, s=3, d=2, op=3, size=4))
    r.append(case("rej_outsize", transposed=True, k=3, s=2, pad=1, output_size=(9, 7), size=(4, 4)))
    r.append(case("rej_outsize", transposed=True, k=3, s=2, pad=1, output_size=(7, 6), size=(4, 4)))
    r.append(case("rej_outsize_1d", rank=1, transposed=True, k=3, s=3, output_size=18, size=5))
    for mode in ["reflect", "replicate", "circular"]:
        r.append(case("rej_trmode", transposed=True, k=3, s=2, pad=1, mode=mode, size=(3, 3)))
    r.append(case("rej_trsame", transposed=True, k=3, pad="same", size=(3, 3)))
    r.append(case("rej_kernel", k=5, size=(3, 6)))
    r.append(case("rej_kernel", k=3, d=3, pad=(1, 0), size=(4, 9)))
    r.append(case("rej_kernel_1d", rank=1, k=4, d=2, pad=1, size=4))
    r.append(case("rej_reflect", k=3, pad=(3, 1), mode="reflect", size=(3, 5)))
    r.append(case("rej_reflect", k=1, pad=[0, 0, 0, 4], mode="reflect", size=(3, 4)))
    r.append(case("rej_reflect", k=4, pad="same", mode="reflect", size=(1, 6)))
    r.append(case("rej_reflect_1d", rank=1, k=3, pad=2, mode="reflect", size=2))
    r.append(case("rej_circular", k=3, pad=(4, 0), mode="circular", size=(3, 3)))
    r.append(case("rej_circular", k=1, pad=[0, 0, 5, 0], mode="circular", size=(3, 4)))
    r.append(case("rej_circular_1d", rank=1, k=2, pad=[0, 2], mode="circular", size=1))
    r.append(case("rej_empty", transposed=True, k=1, pad=1, size=(1, 1)))
    r.append(case("rej_empty", transposed=True, k=3, s=2, pad=(0, 3), size=(2, 1)))
    r.append(case("rej_empty_1d", rank=1, transposed=True, k=2, pad=1, size=1))
    return r


def random_cases(rng, count, rejects=None, max_rejects=0):
    """Random combinations of every option; invalid draws (PyTorch raises) are redrawn, and the
    first `max_rejects` of them are appended to `rejects` as (case, PyTorch's message)."""
    cs = []
    attempts = 0
    while len(cs) < count:
        attempts += 1
        assert attempts < 100 * count, "random case generation is not converging"
        rank = rng.choice([1, 2, 2])
        transposed = rng.random() < 0.35
        g = rng.choice([1, 1, 1, 2, 3])
        cin = g * rng.randint(1, 3)
        cout = g * rng.randint(1, 3)
        if not transposed and g > 1 and rng.random() < 0.4:
            cin = g  # depthwise, with multiplier cout/g
        ax = lambda lo, hi: rng.randint(lo, hi) if rank == 1 or rng.random() < 0.5 else (
            rng.randint(lo, hi), rng.randint(lo, hi))
        k = ax(1, 4)
        s = ax(1, 3)
        d = ax(1, 3)
        size = rng.randint(1, 12) if rank == 1 else (rng.randint(1, 9), rng.randint(1, 9))
        n = rng.choice([1, 1, 2, 3])
        bias = rng.random() < 0.7
        mode = "zeros"
        op = 0
        output_size = None
        if transposed:
            pmax = 2
            pad = ax(0, pmax)
            if rank == 2 and rng.random() < 0.15:
                pad = [rng.randint(0, 2) for _ in range(4)]
            elif rank == 1 and rng.random() < 0.15:
                pad = [rng.randint(0, 2), rng.randint(0, 2)]
            sp, dp = pair(s), pair(d)
            if rng.random() < 0.4:
                op = (rng.randint(0, max(sp[0], dp[0]) - 1) if rank == 2 else 0,
                      rng.randint(0, max(sp[1], dp[1]) - 1))
                op = op[1] if rank == 1 else op
        else:
            mode = rng.choice(MODES)
            r = rng.random()
            if r < 0.1:
                pad = "valid"
            elif r < 0.2 and s in (1, (1, 1)):
                pad = "same"
            elif r < 0.3:
                pad = "same_tf"
            elif r < 0.6:
                pad = [rng.randint(0, 3) for _ in range(4 if rank == 2 else 2)]
            else:
                pad = ax(0, 3)
        c = case("rand", rank=rank, transposed=transposed, cin=cin, cout=cout, k=k, s=s, d=d,
                 pad=pad, mode=mode, groups=g, bias=bias, op=op, output_size=output_size, n=n,
                 size=size)
        if transposed and rng.random() < 0.25 and isinstance(c["padding"], dict):
            t, b, l, r_ = c["padding"]["explicit"]
            if t == b and l == r_:
                # Ask for a size by output_size instead of output_padding.
                c["output_padding"] = [0, 0]
                hw = c["input_shape"][2:] if rank == 2 else [1] + c["input_shape"][2:]
                osz = []
                for a in range(2):
                    lo = (hw[a] - 1) * c["stride"][a] - 2 * [t, l][a] + \
                        c["dilation"][a] * (c["kernel"][a] - 1) + 1
                    osz.append(lo + rng.randint(0, c["stride"][a] - 1))
                c["output_size"] = [1, osz[1]] if rank == 1 else osz
        try:
            tensors = run_case(c, np.random.default_rng(0))
        except TORCH_ERRORS as e:
            if rejects is not None and len(rejects) < max_rejects:
                rejects.append((c, e))
            continue
        if sum(v.size for v in tensors.values()) > MAX_FLOATS_PER_CASE:
            continue
        cs.append(c)
    return cs


# ----------------------------------------------------------------------------------------------
# Running a case in PyTorch (float64, autograd)
# ----------------------------------------------------------------------------------------------

def tf_same_pads(i, k, s, d):
    """TensorFlow SAME on one axis: (before, after)."""
    out = -(-i // s)
    total = max((out - 1) * s + d * (k - 1) + 1 - i, 0)
    return total // 2, total - total // 2


def weight_shape(c):
    g = c["groups"]
    kh, kw = c["kernel"]
    if c["transposed"]:
        shape = [c["in_channels"], c["out_channels"] // g, kh, kw]
    else:
        shape = [c["out_channels"], c["in_channels"] // g, kh, kw]
    return shape[:2] + [kw] if c["rank"] == 1 else shape


def torch_forward(c, x, w, b):
    one = c["rank"] == 1
    ax = (lambda p: p[1]) if one else tuple
    conv = F.conv1d if one else F.conv2d
    convt = F.conv_transpose1d if one else F.conv_transpose2d
    module = (nn.Conv1d if one else nn.Conv2d) if not c["transposed"] else (
        nn.ConvTranspose1d if one else nn.ConvTranspose2d)
    k, s, d, g = ax(c["kernel"]), ax(c["stride"]), ax(c["dilation"]), c["groups"]
    mode = c["padding_mode"]
    pad = c["padding"]
    params = {"weight": w} if b is None else {"weight": w, "bias": b}

    def make_module(padding, **kw):
        m = module(c["in_channels"], c["out_channels"], k, stride=s, padding=padding, dilation=d,
                   groups=g, bias=b is not None, **kw)
        return m.double()

    def fpad(t, sides):
        tb, bb, lb, rb = sides
        spec = (lb, rb) if one else (lb, rb, tb, bb)
        return F.pad(t, spec, mode="constant" if mode == "zeros" else mode)

    if not c["transposed"]:
        if pad == "valid":
            return conv(x, w, b, s, "valid", d, g)
        if pad == "same":
            if mode == "zeros":
                return conv(x, w, b, s, "same", d, g)
            return functional_call(make_module("same", padding_mode=mode), params, (x,))
        if pad == "same_tf":
            hw = [1, x.shape[2]] if one else list(x.shape[2:])
            ph = tf_same_pads(hw[0], c["kernel"][0], c["stride"][0], c["dilation"][0])
            pw = tf_same_pads(hw[1], c["kernel"][1], c["stride"][1], c["dilation"][1])
            return conv(fpad(x, [ph[0], ph[1], pw[0], pw[1]]), w, b, s, 0, d, g)
        t, bo, l, r = pad["explicit"]
        if t == bo and l == r:
            p = l if one else (t, l)
            if mode == "zeros":
                return conv(x, w, b, s, p, d, g)
            return functional_call(make_module(p, padding_mode=mode), params, (x,))
        return conv(fpad(x, [t, bo, l, r]), w, b, s, 0, d, g)
    # Transposed.
    if mode != "zeros" or isinstance(pad, str):
        # Let PyTorch itself reject what ConvTranspose does not have (border modes fail in the
        # constructor, padding rules in the forward call).
        m = make_module(pad if isinstance(pad, str) else 0, padding_mode=mode)
        return functional_call(m, params, (x,))
    t, bo, l, r = pad["explicit"]
    op = ax(c["output_padding"])
    if c["output_size"] is not None:
        assert t == bo and l == r
        m = make_module(l if one else (t, l))
        osz = [c["output_size"][1]] if one else list(c["output_size"])
        return functional_call(m, params, (x,), {"output_size": osz})
    if t == bo and l == r:
        return convt(x, w, b, s, l if one else (t, l), op, g, d)
    # Per-side crop: full output with padding 0, zero-extended by output_padding, then cropped.
    full = convt(x, w, None, s, 0, 0, g, d)
    ops = [0, op] if one else list(op)
    full = F.pad(full, (0, ops[1]) if one else (0, ops[1], 0, ops[0]))
    if one:
        y = full[:, :, l:full.shape[2] - r]
    else:
        y = full[:, :, t:full.shape[2] - bo, l:full.shape[3] - r]
    if b is not None:
        y = y + b.view(1, -1, *([1] * (y.dim() - 2)))
    return y


def run_case(c, rng):
    """Draws the case's f32 tensors and returns every stored tensor as a float32 array."""
    def draw(shape):
        return rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)

    x32 = draw(c["input_shape"])
    w32 = draw(weight_shape(c))
    b32 = draw([c["out_channels"]]) if c["bias"] else None
    x = torch.tensor(x32, dtype=torch.float64, requires_grad=True)
    w = torch.tensor(w32, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(b32, dtype=torch.float64, requires_grad=True) if b32 is not None else None
    y = torch_forward(c, x, w, b)
    if y.numel() == 0:
        raise RuntimeError("empty output")
    dy32 = draw(list(y.shape))
    (y * torch.tensor(dy32, dtype=torch.float64)).sum().backward()
    out = {"x": x32, "w": w32, "y": y.detach().numpy().astype(np.float32), "dy": dy32,
           "dx": x.grad.numpy().astype(np.float32), "dw": w.grad.numpy().astype(np.float32)}
    if b is not None:
        out["b"] = b32
        out["db"] = b.grad.numpy().astype(np.float32)
    return out


# ----------------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default=DEFAULT_OUT,
                    help="directory for golden.safetensors and golden.json "
                         "(default: crates/convkit/tests/data)")
    ap.add_argument("--seed", type=int, default=20161123, help="RNG seed (default 20161123)")
    ap.add_argument("--random-cases", type=int, default=200,
                    help="random combinations added to the structured cases (default 200)")
    args = ap.parse_args(argv)

    warnings.filterwarnings("ignore", message=".*padding='same'.*")
    torch.set_num_threads(1)  # deterministic float64 reductions
    rng = random.Random(args.seed)
    random_rejects = []
    cases = structured_cases() + random_cases(rng, args.random_cases, random_rejects, 60)
    rejects = []
    for c in rejected_cases():
        try:
            run_case(c, np.random.default_rng(0))
        except TORCH_ERRORS as e:
            rejects.append((c, e))
            continue
        raise SystemExit(f"PyTorch accepts the layer {describe(c)} listed as rejected")
    rejects += random_rejects
    reject_meta = []
    for i, (c, e) in enumerate(rejects):
        entry = {"key": f"r{i:04d}", "name": f"r{i:04d}_{describe(c)}",
                 "error": str(e).strip().splitlines()[0][:200]}
        entry.update({k: v for k, v in c.items() if k != "tag"})
        reject_meta.append(entry)
    tensors = {}
    meta = []
    for i, c in enumerate(cases):
        key = f"c{i:04d}"
        # Each case gets its own value stream so that editing one case leaves the others alone.
        try:
            vals = run_case(c, np.random.default_rng([args.seed, i]))
        except TORCH_ERRORS as e:
            raise SystemExit(f"case {i} ({describe(c)}) is invalid in PyTorch: {e}")
        for name, arr in vals.items():
            tensors[f"{key}.{name}"] = np.ascontiguousarray(arr)
        entry = {"key": key, "name": f"{key}_{describe(c)}"}
        entry.update({k: v for k, v in c.items() if k != "tag"})
        meta.append(entry)

    os.makedirs(args.out_dir, exist_ok=True)
    st_path = os.path.join(args.out_dir, "golden.safetensors")
    js_path = os.path.join(args.out_dir, "golden.json")
    # One metadata entry only: safetensors writes a map, whose order is not stable across runs.
    save_file(tensors, st_path,
              metadata={"generator": f"scripts/gen_golden.py --seed {args.seed}"})
    with open(js_path, "w") as f:
        json.dump({"seed": args.seed, "torch_version": torch.__version__.split("+")[0],
                   "cases": meta, "rejects": reject_meta}, f, indent=1)
        f.write("\n")
    total = os.path.getsize(st_path) + os.path.getsize(js_path)
    print(f"{len(meta)} cases, {len(tensors)} tensors, {len(reject_meta)} rejected layers, "
          f"{total / 2**20:.2f} MiB -> {args.out_dir}")
    if total >= 5 * 2**20:
        print("error: golden data exceeds 5 MiB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
