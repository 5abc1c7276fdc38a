#!/usr/bin/env python3
"""Runs the `convkit` CLI on random convolutions and compares it with PyTorch.

For each case: random float32 input, weight, bias and grad-output go to .npy files; the CLI
computes the forward output and the three gradients; PyTorch computes the same in float64
(autograd) from the same float32 values. Prints the worst absolute error and the worst error
relative to the largest reference magnitude, per command and per output.

Usage: python3 scripts/check_cli_vs_torch.py [--cases 40] [--seed 0] [--bin target/release/convkit]
"""

import argparse
import os
import random
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}


def out_len(i, k, s, d, pb, pa):
    return (i + pb + pa - d * (k - 1) - 1) // s + 1


def tf_same(i, k, s, d):
    o = -(-i // s)
    total = max((o - 1) * s + d * (k - 1) + 1 - i, 0)
    return total // 2, total - total // 2


def flag(v):
    return ",".join(str(x) for x in v)


def random_case(rng, cmd):
    """A valid random layer: (flags, torch forward fn, x shape, w shape, has bias)."""
    two = cmd.endswith("2d")
    transposed = "transpose" in cmd
    nax = 2 if two else 1
    while True:
        g = rng.choice([1, 1, 2, 3])
        c = g * rng.randint(1, 3)
        k = g * rng.randint(1, 3)
        n = rng.randint(1, 2)
        size = [rng.randint(1, 9) for _ in range(nax)]
        ker = [rng.randint(1, 4) for _ in range(nax)]
        st = [rng.randint(1, 3) for _ in range(nax)]
        dil = [rng.choice([1, 1, 2]) for _ in range(nax)]
        bias = rng.random() < 0.7
        flags = ["--stride", flag(st), "--dilation", flag(dil), "--groups", str(g)]
        if transposed:
            pad = [rng.randint(0, 2) for _ in range(nax)]
            op = [rng.randint(0, max(s_, d_) - 1) for s_, d_ in zip(st, dil)]
            outs = [(i - 1) * s_ - 2 * p + d_ * (kk - 1) + o + 1
                    for i, s_, p, d_, kk, o in zip(size, st, pad, dil, ker, op)]
            if min(outs) <= 0:
                continue
            flags += ["--padding", flag(pad)]
            # PyTorch's output_size reaches only min..min + stride - 1 (its _output_padding).
            if rng.random() < 0.3 and all(o < s_ for o, s_ in zip(op, st)):
                flags += ["--output-size", flag(outs)]
            else:
                flags += ["--output-padding", flag(op)]
            wshape = [c, k // g] + ker
            conv = F.conv_transpose2d if two else F.conv_transpose1d

            def fwd(x, w, b, st=st, pad=pad, op=op, dil=dil, g=g, conv=conv):
                return conv(x, w, b, stride=st, padding=pad, output_padding=op, groups=g,
                            dilation=dil)
        else:
            mode = rng.choice(list(MODES))
            rule = rng.choice(["sides", "sides", "sym", "same", "same-tf", "valid"])
            if rule == "same" and st != [1] * nax:
                rule = "sym"
            if rule == "sides":
                sides = [rng.randint(0, 2) for _ in range(2 * nax)]
            elif rule == "sym":
                sides = [p for p in (rng.randint(0, 2) for _ in range(nax)) for _ in (0, 1)]
            elif rule == "valid":
                sides = [0] * (2 * nax)
            elif rule == "same":
                sides = []
                for kk, d_ in zip(ker, dil):
                    t = d_ * (kk - 1)
                    sides += [t // 2, t - t // 2]
            else:
                sides = []
                for i, kk, s_, d_ in zip(size, ker, st, dil):
                    sides += list(tf_same(i, kk, s_, d_))
            pairs = [sides[2 * a: 2 * a + 2] for a in range(nax)]
            if mode == "reflect" and any(max(p) >= i for p, i in zip(pairs, size)):
                continue
            if mode == "circular" and any(max(p) > i for p, i in zip(pairs, size)):
                continue
            if any(out_len(i, kk, s_, d_, *p) <= 0 or i + sum(p) < d_ * (kk - 1) + 1
                   for i, kk, s_, d_, p in zip(size, ker, st, dil, pairs)):
                continue
            if rule in ("same", "same-tf", "valid"):
                flags += ["--padding", rule]
            elif rule == "sym":
                flags += ["--padding", flag([p[0] for p in pairs])]
            elif two:
                flags += ["--padding", flag(sides)]  # T,B,L,R
            else:
                flags += ["--padding", flag(sides)]  # L,R
            flags += ["--padding-mode", mode]
            wshape = [k, c // g] + ker
            conv = F.conv2d if two else F.conv1d
            # F.pad takes the last axis first: (left, right, top, bottom).
            fpad = (sides[2:4] + sides[0:2]) if two else sides

            def fwd(x, w, b, fpad=fpad, mode=mode, st=st, dil=dil, g=g, conv=conv):
                xp = F.pad(x, fpad, mode=MODES[mode]) if any(fpad) else x
                return conv(xp, w, b, stride=st, padding=0, dilation=dil, groups=g)
        return flags, fwd, [n, c] + size, wshape, bias


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=40, help="random cases per command")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bin", default="target/release/convkit")
    args = ap.parse_args()
    if not os.path.exists(args.bin):
        subprocess.run(["cargo", "build", "--release", "-p", "convkit-cli"], check=True)
    rng = random.Random(args.seed)
    nrng = np.random.default_rng(args.seed)
    worst = {}
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        p = lambda name: os.path.join(tmp, name)
        for cmd in ["conv2d", "conv-transpose2d", "conv1d", "conv-transpose1d"]:
            for case in range(args.cases):
                flags, fwd, xs, ws, has_b = random_case(rng, cmd)
                x = nrng.standard_normal(xs).astype(np.float32)
                w = nrng.standard_normal(ws).astype(np.float32)
                b = nrng.standard_normal(
                    ws[0] if "transpose" not in cmd else ws[1] * int(flags[flags.index("--groups") + 1])
                ).astype(np.float32)
                xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
                wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
                bt = torch.tensor(b, dtype=torch.float64, requires_grad=True) if has_b else None
                y = fwd(xt, wt, bt)
                dy = nrng.standard_normal(tuple(y.shape)).astype(np.float32)
                y.backward(torch.tensor(dy, dtype=torch.float64))
                gb = y.new_tensor(dy).sum(dim=[0] + list(range(2, y.dim())))
                ref = {"y": y.detach().numpy(), "dx": xt.grad.numpy(), "dw": wt.grad.numpy(),
                       "db": gb.numpy()}
                np.save(p("x.npy"), x)
                np.save(p("w.npy"), w)
                np.save(p("b.npy"), b)
                np.save(p("dy.npy"), dy)
                argv = [args.bin, cmd, "--input", p("x.npy"), "--weight", p("w.npy")] + flags
                if has_b:
                    argv += ["--bias", p("b.npy")]
                argv += ["--output", p("y.npy"), "--grad-output", p("dy.npy"),
                         "--grad-input", p("dx.npy"), "--grad-weight", p("dw.npy"),
                         "--grad-bias", p("db.npy")]
                r = subprocess.run(argv, capture_output=True, text=True)
                if r.returncode != 0:
                    failures += 1
                    print(f"FAIL {cmd} {' '.join(flags)} x{xs} w{ws}: {r.stderr.strip()}")
                    continue
                for key, want in ref.items():
                    got = np.load(p(f"{key}.npy"))
                    if got.shape != want.shape:
                        failures += 1
                        print(f"SHAPE {cmd} {key} {' '.join(flags)}: {got.shape} vs {want.shape}")
                        continue
                    err = float(np.max(np.abs(got - want))) if want.size else 0.0
                    scale = float(np.max(np.abs(want))) if want.size else 0.0
                    rel = err / scale if scale > 0 else err
                    a, r_ = worst.get((cmd, key), (0.0, 0.0))
                    worst[(cmd, key)] = (max(a, err), max(r_, rel))
                    if rel > 1e-5:
                        failures += 1
                        print(f"MISMATCH {cmd} {key} {' '.join(flags)}: abs {err:.2e} rel {rel:.2e}")
    print(f"{'command':<18} {'output':<6} {'max abs err':>12} {'max rel err':>12}")
    for (cmd, key), (a, r_) in worst.items():
        print(f"{cmd:<18} {key:<6} {a:>12.3e} {r_:>12.3e}")
    n = 4 * args.cases
    print(f"{n} cases, {failures} failures (tolerance: error <= 1e-5 x max |reference|)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
