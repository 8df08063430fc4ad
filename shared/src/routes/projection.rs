//! Route projections: which fields of `entity` (and `previous`) a destination receives.
//! SKELETON: include lists only; the full version replaces this.

use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
pub enum Projection {
    Include(Vec<String>),
    Exclude(Vec<String>),
}

impl Projection {
    pub fn apply(&self, body: &Value) -> Value {
        let mut shaped = body.clone();
        for key in ["entity", "previous"] {
            if let Some(Value::Object(fields)) = shaped.get_mut(key) {
                match self {
                    Projection::Include(keep) => fields.retain(|name, _| keep.contains(name)),
                    Projection::Exclude(drop) => fields.retain(|name, _| !drop.contains(name)),
                }
            }
        }
        shaped
    }
}
