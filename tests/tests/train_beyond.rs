//! End-to-end tests of the flags behind `make beyond-table` (issue #8): `--direction-noise` (SGD with
//! isotropic noise, the noise control), `--ngd-shadow-f64` (the f32 online NGD measured against an
//! f64-state shadow) and `--variant`: what they record, that they are reproducible and resume exactly,
//! that the shadow leaves the run alone, and that bad settings are refused.

mod support;

use safetensors::SafeTensors;
use serde_json::Value;
use std::path::Path;
use support::*;

fn checkpoint(dir: &Path, epoch: usize) -> Vec<u8> {
    std::fs::read(dir.join(format!("epoch-{epoch:04}.safetensors"))).unwrap()
}

fn metadata_optimizer(bytes: &[u8]) -> Value {
    let (_, meta) = SafeTensors::read_metadata(bytes).unwrap();
    serde_json::from_str(&meta.metadata().as_ref().unwrap()["optimizer"]).unwrap()
}

/// Every tensor of two checkpoints, bit for bit (the metadata may differ).
fn assert_same_tensors(a: &[u8], b: &[u8], what: &str) {
    let (ta, tb) = (
        SafeTensors::deserialize(a).unwrap(),
        SafeTensors::deserialize(b).unwrap(),
    );
    let mut names = ta.names();
    names.sort();
    assert_eq!(names.len(), 4);
    for n in names {
        assert_eq!(
            ta.tensor(n).unwrap().data(),
            tb.tensor(n).unwrap().data(),
            "{what}: tensor {n}"
        );
    }
}

#[test]
fn direction_noise_is_recorded_seeded_and_zero_is_plain_sgd() {
    let noisy = scratch("noise-a");
    let args = [
        "--direction-noise",
        "0.5",
        "--variant",
        "sgd-noise",
        "--seed",
        "3",
    ];
    let o = train_small(&noisy, "1", &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = &records(&o)[0];
    assert_eq!(r["variant"], "sgd-noise");
    assert_eq!(r["optimizer"]["name"], "sgd");
    assert_eq!(r["optimizer"]["direction_noise"], 0.5);
    assert_eq!(r["optimizer"]["direction_noise_seed"], 3);
    // ‖ξ‖/‖g‖ over all tensors is R at every step (up to the f32 rounding of g + ξ).
    let ratio = r["direction_noise_ratio"].as_f64().unwrap();
    assert!((ratio - 0.5).abs() < 1e-6, "{ratio}");
    let bytes = checkpoint(&noisy, 1);
    assert_eq!(metadata_optimizer(&bytes)["direction_noise"], 0.5);
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(meta.metadata().as_ref().unwrap()["variant"], "sgd-noise");

    // The same command again: the same bytes. Another R: other weights.
    let again = scratch("noise-b");
    assert!(train_small(&again, "1", &args).status.success());
    assert_eq!(bytes, checkpoint(&again, 1));
    let other = scratch("noise-c");
    assert!(
        train_small(&other, "1", &["--direction-noise", "0.25", "--seed", "3"])
            .status
            .success()
    );
    let plain = scratch("noise-plain");
    assert!(train_small(&plain, "1", &["--seed", "3"]).status.success());
    let weights = |b: &[u8]| {
        SafeTensors::deserialize(b)
            .unwrap()
            .tensor("1.weight")
            .unwrap()
            .data()
            .to_vec()
    };
    assert_ne!(weights(&bytes), weights(&checkpoint(&other, 1)));
    assert_ne!(weights(&bytes), weights(&checkpoint(&plain, 1)));

    // R = 0 is plain SGD: the checkpoint (weights and metadata) and its sidecar are the same bytes.
    let zero = scratch("noise-zero");
    let o = train_small(&zero, "1", &["--direction-noise", "0", "--seed", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(records(&o)[0]["optimizer"].get("direction_noise").is_none());
    assert_eq!(checkpoint(&plain, 1), checkpoint(&zero, 1));
    let sidecar = "epoch-0001.safetensors.optim.safetensors";
    assert_eq!(
        std::fs::read(plain.join(sidecar)).unwrap(),
        std::fs::read(zero.join(sidecar)).unwrap()
    );
}

/// Two epochs in one go and 1 + 1 with --resume give byte-identical checkpoints: the noise stream is
/// indexed by the step, which the sidecar keeps.
#[test]
fn direction_noise_resumes_exactly() {
    let v = ["--direction-noise", "0.8"];
    let full = scratch("noise-resume-full");
    assert!(train_small(&full, "2", &v).status.success());
    let part = scratch("noise-resume-part");
    assert!(train_small(&part, "1", &v).status.success());
    let init = part.join("epoch-0001.safetensors");
    let mut args = v.to_vec();
    args.extend(["--resume", "--init", init.to_str().unwrap()]);
    let o = train_small(&part, "2", &args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(checkpoint(&full, 2), checkpoint(&part, 2));
    // Resuming a plain SGD run with noise is a changed setting; accepted, its sidecar has no noise
    // step, so it is still refused.
    let plain = scratch("noise-resume-plain");
    assert!(train_small(&plain, "1", &[]).status.success());
    let init = plain.join("epoch-0001.safetensors");
    let resume = [
        "--direction-noise",
        "0.8",
        "--resume",
        "--init",
        init.to_str().unwrap(),
    ];
    let o = train_small(&plain, "2", &resume);
    assert_one_line_error(&o, &["--direction-noise was unset", "is 0.8 now"]);
    let mut accepting = resume.to_vec();
    accepting.push("--resume-with-changes");
    let o = train_small(&plain, "2", &accepting);
    assert_one_line_error(&o, &["sgd.direction_noise_step", "--direction-noise"]);
}

#[test]
fn shadow_records_the_difference_and_leaves_the_run_alone() {
    let shadowed = scratch("shadow-on");
    let o = train_small(&shadowed, "2", &["--optimizer", "ngd", "--ngd-shadow-f64"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rs = records(&o);
    let plain = scratch("shadow-off");
    let p = train_small(&plain, "2", &["--optimizer", "ngd"]);
    assert!(p.status.success(), "{}", stderr(&p));
    let ps = records(&p);
    for (r, q) in rs.iter().zip(&ps) {
        assert_eq!(r["optimizer"]["shadow_f64"], true);
        assert!(q["optimizer"].get("shadow_f64").is_none());
        let d = r["ngd_shadow_difference"].as_f64().unwrap();
        assert!(d > 0.0 && d.is_finite(), "{d}");
        assert!(q.get("ngd_shadow_difference").is_none());
        for (name, t) in r["ngd_tensors"].as_object().unwrap() {
            assert!(t["shadow_difference"].as_f64().unwrap() >= 0.0, "{name}");
            assert!(t["shadow_cosine"].as_f64().unwrap().abs() <= 1.0 + 1e-9);
            // The f32 run's own statistics are those of the run without the shadow.
            assert_eq!(t["cosine"], q["ngd_tensors"][name]["cosine"], "{name}");
        }
        for k in ["train_loss", "test_loss", "test_acc", "ngd_nan_fallbacks"] {
            assert_eq!(r[k], q[k], "{k}");
        }
    }
    for epoch in [1, 2] {
        assert_same_tensors(
            &checkpoint(&shadowed, epoch),
            &checkpoint(&plain, epoch),
            &format!("epoch {epoch} with and without --ngd-shadow-f64"),
        );
    }
    // Resuming keeps the shadow's state too: the same checkpoint and the same measured difference.
    let part = scratch("shadow-resume");
    let v = ["--optimizer", "ngd", "--ngd-shadow-f64"];
    assert!(train_small(&part, "1", &v).status.success());
    let init = part.join("epoch-0001.safetensors");
    let mut args = v.to_vec();
    args.extend(["--resume", "--init", init.to_str().unwrap()]);
    let o = train_small(&part, "2", &args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(checkpoint(&shadowed, 2), checkpoint(&part, 2));
    assert_eq!(
        records(&o)[0]["ngd_shadow_difference"],
        rs[1]["ngd_shadow_difference"]
    );
}

#[test]
fn bad_noise_and_shadow_settings_are_refused() {
    let dir = scratch("beyond-bad");
    let cases: [(&[&str], &[&str]); 9] = [
        (&["--direction-noise=-0.1"], &["--direction-noise -0.1"]),
        (&["--direction-noise", "NaN"], &["--direction-noise NaN"]),
        (&["--direction-noise", "inf"], &["--direction-noise inf"]),
        (
            &["--optimizer", "ngd", "--direction-noise", "0.1"],
            &["--direction-noise", "sgd only"],
        ),
        (
            &["--direction-noise-tensor", "9.weight=0.1"],
            &["--direction-noise-tensor", "9.weight"],
        ),
        (
            &["--direction-noise-tensor", "1.bias"],
            &["--direction-noise-tensor", "NAME=R"],
        ),
        (&["--ngd-shadow-f64"], &["--ngd-shadow-f64", "ngd only"]),
        (
            &["--optimizer", "ngd-exact", "--ngd-shadow-f64"],
            &["--ngd-shadow-f64", "ngd only"],
        ),
        (
            &[
                "--optimizer",
                "ngd",
                "--ngd-dtype",
                "f64",
                "--ngd-shadow-f64",
            ],
            &["--ngd-shadow-f64", "--ngd-dtype f64"],
        ),
    ];
    for (args, needles) in cases {
        let o = train_small(&dir.join("o"), "1", args);
        assert_one_line_error(&o, needles);
        assert!(!dir.join("o").join("epoch-0001.safetensors").exists());
    }
    // A per-tensor R overrides the global one for that tensor only.
    let o = train_small(
        &dir.join("per"),
        "1",
        &[
            "--direction-noise",
            "0.1",
            "--direction-noise-tensor",
            "1.bias=0,3.bias=2",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let r = &records(&o)[0];
    assert_eq!(r["optimizer"]["direction_noise_tensors"]["1.bias"], 0.0);
    assert_eq!(r["optimizer"]["direction_noise_tensors"]["3.bias"], 2.0);
}
