//! Resolving `--model`: a local folder as it is, or a Hugging Face repo id resolved through the
//! local HF cache (`$HF_HOME/hub`, the layout `huggingface_hub` writes) and downloaded on a miss
//! when online (hf-hub crate). Offline (`HF_HUB_OFFLINE=1`, or no network) with files missing is a
//! clear error that says how to get them.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Files a model folder may have; the first group is required.
const OPTIONAL: &[&str] = &[
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

fn offline() -> bool {
    ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"].iter().any(|k| {
        std::env::var(k)
            .map(|v| !v.is_empty() && v != "0" && v.to_lowercase() != "false")
            .unwrap_or(false)
    })
}

/// Returns a folder holding config.json and the weights of `model` (a path or a repo id).
pub fn resolve_model(model: &str) -> Result<PathBuf> {
    let p = Path::new(model);
    if p.is_dir() {
        if !p.join("config.json").exists() {
            return Err(Error::Resolve(
                model.into(),
                "the folder has no config.json (is it a Hugging Face model folder?)".into(),
            ));
        }
        return Ok(p.to_path_buf());
    }
    if p.exists() {
        return Err(Error::Resolve(
            model.into(),
            "--model takes a model folder or a Hugging Face repo id, not a file".into(),
        ));
    }
    let looks_like_id = model.split('/').count() <= 2
        && !model.starts_with('.')
        && !model.contains('\\')
        && !model.is_empty();
    if !looks_like_id {
        return Err(Error::Resolve(model.into(), "no such folder".into()));
    }
    // 1) the local HF cache
    let cache = hf_hub::Cache::from_env();
    let repo = cache.model(model.to_string());
    if let Some(cfg) = repo.get("config.json") {
        let dir = cfg.parent().map(Path::to_path_buf).unwrap_or_default();
        let has_weights = repo.get("model.safetensors").is_some()
            || repo.get("model.safetensors.index.json").is_some();
        if has_weights {
            // sharded: make sure every shard is there too
            if let Some(idx) = repo.get("model.safetensors.index.json") {
                if shards(&idx)?.iter().all(|s| repo.get(s).is_some()) {
                    return Ok(dir);
                }
            } else {
                return Ok(dir);
            }
        }
    }
    if offline() {
        return Err(Error::Resolve(
            model.into(),
            format!(
                "not in the Hugging Face cache ({}) and HF_HUB_OFFLINE is set. Download it once online, or pass a local folder with --model",
                cache.path().display()
            ),
        ));
    }
    download(model)
}

fn shards(index: &Path) -> Result<Vec<String>> {
    let t = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&t).map_err(|e| Error::config(index, e.to_string()))?;
    let mut s: Vec<String> = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.values()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    s.sort();
    s.dedup();
    Ok(s)
}

fn download(model: &str) -> Result<PathBuf> {
    let net = |e: hf_hub::api::sync::ApiError| {
        Error::Resolve(
            model.into(),
            format!(
                "download failed ({e}). If this machine is offline, fetch the model elsewhere into the Hugging Face cache \
                 or pass a local folder with --model"
            ),
        )
    };
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .map_err(net)?;
    let repo = api.model(model.to_string());
    eprintln!("fetching {model} into the Hugging Face cache (first use)...");
    let cfg = repo.get("config.json").map_err(net)?;
    match repo.get("model.safetensors") {
        Ok(_) => {}
        Err(_) => {
            let idx = repo.get("model.safetensors.index.json").map_err(|e| {
                Error::Resolve(model.into(), format!("the repo has neither model.safetensors nor a sharded index ({e}); .bin checkpoints are not supported"))
            })?;
            for s in shards(&idx)? {
                repo.get(&s).map_err(net)?;
            }
        }
    }
    for f in OPTIONAL {
        let _ = repo.get(f);
    }
    Ok(cfg.parent().map(Path::to_path_buf).unwrap_or_default())
}
