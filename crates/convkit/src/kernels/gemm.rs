//! Register-blocked sgemm microkernels (BLIS/Goto style), one per ISA level.
//!
//! Every kernel computes one `MR × NR` tile of `C = A · B` over a depth `kc`:
//! * `A` is a packed micro-panel: `kc` groups of `MR` weights (`a[k·MR + r]`), made once at
//!   plan time by [`crate::kernels::pack`];
//! * `B` is `kc` rows of `NR` contiguous values, row `k` starting at `b + offs[k]` (indirect
//!   rows, after Dukhan's indirect convolution): a packed im2col panel (`offs[k] = k·NR`), the
//!   NCHW input itself for a 1×1 convolution (`offs[k] = k·H·W`), or a padded band of the
//!   input for the direct convolution (`offs[k]` = the tap's channel/row/column shift);
//! * `C` is `MR` rows of `NR` values at a row stride `ldc`, overwritten or accumulated into.
//!
//! Vectors run along `NR` (output pixels, contiguous in NCHW) and the `MR` weights are
//! broadcast, so each B load feeds `MR` FMAs. The AVX-512 kernel keeps 8 × 3 = 24 zmm
//! accumulators (Zen 4 needs ≥ 8 independent FMA chains: 4-cycle latency × 2 pipes; oneDNN and
//! XNNPACK keep 24–28), loading 3 B vectors and 8 broadcasts per 24 FMAs.

// The raw kernels share one C-like signature of eight scalars and pointers (`RawUkr`).
#![allow(clippy::too_many_arguments)]

use super::Isa;

/// Raw microkernel: `(kc, a, b, offs, c, ldc, accumulate, bias)`: `C (+)= bias + A·B`, the
/// `MR` bias values (one per row) at `bias`, or none if it is null.
type RawUkr =
    unsafe fn(usize, *const f32, *const f32, *const usize, *mut f32, usize, bool, *const f32);

/// A table of B row offsets with its maximum, computed once so that each microkernel call
/// checks its bounds in O(1).
#[derive(Debug, Clone, Default)]
pub struct RowOffsets {
    offs: Vec<usize>,
    max: usize,
}

impl RowOffsets {
    /// Wraps a table of offsets.
    pub fn new(offs: Vec<usize>) -> Self {
        let max = offs.iter().copied().max().unwrap_or(0);
        RowOffsets { offs, max }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.offs.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.offs.is_empty()
    }

    /// The largest offset.
    pub fn max(&self) -> usize {
        self.max
    }

    /// The table's first entry, for kernels that walk it (bounded by [`RowOffsets::len`]).
    pub(crate) fn as_ptr(&self) -> *const usize {
        self.offs.as_ptr()
    }
}

/// A microkernel with its register blocking.
#[derive(Clone, Copy)]
pub struct Microkernel {
    /// Rows of the tile (output channels), the packing width of `A`.
    pub mr: usize,
    /// Columns of the tile (output pixels), the packing width of `B`.
    pub nr: usize,
    /// The instruction set it needs.
    pub isa: Isa,
    f: RawUkr,
}

impl std::fmt::Debug for Microkernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Microkernel({} {}x{})", self.isa, self.mr, self.nr)
    }
}

impl Microkernel {
    const fn make(mr: usize, nr: usize, isa: Isa, f: RawUkr) -> Microkernel {
        Microkernel { mr, nr, isa, f }
    }

    /// The kernel for `isa`, or `None` if this CPU lacks it.
    pub fn for_isa(isa: Isa) -> Option<Microkernel> {
        if !isa.available() {
            return None;
        }
        Some(match isa {
            Isa::Scalar | Isa::Avx2 | Isa::Avx512 => *Self::widths(isa).last()?,
        })
    }

    /// The 8×32 AVX-512 kernel (for channel counts that are multiples of 32 but not of 48),
    /// or `None` if this CPU lacks AVX-512F.
    pub fn avx512_8x32() -> Option<Microkernel> {
        Self::family(Isa::Avx512).into_iter().find(|u| u.nr == 32)
    }

    /// Every width of `isa`'s kernel this CPU can run, narrowest first. The kernels of one
    /// family share `MR` and so one packing of A: any of them can run any panel of a plan
    /// packed for another, and each sums every element over the same depth in the same order,
    /// so they give bit-identical results.
    pub fn family(isa: Isa) -> Vec<Microkernel> {
        if isa.available() {
            Self::widths(isa).to_vec()
        } else {
            Vec::new()
        }
    }

    /// `isa`'s kernels, narrowest first, available or not (no allocation: `narrowed` runs per
    /// tile).
    fn widths(isa: Isa) -> &'static [Microkernel] {
        const SCALAR: [Microkernel; 1] = [Microkernel::make(
            SCALAR_MR,
            SCALAR_NR,
            Isa::Scalar,
            ukr_scalar,
        )];
        #[cfg(target_arch = "x86_64")]
        const AVX2: [Microkernel; 2] = [
            Microkernel::make(6, 8, Isa::Avx2, x86::ukr_avx2_6x8),
            Microkernel::make(6, 16, Isa::Avx2, x86::ukr_avx2_6x16),
        ];
        #[cfg(target_arch = "x86_64")]
        const AVX512: [Microkernel; 4] = [
            Microkernel::make(8, 8, Isa::Avx512, x86::ukr_avx512_8x8),
            Microkernel::make(8, 16, Isa::Avx512, x86::ukr_avx512_8x16),
            Microkernel::make(8, 32, Isa::Avx512, x86::ukr_avx512_8x32),
            Microkernel::make(8, 48, Isa::Avx512, x86::ukr_avx512_8x48),
        ];
        match isa {
            Isa::Scalar => &SCALAR,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => &AVX2,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => &AVX512,
            #[cfg(not(target_arch = "x86_64"))]
            _ => &[],
        }
    }

    /// Every kernel this CPU can run: one per ISA level plus the 8×32 AVX-512 variant.
    pub fn available() -> Vec<Microkernel> {
        let mut v: Vec<_> = Isa::available_levels()
            .into_iter()
            .filter_map(Microkernel::for_isa)
            .collect();
        v.extend(Microkernel::avx512_8x32());
        v
    }

    /// The narrowest kernel of this one's family at least `cols` wide (this one if none is
    /// narrower).
    pub fn narrowed(&self, cols: usize) -> Microkernel {
        if cols >= self.nr {
            return *self;
        }
        // `self` exists, so its ISA is available, and with it every width of its family.
        Self::widths(self.isa)
            .iter()
            .copied()
            .find(|u| u.mr == self.mr && u.nr >= cols && u.nr <= self.nr)
            .unwrap_or(*self)
    }

    /// The kernels that cover the first `cols` columns of one `NR`-wide panel, each with its
    /// column offset: the whole panel if `cols ≥ NR`, else the widest of the family that fit,
    /// then the narrowest that covers the rest, where that multiplies fewer columns than the
    /// one narrowest kernel covering them all (each call has its own start and store). 196
    /// output pixels in 32-wide tiles fill 6 panels and 4 columns of a seventh, which an
    /// 8-wide kernel covers (200 columns multiplied, not 224); 36 columns of a 48-wide panel
    /// run as 32 + 8 (40, not 48), but 44 on the one 48-wide kernel, not as 32 + 16.
    #[inline]
    pub fn parts(&self, cols: usize) -> Parts {
        if cols >= self.nr {
            return Parts {
                ukr: *self,
                at: 0,
                cols: self.nr,
                single: true,
            };
        }
        let mut greedy = Parts {
            ukr: *self,
            at: 0,
            cols,
            single: false,
        };
        let split: usize = greedy.by_ref().map(|(_, u)| u.nr).sum();
        Parts {
            single: split >= self.narrowed(cols).nr,
            ..greedy
        }
        .restart()
    }

    /// [`Microkernel::parts`] for callers whose operand and result buffers are padded to whole
    /// panels (so a kernel may run past `cols` up to the panel's end): one narrowest kernel
    /// covering `cols` wherever that costs no more than the split, by each kernel's speed per
    /// column ([`Microkernel::column_cost`]). On cores with full-width 512-bit FMAs that is
    /// always: there 32 + 8 columns cost more than 48, 16 + 8 more than 32, so Winograd's 49
    /// tiles of a 14×14 map run as 32 + 32, not 32 + 16 + 8 (whose 8-wide part, one live
    /// column, was 18 % of the layer): 0.81–0.83× the CPU time. Elsewhere the same as `parts`.
    #[inline]
    pub fn parts_padded(&self, cols: usize) -> Parts {
        let split = self.parts(cols);
        if cols >= self.nr || split.single {
            return split;
        }
        let split_cost: f64 = split.clone().map(|(_, u)| self.column_cost(u.nr)).sum();
        let single = self.column_cost(self.narrowed(cols).nr) <= split_cost;
        Parts { single, ..split }
    }

    /// What `nr` columns of this family's `nr`-wide kernel cost, in columns of the widest: on
    /// cores with full-width 512-bit FMAs ([`full_width_avx512`]) the 16-wide AVX-512 kernel
    /// runs at 207 and the 8-wide ymm one (one accumulator per row) at 107 GFLOP/s against the
    /// 32- and 48-wide ones' 243–246 (Zen 5, `ukr_bench`); elsewhere every width at one rate.
    fn column_cost(&self, nr: usize) -> f64 {
        let slow = if self.isa == Isa::Avx512 && full_width_avx512() {
            match nr {
                8 => 246.0 / 107.0,
                16 => 246.0 / 207.0,
                32 => 246.0 / 243.0,
                _ => 1.0,
            }
        } else {
            1.0
        };
        nr as f64 * slow
    }

    /// [`Microkernel::covered`] weighted by each part's speed ([`Microkernel::column_cost`]):
    /// 64 columns cost 67 as 48 + 16 but 65 as 32 + 32 on full-width AVX-512 cores. For
    /// choosing between kernel widths.
    pub fn weighted_cols(&self, cols: usize) -> f64 {
        let full = cols / self.nr * self.nr;
        (full / self.nr) as f64 * self.column_cost(self.nr)
            + self
                .parts(cols - full)
                .map(|(_, u)| self.column_cost(u.nr))
                .sum::<f64>()
    }

    /// [`Microkernel::weighted_cols`] for operand and result buffers padded to whole panels,
    /// whose last panel runs on [`Microkernel::parts_padded`]: 56 columns cost 66.4 as
    /// 48 + 8 on full-width AVX-512 cores, 112 cost 115.0 as 48 + 48 + 16.
    pub fn weighted_cols_padded(&self, cols: usize) -> f64 {
        let full = cols / self.nr * self.nr;
        let tail = if cols > full {
            self.parts_padded(cols - full)
                .map(|(_, u)| self.column_cost(u.nr))
                .sum::<f64>()
        } else {
            0.0
        };
        (full / self.nr) as f64 * self.column_cost(self.nr) + tail
    }

    /// The cheapest way to cover exactly `cols` columns with this family's kernels (up to this
    /// one's width), by each kernel's speed ([`Microkernel::column_cost`]), widest first as
    /// `(column offset, kernel)`; `None` if no sum of widths is `cols`. For tiles stored
    /// straight into the output, which must end at the row's last column: a 112-wide row runs
    /// as 48 + 32 + 32 (cost 112.8 columns of the widest) rather than 48 + 48 + 16 (115.0) on
    /// full-width AVX-512 cores. Made once per plan (it allocates).
    pub fn exact_split(&self, cols: usize) -> Option<Vec<(usize, Microkernel)>> {
        let widths: Vec<Microkernel> = Self::widths(self.isa)
            .iter()
            .copied()
            .filter(|u| u.mr == self.mr && u.nr <= self.nr)
            .collect();
        // best[c] = (cost, last kernel) of the cheapest exact cover of c columns.
        let mut best: Vec<Option<(f64, usize)>> = vec![None; cols + 1];
        best[0] = Some((0.0, usize::MAX));
        for c in 1..=cols {
            best[c] = widths
                .iter()
                .enumerate()
                .filter(|(_, u)| u.nr <= c)
                .filter_map(|(i, u)| best[c - u.nr].map(|(b, _)| (b + self.column_cost(u.nr), i)))
                .min_by(|x, y| x.0.total_cmp(&y.0));
        }
        best[cols]?;
        let mut used = Vec::new();
        let mut c = cols;
        while c > 0 {
            let (_, i) = best[c].expect("reachable");
            used.push(widths[i]);
            c -= widths[i].nr;
        }
        used.sort_by_key(|u| std::cmp::Reverse(u.nr));
        let mut at = 0;
        Some(
            used.into_iter()
                .map(|u| {
                    at += u.nr;
                    (at - u.nr, u)
                })
                .collect(),
        )
    }

    /// Columns the tiles of a `cols`-wide run multiply: full `NR`-wide panels, then the
    /// [`Microkernel::parts`] of the last.
    pub fn covered(&self, cols: usize) -> usize {
        let full = cols / self.nr * self.nr;
        full + self.parts(cols - full).map(|(_, u)| u.nr).sum::<usize>()
    }

    /// `C[MR×NR] (+)= A · B` over depth `kc`, B row `k` at `b[offs[k0 + k]..]` (see the
    /// module doc).
    ///
    /// Bounds are checked here in O(1) (`b` must hold `NR` values past the table's largest
    /// offset), so the kernels' pointer arithmetic stays inside the slices.
    ///
    /// # Panics
    /// If a slice is too short for `kc`, the offsets or `ldc`.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        kc: usize,
        a: &[f32],
        b: &[f32],
        offs: &RowOffsets,
        k0: usize,
        c: &mut [f32],
        ldc: usize,
        accumulate: bool,
    ) {
        let (mr, nr) = (self.mr, self.nr);
        assert!(
            ldc >= nr && c.len() >= (mr - 1) * ldc + nr,
            "C tile too short"
        );
        // SAFETY: `c` holds MR rows of NR at stride ldc (asserted) and is exclusively
        // borrowed; `run_raw` checks the other operands.
        unsafe { self.run_raw(kc, a, b, offs, k0, c.as_mut_ptr(), ldc, accumulate, None) }
    }

    /// [`Microkernel::run`] writing its tile straight into a buffer other threads write other
    /// parts of, `C (+)= bias + A · B` with one bias value per row (`bias[..MR]`): a kernel
    /// that stores its finished tile in the output saves a copy pass over it.
    ///
    /// # Safety
    /// `c` must be valid for reads and writes of `MR` rows of `NR` values at stride `ldc`, and
    /// no other thread may access those elements during the call.
    ///
    /// # Panics
    /// If `a`, `b`, the offsets or `bias` are too short.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn run_raw(
        &self,
        kc: usize,
        a: &[f32],
        b: &[f32],
        offs: &RowOffsets,
        k0: usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        bias: Option<&[f32]>,
    ) {
        assert!(a.len() >= kc * self.mr, "A panel too short");
        assert!(k0 + kc <= offs.len(), "offset table too short");
        assert!(
            kc == 0 || b.len() >= offs.max + self.nr,
            "B rows out of bounds"
        );
        assert!(bias.is_none_or(|v| v.len() >= self.mr), "bias too short");
        assert!(ldc >= self.nr, "C rows overlap");
        // SAFETY: `a`, `b`, the offsets and `bias` are bounded by the asserts above, `c` by
        // the caller's contract; the ISA was checked available when `self` was built.
        unsafe {
            (self.f)(
                kc,
                a.as_ptr(),
                b.as_ptr(),
                offs.offs.as_ptr().add(k0),
                c,
                ldc,
                accumulate,
                bias.map_or(std::ptr::null(), |v| v.as_ptr()),
            )
        }
    }
}

/// Whether this CPU runs 512-bit FMAs at twice its 256-bit rate (two full-width FMA pipes):
/// AMD from Zen 5 (family 1Ah) and Intel's AVX-512 cores, not Zen 4 (family 19h), which splits
/// each 512-bit FMA into two 256-bit halves (there the 8-wide ymm kernel keeps pace: 91 of
/// 116 GFLOP/s). Read once from CPUID; only the choice of tail kernels depends on it, never a
/// result (the kernels of a family are bit-identical column for column).
pub fn full_width_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static FULL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *FULL.get_or_init(|| {
            use std::arch::x86_64::__cpuid;
            // CPUID leaves 0 and 1 exist on every x86-64 CPU.
            #[allow(unused_unsafe)]
            // SAFETY: CPUID has no preconditions on x86-64.
            let (v, f) = unsafe { (__cpuid(0), __cpuid(1)) };
            let vendor = [v.ebx, v.edx, v.ecx].map(u32::to_le_bytes).concat();
            let base = (f.eax >> 8) & 0xf;
            let family = if base == 0xf {
                base + ((f.eax >> 20) & 0xff)
            } else {
                base
            };
            match &vendor[..] {
                b"AuthenticAMD" => family >= 0x1a,
                _ => true,
            }
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The kernels covering a partial panel, from [`Microkernel::parts`]: `(column offset, kernel)`.
#[derive(Debug, Clone)]
pub struct Parts {
    ukr: Microkernel,
    at: usize,
    cols: usize,
    /// One narrowed kernel for all the columns, not the greedy split.
    single: bool,
}

impl Parts {
    fn restart(self) -> Parts {
        Parts { at: 0, ..self }
    }
}

impl Iterator for Parts {
    type Item = (usize, Microkernel);

    #[inline]
    fn next(&mut self) -> Option<(usize, Microkernel)> {
        if self.at >= self.cols {
            return None;
        }
        let left = self.cols - self.at;
        let fits = Microkernel::widths(self.ukr.isa)
            .iter()
            .rev()
            .copied()
            .find(|u| u.mr == self.ukr.mr && u.nr <= left && u.nr <= self.ukr.nr);
        let u = match fits {
            Some(u) if !self.single => u,
            _ => self.ukr.narrowed(left),
        };
        let at = self.at;
        self.at += u.nr;
        Some((at, u))
    }
}

const SCALAR_MR: usize = 4;
const SCALAR_NR: usize = 16;

/// Portable kernel (4×16): plain arrays the compiler keeps in registers and vectorises with
/// the baseline ISA (SSE2 on x86-64, NEON on aarch64).
///
/// # Safety
/// `a` must be valid for `kc·4` reads, `b` for 16 reads at each of `offs[..kc]`, `c` for 4 rows
/// of 16 at stride `ldc` (checked by [`Microkernel::run`]).
unsafe fn ukr_scalar(
    kc: usize,
    a: *const f32,
    b: *const f32,
    offs: *const usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    bias: *const f32,
) {
    // SAFETY: `bias`, if not null, holds one value per row (the contract).
    let mut acc: [[f32; SCALAR_NR]; SCALAR_MR] = std::array::from_fn(|r| {
        [if bias.is_null() {
            0.0
        } else {
            unsafe { *bias.add(r) }
        }; SCALAR_NR]
    });
    for k in 0..kc {
        // SAFETY: within the bounds stated in the contract above.
        let (av, bv) = unsafe {
            (
                std::slice::from_raw_parts(a.add(k * SCALAR_MR), SCALAR_MR),
                std::slice::from_raw_parts(b.add(*offs.add(k)), SCALAR_NR),
            )
        };
        for r in 0..SCALAR_MR {
            for j in 0..SCALAR_NR {
                // Unfused multiply-add: `mul_add` without a hardware FMA in the baseline target
                // would be a libm call per element.
                acc[r][j] += av[r] * bv[j];
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        // SAFETY: row r of C lies within the bounds of the contract.
        let cr = unsafe { std::slice::from_raw_parts_mut(c.add(r * ldc), SCALAR_NR) };
        for j in 0..SCALAR_NR {
            cr[j] = if accumulate { cr[j] + row[j] } else { row[j] };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// AVX-512F 8×48 kernel: 24 zmm accumulators.
    ///
    /// # Safety
    /// AVX-512F available; `a` valid for `kc·8` reads, `b` for 48 reads at each of
    /// `offs[..kc]`, `c` for 8 rows of 48 at stride `ldc`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn ukr_avx512_8x48(
        kc: usize,
        a: *const f32,
        b: *const f32,
        offs: *const usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        bias: *const f32,
    ) {
        // SAFETY: the contracts are the same, with NV = 3.
        unsafe { ukr_avx512_8xnv::<3>(kc, a, b, offs, c, ldc, accumulate, bias) }
    }

    /// AVX-512F 8×32 kernel: 16 zmm accumulators (enough on cores that issue one 512-bit FMA
    /// per cycle at 4 cycles' latency), for widths that are multiples of 32 but not 48.
    ///
    /// # Safety
    /// AVX-512F available; `a` valid for `kc·8` reads, `b` for 32 reads at each of
    /// `offs[..kc]`, `c` for 8 rows of 32 at stride `ldc`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn ukr_avx512_8x32(
        kc: usize,
        a: *const f32,
        b: *const f32,
        offs: *const usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        bias: *const f32,
    ) {
        // SAFETY: the contracts are the same, with NV = 2.
        unsafe { ukr_avx512_8xnv::<2>(kc, a, b, offs, c, ldc, accumulate, bias) }
    }

    /// The AVX-512F 8 × 16·NV kernel body.
    ///
    /// # Safety
    /// AVX-512F available; `a` valid for `kc·8` reads, `b` for `16·NV` reads at each of
    /// `offs[..kc]`, `c` for 8 rows of `16·NV` at stride `ldc`.
    #[inline(always)]
    unsafe fn ukr_avx512_8xnv<const NV: usize>(
        kc: usize,
        a: *const f32,
        b: *const f32,
        offs: *const usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        bias: *const f32,
    ) {
        // SAFETY: every pointer offset below stays within the contract's bounds; the caller
        // runs with AVX-512F enabled.
        unsafe {
            let mut acc: [[__m512; NV]; 8] = std::array::from_fn(|r| {
                let b0 = if bias.is_null() { 0.0 } else { *bias.add(r) };
                [_mm512_set1_ps(b0); NV]
            });
            let mut ap = a;
            for k in 0..kc {
                let bp = b.add(*offs.add(k));
                let bv: [__m512; NV] = std::array::from_fn(|v| _mm512_loadu_ps(bp.add(16 * v)));
                for (r, row) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*ap.add(r));
                    for (x, &bb) in row.iter_mut().zip(&bv) {
                        *x = _mm512_fmadd_ps(av, bb, *x);
                    }
                }
                ap = ap.add(8);
            }
            for (r, row) in acc.iter().enumerate() {
                let cr = c.add(r * ldc);
                for (v, &x) in row.iter().enumerate() {
                    let p = cr.add(16 * v);
                    let out = if accumulate {
                        _mm512_add_ps(_mm512_loadu_ps(p), x)
                    } else {
                        x
                    };
                    _mm512_storeu_ps(p, out);
                }
            }
        }
    }

    /// AVX-512F 8×16 kernel: 8 zmm accumulators, for a tile's last 17–32 → 16 columns.
    ///
    /// # Safety
    /// AVX-512F available; `a` valid for `kc·8` reads, `b` for 16 reads at each of
    /// `offs[..kc]`, `c` for 8 rows of 16 at stride `ldc`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn ukr_avx512_8x16(
        kc: usize,
        a: *const f32,
        b: *const f32,
        offs: *const usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        bias: *const f32,
    ) {
        // SAFETY: the contracts are the same, with NV = 1.
        unsafe { ukr_avx512_8xnv::<1>(kc, a, b, offs, c, ldc, accumulate, bias) }
    }

    /// 8×8 kernel on the AVX-512 family's packing (MR = 8), 8 ymm accumulators, for a tile's
    /// last ≤ 8 columns. AVX-512VL lets each FMA take its broadcast from memory (`{1to8}`):
    /// 91 GFLOP/s on Zen 4 against 64 with separate `vbroadcastss` (`ukr_bench`); the 8×16
    /// zmm kernel runs at 112 but wastes half its lanes on ≤ 8 columns.
    ///
    /// # Safety
    /// AVX2, FMA, AVX-512F and VL available ([`Isa::Avx512`] checks all four); `a` valid for `kc·8` reads, `b`
    /// for 8 reads at each of `offs[..kc]`, `c` for 8 rows of 8 at stride `ldc`.
    #[target_feature(enable = "avx2,fma,avx512f,avx512vl")]
    pub(super) unsafe fn ukr_avx512_8x8(
        kc: usize,
        a: *const f32,
        b: *const f32,
        offs: *const usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        bias: *const f32,
    ) {
        // SAFETY: the contracts are the same, with MR = 8, NV = 1.
        unsafe { ukr_ymm::<8, 1>(kc, a, b, offs, c, ldc, accumulate, bias) }
    }

    /// AVX2+FMA 6×16 kernel: 12 ymm accumulators (16 registers in all).
    ///
    /// # Safety
    /// AVX2 and FMA available; `a` valid for `kc·6` reads, `b` for 16 reads at each of
    /// `offs[..kc]`, `c` for 6 rows of 16 at stride `ldc`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn ukr_avx2_6x16(
        kc: usize,
        a: *const f32,
        b: *const f32,
        offs: *const usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        bias: *const f32,
    ) {
        // SAFETY: the contracts are the same, with MR = 6, NV = 2.
        unsafe { ukr_ymm::<6, 2>(kc, a, b, offs, c, ldc, accumulate, bias) }
    }

    /// AVX2+FMA 6×8 kernel, for a tile's last ≤ 8 columns.
    ///
    /// # Safety
    /// AVX2 and FMA available; `a` valid for `kc·6` reads, `b` for 8 reads at each of
    /// `offs[..kc]`, `c` for 6 rows of 8 at stride `ldc`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn ukr_avx2_6x8(
        kc: usize,
        a: *const f32,
        b: *const f32,
        offs: *const usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        bias: *const f32,
    ) {
        // SAFETY: the contracts are the same, with MR = 6, NV = 1.
        unsafe { ukr_ymm::<6, 1>(kc, a, b, offs, c, ldc, accumulate, bias) }
    }

    /// The `MR × 8·NV` ymm kernel body.
    ///
    /// # Safety
    /// AVX2 and FMA available; `a` valid for `kc·MR` reads, `b` for `8·NV` reads at each of
    /// `offs[..kc]`, `c` for `MR` rows of `8·NV` at stride `ldc`.
    #[inline(always)]
    unsafe fn ukr_ymm<const MR: usize, const NV: usize>(
        kc: usize,
        a: *const f32,
        b: *const f32,
        offs: *const usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        bias: *const f32,
    ) {
        // SAFETY: every pointer offset below stays within the contract's bounds; the caller
        // runs with AVX2 and FMA enabled.
        unsafe {
            let mut acc: [[__m256; NV]; MR] = std::array::from_fn(|r| {
                let b0 = if bias.is_null() { 0.0 } else { *bias.add(r) };
                [_mm256_set1_ps(b0); NV]
            });
            let mut ap = a;
            for k in 0..kc {
                let bp = b.add(*offs.add(k));
                let bv: [__m256; NV] = std::array::from_fn(|v| _mm256_loadu_ps(bp.add(8 * v)));
                for (r, row) in acc.iter_mut().enumerate() {
                    let av = _mm256_broadcast_ss(&*ap.add(r));
                    for (x, &bb) in row.iter_mut().zip(&bv) {
                        *x = _mm256_fmadd_ps(av, bb, *x);
                    }
                }
                ap = ap.add(MR);
            }
            for (r, row) in acc.iter().enumerate() {
                let cr = c.add(r * ldc);
                for (v, &x) in row.iter().enumerate() {
                    let p = cr.add(8 * v);
                    let out = if accumulate {
                        _mm256_add_ps(_mm256_loadu_ps(p), x)
                    } else {
                        x
                    };
                    _mm256_storeu_ps(p, out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// Every kernel of every family this CPU runs.
    fn every_kernel() -> impl Iterator<Item = Microkernel> {
        Isa::available_levels()
            .into_iter()
            .flat_map(Microkernel::family)
    }

    /// Every available kernel against a plain f64 product, for both store modes and odd
    /// depths / strides.
    #[test]
    fn kernels_match_plain_product() {
        for u in every_kernel() {
            let isa = format!("{u:?}");
            for &kc in &[0usize, 1, 7, 64, 129] {
                for &(ldb, ldc) in &[(u.nr, u.nr), (u.nr + 5, u.nr + 3)] {
                    let a = data(kc * u.mr, 1);
                    let b = data(kc * ldb + u.nr, 2);
                    // Rows in a scrambled order, as the direct convolution's taps are.
                    let offs =
                        RowOffsets::new((0..kc).map(|k| ((k * 7) % kc.max(1)) * ldb).collect());
                    let c0 = data(u.mr * ldc, 3);
                    for acc in [false, true] {
                        let mut c = c0.clone();
                        u.run(kc, &a, &b, &offs, 0, &mut c, ldc, acc);
                        for r in 0..u.mr {
                            for j in 0..u.nr {
                                let mut want: f64 = if acc { c0[r * ldc + j] as f64 } else { 0.0 };
                                for k in 0..kc {
                                    want += a[k * u.mr + r] as f64 * b[offs.offs[k] + j] as f64;
                                }
                                let got = c[r * ldc + j] as f64;
                                assert!(
                                    (got - want).abs() <= 1e-5 * (kc as f64 + 1.0),
                                    "{isa} kc={kc} r={r} j={j}: {got} vs {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// A tile's narrowed kernel computes its columns bit for bit as the full-width kernel of
    /// its family does, so a plan's results do not depend on where its tiles end.
    #[test]
    fn narrowed_kernels_match_the_full_width_bit_for_bit() {
        for isa in Isa::available_levels() {
            let fam = Microkernel::family(isa);
            let wide = *fam.last().unwrap();
            let kc = 77;
            let a = data(kc * wide.mr, 4);
            let b = data(kc * wide.nr + wide.nr, 5);
            let offs = RowOffsets::new((0..kc).map(|k| k * wide.nr).collect());
            let mut want = vec![0.0; wide.mr * wide.nr];
            wide.run(kc, &a, &b, &offs, 0, &mut want, wide.nr, false);
            for cols in 1..=wide.nr {
                let mut got = vec![f32::NAN; wide.mr * wide.nr];
                let mut end = 0;
                for (at, u) in wide.parts(cols) {
                    assert!(u.mr == wide.mr && at == end, "{u:?} at {at} for {cols}");
                    u.run(kc, &a, &b[at..], &offs, 0, &mut got[at..], wide.nr, false);
                    end = at + u.nr;
                }
                assert!(
                    end >= cols && end <= wide.nr,
                    "{cols} columns covered to {end}"
                );
                for r in 0..wide.mr {
                    for j in 0..cols {
                        let (g, w) = (got[r * wide.nr + j], want[r * wide.nr + j]);
                        assert_eq!(g.to_bits(), w.to_bits(), "{cols} columns: r={r} j={j}");
                    }
                }
            }
        }
    }

    #[test]
    fn covered_counts_full_tiles_then_the_narrowed_tail() {
        if let Some(u) = Microkernel::avx512_8x32() {
            assert_eq!(u.covered(196), 200);
            assert_eq!(u.covered(64), 64);
            assert_eq!(u.covered(49), 56);
            assert_eq!(u.narrowed(17).nr, 32);
            assert_eq!(u.narrowed(9).nr, 16);
            let parts: Vec<_> = u.parts(20).map(|(at, k)| (at, k.nr)).collect();
            assert_eq!(parts, [(0, 16), (16, 8)]);
            let wide = Microkernel::for_isa(Isa::Avx512).unwrap();
            let parts: Vec<_> = wide.parts(36).map(|(at, k)| (at, k.nr)).collect();
            assert_eq!(parts, [(0, 32), (32, 8)]);
            assert_eq!(wide.parts(48).count(), 1);
            let parts: Vec<_> = wide.parts(44).map(|(at, k)| (at, k.nr)).collect();
            assert_eq!(parts, [(0, 48)]);
            let parts: Vec<_> = wide.parts(24).map(|(at, k)| (at, k.nr)).collect();
            assert_eq!(parts, [(0, 16), (16, 8)]);
        }
        let s = Microkernel::for_isa(Isa::Scalar).unwrap();
        assert_eq!(s.covered(17), 32);
    }

    /// `parts_padded` covers every column of a partial panel without leaving the panel: one
    /// narrowest kernel on full-width AVX-512 cores, `parts`' split elsewhere; whole panels
    /// unchanged.
    #[test]
    fn padded_parts_cover_the_columns_inside_the_panel() {
        for u in every_kernel() {
            for cols in 1..=2 * u.nr {
                let parts: Vec<_> = u.parts_padded(cols).map(|(at, k)| (at, k.nr)).collect();
                let end = parts.last().map_or(0, |&(at, nr)| at + nr);
                assert!(
                    end >= cols.min(u.nr) && end <= u.nr,
                    "{u:?} {cols}: {parts:?}"
                );
                assert!(parts.windows(2).all(|w| w[0].0 + w[0].1 == w[1].0));
                if cols >= u.nr {
                    assert_eq!(parts, [(0, u.nr)]);
                } else if u.isa == Isa::Avx512 && full_width_avx512() {
                    assert_eq!(parts, [(0, u.narrowed(cols).nr)], "{u:?} {cols}");
                } else {
                    let split: Vec<_> = u.parts(cols).map(|(at, k)| (at, k.nr)).collect();
                    assert_eq!(parts, split);
                }
            }
        }
    }

    /// `exact_split` covers exactly the columns with the family's kernels, never costs more
    /// than the greedy split, and takes 48 + 32 + 32 for 112 on full-width AVX-512 cores.
    #[test]
    fn exact_splits_are_exact_and_cheapest() {
        for u in every_kernel() {
            for cols in 1..=200 {
                let greedy_exact = u.covered(cols) == cols;
                let Some(split) = u.exact_split(cols) else {
                    assert!(!greedy_exact, "{u:?} {cols}: greedy covers it exactly");
                    continue;
                };
                let mut end = 0;
                for &(at, k) in &split {
                    assert!(at == end && k.mr == u.mr && k.nr <= u.nr, "{u:?} {cols}");
                    end += k.nr;
                }
                assert_eq!(end, cols, "{u:?}");
                if greedy_exact {
                    let cost: f64 = split.iter().map(|(_, k)| u.column_cost(k.nr)).sum();
                    assert!(cost <= u.weighted_cols(cols) + 1e-9, "{u:?} {cols}");
                }
            }
        }
        if let Some(w) = Microkernel::for_isa(Isa::Avx512) {
            if full_width_avx512() {
                let widths: Vec<usize> =
                    w.exact_split(112).unwrap().iter().map(|p| p.1.nr).collect();
                assert_eq!(widths, [48, 32, 32]);
            }
            assert!(w.exact_split(12).is_none());
        }
    }

    /// `weighted_cols` is `covered` where kernel speeds are even, and on full-width AVX-512
    /// cores ranks 64 columns as two 32-wide tiles below 48 + 16.
    #[test]
    fn weighted_columns_rank_kernel_widths() {
        for u in every_kernel() {
            for cols in [1, 7, 16, 49, 64, 196] {
                let w = u.weighted_cols(cols);
                assert!(w >= u.covered(cols) as f64, "{u:?} {cols}");
                if u.isa != Isa::Avx512 || !full_width_avx512() {
                    assert_eq!(w, u.covered(cols) as f64, "{u:?} {cols}");
                }
            }
        }
        if let (Some(w48), Some(w32)) = (
            Microkernel::for_isa(Isa::Avx512),
            Microkernel::avx512_8x32(),
        ) {
            if full_width_avx512() {
                assert!(w32.weighted_cols(64) < w48.weighted_cols(64));
            }
            assert_eq!(w48.weighted_cols(96), 96.0);
        }
    }

    /// `run_raw` with a bias starts each row's sums at its bias value, and accumulates onto C.
    #[test]
    fn raw_runs_add_the_bias_per_row() {
        for u in every_kernel() {
            let kc = 37;
            let a = data(kc * u.mr, 6);
            let b = data(kc * u.nr + u.nr, 7);
            let bias = data(u.mr, 8);
            let offs = RowOffsets::new((0..kc).map(|k| k * u.nr).collect());
            let c0 = data(u.mr * u.nr, 9);
            for acc in [false, true] {
                let mut c = c0.clone();
                // SAFETY: `c` holds MR rows of NR at stride NR and is not shared.
                unsafe { u.run_raw(kc, &a, &b, &offs, 0, c.as_mut_ptr(), u.nr, acc, Some(&bias)) };
                for r in 0..u.mr {
                    for j in 0..u.nr {
                        let mut want =
                            bias[r] as f64 + if acc { c0[r * u.nr + j] as f64 } else { 0.0 };
                        for k in 0..kc {
                            want += a[k * u.mr + r] as f64 * b[k * u.nr + j] as f64;
                        }
                        let got = c[r * u.nr + j] as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * 40.0,
                            "{u:?} r={r} j={j}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
