//! Shared by the kernel tests: host f64 matrices (the reference arithmetic) and conversions
//! between them and burn tensors.
#![allow(dead_code)]

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand::{rngs::StdRng, Rng};

// ---------------------------------------------------------------------------------------------
// Host f64 matrices (the reference arithmetic).

#[derive(Clone, Debug, PartialEq)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub v: Vec<f64>,
}

impl Mat {
    pub fn from_fn(rows: usize, cols: usize, mut f: impl FnMut(usize, usize) -> f64) -> Mat {
        let mut v = Vec::with_capacity(rows * cols);
        for i in 0..rows {
            for j in 0..cols {
                v.push(f(i, j));
            }
        }
        Mat { rows, cols, v }
    }

    /// Uniform in `[-scale, scale]`, drawn as f32 so the f32 tensors hold these values exactly.
    pub fn random(rng: &mut StdRng, rows: usize, cols: usize, scale: f32) -> Mat {
        Mat::from_fn(rows, cols, |_, _| {
            f64::from((rng.random::<f32>() * 2.0 - 1.0) * scale)
        })
    }

    pub fn at(&self, i: usize, j: usize) -> f64 {
        self.v[i * self.cols + j]
    }

    pub fn t(&self) -> Mat {
        Mat::from_fn(self.cols, self.rows, |i, j| self.at(j, i))
    }

    pub fn mm(&self, o: &Mat) -> Mat {
        assert_eq!(self.cols, o.rows, "inner dimensions");
        let mut out = Mat::from_fn(self.rows, o.cols, |_, _| 0.0);
        for i in 0..self.rows {
            for k in 0..self.cols {
                let a = self.at(i, k);
                for j in 0..o.cols {
                    out.v[i * o.cols + j] += a * o.at(k, j);
                }
            }
        }
        out
    }

    pub fn plus(&self, o: &Mat) -> Mat {
        assert_eq!((self.rows, self.cols), (o.rows, o.cols));
        Mat::from_fn(self.rows, self.cols, |i, j| self.at(i, j) + o.at(i, j))
    }

    pub fn plus_row(&self, b: &[f64]) -> Mat {
        assert_eq!(self.cols, b.len());
        Mat::from_fn(self.rows, self.cols, |i, j| self.at(i, j) + b[j])
    }

    pub fn scaled(&self, s: f64) -> Mat {
        Mat::from_fn(self.rows, self.cols, |i, j| self.at(i, j) * s)
    }

    pub fn abs(&self) -> Mat {
        Mat::from_fn(self.rows, self.cols, |i, j| self.at(i, j).abs())
    }

    pub fn f32s(&self) -> Vec<f32> {
        self.v.iter().map(|&x| x as f32).collect()
    }
}

pub fn tensor<B: Backend>(m: &Mat) -> Tensor<B, 2> {
    Tensor::from_data(
        TensorData::new(m.f32s(), [m.rows, m.cols]),
        &Default::default(),
    )
}

pub fn vector<B: Backend>(v: &[f64]) -> Tensor<B, 1> {
    let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), &Default::default())
}

pub fn host<B: Backend>(t: Tensor<B, 2>) -> Mat {
    let [rows, cols] = t.dims();
    let v = t.into_data().to_vec::<f32>().unwrap();
    Mat {
        rows,
        cols,
        v: v.into_iter().map(f64::from).collect(),
    }
}

/// The first element not within `rel · bound` of `want`, described; `None` when all are.
pub fn mismatch(what: &str, got: &Mat, want: &Mat, bound: &Mat, rel: f64) -> Option<String> {
    if (got.rows, got.cols) != (want.rows, want.cols) {
        return Some(format!(
            "{what}: shape {:?}, want {:?}",
            (got.rows, got.cols),
            (want.rows, want.cols)
        ));
    }
    for i in 0..want.rows {
        for j in 0..want.cols {
            let (g, w, b) = (got.at(i, j), want.at(i, j), bound.at(i, j));
            let err = (g - w).abs();
            // Written so that a NaN (in got, want or bound) is a mismatch too.
            if err.is_nan() || b.is_nan() || err > rel * b {
                return Some(format!(
                    "{what}[{i}, {j}]: got {g:.9e}, want {w:.9e}, |err| {err:.3e} > {rel:e} · {b:.3e}"
                ));
            }
        }
    }
    None
}

/// Every element within `rel · bound` of `want`.
pub fn assert_close(what: &str, got: &Mat, want: &Mat, bound: &Mat, rel: f64) {
    if let Some(m) = mismatch(what, got, want, bound, rel) {
        panic!("{m}");
    }
}
