//! EventBridge event patterns over a forwarded body: the language routes match with.
//! SKELETON: exact values and `anything-but` lists only; the full subset replaces this.

use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
pub struct EventPattern {
    source: Value,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PatternError(pub String);

impl EventPattern {
    pub fn match_all() -> EventPattern {
        EventPattern {
            source: Value::Object(Default::default()),
        }
    }

    pub fn from_json(pattern: &Value) -> Result<EventPattern, PatternError> {
        if !pattern.is_object() {
            return Err(PatternError("a pattern is a JSON object".into()));
        }
        Ok(EventPattern {
            source: pattern.clone(),
        })
    }

    /// The pattern as written, for banners and `relay routes test`.
    pub fn as_json(&self) -> &Value {
        &self.source
    }

    pub fn matches(&self, body: &Value) -> bool {
        object_matches(&self.source, body)
    }
}

fn object_matches(pattern: &Value, body: &Value) -> bool {
    let Some(fields) = pattern.as_object() else {
        return false;
    };
    fields.iter().all(|(name, rule)| {
        let value = body.get(name).unwrap_or(&Value::Null);
        match rule {
            Value::Object(_) => object_matches(rule, value),
            Value::Array(options) => options.iter().any(|o| value_matches(o, value)),
            _ => false,
        }
    })
}

fn value_matches(option: &Value, value: &Value) -> bool {
    match option {
        Value::Object(op) => match op.get("anything-but") {
            Some(Value::Array(excluded)) => !value.is_null() && !excluded.contains(value),
            Some(single) => !value.is_null() && single != value,
            None => false,
        },
        exact => exact == value,
    }
}
