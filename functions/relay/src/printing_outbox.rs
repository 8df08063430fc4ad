//! The outbox of `relay serve` when no destination is configured: every forwarded body is
//! appended to `<data-dir>/outbox.jsonl` by the store, then shown as one readable line, so a
//! newcomer sees at once what their system would have received.

use async_trait::async_trait;
use relay_core::error::StoreError;
use relay_core::ports::Outbox;
use std::sync::Arc;

pub struct PrintingOutbox {
    inner: Arc<dyn Outbox>,
    /// `relay invoke` keeps stdout for the handler's response JSON.
    to_stderr: bool,
}

impl PrintingOutbox {
    pub fn new(inner: Arc<dyn Outbox>, to_stderr: bool) -> Self {
        PrintingOutbox { inner, to_stderr }
    }
}

#[async_trait]
impl Outbox for PrintingOutbox {
    async fn append(&self, body: &serde_json::Value) -> Result<(), StoreError> {
        self.inner.append(body).await?;
        if self.to_stderr {
            eprintln!("{}", outbox_line(body));
        } else {
            println!("{}", outbox_line(body));
        }
        Ok(())
    }
}

/// `outbox  deal  ONCRMDEALUPDATE  entity=7405  changes=2  id=…`: what was forwarded, without
/// the entity's field values (they may be personal data and belong in the file, not the log).
pub fn outbox_line(body: &serde_json::Value) -> String {
    let text = |key: &str| body.get(key).and_then(|v| v.as_str()).unwrap_or("-");
    let changes = body
        .get("changes")
        .and_then(|c| c.as_array())
        .map_or(0, Vec::len);
    let entity = match body.get("entity") {
        Some(serde_json::Value::Null) | None => "(not enriched)",
        Some(_) => "(enriched)",
    };
    format!(
        "outbox  {family:<9} {event:<28} entity={entity_id} {entity}  changes={changes}  id={id}",
        family = text("family"),
        event = text("event"),
        entity_id = text("entity_id"),
        id = text("id"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn outbox_line_names_family_event_entity_changes_and_id() {
        let body = json!({"id": "abc", "family": "deal", "event": "ONCRMDEALUPDATE",
            "entity_id": "7405", "entity": {"TITLE": "secret deal"},
            "changes": [{"field": "TITLE", "old": "a", "new": "b"}]});
        let line = outbox_line(&body);
        for part in [
            "deal",
            "ONCRMDEALUPDATE",
            "entity=7405",
            "(enriched)",
            "changes=1",
            "id=abc",
        ] {
            assert!(line.contains(part), "{line} lacks {part}");
        }
        assert!(
            !line.contains("secret deal"),
            "field values stay out of the line"
        );
    }

    #[test]
    fn outbox_line_copes_with_app_events_without_entity() {
        let line = outbox_line(&json!({"id": "x", "family": "app", "event": "ONAPPTEST",
            "entity_id": null, "entity": null, "changes": []}));
        assert!(line.contains("entity=-"), "{line}");
        assert!(line.contains("(not enriched)"), "{line}");
        assert!(line.contains("changes=0"), "{line}");
    }
}
