//! Readable names for the JSON pointers the tools record, for axis labels and titles: a figure
//! says "LLC (local learning coefficient)", not "/llc/llc". Names carry no combining marks (the
//! figures' bitmap text cannot place them), so λ̂ is spelt LLC here and X̂ is not used.

/// How a recorded number is shown on an axis.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantity {
    /// Axis label, with its unit where it has one.
    pub label: String,
    /// Short name for titles ("LLC", "test loss").
    pub short: String,
    /// Factor from the recorded value to the plotted one (100 for a fraction shown in %).
    pub scale: f64,
}

impl Quantity {
    fn new(label: &str, short: &str) -> Self {
        Quantity {
            label: label.to_string(),
            short: short.to_string(),
            scale: 1.0,
        }
    }
}

/// The readable name of a pointer the tools write; an unknown pointer is shown as it is (give
/// `--ylabel` / `--xlabel` for those).
pub fn quantity(pointer: &str) -> Quantity {
    let q = Quantity::new;
    match pointer {
        "/llc/llc" | "/llc/mean" => q("LLC (local learning coefficient)", "LLC"),
        "/llc/llc_sd" => q("sd of the LLC over chains", "sd of the LLC over chains"),
        "/llc/init_loss" => q("loss at the checkpoint (nats)", "initial loss"),
        "/wbic/wbic" => q("WBIC (nats)", "WBIC"),
        "/hessian/trace" => q("Tr(H) (Hessian trace of the loss)", "Tr(H)"),
        "/test_loss" => q("test loss (cross-entropy, nats)", "test loss"),
        "/train_loss" => q("training loss (cross-entropy, nats)", "training loss"),
        "/train_eval_loss" => q(
            "training loss at the checkpoint (cross-entropy, nats)",
            "training loss",
        ),
        "/train_acc" => Quantity {
            scale: 100.0,
            ..q("training accuracy (%)", "training accuracy")
        },
        "/test_acc" => Quantity {
            scale: 100.0,
            ..q("test accuracy (%)", "test accuracy")
        },
        "/epoch" => q("epoch", "epoch"),
        "/model/name" => q("model", "model"),
        "/dataset" => q("data set", "data set"),
        "/optimizer/name" => q("optimiser", "optimiser"),
        "/optimizer/fisher" => q("Fisher", "Fisher"),
        "/variant" => q("variant", "variant"),
        "/run" => q("run", "run"),
        "/step" => q("optimiser step", "step"),
        "/seed" => q("seed", "seed"),
        "/optimizer/alpha" => q("NGD's α (Fisher smoothing)", "NGD's α"),
        "/optimizer/epsilon" => q("NGD's ε (eigenvalue floor)", "NGD's ε"),
        "/optimizer/damping_value" => q("ngd-exact's relative damping", "relative damping"),
        "/optimizer/lr" => q("learning rate", "learning rate"),
        "/ngd_nan_fallbacks" => q(
            "NGD NaN fallbacks (axis calls per epoch)",
            "NGD NaN fallbacks",
        ),
        "/ngd_norm_ratio" => q(
            "NGD direction norm / gradient norm, before rescaling (mean)",
            "NGD norm ratio",
        ),
        "/ngd_shadow_difference" => q("‖d_f32 − d_f64‖/‖g‖ (mean)", "f32 − f64 difference"),
        "/ngd_exact_lambda" => q("ngd-exact's damping λ (mean)", "ngd-exact λ"),
        "/ngd_exact_gram_condition_mean" => q(
            "condition number of ngd-exact's Gram matrix (mean)",
            "Gram condition (mean)",
        ),
        "/ngd_exact_gram_condition_max" => q(
            "condition number of ngd-exact's Gram matrix (max)",
            "Gram condition (max)",
        ),
        "/direction_noise_ratio" => q("noise ‖ξ‖/‖g‖ (mean)", "noise ratio"),
        p => {
            let tensor = |field: &str| {
                p.strip_prefix("/ngd_tensors/")
                    .and_then(|rest| rest.strip_suffix(field))
                    .filter(|t| !t.is_empty() && !t.contains('/'))
                    .map(str::to_string)
            };
            if let Some(t) = tensor("/cosine") {
                q(
                    &format!("cosine(NGD direction, gradient), tensor {t}"),
                    &format!("NGD cosine, {t}"),
                )
            } else if let Some(t) = tensor("/rank_on_floor") {
                q(
                    &format!("fraction of NGD's rank on the floor, tensor {t}"),
                    &format!("NGD rank on floor, {t}"),
                )
            } else {
                q(p, p)
            }
        }
    }
}

/// The short names of several pointers joined ("data set, model"), for a legend's heading or the
/// x axis of a bar chart.
pub fn names(pointers: &[String]) -> String {
    pointers
        .iter()
        .map(|p| quantity(p).short)
        .collect::<Vec<_>>()
        .join(", ")
}

/// "epoch 20" / "epochs 19, 20" / "" (each seed's last epoch).
pub fn epochs_phrase(epochs: &[u64]) -> String {
    match epochs {
        [] => "the last epoch".to_string(),
        [e] => format!("epoch {e}"),
        es => format!(
            "epochs {}",
            es.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// "30 seeds" when every cell has the same count, else "2–3 seeds".
pub fn seeds_phrase(counts: impl IntoIterator<Item = usize>) -> String {
    let (lo, hi) = counts
        .into_iter()
        .fold((usize::MAX, 0), |(a, b), n| (a.min(n), b.max(n)));
    match (lo, hi) {
        (_, 0) => "no seeds".to_string(),
        (1, 1) => "1 seed".to_string(),
        (a, b) if a == b => format!("{a} seeds"),
        (a, b) => format!("{a}–{b} seeds"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_pointers_read_as_words_and_unknown_ones_stay() {
        assert_eq!(
            quantity("/llc/llc").label,
            "LLC (local learning coefficient)"
        );
        assert_eq!(
            quantity("/hessian/trace").label,
            "Tr(H) (Hessian trace of the loss)"
        );
        assert_eq!(quantity("/test_acc").scale, 100.0);
        assert_eq!(quantity("/test_acc").label, "test accuracy (%)");
        assert_eq!(
            quantity("/ngd_tensors/1.weight/cosine").short,
            "NGD cosine, 1.weight"
        );
        assert_eq!(quantity("/some/new_field").label, "/some/new_field");
        assert_eq!(
            quantity("/ngd_tensors//cosine").label,
            "/ngd_tensors//cosine"
        );
    }

    /// The bitmap backend would draw a combining mark beside its letter (see plot.rs).
    #[test]
    fn no_name_has_a_combining_mark() {
        for p in [
            "/llc/llc",
            "/llc/mean",
            "/llc/llc_sd",
            "/llc/init_loss",
            "/wbic/wbic",
            "/hessian/trace",
            "/test_loss",
            "/train_loss",
            "/test_acc",
            "/epoch",
            "/step",
            "/optimizer/alpha",
            "/optimizer/epsilon",
            "/optimizer/damping_value",
            "/optimizer/lr",
            "/ngd_nan_fallbacks",
            "/ngd_norm_ratio",
            "/ngd_shadow_difference",
            "/ngd_exact_lambda",
            "/ngd_exact_gram_condition_mean",
            "/ngd_exact_gram_condition_max",
            "/direction_noise_ratio",
            "/ngd_tensors/1.weight/cosine",
            "/ngd_tensors/1.weight/rank_on_floor",
        ] {
            let q = quantity(p);
            for text in [&q.label, &q.short] {
                assert!(
                    !text.chars().any(|c| ('\u{0300}'..='\u{036f}').contains(&c)),
                    "{p}: {text}"
                );
                assert_ne!(text, p, "{p} has no name");
            }
        }
    }

    #[test]
    fn phrases() {
        assert_eq!(epochs_phrase(&[19, 20]), "epochs 19, 20");
        assert_eq!(epochs_phrase(&[3]), "epoch 3");
        assert_eq!(seeds_phrase([30, 30]), "30 seeds");
        assert_eq!(seeds_phrase([2, 3]), "2–3 seeds");
        assert_eq!(seeds_phrase([1]), "1 seed");
    }
}
