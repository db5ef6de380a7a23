//! Mistral extraction end to end: chat template + tokenizer ids equal HF apply_chat_template's
//! (single BOS), greedy ids equal HF generate's on a tiny real-vocabulary model, left-padded
//! batches equal one-by-one runs, adapters are chosen per request, and the JSON object is taken
//! from the completion only.
mod common;
use jobx_engine::extract::{Engine, ExtractOptions, InputRecord};
use jobx_engine::generate::GenOptions;
use jobx_engine::prompts::PromptTemplate;

fn engine(dir: &std::path::Path) -> Engine {
    let mut e = Engine::load(dir.to_str().unwrap()).unwrap();
    e.chat = Some(jobx_engine::chat::ChatTemplate {
        source: jobx_engine::chat::MISTRAL_V3.into(),
        bos_token: "<s>".into(),
        eos_token: "</s>".into(),
    });
    e
}

#[test]
fn chat_template_ids_match_hf_apply_chat_template() {
    let t = common::tiny_mistral_with_tokenizer();
    let e = engine(t.path());
    let fx: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixture("mistral-chat-ids.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        fx["template"],
        jobx_engine::chat::MISTRAL_V3,
        "fixture made from another template"
    );
    let ident = PromptTemplate {
        text: "{source}".into(),
    };
    for c in fx["cases"].as_array().unwrap() {
        let (ids, cut) = e
            .prompt_ids(&ident, c["content"].as_str().unwrap(), 100_000)
            .unwrap();
        let want: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(cut, 0);
        assert_eq!(
            ids,
            want,
            "content {:?}",
            &c["content"].as_str().unwrap()[..40]
        );
        assert_eq!(
            ids.iter().filter(|&&x| x == 1).count(),
            1,
            "exactly one BOS"
        );
    }
}

#[test]
fn greedy_on_the_reference_prompt_matches_hf() {
    let t = common::tiny_mistral_with_tokenizer();
    let e = engine(t.path());
    let exp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(t.path().join("expected.json")).unwrap())
            .unwrap();
    let src = std::fs::read_to_string(common::repo().join("examples/hn-postings.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(src.lines().next().unwrap()).unwrap();
    let (ids, _) = e
        .prompt_ids(
            &PromptTemplate::mistral(),
            first["source"].as_str().unwrap(),
            1536,
        )
        .unwrap();
    let want_prompt: Vec<u32> = exp["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(ids, want_prompt);
    let opts = GenOptions {
        max_new_tokens: 12,
        num_beams: 1,
        eos: e.eos.clone(),
        ..Default::default()
    };
    let out = e.generate_ids(&[ids], &opts, &mut []).unwrap();
    let want: Vec<u32> = exp["greedy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(out[0].tokens, want);
}

#[test]
fn left_padded_batches_equal_one_by_one() {
    let e = Engine::load(common::fixture("mistral-gqa4-window").to_str().unwrap()).unwrap();
    let inputs = vec![
        vec![
            5u32, 17, 33, 80, 91, 120, 7, 9, 11, 13, 15, 200, 201, 202, 3, 4, 5, 6,
        ],
        vec![40, 41],
        vec![7, 8, 9, 10, 11],
    ];
    for beams in [1usize, 3] {
        let opts = GenOptions {
            max_new_tokens: 20,
            num_beams: beams,
            eos: e.eos.clone(),
            ..Default::default()
        };
        let batched = e.generate_ids(&inputs, &opts, &mut []).unwrap();
        for (i, inp) in inputs.iter().enumerate() {
            let single = e
                .generate_ids(std::slice::from_ref(inp), &opts, &mut [])
                .unwrap();
            assert_eq!(batched[i].tokens, single[0].tokens, "beams={beams} row {i}");
        }
    }
}

#[test]
fn adapters_are_chosen_per_request() {
    let dir = common::fixture("mistral-lora");
    let mut e = Engine::load(dir.to_str().unwrap()).unwrap();
    assert_eq!(e.load_adapter("a", &dir.join("adapter")).unwrap(), 0);
    assert!(e
        .load_adapter("a", &dir.join("adapter"))
        .unwrap_err()
        .to_string()
        .contains("twice"));
    let refs =
        jobx_engine::checkpoint::Checkpoint::open_files(&[dir.join("reference.safetensors")], "r")
            .unwrap();
    let ids: Vec<u32> = refs
        .i64("case1.input_ids")
        .unwrap()
        .1
        .iter()
        .map(|&x| x as u32)
        .collect();
    let want: Vec<u32> = refs
        .i64("case1.greedy")
        .unwrap()
        .1
        .iter()
        .map(|&x| x as u32)
        .collect();
    let opts = GenOptions {
        max_new_tokens: want.len(),
        num_beams: 1,
        eos: e.eos.clone(),
        ..Default::default()
    };
    let with = e
        .generate_ids_with(std::slice::from_ref(&ids), &opts, &mut [], Some(0))
        .unwrap();
    let without = e.generate_ids_with(&[ids], &opts, &mut [], None).unwrap();
    assert_eq!(with[0].tokens, want, "the adapter request matches HF+PEFT");
    assert_ne!(
        without[0].tokens, want,
        "the base-model request does not use the adapter"
    );
}

#[test]
fn extract_with_mistral_takes_json_from_the_completion_only() {
    let t = common::tiny_mistral_with_tokenizer();
    let e = engine(t.path());
    let recs = vec![
        InputRecord {
            id: "a".into(),
            adapter: None,
            source: Ok("Senior Rust engineer, remote, $150k".into()),
        },
        InputRecord {
            id: "b".into(),
            adapter: Some("nope".into()),
            source: Ok("x".into()),
        },
    ];
    let opts = ExtractOptions {
        max_new_tokens: 6,
        num_beams: 1,
        ..Default::default()
    };
    let mut outs = Vec::new();
    jobx_engine::extract::extract_records(&e, &recs, &opts, &mut |_| {}, &mut |_| {}, &mut |o| {
        outs.push(o);
        Ok(())
    })
    .unwrap();
    assert_eq!(outs.len(), 2);
    // A random model prints no JSON: the record says so, and never falls back to the prompt's schema.
    assert!(outs[0].output.is_none());
    assert!(
        outs[0].error.as_deref().unwrap().contains("JSON"),
        "{:?}",
        outs[0].error
    );
    assert!(!outs[0].raw.as_deref().unwrap().contains("experience_level"));
    assert!(outs[1]
        .error
        .as_deref()
        .unwrap()
        .contains("unknown adapter"));
}

#[test]
fn missing_or_broken_chat_template_is_a_clear_error() {
    let t = common::tiny_mistral_with_tokenizer();
    let p = t.path().join("in.txt");
    std::fs::write(&p, "a posting").unwrap();
    // the v0.1 tokenizer_config has no chat_template
    let o = common::cli()
        .args(["extract", "--model"])
        .arg(t.path())
        .arg(&p)
        .args(["--max-new-tokens", "2", "--no-constrain"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("no chat_template"), "{out}");
    let bad = t.path().join("bad.jinja");
    std::fs::write(&bad, "{% for m in messages %}{{ m.content }").unwrap();
    let o = common::cli()
        .args(["extract", "--model"])
        .arg(t.path())
        .arg(&p)
        .arg("--chat-template")
        .arg(&bad)
        .args(["--max-new-tokens", "2", "--no-constrain"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("chat template does not parse"), "{out}");
    let o = common::cli()
        .args(["extract", "--model"])
        .arg(t.path())
        .arg(&p)
        .args([
            "--chat-template",
            "mistral-v3",
            "--max-new-tokens",
            "2",
            "--num-beams",
            "1",
            "--no-constrain",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rec: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(rec["new_tokens"], 2);
}
