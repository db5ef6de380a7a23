//! The built-in job schema (`--schema job`): the reference project's 12 keys in order
//! (SPEC.md §1.1), nested `salary` {min, max, period, currency} (strings) and `required_skills`
//! {programming_languages, tools, frameworks, databases, other} (lists of strings), every key
//! required, no additional properties. Targets write empty fields as `""` / `[]`, never null.

use serde_json::Value;

/// The job schema as JSON text (printed by `jobx-engine schema print job`).
pub const JOB_SCHEMA_JSON: &str = r##"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "JobExtractX job posting labels",
  "type": "object",
  "properties": {
    "experience_level": {"type": "string"},
    "employment_status": {"type": "array", "items": {"type": "string"}},
    "work_location": {"type": "string"},
    "salary": {
      "type": "object",
      "properties": {
        "min": {"type": "string"},
        "max": {"type": "string"},
        "period": {"type": "string"},
        "currency": {"type": "string"}
      },
      "required": ["min", "max", "period", "currency"],
      "additionalProperties": false
    },
    "benefits": {"type": "array", "items": {"type": "string"}},
    "job_functions": {"type": "array", "items": {"type": "string"}},
    "required_skills": {
      "type": "object",
      "properties": {
        "programming_languages": {"type": "array", "items": {"type": "string"}},
        "tools": {"type": "array", "items": {"type": "string"}},
        "frameworks": {"type": "array", "items": {"type": "string"}},
        "databases": {"type": "array", "items": {"type": "string"}},
        "other": {"type": "array", "items": {"type": "string"}}
      },
      "required": ["programming_languages", "tools", "frameworks", "databases", "other"],
      "additionalProperties": false
    },
    "required_certifications": {"type": "array", "items": {"type": "string"}},
    "required_minimum_degree": {"type": "string"},
    "required_experience": {"type": "string"},
    "industries": {"type": "array", "items": {"type": "string"}},
    "additional_keywords": {"type": "array", "items": {"type": "string"}}
  },
  "required": [
    "experience_level", "employment_status", "work_location", "salary", "benefits",
    "job_functions", "required_skills", "required_certifications", "required_minimum_degree",
    "required_experience", "industries", "additional_keywords"
  ],
  "additionalProperties": false
}
"##;

/// The job schema as a JSON value (key order preserved).
pub fn job_schema() -> Value {
    // The constant is valid JSON (checked by a unit test), so this cannot fail at run time.
    serde_json::from_str(JOB_SCHEMA_JSON).unwrap_or(Value::Null)
}

/// The 12 top-level keys in order.
pub const JOB_KEYS: [&str; 12] = [
    "experience_level",
    "employment_status",
    "work_location",
    "salary",
    "benefits",
    "job_functions",
    "required_skills",
    "required_certifications",
    "required_minimum_degree",
    "required_experience",
    "industries",
    "additional_keywords",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_schema_parses_in_order() {
        let v: Value = serde_json::from_str(JOB_SCHEMA_JSON).expect("valid JSON");
        let keys: Vec<&str> = v["properties"]
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, JOB_KEYS);
    }
}
