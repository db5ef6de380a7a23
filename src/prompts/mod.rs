//! The reference project's prompts, byte-exact (../shared/seed/SPEC.md §2.2 and §2.3).
//! The texts end where the posting is appended.

/// FLAN-T5 training and evaluation prompt prefix (854 bytes).
pub const FLAN_T5_PREFIX: &str = include_str!("flan_t5.txt");
/// Mistral evaluation prompt prefix (680 bytes; a different schema layout than training, see SPEC).
pub const MISTRAL_PREFIX: &str = include_str!("mistral.txt");

/// A prompt template: the text with `{source}` where the posting goes (appended when absent).
#[derive(Clone, Debug)]
pub struct PromptTemplate {
    pub text: String,
}

impl PromptTemplate {
    pub fn flan_t5() -> Self {
        PromptTemplate {
            text: format!("{FLAN_T5_PREFIX}{{source}}"),
        }
    }
    pub fn mistral() -> Self {
        PromptTemplate {
            text: format!("{MISTRAL_PREFIX}{{source}}"),
        }
    }
    pub fn render(&self, source: &str) -> String {
        if self.text.contains("{source}") {
            self.text.replacen("{source}", source, 1)
        } else {
            format!("{}{}", self.text, source)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn prefixes_have_the_documented_lengths() {
        assert_eq!(FLAN_T5_PREFIX.len(), 854);
        assert_eq!(MISTRAL_PREFIX.len(), 680);
        assert!(FLAN_T5_PREFIX.starts_with("Label the following job posting in pure JSON format"));
        assert!(FLAN_T5_PREFIX.contains("\n\n        {\n            \"experience_level\": \"\",\n"));
        assert!(FLAN_T5_PREFIX.ends_with("            }\n        \n\nJob posting:\n"));
        assert!(MISTRAL_PREFIX.ends_with("\n}\n\nJob posting:\n"));
        let p = PromptTemplate::flan_t5().render("{'description': 'x'}");
        assert_eq!(p, format!("{FLAN_T5_PREFIX}{{'description': 'x'}}"));
    }
}
