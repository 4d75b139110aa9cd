//! Fuzzing the checkpoint reader and model construction: a seeded mutation loop (no cargo-fuzz).
//!
//! It starts from valid checkpoints (ours: MLPs of several depths and activations, the LeNet without
//! and with extra layers; foreign: PyTorch names without metadata in F32, F64, F16 and BF16; metadata
//! variants: `arch` as a name, as our JSON object, a plain `activation`, `param_order`), mutates
//! them (bytes, the length prefix, the header's JSON: tensor dtypes, shapes, offsets and names;
//! metadata values: huge, zero and negative widths, odd names; and consistent re-encodings of random
//! architectures, so that many inputs load), and for each input runs [`Checkpoint::from_bytes`]
//! under a random `--model` ([`ModelSpec`]). When it loads, it builds what the tools build: the
//! network, a workspace, a forward pass, the loss and gradient on a batch of two, the
//! initialisation, and the checkpoint's bytes again (which must load back identically).
//!
//! Every input must end in `Ok` or `Err`: a panic writes the input to `<out>/fuzz-panic.safetensors`
//! and fails the run; a counting global allocator refuses any single allocation, or total live
//! allocation, above 1 GiB, writes the input to `<out>/fuzz-over-limit.safetensors` and aborts.
//!
//! `FUZZ_INPUTS` (default 20,000: a few seconds in `cargo test`), `FUZZ_SEED` (default 1) and
//! `FUZZ_OUT` (default the system temp folder) configure it; `make fuzz` runs 1,000,000 inputs.

extern crate blas_openblas;

use common::io::{load_optimizer_state, Checkpoint};
use common::model::{initialise, Activation, Architecture, ModelSpec, Network};
use serde_json::{json, Map, Value};
use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// The most one allocation, or all live allocations together, may take.
const LIMIT: usize = 1 << 30;

/// Counts live bytes and refuses (reports and aborts) any allocation over [`LIMIT`].
struct Limited;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static REPORTING: AtomicBool = AtomicBool::new(false);
/// The input being processed, for the report (set around each input; it outlives the processing).
static INPUT_PTR: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static INPUT_LEN: AtomicUsize = AtomicUsize::new(0);
static OUT_DIR: OnceLock<PathBuf> = OnceLock::new();

fn out_dir() -> PathBuf {
    OUT_DIR.get().cloned().unwrap_or_else(std::env::temp_dir)
}

/// The current input's bytes (empty outside an input).
fn current_input() -> &'static [u8] {
    let p = INPUT_PTR.load(Ordering::SeqCst);
    if p.is_null() {
        return &[];
    }
    // SAFETY: set from a live Vec for exactly the duration of its processing, and only read then.
    unsafe { std::slice::from_raw_parts(p, INPUT_LEN.load(Ordering::SeqCst)) }
}

#[cold]
fn over_limit(size: usize) -> ! {
    // Writing the report allocates (a little); those allocations pass unchecked.
    REPORTING.store(true, Ordering::SeqCst);
    let path = out_dir().join("fuzz-over-limit.safetensors");
    let _ = std::fs::write(&path, current_input());
    eprintln!(
        "fuzz_checkpoint: an allocation of {size} bytes (live {} bytes) exceeds the 1 GiB limit; \
         the input is in {}",
        LIVE.load(Ordering::SeqCst),
        path.display()
    );
    std::process::abort();
}

impl Limited {
    fn admit(&self, size: usize) {
        if REPORTING.load(Ordering::Relaxed) {
            return;
        }
        let live = LIVE.fetch_add(size, Ordering::SeqCst) + size;
        if size > LIMIT || live > LIMIT {
            over_limit(size);
        }
        PEAK.fetch_max(live, Ordering::Relaxed);
    }
}

// SAFETY: forwards to the system allocator; only counts (and aborts before allocating too much).
unsafe impl GlobalAlloc for Limited {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.admit(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.admit(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            self.admit(new_size - layout.size());
            if new_size > LIMIT && !REPORTING.load(Ordering::Relaxed) {
                over_limit(new_size);
            }
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::SeqCst);
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Limited = Limited;

/// SplitMix64: small, seeded, and independent of the library's streams.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Sizes a mutation puts into shapes, widths and offsets.
const EDGE_NUMBERS: [i128; 16] = [
    0,
    1,
    2,
    3,
    10,
    784,
    -1,
    255,
    65_536,
    4_000_000_000,
    99_999_999_999,
    1 << 31,
    1 << 32,
    1 << 62,
    (1 << 63) - 1,
    u64::MAX as i128,
];

/// Model names a mutation puts into metadata (and `--model`).
const EDGE_NAMES: [&str; 22] = [
    "mlp",
    "mlp_0",
    "mlp_1x0",
    "mlp_0x5",
    "mlp_1x4",
    "mlp_2x4",
    "mlp_4-3",
    "mlp_1x4_tanh",
    "mlp_1x4_sigmoid",
    "mlp_1x99999999999",
    "mlp_1x4611686018427387904",
    "mlp_4000000000x1",
    "mlp_10001x1",
    "mlp_x",
    "mlp_",
    "lenet",
    "lenet_k0",
    "lenet_k1",
    "lenet_k4000000000",
    "lenet_k18446744073709551615",
    "lenet_k-1",
    "resnet",
];

fn number(rng: &mut Rng) -> Value {
    match rng.below(5) {
        0 => json!(-3),
        1 => json!(2.5),
        2 => json!("7"),
        _ => {
            let n = *rng.pick(&EDGE_NUMBERS);
            if n < 0 {
                json!(n as i64)
            } else {
                json!(n as u64)
            }
        }
    }
}

/// Safetensors bytes from a header object and a data buffer (length prefix and padding as the
/// format wants, unless `bad_prefix`).
fn encode(header: &Value, data: &[u8], bad_prefix: Option<u64>) -> Vec<u8> {
    let mut h = header.to_string().into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + data.len());
    out.extend_from_slice(&bad_prefix.unwrap_or(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out
}

/// Splits valid safetensors bytes into (header, data).
fn decode(bytes: &[u8]) -> (Value, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header, bytes[8 + n..].to_vec())
}

/// A foreign file: the tensors of `arch` under its names, values `0.01·sin(i)`, in `dtype`, no
/// metadata unless given.
fn foreign(arch: &Architecture, dtype: &str, meta: Option<Map<String, Value>>) -> Vec<u8> {
    let mut header = Map::new();
    if let Some(m) = meta {
        header.insert("__metadata__".into(), Value::Object(m));
    }
    let mut data = Vec::new();
    for t in arch.layout().tensors {
        let start = data.len();
        for i in 0..t.numel {
            let v = 0.01 * (i as f32).sin();
            match dtype {
                "F64" => data.extend_from_slice(&(v as f64).to_le_bytes()),
                "F16" => data.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
                "BF16" => data.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
                _ => data.extend_from_slice(&v.to_le_bytes()),
            }
        }
        header.insert(
            t.name,
            json!({"dtype": dtype, "shape": t.shape, "data_offsets": [start, data.len()]}),
        );
    }
    encode(&Value::Object(header), &data, None)
}

/// Our own checkpoint of `arch` (metadata as `train` writes it).
fn ours(arch: Architecture, seed: u64) -> Vec<u8> {
    let network = Network::new(arch);
    let params = initialise::<f32>(&network, seed);
    let mut meta = Map::new();
    meta.insert("dataset".into(), json!("mnist"));
    meta.insert("epoch".into(), json!(3));
    meta.insert("seed".into(), json!(seed));
    Checkpoint {
        network,
        params,
        meta,
        source_names: vec![],
    }
    .to_bytes()
    .unwrap()
}

/// The valid starting points.
fn corpus() -> Vec<Vec<u8>> {
    let mlp = |hidden: Vec<usize>, activation| Architecture::mlp(hidden, activation);
    let small = |input, hidden: Vec<usize>, classes| Architecture::Mlp {
        input,
        hidden,
        classes,
        activation: Activation::Relu,
    };
    let named = |name: &str, extra: &[(&str, &str)]| {
        let mut m = Map::new();
        m.insert("arch".into(), json!(name));
        for (k, v) in extra {
            m.insert(k.to_string(), json!(v));
        }
        m
    };
    let mut c = vec![
        ours(mlp(vec![4], Activation::Relu), 1),
        ours(mlp(vec![3, 5], Activation::Tanh), 2),
        ours(mlp(vec![], Activation::Identity), 3),
        ours(small(12, vec![6, 6, 6], 3), 4),
        ours(Architecture::lenet(0), 5),
        foreign(&small(16, vec![8], 3), "F32", None),
        foreign(&small(16, vec![8], 3), "F64", None),
        foreign(&small(9, vec![5, 4], 2), "F16", None),
        foreign(&small(9, vec![5, 4], 2), "BF16", None),
        foreign(
            &mlp(vec![4], Activation::Relu),
            "F32",
            Some(named("mlp_1x4", &[])),
        ),
        foreign(
            &mlp(vec![4], Activation::Relu),
            "F32",
            Some(named("mlp_1x4", &[("activation", "tanh")])),
        ),
        foreign(&small(16, vec![8], 3), "F32", {
            let mut m = Map::new();
            m.insert(
                "param_order".into(),
                json!(r#"["1.weight","1.bias","3.weight","3.bias"]"#),
            );
            Some(m)
        }),
        foreign(&Architecture::lenet(0), "F32", None),
    ];
    c.push(ours(Architecture::lenet(1), 6));
    c
}

/// A random architecture small enough to run (including degenerate ones: zero widths, one class).
fn random_small_arch(rng: &mut Rng) -> Architecture {
    if rng.chance(10) {
        return Architecture::lenet(rng.below(2));
    }
    let depth = rng.below(4);
    Architecture::Mlp {
        input: *rng.pick(&[1, 2, 5, 16, 784]),
        hidden: (0..depth).map(|_| *rng.pick(&[0, 1, 2, 3, 7])).collect(),
        classes: *rng.pick(&[0, 1, 2, 3, 10]),
        activation: *rng.pick(&[Activation::Relu, Activation::Tanh, Activation::Identity]),
    }
}

/// An `arch` metadata value: a name, our JSON object (sometimes lying), or junk.
fn random_arch_meta(rng: &mut Rng) -> Value {
    match rng.below(4) {
        0 => json!(rng.pick(&EDGE_NAMES)),
        1 => {
            let hidden: Vec<Value> = (0..rng.below(4)).map(|_| number(rng)).collect();
            let mut o = json!({"kind": "mlp", "hidden": hidden});
            if rng.chance(50) {
                o["input"] = number(rng);
            }
            if rng.chance(50) {
                o["classes"] = number(rng);
            }
            if rng.chance(30) {
                o["activation"] = json!(rng.pick(&["relu", "tanh", "sigmoid", ""]));
            }
            o
        }
        2 => {
            json!({"kind": rng.pick(&["lenet", "mlp", "resnet", ""]), "extra_layers": number(rng)})
        }
        _ => random_small_arch(rng).to_json(),
    }
}

/// Mutates the header's JSON: metadata values, tensor dtypes, shapes, offsets and names.
fn mutate_header(rng: &mut Rng, header: &mut Map<String, Value>) {
    let names: Vec<String> = header
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    let name = if names.is_empty() {
        String::new()
    } else {
        rng.pick(&names).clone()
    };
    match rng.below(10) {
        0 | 1 => {
            let meta = header
                .entry("__metadata__")
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("object");
            // Metadata values are strings in safetensors; a non-string makes the header invalid.
            let v = random_arch_meta(rng);
            let s = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            if rng.chance(95) {
                meta.insert("arch".into(), json!(s));
            } else {
                meta.insert("arch".into(), json!(3));
            }
        }
        2 => {
            let meta = header
                .entry("__metadata__")
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("object");
            let mut order: Vec<Value> = names.iter().map(|n| json!(n)).collect();
            match rng.below(4) {
                0 => {
                    order.pop();
                }
                1 => order.push(json!(names.first().cloned().unwrap_or_default())),
                2 => order.reverse(),
                _ => order.push(json!(7)),
            }
            meta.insert("param_order".into(), json!(Value::Array(order).to_string()));
            if rng.chance(30) {
                meta.insert(
                    "activation".into(),
                    json!(rng.pick(&["relu", "tanh", "identity", "gelu"])),
                );
            }
        }
        3 if !name.is_empty() => {
            header[&name]["dtype"] = json!(rng.pick(&[
                "F32", "F64", "F16", "BF16", "I8", "U8", "BOOL", "I64", "F8_E4M3", "F4", "ZZ"
            ]));
        }
        4 | 5 if !name.is_empty() => {
            let shape = header[&name]["shape"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mut shape = shape;
            match rng.below(4) {
                0 if !shape.is_empty() => {
                    let i = rng.below(shape.len());
                    shape[i] = number(rng);
                }
                1 => shape.push(number(rng)),
                2 => {
                    shape.pop();
                }
                _ => {
                    if let Some(d) = shape.first_mut() {
                        *d = json!(0);
                    }
                }
            }
            header[&name]["shape"] = Value::Array(shape);
        }
        6 if !name.is_empty() => {
            let i = rng.below(2);
            header[&name]["data_offsets"][i] = number(rng);
        }
        7 if !name.is_empty() => {
            let v = header.remove(&name).expect("present");
            let new = rng
                .pick(&[
                    "x",
                    "10.weight",
                    "1.bias",
                    "",
                    "fc_3.weight",
                    "conv1.0.weight",
                ])
                .to_string();
            if rng.chance(50) {
                header.insert(name.clone(), v.clone());
            }
            header.insert(new, v);
        }
        8 if !name.is_empty() => {
            header.remove(&name);
        }
        _ => {
            let meta = header
                .entry("__metadata__")
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("object");
            let key = rng.pick(&["dataset", "epoch", "seed", "format", "num_params"]);
            let v = number(rng);
            meta.insert(key.to_string(), json!(v.to_string()));
        }
    }
}

/// One fuzz input from the corpus.
fn make_input(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let seed = rng.pick(corpus);
    match rng.below(10) {
        // Bytes: flips (mostly in the header), truncation, extension, the length prefix.
        0..=2 => {
            let mut b = seed.clone();
            let header_end = 8 + u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
            for _ in 0..1 + rng.below(4) {
                match rng.below(6) {
                    0 => b.truncate(rng.below(b.len() + 1)),
                    1 => b.extend((0..rng.below(64)).map(|_| rng.next() as u8)),
                    2 => {
                        let v = *rng.pick(&EDGE_NUMBERS) as u64;
                        if b.len() >= 8 {
                            b[..8].copy_from_slice(&v.to_le_bytes());
                        }
                    }
                    _ => {
                        if !b.is_empty() {
                            let span = if rng.chance(80) {
                                header_end.min(b.len())
                            } else {
                                b.len()
                            };
                            let i = rng.below(span.max(1)).min(b.len() - 1);
                            b[i] ^= 1 << rng.below(8);
                        }
                    }
                }
            }
            b
        }
        // The header's JSON, re-encoded.
        3..=6 => {
            let (header, mut data) = decode(seed);
            let mut header = header.as_object().cloned().expect("object");
            for _ in 0..1 + rng.below(3) {
                mutate_header(rng, &mut header);
            }
            if rng.chance(15) {
                data.truncate(rng.below(data.len() + 1));
            }
            let bad_prefix = rng.chance(5).then(|| *rng.pick(&EDGE_NUMBERS) as u64);
            encode(&Value::Object(header), &data, bad_prefix)
        }
        // A consistent file of a random small architecture, its metadata sometimes lying.
        _ => {
            let arch = random_small_arch(rng);
            let mut meta = None;
            if rng.chance(50) {
                let mut m = Map::new();
                let v = if rng.chance(50) {
                    arch.to_json()
                } else {
                    random_arch_meta(rng)
                };
                m.insert(
                    "arch".into(),
                    json!(match v {
                        Value::String(s) => s,
                        o => o.to_string(),
                    }),
                );
                meta = Some(m);
            }
            let dtype = rng.pick(&["F32", "F32", "F64", "F16", "BF16"]);
            foreign(&arch, dtype, meta)
        }
    }
}

/// A `--model` for the input: none mostly, else a family or an exact model (huge ones included).
fn random_spec(rng: &mut Rng) -> Option<ModelSpec> {
    match rng.below(10) {
        0 => Some(ModelSpec::Mlp { activation: None }),
        1 => Some(ModelSpec::Mlp {
            activation: Some(Activation::Tanh),
        }),
        2 => Some(ModelSpec::LeNet),
        3 => {
            let name: &&str = rng.pick(&EDGE_NAMES);
            ModelSpec::parse(name).ok()
        }
        _ => None,
    }
}

/// Everything a tool does with a checkpoint that loads. Panics on a broken invariant.
fn exercise(ck: &Checkpoint) {
    let net = &ck.network;
    let size = net
        .arch
        .size()
        .expect("a loaded model passes Architecture::size");
    assert_eq!(size.params as usize, net.num_params());
    assert_eq!(ck.params.len(), net.num_params());
    let _ = ck.check_finite(Path::new("fuzz"));
    let batch = 2;
    let features = net.input_features();
    let x: Vec<f32> = (0..batch * features)
        .map(|i| (i % 7) as f32 * 0.1)
        .collect();
    let labels = [0, net.classes() - 1];
    let mut ws = net.workspace::<f32>(batch);
    let logits = net.forward(&ck.params, &x, batch, &mut ws).len();
    assert_eq!(logits, batch * net.classes());
    let mut grad = vec![0f32; net.num_params()];
    let _ = net.loss_and_gradient(&ck.params, &x, &labels, &mut grad, &mut ws);
    let _ = net.loss_sum(&ck.params, &x, &labels, &mut ws);
    let init = initialise::<f32>(net, 1);
    assert_eq!(init.len(), net.num_params());
    // What it saves loads back as the same model and parameters.
    let bytes = ck.to_bytes().expect("to_bytes");
    let back = Checkpoint::from_bytes(Path::new("fuzz"), &bytes, None).expect("own bytes load");
    assert_eq!(back.network, *net);
    assert!(back
        .params
        .iter()
        .zip(&ck.params)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
}

fn main() {
    let inputs: usize = std::env::var("FUZZ_INPUTS")
        .ok()
        .and_then(|s| s.replace('_', "").parse().ok())
        .unwrap_or(20_000);
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let out = std::env::var_os("FUZZ_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("ngd-slt-fuzz-{}", std::process::id()))
        });
    std::fs::create_dir_all(&out).expect("fuzz output folder");
    OUT_DIR.set(out.clone()).expect("set once");

    let corpus = corpus();
    for (i, c) in corpus.iter().enumerate() {
        let ck = Checkpoint::from_bytes(Path::new("corpus"), c, None)
            .unwrap_or_else(|e| panic!("corpus entry {i} does not load: {e}"));
        exercise(&ck);
    }
    let file = out.join("input.safetensors");
    let mut rng = Rng(seed);
    let (mut loaded, mut refused) = (0usize, 0usize);
    let start = Instant::now();
    for n in 0..inputs {
        let input = make_input(&mut rng, &corpus);
        let spec = random_spec(&mut rng);
        let through_file = n % 50 == 0;
        if through_file {
            std::fs::write(&file, &input).expect("write the input");
        }
        INPUT_PTR.store(input.as_ptr() as *mut u8, Ordering::SeqCst);
        INPUT_LEN.store(input.len(), Ordering::SeqCst);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            if through_file {
                let _ = load_optimizer_state(&file);
                let _ = Checkpoint::load(&file, spec.as_ref());
            }
            match Checkpoint::from_bytes(Path::new("fuzz"), &input, spec.as_ref()) {
                Ok(ck) => {
                    exercise(&ck);
                    true
                }
                Err(e) => {
                    let msg = e.to_string();
                    assert!(!msg.contains('\n'), "a multi-line error: {msg}");
                    false
                }
            }
        }));
        INPUT_PTR.store(std::ptr::null_mut(), Ordering::SeqCst);
        match outcome {
            Ok(true) => loaded += 1,
            Ok(false) => refused += 1,
            Err(_) => {
                let path = out.join("fuzz-panic.safetensors");
                std::fs::write(&path, &input).expect("write the input");
                eprintln!(
                    "fuzz_checkpoint: input {n} (seed {seed}, --model {spec:?}) panicked; it is in {}",
                    path.display()
                );
                std::process::exit(1);
            }
        }
    }
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_dir(&out);
    println!(
        "fuzz_checkpoint: {inputs} inputs (seed {seed}) in {:.1} s: {loaded} loaded and ran, {refused} refused; \
         no panic, peak live allocation {:.1} MiB (limit 1 GiB)",
        start.elapsed().as_secs_f64(),
        PEAK.load(Ordering::Relaxed) as f64 / (1 << 20) as f64
    );
}
