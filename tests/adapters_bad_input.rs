//! Adapters and configs that do not fit get a clear error each (the Mistral/LoRA issue's list).
mod common;
use jobx_engine::models::adapter::LoraAdapter;
use jobx_engine::models::mistral::{MistralConfig, MistralModel};
use jobx_engine::models::t5::T5Model;
use std::path::Path;

fn rewrite_adapter(dir: &Path, f: impl Fn(&str, &mut Vec<usize>, &mut Vec<u8>) -> Option<String>) {
    let p = dir.join("adapter_model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut kept = Vec::new();
    for (name, v) in st.tensors() {
        let (mut s, mut b) = (v.shape().to_vec(), v.data().to_vec());
        if let Some(n) = f(&name, &mut s, &mut b) {
            kept.push((n, s, b));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = kept
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &p).unwrap();
}

fn adapter_copy(fixture: &str) -> tempfile::TempDir {
    common::copy_dir(&common::fixture(fixture).join("adapter"))
}

#[test]
fn adapter_for_another_model_is_refused() {
    // The t5-lora adapter (d_model 32) on the t5-relu-tied model: same module names, other shapes.
    let a = LoraAdapter::load(&common::fixture("t5-lora").join("adapter"), "x").unwrap();
    let mut m = T5Model::load_dir(&common::fixture("t5-relu-tied")).unwrap();
    let e = a.attach(&mut m, 0).err().unwrap().to_string();
    assert!(
        e.contains("do not fit")
            || e.contains("not a linear layer")
            || e.contains("matches no linear layer"),
        "{e}"
    );
    // same model, but lora_A's input width changed: the shapes no longer fit the layer
    let t = adapter_copy("t5-lora");
    rewrite_adapter(t.path(), |n, s, b| {
        if n.contains("encoder.block.0.layer.0.SelfAttention.q.lora_A") {
            let (r, inp) = (s[0], s[1]);
            let f: Vec<f32> = b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            *b = (0..r)
                .flat_map(|i| f[i * inp..i * inp + inp - 1].to_vec())
                .flat_map(|x| x.to_le_bytes())
                .collect();
            *s = vec![r, inp - 1];
        }
        Some(n.to_string())
    });
    let a = LoraAdapter::load(t.path(), "x").unwrap();
    let mut m = T5Model::load_dir(&common::fixture("t5-lora")).unwrap();
    let e = a.attach(&mut m, 0).err().unwrap().to_string();
    assert!(
        e.contains("do not fit") && e.contains("encoder.block.0.layer.0.SelfAttention.q"),
        "{e}"
    );
    // and a Mistral adapter on a T5 model
    let a = LoraAdapter::load(&common::fixture("mistral-lora").join("adapter"), "x").unwrap();
    let mut m = T5Model::load_dir(&common::fixture("t5-lora")).unwrap();
    let e = a.attach(&mut m, 0).err().unwrap().to_string();
    assert!(
        e.contains("matches no linear layer") || e.contains("not a linear layer"),
        "{e}"
    );
}

#[test]
fn target_module_the_model_lacks_is_named() {
    let t = adapter_copy("mistral-lora");
    let p = t.path().join("adapter_config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    c["target_modules"] = serde_json::json!(["q_proj", "v_proj", "w_gate"]);
    std::fs::write(&p, c.to_string()).unwrap();
    let a = LoraAdapter::load(t.path(), "x").unwrap();
    let mut m = MistralModel::load_dir(&common::fixture("mistral-lora")).unwrap();
    let e = a.attach(&mut m, 0).err().unwrap().to_string();
    assert!(
        e.contains("`w_gate`") && e.contains("matches no linear layer"),
        "{e}"
    );
}

#[test]
fn rank_mismatch_between_a_and_b_is_named() {
    let t = adapter_copy("mistral-lora");
    rewrite_adapter(t.path(), |n, s, b| {
        if n.contains("layers.0.self_attn.q_proj.lora_B") {
            // drop one rank column of B: [out, r] -> [out, r-1]
            let (out, r) = (s[0], s[1]);
            let f: Vec<f32> = b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            let g: Vec<u8> = (0..out)
                .flat_map(|o| f[o * r..o * r + r - 1].to_vec())
                .flat_map(|x| x.to_le_bytes())
                .collect();
            *s = vec![out, r - 1];
            *b = g;
        }
        Some(n.to_string())
    });
    let e = LoraAdapter::load(t.path(), "x").err().unwrap().to_string();
    assert!(e.contains("rank mismatch") && e.contains("q_proj"), "{e}");
}

#[test]
fn unsupported_adapter_options_are_refused() {
    for (k, v, want) in [
        ("fan_in_fan_out", serde_json::json!(true), "fan_in_fan_out"),
        ("bias", serde_json::json!("all"), "bias"),
        (
            "modules_to_save",
            serde_json::json!(["lm_head"]),
            "modules_to_save",
        ),
        ("use_dora", serde_json::json!(true), "DoRA"),
    ] {
        let t = adapter_copy("t5-lora");
        let p = t.path().join("adapter_config.json");
        let mut c: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        c[k] = v;
        std::fs::write(&p, c.to_string()).unwrap();
        let e = LoraAdapter::load(t.path(), "x").err().unwrap().to_string();
        assert!(e.contains(want), "{k}: {e}");
    }
}

#[test]
fn rank_and_alpha_patterns_and_rslora_change_the_scale() {
    let t = adapter_copy("t5-lora");
    let p = t.path().join("adapter_config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    let base = LoraAdapter::load(t.path(), "x").unwrap();
    c["alpha_pattern"] = serde_json::json!({"q": 2.0});
    c["use_rslora"] = serde_json::json!(true);
    std::fs::write(&p, c.to_string()).unwrap();
    let pat = LoraAdapter::load(t.path(), "x").unwrap();
    let r = c["r"].as_f64().unwrap();
    let alpha = c["lora_alpha"].as_f64().unwrap();
    for (m, v) in &pat.modules {
        let expect = if m.ends_with(".q") {
            2.0 / r.sqrt()
        } else {
            alpha / r.sqrt()
        };
        assert!(
            (v.4 as f64 - expect).abs() < 1e-6,
            "{m}: {} vs {expect}",
            v.4
        );
        assert!((base.modules[m].4 as f64 - alpha / r).abs() < 1e-6);
    }
    // a rank_pattern that contradicts the stored rank is an error
    c["rank_pattern"] = serde_json::json!({"v": 7});
    std::fs::write(&p, c.to_string()).unwrap();
    let e = LoraAdapter::load(t.path(), "x").err().unwrap().to_string();
    assert!(e.contains("r = 7"), "{e}");
}

#[test]
fn mixtral_and_other_unsupported_configs_are_refused() {
    let dir = common::fixture("mistral-gqa4-window");
    let base: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    for (edit, want) in [
        (
            serde_json::json!({"model_type": "mixtral", "num_local_experts": 8}),
            "mixtral",
        ),
        (
            serde_json::json!({"num_local_experts": 8}),
            "mixture-of-experts",
        ),
        (
            serde_json::json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}),
            "yarn",
        ),
        (serde_json::json!({"num_key_value_heads": 3}), "multiple"),
        (serde_json::json!({"hidden_act": "gelu"}), "hidden_act"),
    ] {
        let mut c = base.clone();
        for (k, v) in edit.as_object().unwrap() {
            c[k] = v.clone();
        }
        let e = MistralConfig::from_json_str(&c.to_string(), Path::new("config.json"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(want), "{edit}: {e}");
    }
    // llama model_type with the same layout loads
    let mut c = base.clone();
    c["model_type"] = serde_json::json!("llama");
    assert!(MistralConfig::from_json_str(&c.to_string(), Path::new("config.json")).is_ok());
}

/// The CUDA adapter checks (`verify --device cuda` on the LoRA fixtures, and the mixed-adapter
/// batch test in cuda_ops.rs) compare with a bf16 / int8 tolerance. They can only catch a LoRA
/// that is dropped or applied to the wrong rows if the fixtures' adapters move the logits by
/// well over that tolerance: checked here, on the CPU graphs, for every position compared.
#[test]
fn lora_fixture_adapters_move_logits_far_beyond_the_cuda_tolerances() {
    use jobx_engine::verify::CUDA_INT8_TOLERANCE_REL;
    let need = 2.0 * CUDA_INT8_TOLERANCE_REL;
    let a = LoraAdapter::load(&common::fixture("t5-lora").join("adapter"), "a").unwrap();
    let mut t5 = T5Model::load_dir(&common::fixture("t5-lora")).unwrap();
    a.attach(&mut t5, 0).unwrap();
    let dec = [t5.cfg.decoder_start(), 7, 11, 13];
    for row in common::two_rows(t5.cfg.vocab_size as u32) {
        let with = common::t5_row_logits(&t5, &row, Some(0), &dec);
        let base = common::t5_row_logits(&t5, &row, None, &dec);
        for (step, (w, b)) in with.iter().zip(&base).enumerate() {
            let d = common::rel_err(b, w);
            eprintln!(
                "t5-lora row len {} step {step}: adapter moves logits by {d:.3}",
                row.len()
            );
            assert!(d > need, "t5-lora step {step}: {d} <= {need}");
        }
    }
    let dir = common::fixture("mistral-lora");
    let a = LoraAdapter::load(&dir.join("adapter"), "a").unwrap();
    let mut m = MistralModel::load_dir(&dir).unwrap();
    a.attach(&mut m, 0).unwrap();
    let v = m.cfg.vocab_size;
    for row in common::two_rows(v as u32) {
        let with = common::mistral_row_logits(&m, &row, Some(0));
        let base = common::mistral_row_logits(&m, &row, None);
        for p in 0..row.len() {
            let d = common::rel_err(&base[p * v..(p + 1) * v], &with[p * v..(p + 1) * v]);
            eprintln!(
                "mistral-lora row len {} pos {p}: adapter moves logits by {d:.3}",
                row.len()
            );
            assert!(d > need, "mistral-lora pos {p}: {d} <= {need}");
        }
    }
}

/// Per-row adapter slots through `Engine`: the CPU graphs take one adapter per batch, so a mixed
/// batch is refused with a clear error (on CUDA it runs: cuda_ops.rs); uniform rows equal the
/// single-adapter call; an unloaded slot is an error, not a panic.
#[test]
fn engine_rows_of_mixed_adapters_are_refused_on_the_cpu() {
    use jobx_engine::extract::Engine;
    use jobx_engine::generate::GenOptions;
    let dir = common::fixture("t5-lora");
    let mut e = Engine::load(dir.to_str().unwrap()).unwrap();
    assert_eq!(e.load_adapter("a", &dir.join("adapter")).unwrap(), 0);
    assert!(!e.mixes_adapters());
    let inputs = common::two_rows(e.vocab_size() as u32);
    let opts = GenOptions {
        max_new_tokens: 6,
        eos: e.eos.clone(),
        ..Default::default()
    };
    let err = e
        .generate_ids_rows(&inputs, &opts, &mut [], &[Some(0), None])
        .unwrap_err()
        .to_string();
    assert!(err.contains("several adapters runs on CUDA only"), "{err}");
    let err = e
        .generate_ids_rows(&inputs, &opts, &mut [], &[Some(3), Some(3)])
        .unwrap_err()
        .to_string();
    assert!(err.contains("adapter slot 3 is not loaded"), "{err}");
    let rows = e
        .generate_ids_rows(&inputs, &opts, &mut [], &[Some(0), Some(0)])
        .unwrap();
    let one = e
        .generate_ids_with(&inputs, &opts, &mut [], Some(0))
        .unwrap();
    let toks = |v: Vec<jobx_engine::generate::GenOutput>| -> Vec<Vec<u32>> {
        v.into_iter().map(|o| o.tokens).collect()
    };
    assert_eq!(toks(rows), toks(one));
}
