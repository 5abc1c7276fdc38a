//! Column tails with the channels on the vector lanes.
//!
//! The GEMM microkernels ([`super::gemm`]) run along output pixels: a tile is `MR` channels ×
//! `NR` pixels, the pixels on the lanes. A layer whose pixel count is not a multiple of 8
//! leaves a few columns over (196 = 4·48 + 4 on a 14×14 map, 49 = 48 + 1 on 7×7), which the
//! 8-wide ymm kernel covers at half the FMA rate of a zmm on cores with full-width AVX-512
//! (107 against 246 GFLOP/s on Zen 5), with most lanes idle: 4 live columns of 8 made the
//! tail 8 % of a 1×1 stride-2 512 → 1024 layer on a 14×14 output.
//!
//! Here the roles turn: 16 output channels (two packed 8-row A panels, side by side in one
//! zmm) on the lanes, one broadcast per column, so every FMA does 16 useful products whatever
//! the column count. Each element is still `bias + Σₖ a·b` summed over `k` in order by FMAs
//! (and added to C last when accumulating), exactly as the panel kernels do it, so a tail run
//! here is bit-identical to the same columns run there.

use super::gemm::{Microkernel, RowOffsets};
use super::Isa;

/// Most columns one call covers.
pub const MAX_COLS: usize = 8;

/// Most A panels (of 8 rows) one call covers: four zmm of 16 channels for up to 4 columns
/// (16 accumulators), two zmm for more.
pub const MAX_PANELS: usize = 8;

/// Whether `ukr`'s family has the column-tail kernel (AVX-512, 8-row panels).
pub fn available(ukr: &Microkernel) -> bool {
    ukr.isa == Isa::Avx512 && ukr.mr == 8 && Isa::Avx512.available()
}

/// `C[rows × cols] (+)= bias + A·B` for `cols ≤ 8` columns and the first `rows` channels of
/// `npanels ≤ 8` consecutive packed A panels: panel `p`'s depth-`k` group of 8 weights at
/// `a[p·apan + 8k..]`, B row `k` at `b[offs[k0 + k]..]` (its first `cols` values), C row `r`
/// at `c + r·ldc`. Rows past `rows` are computed but never stored.
///
/// # Safety
/// `c` must be valid for reads and writes of `rows` rows of `cols` values at stride `ldc`, and
/// no other thread may access them during the call; `ukr` must pass [`available`].
///
/// # Panics
/// If the sizes are out of range or `a`, `b`, the offsets or `bias` are too short.
#[allow(clippy::too_many_arguments)]
pub unsafe fn run(
    kc: usize,
    a: &[f32],
    apan: usize,
    npanels: usize,
    b: &[f32],
    offs: &RowOffsets,
    k0: usize,
    cols: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    accumulate: bool,
    bias: Option<&[f32]>,
) {
    assert!((1..=MAX_PANELS).contains(&npanels), "1 to 8 panels");
    assert!((1..=MAX_COLS).contains(&cols), "1 to 8 columns");
    assert!(rows <= 8 * npanels && ldc >= cols, "C rows out of range");
    assert!(
        a.len() >= (npanels - 1) * apan + kc * 8,
        "A panels too short"
    );
    assert!(k0 + kc <= offs.len(), "offset table too short");
    assert!(
        kc == 0 || b.len() >= offs.max() + cols,
        "B rows out of bounds"
    );
    assert!(bias.is_none_or(|v| v.len() >= rows), "bias too short");
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: AVX-512F was detected (`available`); the operands are bounded by the asserts
        // above, `c` by the caller's contract.
        unsafe {
            x86::run(
                kc,
                a.as_ptr(),
                apan,
                npanels,
                b.as_ptr(),
                offs.as_ptr().add(k0),
                cols,
                c,
                ldc,
                rows,
                accumulate,
                bias.map_or(std::ptr::null(), |v| v.as_ptr()),
            )
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (c, accumulate);
        unreachable!("`available` is false off x86-64");
    }
}

/// [`run`] over any number of consecutive A panels (`npanels`, in groups of
/// [`MAX_PANELS`]), writing all their rows into `c`, a task's own C buffer whose row `r` starts
/// at `c[r·ldc]`: `C[8·npanels × cols] (+)= A·B`, no bias. The safe form the tiled engines
/// call for a tile's last ≤ 8 columns.
///
/// # Panics
/// If `c` is shorter than its rows, or as [`run`].
#[allow(clippy::too_many_arguments)]
pub fn run_panels(
    kc: usize,
    a: &[f32],
    apan: usize,
    npanels: usize,
    b: &[f32],
    offs: &RowOffsets,
    k0: usize,
    cols: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    assert!(
        npanels == 0 || c.len() > (8 * npanels - 1) * ldc + cols - 1,
        "C tile too short"
    );
    for p in (0..npanels).step_by(MAX_PANELS) {
        let np = MAX_PANELS.min(npanels - p);
        let cp = &mut c[8 * p * ldc..];
        // SAFETY: `cp` is exclusively borrowed and holds the `np·8` rows of `cols` at stride
        // `ldc` that this group writes (asserted above for all the rows).
        unsafe {
            run(
                kc,
                &a[p * apan..],
                apan,
                np,
                b,
                offs,
                k0,
                cols,
                cp.as_mut_ptr(),
                ldc,
                np * 8,
                accumulate,
                None,
            )
        };
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// The raw kernel: `(kc, a, apan, npanels, b, offs, c, ldc, rows, accumulate, bias)`.
    type Raw = unsafe fn(
        usize,
        *const f32,
        usize,
        usize,
        *const f32,
        *const usize,
        *mut f32,
        usize,
        usize,
        bool,
        *const f32,
    );

    /// Dispatches to the kernel for `npanels` (one, two or four zmm) and `cols`: up to 4
    /// columns run 5 to 8 panels as four zmm (16 accumulators; with 8, a 4-column tail of a
    /// 1×1/2 512 → 1024 layer ran at 1/3 of the panel kernels' rate, each of its steps 8 FMAs
    /// against 9 loads), more columns as two calls of two zmm.
    ///
    /// # Safety
    /// As [`super::run`], whose asserts bound every operand.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn run(
        kc: usize,
        a: *const f32,
        apan: usize,
        npanels: usize,
        b: *const f32,
        offs: *const usize,
        cols: usize,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        accumulate: bool,
        bias: *const f32,
    ) {
        if npanels > 4 && cols > 4 {
            // SAFETY: the first four panels' rows, then the rest: each within the contract.
            unsafe {
                run(
                    kc,
                    a,
                    apan,
                    4,
                    b,
                    offs,
                    cols,
                    c,
                    ldc,
                    rows.min(32),
                    accumulate,
                    bias,
                );
                if rows > 32 {
                    let bias = if bias.is_null() { bias } else { bias.add(32) };
                    run(
                        kc,
                        a.add(4 * apan),
                        apan,
                        npanels - 4,
                        b,
                        offs,
                        cols,
                        c.add(32 * ldc),
                        ldc,
                        rows - 32,
                        accumulate,
                        bias,
                    );
                }
            }
            return;
        }
        let f = match npanels {
            ..=2 => table::<1>()[cols - 1],
            3..=4 => table::<2>()[cols - 1],
            _ => FOUR[cols - 1],
        };
        // SAFETY: the contract is the caller's.
        unsafe {
            f(
                kc, a, apan, npanels, b, offs, c, ldc, rows, accumulate, bias,
            )
        }
    }

    /// The kernels of four zmm for 1 to 4 columns.
    const FOUR: [Raw; 4] = [
        kernel::<4, 1>,
        kernel::<4, 2>,
        kernel::<4, 3>,
        kernel::<4, 4>,
    ];

    /// The kernels of `G` zmm for 1 to 8 columns.
    const fn table<const G: usize>() -> [Raw; 8] {
        [
            kernel::<G, 1>,
            kernel::<G, 2>,
            kernel::<G, 3>,
            kernel::<G, 4>,
            kernel::<G, 5>,
            kernel::<G, 6>,
            kernel::<G, 7>,
            kernel::<G, 8>,
        ]
    }

    /// `G` zmm of 16 channels × `NT` columns: `G·NT` accumulators (≤ 16), each zmm filled
    /// from two panels' 8-wide groups (a missing second panel repeats the first: its lanes
    /// are never stored).
    ///
    /// # Safety
    /// AVX-512F available; `a` valid for `kc·8` reads at each of `npanels ≤ 2G` panels `apan`
    /// apart, `b` for `NT` reads at each of `offs[..kc]`, `bias` (if not null) for `rows`
    /// reads, `c` for `rows ≤ 8·npanels` rows of `NT` at stride `ldc`.
    #[target_feature(enable = "avx2,fma,avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn kernel<const G: usize, const NT: usize>(
        kc: usize,
        a: *const f32,
        apan: usize,
        npanels: usize,
        b: *const f32,
        offs: *const usize,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        accumulate: bool,
        bias: *const f32,
    ) {
        // SAFETY: every pointer offset below stays within the contract's bounds.
        unsafe {
            let panel = |p: usize| a.add(p.min(npanels - 1) * apan);
            let lo: [*const f32; G] = std::array::from_fn(|g| panel(2 * g));
            let hi: [*const f32; G] = std::array::from_fn(|g| panel(2 * g + 1));
            let mut acc: [[__m512; NT]; G] = std::array::from_fn(|g| {
                let live = rows.saturating_sub(16 * g).min(16);
                let v = if bias.is_null() || live == 0 {
                    _mm512_setzero_ps()
                } else {
                    let m = ((1u32 << live) - 1) as __mmask16;
                    _mm512_maskz_loadu_ps(m, bias.add(16 * g))
                };
                [v; NT]
            });
            for k in 0..kc {
                let bp = b.add(*offs.add(k));
                let av: [__m512; G] = std::array::from_fn(|g| {
                    let l = _mm512_castps256_ps512(_mm256_loadu_ps(lo[g].add(8 * k)));
                    let h = _mm256_castps_pd(_mm256_loadu_ps(hi[g].add(8 * k)));
                    _mm512_castpd_ps(_mm512_insertf64x4::<1>(_mm512_castps_pd(l), h))
                });
                let bv: [__m512; NT] = std::array::from_fn(|j| _mm512_set1_ps(*bp.add(j)));
                for (row, &a) in acc.iter_mut().zip(&av) {
                    for (x, &bj) in row.iter_mut().zip(&bv) {
                        *x = _mm512_fmadd_ps(a, bj, *x);
                    }
                }
            }
            for (g, cols) in acc.iter().enumerate() {
                let live = rows.saturating_sub(16 * g).min(16);
                for (j, &v) in cols.iter().enumerate() {
                    let mut lanes = [0f32; 16];
                    _mm512_storeu_ps(lanes.as_mut_ptr(), v);
                    for (l, &x) in lanes[..live].iter().enumerate() {
                        let p = c.add((16 * g + l) * ldc + j);
                        *p = if accumulate { *p + x } else { x };
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::pseudo;

    /// Every column count, panel count and row count, with and without bias and
    /// accumulation, bit for bit against the panel kernels of the family on the same columns.
    #[test]
    fn tails_match_the_panel_kernels_bit_for_bit() {
        let Some(wide) = Microkernel::for_isa(Isa::Avx512) else {
            return;
        };
        assert!(available(&wide));
        let narrow = wide.narrowed(8);
        let kc = 45;
        let apan = kc * 8 + 5;
        let a = pseudo(MAX_PANELS * apan, 1);
        let ldb = 13;
        let b = pseudo(kc * ldb + 16, 2);
        // Rows in a scrambled order, as the direct convolution's taps are.
        let offs = RowOffsets::new((0..kc).map(|k| (k * 7) % kc * ldb).collect());
        let bias = pseudo(8 * MAX_PANELS, 3);
        let ldc = 11;
        let c0 = pseudo(8 * MAX_PANELS * ldc, 4);
        for np in 1..=MAX_PANELS {
            for cols in 1..=MAX_COLS {
                for rows in [8 * np, 8 * np - 3] {
                    for (acc, with_bias) in [(false, false), (true, false), (false, true)] {
                        let bias = with_bias.then_some(&bias[..]);
                        let mut want = c0.clone();
                        for p in 0..np {
                            let mut tile = vec![0f32; 8 * 8];
                            let bp = bias.map(|v| &v[8 * p..8 * p + 8]);
                            let ap = &a[p * apan..];
                            // SAFETY: `tile` holds 8 rows of 8, not shared.
                            unsafe {
                                narrow.run_raw(
                                    kc,
                                    ap,
                                    &b,
                                    &offs,
                                    0,
                                    tile.as_mut_ptr(),
                                    8,
                                    false,
                                    bp,
                                )
                            };
                            for r in 0..8 {
                                for j in 0..cols {
                                    let w = &mut want[(8 * p + r) * ldc + j];
                                    *w = if acc {
                                        *w + tile[r * 8 + j]
                                    } else {
                                        tile[r * 8 + j]
                                    };
                                }
                            }
                        }
                        let mut got = c0.clone();
                        // SAFETY: `got` holds 8·MAX_PANELS rows of `ldc`, not shared.
                        unsafe {
                            run(
                                kc,
                                &a,
                                apan,
                                np,
                                &b,
                                &offs,
                                0,
                                cols,
                                got.as_mut_ptr(),
                                ldc,
                                rows,
                                acc,
                                bias,
                            )
                        };
                        for r in 0..8 * MAX_PANELS {
                            for j in 0..ldc {
                                let (g, w0) = (got[r * ldc + j], c0[r * ldc + j]);
                                let w = if r < rows && j < cols {
                                    want[r * ldc + j]
                                } else {
                                    w0
                                };
                                assert_eq!(
                                    g.to_bits(),
                                    w.to_bits(),
                                    "{np} panels, {cols} cols, {rows} rows, acc {acc}, \
                                     bias {with_bias}: [{r}][{j}] {g} vs {w}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
