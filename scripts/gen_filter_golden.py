#!/usr/bin/env python3
"""Golden data for convkit's image filters, computed by OpenCV.

Writes crates/convkit/tests/data/filter/golden.json: a list of small images and, for each, cases
{op, spec or kernel, border, output dtype, expected output}. The Rust test
crates/convkit/tests/filter_golden.rs replays every case through convkit::filter.

Covers every border mode (BORDER_CONSTANT with 0 and with a value, REFLECT_101, REFLECT,
REPLICATE, WRAP), odd and even image sizes, gray / RGB / float images, kernels larger than the
image, even-sized kernels (anchor at size/2), u8 outputs (saturate_cast: round half to even,
clamp) and float32 outputs, for cv2.filter2D, sepFilter2D, Sobel, Scharr, GaussianBlur,
boxFilter and Laplacian.

Modes OpenCV's filters refuse (BORDER_WRAP) and constant values other than 0 are produced by
padding with cv2.copyMakeBorder first and filtering the padded image, which is the definition.

Usage: python3 scripts/gen_filter_golden.py   (needs opencv-python-headless, numpy)
"""
import json
import os

import cv2
import numpy as np

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "convkit", "tests", "data", "filter")

BORDERS = {
    "zeros": (cv2.BORDER_CONSTANT, 0.0),
    "constant:5": (cv2.BORDER_CONSTANT, 5.0),
    "reflect-101": (cv2.BORDER_REFLECT_101, 0.0),
    "reflect": (cv2.BORDER_REFLECT, 0.0),
    "replicate": (cv2.BORDER_REPLICATE, 0.0),
    "circular": (cv2.BORDER_WRAP, 0.0),
}


def via_padding(fn, img, kh, kw, border, value):
    """fn(img, borderType) on img padded by copyMakeBorder, cropped back: the definition."""
    top, left = kh // 2, kw // 2
    bottom, right = kh - 1 - top, kw - 1 - left
    padded = cv2.copyMakeBorder(img, top, bottom, left, right, border, value=[value] * 4)
    out = fn(padded, cv2.BORDER_CONSTANT)
    return out[top:top + img.shape[0], left:left + img.shape[1]]


def apply(fn, img, kh, kw, border_name):
    border, value = BORDERS[border_name]
    if border == cv2.BORDER_WRAP or value != 0.0:
        return via_padding(fn, img, kh, kw, border, value)
    return fn(img, border)


def main():
    rng = np.random.default_rng(20260601)
    images = {
        "gray 7x9": rng.integers(0, 256, (7, 9), dtype=np.uint8),
        "gray 8x10": rng.integers(0, 256, (8, 10), dtype=np.uint8),
        "gray 4x5": rng.integers(0, 256, (4, 5), dtype=np.uint8),
        "rgb 6x7": rng.integers(0, 256, (6, 7, 3), dtype=np.uint8),
        "float 9x8": (rng.standard_normal((9, 8)) * 50).astype(np.float32),
    }
    k3 = rng.uniform(-1, 1, (3, 3)).astype(np.float32)
    k45 = rng.uniform(-1, 1, (4, 5)).astype(np.float32)
    k77 = rng.uniform(-1, 1, (7, 7)).astype(np.float32) / 8
    kx5 = rng.uniform(-1, 1, 5).astype(np.float32)
    ky3 = rng.uniform(-1, 1, 3).astype(np.float32)
    half = np.array([[0.5, 0.5]], np.float32)  # exact .5 results: tests round-half-to-even
    quarter = np.full((2, 2), 0.25, np.float32)

    def f2d(k, ddepth):
        return lambda im, b: cv2.filter2D(im, ddepth, k, borderType=b)

    doc = {"generator": "scripts/gen_filter_golden.py", "opencv": cv2.__version__, "images": []}
    for name, img in images.items():
        is_u8 = img.dtype == np.uint8
        same = -1
        cases = []

        def add(op, out, border, spec=None, kernel=None, tol=0.0, dtype=None):
            case = {"op": op, "border": border, "tol": tol,
                    "dtype": dtype or ("u8" if out.dtype == np.uint8 else "f32"),
                    "expected": out.astype(np.float64).ravel().tolist()}
            if spec is not None:
                case["spec"] = spec
            if kernel is not None:
                case["kernel"] = np.asarray(kernel, np.float64).tolist()
            cases.append(case)

        for border in BORDERS:
            for k in (k3, k45):
                add("filter2D f32", apply(f2d(k, cv2.CV_32F), img, *k.shape, border), border, kernel=k)
            if is_u8:
                add("filter2D u8", apply(f2d(k3, same), img, 3, 3, border), border, kernel=k3)
                for k in (half, quarter):
                    add("filter2D u8 halves", apply(f2d(k, same), img, *k.shape, border), border,
                        kernel=k)
            # Kernel larger than the small image.
            add("filter2D 7x7 f32", apply(f2d(k77, cv2.CV_32F), img, 7, 7, border), border,
                kernel=k77)
            sep = lambda im, b: cv2.sepFilter2D(im, cv2.CV_32F, kx5, ky3, borderType=b)
            add("sepFilter2D f32", apply(sep, img, 3, 5, border), border,
                kernel=np.outer(ky3, kx5))
            for spec, dx, dy in (("sobel-x", 1, 0), ("sobel-y", 0, 1)):
                fn = lambda im, b, dx=dx, dy=dy: cv2.Sobel(im, cv2.CV_32F, dx, dy, ksize=3, borderType=b)
                add("Sobel f32", apply(fn, img, 3, 3, border), border, spec=spec)
            if is_u8:
                fn = lambda im, b: cv2.Sobel(im, cv2.CV_8U, 1, 0, ksize=3, borderType=b)
                add("Sobel u8 (saturated)", apply(fn, img, 3, 3, border), border, spec="sobel-x")
            fn = lambda im, b: cv2.Scharr(im, cv2.CV_32F, 0, 1, borderType=b)
            add("Scharr f32", apply(fn, img, 3, 3, border), border, spec="scharr-y")
            fn = lambda im, b: cv2.Laplacian(im, cv2.CV_32F, ksize=1, borderType=b)
            add("Laplacian f32", apply(fn, img, 3, 3, border), border, spec="laplacian")
            # GaussianBlur keeps the depth; OpenCV's 8-bit path is fixed-point, so ±1.
            n = int(round(1.2 * (3 if is_u8 else 4) * 2 + 1)) | 1
            fn = lambda im, b: cv2.GaussianBlur(im, (0, 0), 1.2, borderType=b)
            add("GaussianBlur sigma", apply(fn, img, n, n, border), border,
                spec="gaussian:sigma=1.2", tol=1.0 if is_u8 else 0.0)
            fn = lambda im, b: cv2.GaussianBlur(im, (5, 5), 0, borderType=b)
            add("GaussianBlur 5x5", apply(fn, img, 5, 5, border), border,
                spec="gaussian:sigma=0,size=5", tol=1.0 if is_u8 else 0.0)
            fn = lambda im, b: cv2.boxFilter(im, cv2.CV_32F, (5, 3), borderType=b)
            add("boxFilter f32", apply(fn, img, 3, 5, border), border, spec="box:5,3")
            if is_u8:
                fn = lambda im, b: cv2.blur(im, (9, 9), borderType=b)
                add("blur 9x9 u8", apply(fn, img, 9, 9, border), border, spec="box:9", tol=0.0)
        doc["images"].append({
            "name": name,
            "shape": list(img.shape) + ([1] if img.ndim == 2 else []),
            "dtype": "u8" if img.dtype == np.uint8 else "f32",
            "data": img.astype(np.float64).ravel().tolist(),
            "cases": cases,
        })
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "golden.json")
    with open(path, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
    n = sum(len(i["cases"]) for i in doc["images"])
    print(f"wrote {path}: {n} cases, {os.path.getsize(path) / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
