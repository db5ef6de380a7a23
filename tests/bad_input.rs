//! Bad input gets a clear error, never a panic: one test per failure the foundation issue lists.
mod common;
use jobx_engine::checkpoint::Checkpoint;
use jobx_engine::extract::{read_records, tokenize_prompt, Engine, InputFormat};
use jobx_engine::models::t5::{T5Config, T5Model};
use jobx_engine::Error;
use std::path::Path;

fn load(dir: &Path) -> Result<T5Model, Error> {
    T5Model::load_dir(dir)
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(v.as_object_mut().unwrap());
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
}

/// Rewrite model.safetensors through `f` (name, dtype, shape, bytes) -> keep/modify.
fn rewrite_weights(
    dir: &Path,
    f: impl Fn(&str, &mut safetensors::Dtype, &mut Vec<usize>, &mut Vec<u8>) -> bool,
) {
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut kept: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        let (mut d, mut s, mut b) = (view.dtype(), view.shape().to_vec(), view.data().to_vec());
        if f(&name, &mut d, &mut s, &mut b) {
            kept.push((name, d, s, b));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = kept
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &p).unwrap();
}

fn msg(e: Error) -> String {
    e.to_string()
}

#[test]
fn missing_safetensors_is_a_clear_error() {
    let t = common::copy_dir(&common::fixture("t5-relu-tied"));
    std::fs::remove_file(t.path().join("model.safetensors")).unwrap();
    let m = msg(load(t.path()).err().expect("must fail"));
    assert!(m.contains("no model.safetensors"), "{m}");
}

#[test]
fn truncated_safetensors_is_a_clear_error() {
    let t = common::copy_dir(&common::fixture("t5-relu-tied"));
    let p = t.path().join("model.safetensors");
    let b = std::fs::read(&p).unwrap();
    std::fs::write(&p, &b[..b.len() / 2]).unwrap();
    let m = msg(load(t.path()).err().expect("must fail"));
    assert!(m.contains("truncated"), "{m}");
    // a file cut inside its header too
    std::fs::write(&p, &b[..20]).unwrap();
    let m = msg(load(t.path()).err().expect("must fail"));
    assert!(m.contains("safetensors"), "{m}");
}

#[test]
fn wrong_shape_for_the_config_is_named() {
    let t = common::copy_dir(&common::fixture("t5-relu-tied"));
    edit_config(t.path(), |c| {
        c.insert("d_ff".into(), serde_json::json!(65));
    });
    let m = msg(load(t.path()).err().expect("must fail"));
    assert!(
        m.contains("DenseReluDense.wi.weight") && m.contains("65"),
        "{m}"
    );
}

#[test]
fn wrong_dtype_is_named() {
    let t = common::copy_dir(&common::fixture("t5-relu-tied"));
    rewrite_weights(t.path(), |n, d, _s, _b| {
        if n == "encoder.final_layer_norm.weight" {
            *d = safetensors::Dtype::I32;
        }
        true
    });
    let m = msg(load(t.path()).err().expect("must fail"));
    assert!(
        m.contains("encoder.final_layer_norm.weight") && m.contains("I32"),
        "{m}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let t = common::copy_dir(&common::fixture("t5-relu-tied"));
    rewrite_weights(t.path(), |n, _, _, _| {
        n != "decoder.block.1.layer.1.EncDecAttention.k.weight"
    });
    let m = msg(load(t.path()).err().expect("must fail"));
    assert!(
        m.contains("decoder.block.1.layer.1.EncDecAttention.k.weight") && m.contains("missing"),
        "{m}"
    );
}

#[test]
fn bf16_and_f16_weights_load_and_match_f32_closely() {
    // Checkpoints as users have them: the same fixture stored in bf16 and f16 still verifies
    // loosely (the references are f32, so only within the narrower type's precision).
    for dt in [safetensors::Dtype::BF16, safetensors::Dtype::F16] {
        let t = common::copy_dir(&common::fixture("t5-gated-gelu-untied"));
        rewrite_weights(t.path(), |_, d, _, b| {
            let f: Vec<f32> = b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            *b = f
                .iter()
                .flat_map(|&x| match dt {
                    safetensors::Dtype::BF16 => half::bf16::from_f32(x).to_bits().to_le_bytes(),
                    _ => half::f16::from_f32(x).to_bits().to_le_bytes(),
                })
                .collect();
            *d = dt;
            true
        });
        let mut spec: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(t.path().join("reference.json")).unwrap(),
        )
        .unwrap();
        spec["tolerance_rel"] = serde_json::json!(5e-2);
        for c in spec["cases"].as_array_mut().unwrap() {
            c["has_greedy"] = serde_json::json!(false);
            c["beam"] = serde_json::Value::Null;
        }
        std::fs::write(t.path().join("reference.json"), spec.to_string()).unwrap();
        let s = jobx_engine::verify::verify_dir(t.path(), &mut |_| {}).unwrap();
        assert!(s.ok, "{dt:?}: {s:?}");
        assert!(s.max_rel_err > 0.0);
    }
}

#[test]
fn transformers_5_t5_config_keeps_the_untied_head() {
    // transformers >= 5 saves every T5 with `tie_word_embeddings: true` and the v1.1 meaning in
    // `scale_decoder_outputs: false`; a FLAN-T5 saved that way must still use its own lm_head
    // without the d_model^-0.5 scaling (found on a checkpoint re-saved with transformers 5.24).
    let t = common::copy_dir(&common::fixture("t5-gated-gelu-untied"));
    edit_config(t.path(), |c| {
        c.insert("tie_word_embeddings".into(), serde_json::json!(true));
        c.insert("scale_decoder_outputs".into(), serde_json::json!(false));
    });
    let s = jobx_engine::verify::verify_dir(t.path(), &mut |_| {}).unwrap();
    assert!(s.ok, "{s:?}");
    // and the original-T5 meaning (`scale_decoder_outputs: true`) is a different model
    edit_config(t.path(), |c| {
        c.insert("scale_decoder_outputs".into(), serde_json::json!(true));
    });
    let s = jobx_engine::verify::verify_dir(t.path(), &mut |_| {}).unwrap();
    assert!(!s.ok);
}

#[test]
fn sharded_checkpoint_loads_like_a_single_file() {
    let src = common::fixture("t5-relu-tied");
    let t = common::copy_dir(&src);
    std::fs::remove_file(t.path().join("model.safetensors")).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let half = names.len() / 2;
    let mut map = serde_json::Map::new();
    for (i, part) in [&names[..half], &names[half..]].iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        let views: Vec<(String, safetensors::tensor::TensorView)> = part
            .iter()
            .map(|n| (n.clone(), st.tensor(n).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, None, &t.path().join(&file)).unwrap();
        for n in part.iter() {
            map.insert(n.clone(), serde_json::json!(file));
        }
    }
    std::fs::write(
        t.path().join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    let s = jobx_engine::verify::verify_dir(t.path(), &mut |_| {}).unwrap();
    assert!(s.ok && s.greedy_match, "{s:?}");
    let ck = Checkpoint::open_dir(t.path()).unwrap();
    assert_eq!(ck.names().len(), names.len());
}

#[test]
fn config_missing_keys_and_unknown_ffn_are_clear() {
    let t = common::copy_dir(&common::fixture("t5-relu-tied"));
    edit_config(t.path(), |c| {
        c.remove("d_model");
    });
    let m = msg(load(t.path()).err().expect("must fail"));
    assert!(m.contains("d_model") && m.contains("config.json"), "{m}");

    let t = common::copy_dir(&common::fixture("t5-relu-tied"));
    edit_config(t.path(), |c| {
        c.insert("feed_forward_proj".into(), serde_json::json!("gated-mish"));
    });
    let m = msg(load(t.path()).err().expect("must fail"));
    assert!(
        m.contains("gated-mish") && m.contains("feed_forward_proj"),
        "{m}"
    );

    let e = T5Config::from_json_str("{not json", Path::new("x/config.json"))
        .err()
        .unwrap();
    assert!(e.to_string().contains("x/config.json"));
}

#[test]
fn extra_layers_in_the_checkpoint_are_a_mismatch() {
    let t = common::copy_dir(&common::fixture("t5-relu-tied"));
    edit_config(t.path(), |c| {
        c.insert("num_layers".into(), serde_json::json!(2));
    });
    let m = msg(load(t.path()).err().expect("must fail"));
    assert!(m.contains("more layers"), "{m}");
}

#[test]
fn tokenizer_that_does_not_fit_the_model_is_refused() {
    // t5-relu-tied has a 256-token vocabulary; the real T5 tokenizer has 32,100 tokens.
    let t = common::copy_dir(&common::fixture("t5-relu-tied"));
    std::fs::copy(
        common::repo().join("tests/fixtures/tokenizers/t5/tokenizer.json"),
        t.path().join("tokenizer.json"),
    )
    .unwrap();
    let m = msg(Engine::load(t.path().to_str().unwrap())
        .err()
        .expect("must fail"));
    assert!(
        m.contains("tokenizer") && m.contains("do not belong together"),
        "{m}"
    );
}

#[test]
fn non_utf8_empty_and_malformed_inputs_become_error_records() {
    let r = read_records("a.txt", b"caf\xe9 au lait", InputFormat::Text);
    assert_eq!(r.len(), 1);
    assert!(r[0].source.as_ref().err().unwrap().contains("UTF-8"));
    let r = read_records(
        "b.jsonl",
        b"{\"source\": \"ok\"}\nnot json\n{\"id\": 7}\n{\"source\": 3}\n\xff\xfe\n\n",
        InputFormat::Jsonl,
    );
    assert_eq!(r.len(), 5);
    assert!(r[0].source.is_ok());
    assert!(r[1].source.as_ref().err().unwrap().contains("not JSON"));
    assert_eq!(r[2].id, "7");
    assert!(r[2].source.as_ref().err().unwrap().contains("no `source`"));
    assert!(r[3].source.as_ref().err().unwrap().contains("not a string"));
    assert!(r[4].source.as_ref().err().unwrap().contains("UTF-8"));
}

#[test]
fn long_input_is_cut_to_the_limit_keeping_eos() {
    let t = common::tiny_t5_with_tokenizer();
    let e = Engine::load(t.path().to_str().unwrap()).unwrap();
    let tok = e.tokenizer().unwrap();
    let long = "engineer ".repeat(3000);
    let (ids, cut) = tokenize_prompt(tok, &long, 1536, Some(1)).unwrap();
    assert_eq!(ids.len(), 1536);
    assert_eq!(*ids.last().unwrap(), 1, "EOS kept after truncation like HF");
    assert!(cut > 1000);
    let (ids, cut) = tokenize_prompt(tok, "short posting", 1536, Some(1)).unwrap();
    assert_eq!(cut, 0);
    assert_eq!(*ids.last().unwrap(), 1);
}

#[test]
fn out_of_vocabulary_ids_are_refused() {
    let m = load(&common::fixture("t5-relu-tied")).unwrap();
    let e = m.encode(&[5, 9999], &[1, 1], 1, 2).err().unwrap();
    assert!(e.to_string().contains("outside the vocabulary"));
    let e = m.encode(&[], &[], 1, 0).err().unwrap();
    assert!(e.to_string().contains("empty"));
}
