//! f32 matrix products of the CPU path ([`crate::cpu`]) on the `gemm` crate (the kernels
//! burn-flex uses; AVX-512 where the CPU has it, chosen at run time).
//!
//! [`rows_times`] splits a product by output columns over the rayon threads, each thread running
//! the single-threaded kernel on its own slice of the right operand: that slice is packed on its
//! thread, not serially before the parallel part as in one multi-threaded call.

use gemm::Parallelism;

/// Products smaller than this many multiply-adds run on one thread.
const SPLIT_MIN_FMAS: usize = 1 << 20;

/// `out[m×n] = (accumulate ? out : 0) + beta · a[m×k] · b[k×n]`, all row-major and contiguous.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rows_times(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    b: &[f32],
    out: &mut [f32],
    accumulate: bool,
    beta: f32,
) {
    assert!(a.len() >= m * k && b.len() >= k * n && out.len() >= m * n);
    let threads = rayon::current_num_threads().max(1);
    let chunks = if m * n * k < SPLIT_MIN_FMAS || n < 32 {
        1
    } else {
        threads.min(n / 16)
    };
    // Column ranges, multiples of 16 (one AVX-512 register of f32) except the last.
    let per = n.div_ceil(chunks).next_multiple_of(16);
    let (ap, bp, op) = (
        a.as_ptr() as usize,
        b.as_ptr() as usize,
        out.as_mut_ptr() as usize,
    );
    let run = |c: usize| {
        let j0 = c * per;
        if j0 >= n {
            return;
        }
        let w = per.min(n - j0);
        // SAFETY: the slices hold the asserted sizes; chunks write disjoint column ranges of
        // `out`, and `a`/`b` are only read.
        unsafe {
            gemm::gemm(
                m,
                w,
                k,
                (op as *mut f32).add(j0),
                1,
                n as isize,
                accumulate,
                ap as *const f32,
                1,
                k as isize,
                (bp as *const f32).add(j0),
                1,
                n as isize,
                1.0,
                beta,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
    };
    if chunks == 1 {
        run(0);
    } else {
        use rayon::prelude::*;
        (0..chunks).into_par_iter().for_each(run);
    }
}

/// `out[m×n] = (accumulate ? out : 0) + beta · a · b` for strided operands (`(row stride, column
/// stride)` each) and a row-major contiguous `out`; the adapter's thin products.
#[allow(clippy::too_many_arguments)]
pub(crate) fn small(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    (a_rs, a_cs): (usize, usize),
    b: &[f32],
    (b_rs, b_cs): (usize, usize),
    out: &mut [f32],
    accumulate: bool,
    beta: f32,
) {
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| {
        if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * rs + (cols - 1) * cs + 1
        }
    };
    assert!(a.len() >= last(m, k, a_rs, a_cs) && b.len() >= last(k, n, b_rs, b_cs));
    assert!(out.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the asserts bound every index the strides reach.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0,
            beta,
            false,
            false,
            false,
            Parallelism::Rayon(0),
        );
    }
}
