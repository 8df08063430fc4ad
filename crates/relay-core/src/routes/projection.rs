//! Route projections: which fields of the entity a route's destinations receive.
//! Applied by `Routes::deliveries` after matching (the pattern sees the whole body). A field
//! the projection hides must not leak by another way: it is dropped from `entity` and
//! `previous`, its entries in `changes` go too, and so does its copy in the CRM's own `data`
//! (SalesMan sends entity fields there; Bitrix24 sends `data.FIELDS`).

use serde_json::{Map, Value};

#[derive(Clone, Debug, PartialEq)]
pub enum Projection {
    /// Only these fields.
    Include(Vec<String>),
    /// Every field but these.
    Exclude(Vec<String>),
}

impl Projection {
    fn keeps(&self, field: &str) -> bool {
        match self {
            Projection::Include(keep) => keep.iter().any(|k| k == field),
            Projection::Exclude(drop) => !drop.iter().any(|d| d == field),
        }
    }

    /// The body with only what the projection lets through; what it hides is never copied.
    pub fn apply(&self, body: &Value) -> Value {
        let Value::Object(map) = body else {
            return body.clone();
        };
        let shaped = map
            .iter()
            .map(|(key, value)| {
                let value = match (key.as_str(), value) {
                    ("entity" | "previous", Value::Object(fields)) => {
                        Value::Object(self.kept(fields))
                    }
                    // An entry without a field name cannot be shown to be harmless.
                    ("changes", Value::Array(changes)) => Value::Array(
                        changes
                            .iter()
                            .filter(|change| {
                                change
                                    .get("field")
                                    .and_then(Value::as_str)
                                    .is_some_and(|field| self.keeps(field))
                            })
                            .cloned()
                            .collect(),
                    ),
                    ("data", Value::Object(data)) => Value::Object(self.shaped_data(data)),
                    _ => value.clone(),
                };
                (key.clone(), value)
            })
            .collect();
        Value::Object(shaped)
    }

    fn kept(&self, fields: &Map<String, Value>) -> Map<String, Value> {
        fields
            .iter()
            .filter(|(name, _)| self.keeps(name))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect()
    }

    /// Top-level scalar fields of `data` are the CRM's entity fields (SalesMan); an object one
    /// level down (Bitrix24's `FIELDS`) is filtered the same way. An `include` list keeps such
    /// objects but only their listed fields.
    fn shaped_data(&self, data: &Map<String, Value>) -> Map<String, Value> {
        data.iter()
            .filter_map(|(name, value)| match value {
                Value::Object(inner) => Some((name.clone(), Value::Object(self.kept(inner)))),
                _ => self.keeps(name).then(|| (name.clone(), value.clone())),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body() -> Value {
        json!({
            "id": "e1", "family": "deal", "entity_id": "7",
            "data": {"FIELDS": {"ID": "7", "COMMENTS": "secret note"}},
            "entity": {"ID": "7", "TITLE": "Steel", "STAGE_ID": "C3:WON",
                       "OPPORTUNITY": "1500.00", "COMMENTS": "secret note"},
            "previous": {"ID": "7", "TITLE": "Steel", "STAGE_ID": "C3:NEW",
                         "OPPORTUNITY": "1500.00", "COMMENTS": "old note"},
            "changes": [
                {"field": "COMMENTS", "old": "old note", "new": "secret note"},
                {"field": "STAGE_ID", "old": "C3:NEW", "new": "C3:WON"}
            ],
            "first_seen": false
        })
    }

    #[test]
    fn include_keeps_only_the_listed_fields_everywhere() {
        let p = Projection::Include(
            ["ID", "TITLE", "STAGE_ID", "OPPORTUNITY"]
                .map(String::from)
                .to_vec(),
        );
        let shaped = p.apply(&body());
        assert_eq!(
            shaped["entity"],
            json!({"ID": "7", "TITLE": "Steel", "STAGE_ID": "C3:WON", "OPPORTUNITY": "1500.00"})
        );
        assert_eq!(
            shaped["previous"],
            json!({"ID": "7", "TITLE": "Steel", "STAGE_ID": "C3:NEW", "OPPORTUNITY": "1500.00"})
        );
        assert_eq!(
            shaped["changes"],
            json!([{"field": "STAGE_ID", "old": "C3:NEW", "new": "C3:WON"}])
        );
        assert_eq!(shaped["data"], json!({"FIELDS": {"ID": "7"}}));
        // The envelope is not the entity's: untouched.
        assert_eq!(shaped["entity_id"], "7");
        assert_eq!(shaped["first_seen"], false);
        assert!(!shaped.to_string().contains("note"), "{shaped}");
    }

    #[test]
    fn exclude_drops_the_listed_fields_everywhere() {
        let p = Projection::Exclude(vec!["COMMENTS".into()]);
        let shaped = p.apply(&body());
        assert!(!shaped.to_string().contains("note"), "{shaped}");
        assert_eq!(shaped["entity"]["STAGE_ID"], "C3:WON");
        assert_eq!(shaped["changes"].as_array().map(Vec::len), Some(1));
        assert_eq!(shaped["data"], json!({"FIELDS": {"ID": "7"}}));
    }

    #[test]
    fn salesman_data_fields_are_projected_too() {
        let body = json!({
            "data": {"did": "5", "title": "Deal", "content": "private", "iduser1": "2"},
            "entity": {"did": "5", "title": "Deal", "content": "private"},
            "previous": null, "changes": []
        });
        let shaped = Projection::Include(vec!["did".into(), "title".into()]).apply(&body);
        assert_eq!(shaped["data"], json!({"did": "5", "title": "Deal"}));
        assert_eq!(shaped["entity"], json!({"did": "5", "title": "Deal"}));
        assert_eq!(shaped["previous"], Value::Null);
    }

    #[test]
    fn changes_without_a_field_name_are_dropped() {
        let body =
            json!({"changes": [{"old": "x", "new": "y"}, {"field": "ID", "old": 1, "new": 2}]});
        let shaped = Projection::Exclude(vec!["TITLE".into()]).apply(&body);
        assert_eq!(
            shaped["changes"],
            json!([{"field": "ID", "old": 1, "new": 2}])
        );
    }
}
