//! Modular arithmetic as token sequences, the grokking data set (Power et al. 2022, "Grokking:
//! generalization beyond overfitting on small algorithmic datasets"; Nanda et al. 2023, "Progress
//! measures for grokking via mechanistic interpretability").
//!
//! Every pair (a, b) of residues mod p (for division, b ≠ 0) is the sequence `[a, b, =]` of token
//! ids — a and b are their own ids 0..p−1, `=` is id p, so the vocabulary has p + 1 tokens — with
//! the target (a ∘ b) mod p, a class label in 0..p. A seeded permutation of all pairs puts the first
//! ⌊fraction·N⌋ into the training split and the rest into the test split (Nanda et al.'s split);
//! each split is then kept in the canonical order (a, then b).
//!
//! The data file stores `x` and `x_test` as **int64** `[n, 3]` (PyTorch's token dtype, what
//! `nn.Embedding` takes) and `y`, `y_test` as int64 `[n]`. The data-file reader reads integer inputs
//! as token ids: exact values, never normalised, refused by a model whose first layer is not an
//! `embedding` (which would read the ids as numbers).

use crate::rng::{stream, Purpose};
use crate::{Error, Result};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};
use std::collections::HashMap;

/// The operation ∘ of a modular data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModularOp {
    Add,
    Sub,
    Mul,
    /// a · b⁻¹ mod p (p prime, b ≠ 0).
    Div,
}

impl ModularOp {
    /// `add`, `sub`, `mul` or `div`.
    ///
    /// # Errors
    /// [`Error::Invalid`] for another name.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "add" => Ok(ModularOp::Add),
            "sub" => Ok(ModularOp::Sub),
            "mul" => Ok(ModularOp::Mul),
            "div" => Ok(ModularOp::Div),
            _ => Err(Error::invalid(format!(
                "unknown --op {s:?} (expected add, sub, mul or div)"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ModularOp::Add => "add",
            ModularOp::Sub => "sub",
            ModularOp::Mul => "mul",
            ModularOp::Div => "div",
        }
    }

    /// The target in words, e.g. `(a + b) mod 113`.
    pub fn formula(self, p: u64) -> String {
        let sym = match self {
            ModularOp::Add => "a + b",
            ModularOp::Sub => "a - b",
            ModularOp::Mul => "a * b",
            ModularOp::Div => "a * b^-1",
        };
        format!("({sym}) mod {p}")
    }

    /// (a ∘ b) mod p for residues a, b < p (for `Div`, p prime and b ≠ 0: b⁻¹ = b^(p−2) by Fermat).
    pub fn apply(self, a: u64, b: u64, p: u64) -> u64 {
        match self {
            ModularOp::Add => (a + b) % p,
            ModularOp::Sub => (a + p - b) % p,
            ModularOp::Mul => (a * b) % p,
            ModularOp::Div => (a * pow_mod(b, p - 2, p)) % p,
        }
    }
}

/// bᵉ mod p by square-and-multiply (p < 2³²).
fn pow_mod(mut b: u64, mut e: u64, p: u64) -> u64 {
    let mut r = 1 % p;
    b %= p;
    while e > 0 {
        if e & 1 == 1 {
            r = r * b % p;
        }
        b = b * b % p;
        e >>= 1;
    }
    r
}

/// Whether n is prime (trial division; n is at most [`MAX_MODULUS`]).
pub fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// The largest modulus: p² pairs of 3 int64 tokens and a label stay under 1 GiB.
pub const MAX_MODULUS: u64 = 5_000;

/// A modular-arithmetic data set: token ids `[n, 3]` and labels per split, and what made it.
#[derive(Clone, Debug, PartialEq)]
pub struct ModularData {
    pub x: Vec<i64>,
    pub y: Vec<i64>,
    pub x_test: Vec<i64>,
    pub y_test: Vec<i64>,
    /// The settings, stored under `datagen` in the file's metadata.
    pub settings: Value,
}

/// All pairs of `op` mod `p`, split seeded: ⌊`train_fraction`·N⌋ pairs for training (at least one),
/// the rest for the test split (none when the fraction is 1).
///
/// # Errors
/// [`Error::Invalid`] for p < 2, p above [`MAX_MODULUS`], a p that is not prime for `div`, or a
/// fraction outside (0, 1] or one that leaves no training pair.
pub fn modular(p: u64, op: ModularOp, train_fraction: f64, seed: u64) -> Result<ModularData> {
    if p < 2 {
        return Err(Error::invalid(format!(
            "--p {p}: the modulus must be at least 2"
        )));
    }
    if p > MAX_MODULUS {
        return Err(Error::invalid(format!(
            "--p {p}: at most {MAX_MODULUS} ({MAX_MODULUS}² pairs)"
        )));
    }
    if op == ModularOp::Div && !is_prime(p) {
        return Err(Error::invalid(format!(
            "--p {p} --op div: division mod p needs p prime (every b ≠ 0 invertible)"
        )));
    }
    if !(train_fraction > 0.0 && train_fraction <= 1.0) {
        return Err(Error::invalid(format!(
            "--train-fraction {train_fraction}: must be in (0, 1]"
        )));
    }
    let b_from = if op == ModularOp::Div { 1 } else { 0 };
    let pairs: Vec<(u64, u64)> = (0..p)
        .flat_map(|a| (b_from..p).map(move |b| (a, b)))
        .collect();
    let total = pairs.len();
    let train = (train_fraction * total as f64).floor() as usize;
    if train == 0 {
        return Err(Error::invalid(format!(
            "--train-fraction {train_fraction}: no training pair of the {total}"
        )));
    }
    let perm = stream(seed, Purpose::Data, 0).permutation(total);
    let mut train_idx = perm[..train].to_vec();
    let mut test_idx = perm[train..].to_vec();
    train_idx.sort_unstable();
    test_idx.sort_unstable();
    let equals = p as i64;
    let tokens = |idx: &[usize]| -> (Vec<i64>, Vec<i64>) {
        let mut x = Vec::with_capacity(idx.len() * 3);
        let mut y = Vec::with_capacity(idx.len());
        for &i in idx {
            let (a, b) = pairs[i];
            x.extend([a as i64, b as i64, equals]);
            y.push(op.apply(a, b, p) as i64);
        }
        (x, y)
    };
    let (x, y) = tokens(&train_idx);
    let (x_test, y_test) = tokens(&test_idx);
    Ok(ModularData {
        x,
        y,
        x_test,
        y_test,
        settings: json!({
            "kind": "modular",
            "p": p,
            "op": op.name(),
            "target": op.formula(p),
            "train_fraction": train_fraction,
            "seed": seed,
            "pairs": total,
            "samples": train,
            "test_samples": total - train,
            "split": "a seeded permutation of all pairs (a-major order) puts the first floor(fraction·pairs) in train; each split in a-major order",
            "x": format!("int64 token ids [n, 3]: a, b, '=' with a, b in 0..{p} and '=' the id {p}; read them with an embedding of num >= {}", p + 1),
            "vocab": p + 1,
            "equals_token": p,
            "sequence": ["a", "b", "="],
            "classes": p,
        }),
    })
}

impl ModularData {
    /// The same pairs with next-token targets at every position, as a language model is trained:
    /// the sequence `[a, b, =]` gets the labels `[b, =, c]` (c = (a ∘ b) mod p), so `y` is
    /// `[n, 3]` with labels in the vocabulary 0..p+1, for a model whose output is per position
    /// `[3, p + 1]` trained with cross-entropy averaged over positions. Position 0's target b is
    /// independent of a (the loss there is at least ln p for any model) and position 1's is always
    /// `=`; only the last position carries the task.
    pub fn next_token_targets(mut self) -> ModularData {
        let p = self.settings["p"].as_i64().unwrap_or(0);
        let shift = |x: &[i64], y: &[i64]| -> Vec<i64> {
            x.chunks_exact(3)
                .zip(y)
                .flat_map(|(row, &c)| [row[1], row[2], c])
                .collect()
        };
        self.y = shift(&self.x, &self.y);
        self.y_test = shift(&self.x_test, &self.y_test);
        let s = &mut self.settings;
        s["targets"] = json!("next-token");
        s["y"] = json!(format!(
            "int64 labels [n, 3] per position: the next token [b, =, (a ∘ b) mod {p}], in 0..{}",
            p + 1
        ));
        s["classes"] = json!(p + 1);
        self
    }

    /// Labels per sample: 1, or 3 after [`ModularData::next_token_targets`].
    fn label_positions(&self) -> usize {
        self.y.len().checked_div(self.x.len() / 3).unwrap_or(1)
    }

    /// The data file's bytes: int64 `x` `[n, 3]`, `y` `[n]` (or `[n, 3]` for next-token targets),
    /// and `x_test`, `y_test` when there is a test split; the settings under `datagen` in the
    /// metadata.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let le = |v: &[i64]| -> Vec<u8> { v.iter().flat_map(|t| t.to_le_bytes()).collect() };
        let t = self.label_positions();
        let y_shape = |n: usize| if t == 1 { vec![n] } else { vec![n, t] };
        let (n, n_test) = (self.x.len() / 3, self.x_test.len() / 3);
        let mut tensors = vec![("x", le(&self.x), vec![n, 3])];
        tensors.push(("y", le(&self.y), y_shape(n)));
        if n_test > 0 {
            tensors.push(("x_test", le(&self.x_test), vec![n_test, 3]));
            tensors.push(("y_test", le(&self.y_test), y_shape(n_test)));
        }
        let views = tensors
            .iter()
            .map(|(n, b, s)| {
                TensorView::new(Dtype::I64, s.clone(), b)
                    .map(|v| (*n, v))
                    .map_err(|e| Error::invalid(format!("modular tensor {n}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let meta: HashMap<String, String> =
            [("datagen".to_string(), self.settings.to_string())].into();
        safetensors::serialize(views, Some(meta))
            .map_err(|e| Error::invalid(format!("modular data file: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pair_once_with_its_target_and_a_seeded_split() {
        let d = modular(7, ModularOp::Sub, 0.3, 5).unwrap();
        assert_eq!(d.y.len(), 14); // ⌊0.3·49⌋
        assert_eq!(d.y_test.len(), 35);
        let mut seen = std::collections::BTreeSet::new();
        for (x, y) in [(&d.x, &d.y), (&d.x_test, &d.y_test)] {
            for (row, &t) in x.chunks(3).zip(y.iter()) {
                assert_eq!(row[2], 7, "the '=' token");
                // Independent: (a − b) mod 7 with Rust's Euclidean remainder.
                assert_eq!(t, (row[0] - row[1]).rem_euclid(7));
                assert!(seen.insert((row[0], row[1])), "pair twice");
            }
        }
        assert_eq!(seen.len(), 49);
        // The same seed gives the same split, another seed another.
        assert_eq!(modular(7, ModularOp::Sub, 0.3, 5).unwrap(), d);
        assert_ne!(modular(7, ModularOp::Sub, 0.3, 6).unwrap().x, d.x);
        assert_eq!(d.settings["vocab"], 8);
        assert_eq!(d.settings["target"], "(a - b) mod 7");
    }

    /// Next-token targets: `[a, b, =]` is labelled `[b, =, c]`, written as `[n, 3]`.
    #[test]
    fn next_token_targets_shift_the_sequence() {
        let d = modular(5, ModularOp::Add, 0.4, 2).unwrap();
        let n = d.y.len();
        let nt = d.clone().next_token_targets();
        assert_eq!((nt.x.clone(), nt.y.len()), (d.x.clone(), 3 * n));
        for ((row, labels), &c) in d.x.chunks(3).zip(nt.y.chunks(3)).zip(&d.y) {
            assert_eq!(labels, [row[1], 5, (row[0] + row[1]) % 5]);
            assert_eq!(labels[2], c);
        }
        assert_eq!(nt.y_test.len(), 3 * d.y_test.len());
        assert_eq!(nt.settings["classes"], 6);
        let bytes = nt.to_bytes().unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("y").unwrap().shape(), &[n, 3]);
        assert_eq!(st.tensor("y_test").unwrap().shape(), &[d.y_test.len(), 3]);
        let plain = d.to_bytes().unwrap();
        let st = safetensors::SafeTensors::deserialize(&plain).unwrap();
        assert_eq!(st.tensor("y").unwrap().shape(), &[n]);
    }

    #[test]
    fn division_is_multiplication_by_the_inverse() {
        let p = 13;
        let d = modular(p, ModularOp::Div, 1.0, 1).unwrap();
        assert_eq!(d.y.len() as u64, p * (p - 1));
        assert!(d.y_test.is_empty());
        for (row, &t) in d.x.chunks(3).zip(&d.y) {
            // c = a / b  ⇔  c·b ≡ a (mod p).
            assert_eq!((t * row[1]) % p as i64, row[0]);
        }
        for (a, b, want) in [(3, 4, 0), (5, 5, 3)] {
            assert_eq!(ModularOp::Add.apply(a, b, 7), want);
        }
        assert_eq!(ModularOp::Mul.apply(6, 6, 7), 1);
    }

    #[test]
    fn refuses_bad_moduli_and_fractions() {
        let e = |p, op, f| modular(p, op, f, 1).unwrap_err().to_string();
        assert!(e(1, ModularOp::Add, 0.5).contains("at least 2"));
        assert!(e(15, ModularOp::Div, 0.5).contains("prime"));
        assert!(e(MAX_MODULUS + 1, ModularOp::Add, 0.5).contains("at most"));
        assert!(e(7, ModularOp::Add, 0.0).contains("(0, 1]"));
        assert!(e(7, ModularOp::Add, 1.5).contains("(0, 1]"));
        assert!(e(7, ModularOp::Add, f64::NAN).contains("(0, 1]"));
        assert!(e(7, ModularOp::Add, 0.01).contains("no training pair"));
        assert!(modular(15, ModularOp::Mul, 0.5, 1).is_ok());
        assert!(is_prime(113) && !is_prime(1) && !is_prime(91) && is_prime(2));
    }
}
