//! Chat templates rendered the way HF `tokenizer.apply_chat_template` does: the Jinja template
//! from `tokenizer_config.json` (`chat_template`, a string or a list of named templates) with
//! `messages`, `add_generation_prompt`, `bos_token`, `eos_token` and `raise_exception`; the text is
//! then tokenised WITHOUT adding special tokens, so the template's own `<s>` is the only BOS.
//! Python string methods used by real templates (`.strip()`, `.startswith()`, ...) come from
//! minijinja-contrib's pycompat layer.

use crate::error::{Error, Result};
use serde::Serialize;
use std::path::Path;

/// A chat template that renders Mistral's documented v3 instruct format
/// (`<s>[INST] user[/INST]assistant</s>`), used with `--chat-template mistral-v3` for model folders
/// that lack one. Written for this project.
pub const MISTRAL_V3: &str = "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }}[/INST]{% elif m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}{% else %}{{ raise_exception('only user and assistant roles are supported, got ' ~ m['role']) }}{% endif %}{% endfor %}";

#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Clone)]
pub struct ChatTemplate {
    pub source: String,
    pub bos_token: String,
    pub eos_token: String,
}

fn token_str(v: Option<&serde_json::Value>) -> Option<String> {
    match v {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Object(o)) => {
            o.get("content").and_then(|c| c.as_str()).map(String::from)
        }
        _ => None,
    }
}

impl ChatTemplate {
    /// Read `chat_template` (and bos/eos) from a model folder's tokenizer_config.json.
    pub fn from_model_dir(dir: &Path) -> Result<Option<Self>> {
        let p = dir.join("tokenizer_config.json");
        let Ok(text) = std::fs::read_to_string(&p) else {
            return Ok(None);
        };
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::config(&p, e.to_string()))?;
        let bos = token_str(v.get("bos_token")).unwrap_or_else(|| "<s>".into());
        let eos = token_str(v.get("eos_token")).unwrap_or_else(|| "</s>".into());
        let src = match v.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .or_else(|| a.first())
                .and_then(|t| t.get("template").and_then(|s| s.as_str()).map(String::from)),
            _ => None,
        };
        // transformers >= 4.43 may keep the template in chat_template.jinja beside the config
        let src = src.or_else(|| std::fs::read_to_string(dir.join("chat_template.jinja")).ok());
        Ok(src.map(|source| ChatTemplate {
            source,
            bos_token: bos,
            eos_token: eos,
        }))
    }

    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let mut env = minijinja::Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        // HF renders with trim_blocks and lstrip_blocks
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_template("chat", &self.source)
            .map_err(|e| Error::Input(format!("chat template does not parse: {e}")))?;
        let t = env
            .get_template("chat")
            .map_err(|e| Error::Input(e.to_string()))?;
        t.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
        .map_err(|e| Error::Input(format!("chat template failed to render: {e}")))
    }
}

/// The first complete top-level JSON object in `text`, scanning braces outside strings and
/// honouring escapes (unlike the reference project's scan, which ignored quotes). `Err` says why
/// none was found (no object, or cut before its end).
pub fn first_json_object(text: &str) -> std::result::Result<(usize, usize), &'static str> {
    let b = text.as_bytes();
    let Some(start) = b.iter().position(|&c| c == b'{') else {
        return Err("no JSON object in the completion");
    };
    let (mut depth, mut in_str, mut esc) = (0usize, false, false);
    for (i, &c) in b.iter().enumerate().skip(start) {
        if in_str {
            if esc {
                esc = false;
            } else if c == b'\\' {
                esc = true;
            } else if c == b'"' {
                in_str = false;
            }
            continue;
        }
        match c {
            b'"' => in_str = true,
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Ok((start, i + 1));
                }
            }
            _ => {}
        }
    }
    Err("the JSON object is not closed (output cut at the token limit?)")
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn braces_inside_strings_do_not_count() {
        let t = r#"Sure! {"a": "x}y", "b": {"c": "\"}"}} trailing }"#;
        let (s, e) = first_json_object(t).unwrap();
        assert_eq!(&t[s..e], r#"{"a": "x}y", "b": {"c": "\"}"}}"#);
        assert!(first_json_object(r#"{"a": ["x"#).is_err());
        assert!(first_json_object("no json here").is_err());
    }
    #[test]
    fn mistral_v3_template_renders_the_documented_format() {
        let t = ChatTemplate {
            source: MISTRAL_V3.into(),
            bos_token: "<s>".into(),
            eos_token: "</s>".into(),
        };
        let m = vec![Message {
            role: "user".into(),
            content: "Hi".into(),
        }];
        assert_eq!(t.render(&m, true).unwrap(), "<s>[INST] Hi[/INST]");
        let bad = vec![Message {
            role: "system".into(),
            content: "x".into(),
        }];
        assert!(t
            .render(&bad, true)
            .unwrap_err()
            .to_string()
            .contains("only user and assistant"));
        let broken = ChatTemplate {
            source: "{% for %}".into(),
            bos_token: "".into(),
            eos_token: "".into(),
        };
        assert!(broken
            .render(&m, true)
            .unwrap_err()
            .to_string()
            .contains("does not parse"));
    }
}
