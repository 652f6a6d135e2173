//! The elementary functions of the element-wise kernels, in two flavours: libm's (what burn-flex
//! calls, scalar) and closed forms without library calls that the compiler vectorises — the forms
//! PyTorch's vectorised CPU kernels use:
//!
//! * `erf` by Abramowitz & Stegun 7.1.26: absolute error ≤ 1.5e-7;
//! * `exp` by Cody–Waite range reduction (`x = n·ln2 + r`) and the degree-6 Taylor polynomial of
//!   `exp(r)`, `2ⁿ` from the exponent bits: ≤ 2 ulp on [−87, 88], 0 below.
//!
//! Each kernel compiles its loop once for AVX2 + FMA with [`Closed`] (run when the CPU has them)
//! and once with [`Libm`].

/// The functions a kernel needs.
pub(crate) trait Normal {
    /// `erf(x)`.
    fn erf(x: f32) -> f32;
    /// `exp(x)`.
    fn exp(x: f32) -> f32;
}

/// libm, as burn-flex.
pub(crate) struct Libm;

impl Normal for Libm {
    #[inline(always)]
    fn erf(x: f32) -> f32 {
        libm::erff(x)
    }
    #[inline(always)]
    fn exp(x: f32) -> f32 {
        x.exp()
    }
}

/// Closed forms without library calls (vectorisable).
pub(crate) struct Closed;

impl Normal for Closed {
    #[inline(always)]
    fn erf(x: f32) -> f32 {
        // Abramowitz & Stegun 7.1.26.
        let a = x.abs();
        let t = 1.0 / (1.0 + 0.327_591_1 * a);
        let poly = ((((1.061_405_4 * t - 1.453_152) * t + 1.421_413_7) * t - 0.284_496_74) * t
            + 0.254_829_6)
            * t;
        let r = 1.0 - poly * Self::exp(-a * a);
        if x < 0.0 {
            -r
        } else {
            r
        }
    }
    #[inline(always)]
    fn exp(x: f32) -> f32 {
        // x = n·ln2 + r, |r| ≤ ln2/2; exp(r) by its Taylor polynomial to degree 6; 2ⁿ via the
        // exponent bits. Inputs below −87 flush to 0 (GELU only takes exp of −x²/2 ≤ 0).
        let x = x.clamp(-87.0, 88.0);
        // Round to nearest by the 1.5·2²³ trick: the sum's low mantissa bits hold n as an
        // integer (no `f32::round` library call, no saturating float→int cast).
        const SHIFTER: f32 = 12_582_912.0;
        let t = x * std::f32::consts::LOG2_E + SHIFTER;
        let n = t - SHIFTER;
        let n_int = t.to_bits().wrapping_sub(SHIFTER.to_bits());
        let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
        let p = 1.0
            + r * (1.0
                + r * (0.5
                    + r * (0.166_666_67
                        + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_889)))));
        p * f32::from_bits(n_int.wrapping_add(127) << 23)
    }
}
