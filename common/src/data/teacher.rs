//! Synthetic regression data from a teacher network (`datagen teacher`): inputs drawn uniform or
//! Gaussian, targets the outputs of a seeded MLP plus optional Gaussian noise, written as a data file
//! ([`super::file`]) whose metadata records the seed and every setting.
//!
//! The teacher's weights are PyTorch's default initialisation ([`crate::model::initialise`]) of
//! the MLP for `seed`, held in float32 as a checkpoint holds them. The inputs are drawn in f64 and
//! rounded to float32 (the file's dtype); the targets are the teacher's outputs computed in f64 on
//! exactly those inputs and weights, plus σ·ε with ε ~ N(0, 1), then rounded to float32:
//! y = f(x; w) + σ·ε. Streams: inputs from `(seed, Data, 0)` (training) and `(seed, Data, 1)`
//! (test), noise from `(seed, Data, 2)` and `(seed, Data, 3)`.

use super::file::MAX_DATA_FILE_BYTES;
use crate::io::Checkpoint;
use crate::model::{initialise, Architecture, Loss, Network};
use crate::rng::{stream, Purpose};
use crate::{Error, Result};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// How the teacher's inputs are drawn, each coordinate independently.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum InputDistribution {
    /// U(−a, a).
    Uniform { half_width: f64 },
    /// N(0, s²).
    Gaussian { std: f64 },
}

impl InputDistribution {
    /// Parses `uniform` or `gaussian` with `scale` (a, or s).
    ///
    /// # Errors
    /// [`Error::Invalid`] for another name or a scale that is not finite and positive.
    pub fn parse(name: &str, scale: f64) -> Result<Self> {
        if !(scale.is_finite() && scale > 0.0) {
            return Err(Error::invalid(format!(
                "--input-scale {scale} must be finite and positive"
            )));
        }
        match name {
            "uniform" => Ok(InputDistribution::Uniform { half_width: scale }),
            "gaussian" | "normal" => Ok(InputDistribution::Gaussian { std: scale }),
            _ => Err(Error::invalid(format!(
                "unknown input distribution '{name}' (expected uniform or gaussian)"
            ))),
        }
    }

    /// The distribution in words, for metadata: `uniform(-1, 1)`, `gaussian(0, 2)`.
    pub fn describe(self) -> String {
        match self {
            InputDistribution::Uniform { half_width: a } => format!("uniform(-{a}, {a})"),
            InputDistribution::Gaussian { std } => format!("gaussian(0, {std})"),
        }
    }

    fn draw(self, rng: &mut crate::rng::Stream) -> f64 {
        match self {
            InputDistribution::Uniform { half_width } => rng.uniform_in(-half_width, half_width),
            InputDistribution::Gaussian { std } => std * rng.normal(),
        }
    }
}

/// What `datagen teacher` writes.
#[derive(Clone, Debug, PartialEq)]
pub struct TeacherConfig {
    /// An MLP, built for its input features and outputs ([`Architecture::for_data`]).
    pub arch: Architecture,
    pub samples: usize,
    /// Test samples (x_test, y_test); 0 writes none.
    pub test_samples: usize,
    pub inputs: InputDistribution,
    /// σ of the Gaussian noise added to the targets (0: none).
    pub noise: f64,
    pub seed: u64,
}

/// The teacher (as a checkpoint, loss = mean squared error) and the data file's bytes.
#[derive(Clone, Debug)]
pub struct TeacherData {
    pub teacher: Checkpoint,
    pub file: Vec<u8>,
}

/// Draws the data set of `cfg`.
///
/// # Errors
/// [`Error::Invalid`] for a model that is not an MLP, a degenerate one, no training samples, a
/// negative or non-finite σ, or a file that would exceed [`MAX_DATA_FILE_BYTES`].
pub fn teacher_data(cfg: &TeacherConfig) -> Result<TeacherData> {
    if !matches!(cfg.arch, Architecture::Mlp { .. }) {
        return Err(Error::invalid(format!(
            "the teacher is an MLP (a preset such as mlp_2x5_identity); got {}",
            cfg.arch.name()
        )));
    }
    cfg.arch.size_for(Loss::MeanSquaredError)?;
    if cfg.samples == 0 {
        return Err(Error::invalid("--samples must be at least 1"));
    }
    if !(cfg.noise.is_finite() && cfg.noise >= 0.0) {
        return Err(Error::invalid(format!(
            "--noise {} must be finite and non-negative",
            cfg.noise
        )));
    }
    let (f, k) = (cfg.arch.input_features(), cfg.arch.classes());
    let bytes = (cfg.samples as u64 + cfg.test_samples as u64)
        .checked_mul((f + k) as u64 * 4)
        .filter(|&b| b <= MAX_DATA_FILE_BYTES)
        .ok_or_else(|| {
            Error::invalid(format!(
                "{} + {} samples of {f} inputs and {k} outputs exceed the {MAX_DATA_FILE_BYTES} bytes a data file may have",
                cfg.samples, cfg.test_samples
            ))
        })?;
    let _ = bytes;
    let mut net = Network::new(cfg.arch.clone());
    net.loss = Loss::MeanSquaredError;
    let params: Vec<f32> = initialise(&net, cfg.seed);
    let w64: Vec<f64> = params.iter().map(|&v| v as f64).collect();

    let split = |n: usize, index: u64| -> (Vec<f32>, Vec<f32>) {
        let mut rng = stream(cfg.seed, Purpose::Data, index);
        let x: Vec<f32> = (0..n * f)
            .map(|_| cfg.inputs.draw(&mut rng) as f32)
            .collect();
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let mut noise = stream(cfg.seed, Purpose::Data, index + 2);
        let mut y = Vec::with_capacity(n * k);
        // In chunks, so that the workspace stays small for large n.
        let chunk = 1024;
        let mut ws = net.workspace::<f64>(chunk.min(n));
        for start in (0..n).step_by(chunk) {
            let b = chunk.min(n - start);
            let out = net.forward(&w64, &x64[start * f..(start + b) * f], b, &mut ws);
            y.extend(out.iter().map(|&v| {
                let e = if cfg.noise > 0.0 { noise.normal() } else { 0.0 };
                (v + cfg.noise * e) as f32
            }));
        }
        (x, y)
    };
    let (x, y) = split(cfg.samples, 0);
    let test = (cfg.test_samples > 0).then(|| split(cfg.test_samples, 1));

    let mut meta = BTreeMap::new();
    meta.insert(
        "producer".to_string(),
        concat!("ngd-slt datagen ", env!("CARGO_PKG_VERSION")).to_string(),
    );
    meta.insert("generator".into(), "teacher".into());
    meta.insert("teacher".into(), cfg.arch.to_json().to_string());
    meta.insert("seed".into(), cfg.seed.to_string());
    meta.insert("inputs".into(), cfg.inputs.describe());
    meta.insert("noise".into(), cfg.noise.to_string());
    meta.insert("samples".into(), cfg.samples.to_string());
    meta.insert("test_samples".into(), cfg.test_samples.to_string());
    let mut tensors: Vec<(String, Vec<usize>, &[f32])> = vec![
        ("x".into(), vec![cfg.samples, f], &x),
        ("y".into(), vec![cfg.samples, k], &y),
    ];
    if let Some((xt, yt)) = &test {
        tensors.push(("x_test".into(), vec![cfg.test_samples, f], xt));
        tensors.push(("y_test".into(), vec![cfg.test_samples, k], yt));
    }
    let file = crate::io::encode_f32_safetensors(&tensors, &meta);

    let mut ck_meta = Map::new();
    for (key, v) in &meta {
        ck_meta.insert(key.clone(), Value::from(v.clone()));
    }
    ck_meta.insert("loss".into(), Value::from(Loss::MeanSquaredError.name()));
    Ok(TeacherData {
        teacher: Checkpoint {
            network: net,
            params,
            meta: ck_meta,
            source_names: vec![],
        },
        file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{load_data_file, Split, TargetData};
    use crate::model::Activation;

    fn cfg(noise: f64) -> TeacherConfig {
        TeacherConfig {
            arch: Architecture::mlp(vec![5, 5], Activation::Identity).for_data([1, 1, 3], 2),
            samples: 400,
            test_samples: 50,
            inputs: InputDistribution::Uniform { half_width: 2.0 },
            noise,
            seed: 4,
        }
    }

    fn write(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ngd-slt-teacher-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// Without noise the targets are the teacher's outputs on the inputs (a deep linear network:
    /// y = W₃W₂W₁x + the biases' image, computed here by hand), and the file loads as regression data.
    #[test]
    fn noiseless_targets_are_the_teachers_outputs() {
        let d = teacher_data(&cfg(0.0)).unwrap();
        let data =
            load_data_file(&write("clean.safetensors", &d.file), Split::Train, None).unwrap();
        assert_eq!(
            (data.len(), data.sample_shape(), data.classes),
            (400, [1, 1, 3], 2)
        );
        let crate::data::Inputs::Floats(x) = &data.inputs else {
            panic!("float inputs")
        };
        let TargetData::Values {
            values: y,
            width: 2,
        } = &data.targets
        else {
            panic!("float targets")
        };
        assert!(x.iter().all(|v| v.abs() <= 2.0));
        // The layers by hand from the layout (1.weight 5×3, 1.bias, 3.weight 5×5, 3.bias, 5.weight 2×5, 5.bias).
        let w = &d.teacher.params;
        let t = &d.teacher.network.layout.tensors;
        let layer = |i: usize, input: &[f64]| -> Vec<f64> {
            let (wt, bt) = (&t[2 * i], &t[2 * i + 1]);
            let (rows, cols) = (wt.shape[0], wt.shape[1]);
            (0..rows)
                .map(|r| {
                    w[bt.offset + r] as f64
                        + (0..cols)
                            .map(|c| w[wt.offset + r * cols + c] as f64 * input[c])
                            .sum::<f64>()
                })
                .collect()
        };
        for n in [0, 17, 399] {
            let out = layer(2, &layer(1, &layer(0, &x[n * 3..n * 3 + 3])));
            for j in 0..2 {
                let got = y[n * 2 + j];
                assert!(
                    (got - out[j]).abs() <= 1e-6 * (1.0 + out[j].abs()),
                    "{n},{j}: {got} vs {}",
                    out[j]
                );
            }
        }
        let test = load_data_file(&write("clean.safetensors", &d.file), Split::Test, None).unwrap();
        assert_eq!(test.len(), 50);
    }

    /// The same seed gives the same bytes; the noise has the asked spread.
    #[test]
    fn seeded_and_noisy_as_asked() {
        assert_eq!(
            teacher_data(&cfg(0.0)).unwrap().file,
            teacher_data(&cfg(0.0)).unwrap().file
        );
        let clean = teacher_data(&cfg(0.0)).unwrap();
        let noisy = teacher_data(&cfg(0.5)).unwrap();
        let read = |b: &[u8], name| match load_data_file(&write(name, b), Split::Train, None)
            .unwrap()
            .targets
        {
            TargetData::Values { values, .. } => values,
            TargetData::Labels(_) => unreachable!(),
        };
        let (a, b) = (
            read(&clean.file, "a.safetensors"),
            read(&noisy.file, "b.safetensors"),
        );
        let n = a.len() as f64;
        let mean = a.iter().zip(&b).map(|(p, q)| q - p).sum::<f64>() / n;
        let var = a
            .iter()
            .zip(&b)
            .map(|(p, q)| (q - p - mean).powi(2))
            .sum::<f64>()
            / (n - 1.0);
        // 800 draws: the sample std is within 10% of σ (about 4 standard errors), the mean near 0.
        assert!(
            (var.sqrt() - 0.5).abs() < 0.05 && mean.abs() < 0.1,
            "{mean} {var}"
        );
        let mut other = cfg(0.0);
        other.seed = 5;
        assert_ne!(teacher_data(&other).unwrap().file, clean.file);
    }

    #[test]
    fn bad_settings_are_refused() {
        let mut c = cfg(0.0);
        c.arch = Architecture::lenet(0);
        assert!(teacher_data(&c)
            .unwrap_err()
            .to_string()
            .contains("the teacher is an MLP"));
        let mut c = cfg(-1.0);
        assert!(teacher_data(&c)
            .unwrap_err()
            .to_string()
            .contains("--noise -1"));
        c = cfg(0.0);
        c.samples = usize::MAX / 2;
        assert!(teacher_data(&c).unwrap_err().to_string().contains("exceed"));
        assert!(InputDistribution::parse("cauchy", 1.0).is_err());
        assert!(InputDistribution::parse("uniform", 0.0).is_err());
    }
}
