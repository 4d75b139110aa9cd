//! Shared helpers of the numerical tests: fixture paths and reference values.
#![allow(dead_code)]

extern crate blas_openblas;

use common::data::{Dataset, DatasetKind, Split};
use serde_json::Value;
use std::path::PathBuf;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// The committed subset: the first 1,280 MNIST training images and the first 200 test images.
pub fn mnist_small(split: Split) -> Dataset {
    Dataset::load(DatasetKind::Mnist, &fixtures().join("mnist-small"), split).expect("fixture data")
}

pub fn reference(name: &str) -> Value {
    let p = fixtures().join("reference").join(name);
    serde_json::from_slice(&std::fs::read(&p).expect("reference file")).expect("reference JSON")
}

pub fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

/// Relative difference |a − b| / max(|b|, tiny).
pub fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-300)
}
