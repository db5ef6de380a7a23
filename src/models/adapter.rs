//! PEFT LoRA adapters as users have them: `adapter_config.json` + `adapter_model.safetensors`,
//! keys `base_model.model.<module>.lora_A[.default].weight` / `lora_B`. Attached unmerged to a
//! model's `Linear` layers in a named slot, or merged into the weights (`--merge-adapter`).
//!
//! Supported config: `r`, `lora_alpha`, `target_modules` (list: last-name match; string: full
//! regex match, as PEFT), `use_rslora` (scale α/√r), `rank_pattern`/`alpha_pattern` (PEFT's
//! `(.*\.)?(key)$` match on the module name). Rejected with a clear error: `fan_in_fan_out`
//! (these models use nn.Linear), `bias` other than "none", `modules_to_save`, DoRA.

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::models::linear::{HasLinears, Lora};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One adapted module: (A [r, in] shape, A values, B [out, r] shape, B values, scale).
pub type LoraModule = (Vec<usize>, Vec<f32>, Vec<usize>, Vec<f32>, f32);

#[derive(Debug, Clone)]
pub struct LoraAdapter {
    pub name: String,
    pub dir: PathBuf,
    /// module name -> its A and B weights and scale
    pub modules: BTreeMap<String, LoraModule>,
    pub target_modules: Vec<String>,
    pub target_regex: Option<String>,
}

fn cfg_err(p: &Path, m: impl Into<String>) -> Error {
    Error::config(p, m)
}

impl LoraAdapter {
    pub fn load(dir: &Path, name: &str) -> Result<Self> {
        let cp = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cp).map_err(|e| Error::io(&cp, e))?;
        let c: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| cfg_err(&cp, e.to_string()))?;
        let pt = c
            .get("peft_type")
            .and_then(|v| v.as_str())
            .unwrap_or("LORA");
        if pt != "LORA" {
            return Err(cfg_err(
                &cp,
                format!("peft_type `{pt}` is not supported (only LORA)"),
            ));
        }
        let r = c
            .get("r")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| cfg_err(&cp, "missing `r`"))? as usize;
        let alpha = c.get("lora_alpha").and_then(|v| v.as_f64()).unwrap_or(8.0);
        let rslora = c
            .get("use_rslora")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        if c.get("fan_in_fan_out")
            .and_then(|v| v.as_bool())
            .unwrap_or(false)
        {
            return Err(cfg_err(&cp, "fan_in_fan_out = true is for Conv1D (GPT-2) layers; T5 and Mistral use nn.Linear: the adapter does not fit"));
        }
        let bias = c.get("bias").and_then(|v| v.as_str()).unwrap_or("none");
        if bias != "none" {
            return Err(cfg_err(
                &cp,
                format!("bias = `{bias}` is not supported (only \"none\")"),
            ));
        }
        if c.get("lora_bias")
            .and_then(|v| v.as_bool())
            .unwrap_or(false)
        {
            return Err(cfg_err(&cp, "lora_bias = true is not supported"));
        }
        if c.get("use_dora").and_then(|v| v.as_bool()).unwrap_or(false) {
            return Err(cfg_err(&cp, "DoRA (use_dora) is not supported"));
        }
        if let Some(m) = c.get("modules_to_save") {
            if !m.is_null() && m.as_array().map(|a| !a.is_empty()).unwrap_or(true) {
                return Err(cfg_err(
                    &cp,
                    format!(
                        "modules_to_save = {m} is not supported yet (fully trained extra modules)"
                    ),
                ));
            }
        }
        let (target_modules, target_regex) = match c.get("target_modules") {
            Some(serde_json::Value::Array(a)) => (
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect(),
                None,
            ),
            Some(serde_json::Value::String(s)) => (vec![], Some(s.clone())),
            _ => (vec![], None),
        };
        let patterns = |key: &str| -> Vec<(String, f64)> {
            c.get(key)
                .and_then(|v| v.as_object())
                .map(|o| {
                    o.iter()
                        .filter_map(|(k, v)| v.as_f64().map(|x| (k.clone(), x)))
                        .collect()
                })
                .unwrap_or_default()
        };
        let rank_pat = patterns("rank_pattern");
        let alpha_pat = patterns("alpha_pattern");
        let wp = dir.join("adapter_model.safetensors");
        if !wp.exists() {
            return Err(Error::Io {
                path: wp,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "adapter_model.safetensors not found (.bin adapters are not supported)",
                ),
            });
        }
        let ck = Checkpoint::open_files(std::slice::from_ref(&wp), &wp.display().to_string())?;
        let mut modules = BTreeMap::new();
        for key in ck.names() {
            let Some(rest) = key.strip_prefix("base_model.model.") else {
                return Err(cfg_err(&wp, format!("unexpected tensor `{key}` (expected base_model.model.<module>.lora_A/B.weight)")));
            };
            let (module, which) = if let Some(m) = rest
                .strip_suffix(".lora_A.weight")
                .or_else(|| rest.strip_suffix(".lora_A.default.weight"))
            {
                (m.to_string(), 'A')
            } else if let Some(m) = rest
                .strip_suffix(".lora_B.weight")
                .or_else(|| rest.strip_suffix(".lora_B.default.weight"))
            {
                (m.to_string(), 'B')
            } else {
                return Err(cfg_err(&wp, format!("tensor `{key}` is not a LoRA A/B weight (lora_embedding, bias or saved modules are not supported)")));
            };
            if which == 'B' {
                continue;
            }
            let a = ck.f32_any(&key)?;
            let bkey = [
                format!("base_model.model.{module}.lora_B.weight"),
                format!("base_model.model.{module}.lora_B.default.weight"),
            ]
            .into_iter()
            .find(|k| ck.contains(k))
            .ok_or_else(|| cfg_err(&wp, format!("`{module}` has lora_A but no lora_B")))?;
            let b = ck.f32_any(&bkey)?;
            if a.shape.len() != 2 || b.shape.len() != 2 {
                return Err(cfg_err(
                    &wp,
                    format!(
                        "`{module}`: LoRA weights must be 2-D, got A {:?} B {:?}",
                        a.shape, b.shape
                    ),
                ));
            }
            if a.shape[0] != b.shape[1] {
                return Err(cfg_err(&wp, format!("`{module}`: rank mismatch: lora_A is {:?} (r = {}) but lora_B is {:?} (r = {})", a.shape, a.shape[0], b.shape, b.shape[1])));
            }
            let pat_match = |pats: &[(String, f64)]| -> Option<f64> {
                pats.iter()
                    .find(|(k, _)| {
                        regex::Regex::new(&format!(r"^(.*\.)?({k})$"))
                            .map(|re| re.is_match(&module))
                            .unwrap_or(false)
                    })
                    .map(|(_, v)| *v)
            };
            let rr = pat_match(&rank_pat).map(|x| x as usize).unwrap_or(r);
            if rr != a.shape[0] {
                return Err(cfg_err(
                    &wp,
                    format!(
                        "`{module}`: the config says r = {rr} but lora_A has rank {}",
                        a.shape[0]
                    ),
                ));
            }
            let al = pat_match(&alpha_pat).unwrap_or(alpha);
            let scale = if rslora {
                al / (rr as f64).sqrt()
            } else {
                al / rr as f64
            } as f32;
            modules.insert(
                module.clone(),
                (
                    a.shape.clone(),
                    a.as_slice().to_vec(),
                    b.shape.clone(),
                    b.as_slice().to_vec(),
                    scale,
                ),
            );
        }
        for key in ck.names() {
            if key.contains(".lora_B.") {
                let m = key
                    .trim_start_matches("base_model.model.")
                    .replace(".lora_B.default.weight", "")
                    .replace(".lora_B.weight", "");
                if !modules.contains_key(&m) {
                    return Err(cfg_err(&wp, format!("`{m}` has lora_B but no lora_A")));
                }
            }
        }
        if modules.is_empty() {
            return Err(cfg_err(&wp, "the adapter holds no LoRA weights"));
        }
        Ok(LoraAdapter {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            modules,
            target_modules,
            target_regex,
        })
    }

    /// Attach to `model` in adapter slot `slot` (unmerged); returns the number of layers it
    /// targets. Checked by `resolve`.
    pub fn attach(&self, model: &mut dyn HasLinears, slot: usize) -> Result<usize> {
        let mut lins = model.linears_mut();
        let layers: Vec<(String, usize, usize)> = lins
            .iter()
            .map(|l| (l.name.clone(), l.out_f, l.in_f))
            .collect();
        let pairs = self.resolve(&layers)?;
        let attached = pairs.len();
        for (i, lora) in pairs {
            let lin = &mut lins[i];
            if lin.loras.len() <= slot {
                lin.loras.resize(slot + 1, None);
            }
            lin.loras[slot] = Some(lora);
        }
        Ok(attached)
    }

    /// The LoRA pair of each adapter module, as (index into `layers`, pair), for a model whose
    /// linear layers are `layers` = (HF module name, out features, in features): every adapter
    /// module must be one of them with matching shapes, and every configured target must match
    /// some layer. Backend-neutral, so the CPU `Linear`s and the CUDA weights check alike.
    pub fn resolve(&self, layers: &[(String, usize, usize)]) -> Result<Vec<(usize, Lora)>> {
        for t in &self.target_modules {
            if !layers
                .iter()
                .any(|(n, _, _)| n == t || n.ends_with(&format!(".{t}")))
            {
                return Err(Error::config(
                    self.dir.join("adapter_config.json"),
                    format!("target module `{t}` matches no linear layer of the model"),
                ));
            }
        }
        let mut out = Vec::with_capacity(self.modules.len());
        for (module, (ashape, a, bshape, b, scale)) in &self.modules {
            let i = layers
                .iter()
                .position(|(n, _, _)| n == module)
                .ok_or_else(|| {
                    Error::config(
                        self.dir.join("adapter_model.safetensors"),
                        format!(
                            "the adapter targets `{module}`, which is not a linear layer of this model"
                        ),
                    )
                })?;
            let (_, out_f, in_f) = layers[i];
            if ashape[1] != in_f || bshape[0] != out_f {
                return Err(Error::config(
                    self.dir.join("adapter_model.safetensors"),
                    format!(
                        "`{module}`: adapter shapes A {ashape:?} / B {bshape:?} do not fit the layer's weight [{out_f}, {in_f}] (an adapter for another model?)"
                    ),
                ));
            }
            out.push((
                i,
                Lora {
                    a: a.clone(),
                    b: b.clone(),
                    r: ashape[0],
                    scale: *scale,
                },
            ));
        }
        Ok(out)
    }
}
