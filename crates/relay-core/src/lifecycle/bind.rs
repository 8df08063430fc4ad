//! `relay bind`: registers each family's URL for that family's Bitrix24 events (`event.bind`),
//! optionally the offline log for the poller, lists (`event.get`) and removes (`event.unbind`).
//! Idempotent: what is already bound is skipped, and "Handler already binded" counts as done.
//! The plan is stored per portal, because Bitrix24 drops an app's handlers when the app is
//! updated (b24restdocs api-reference/events/event-bind.md: "When deleting and updating the
//! application, its actions will be removed"); a verified ONAPPUPDATE binds it again.

use crate::error::{EnrichError, StoreError};
use crate::event::Family;
use crate::lifecycle::events::{bitrix24_events, bound_families, offline_capable, ONOFFLINEEVENT};
use crate::ports::{BindPlanStore, Bitrix24Rest};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Where each family's events go: its Function URL, or `<base>/<family>` of `relay serve`.
pub type FamilyUrls = BTreeMap<Family, String>;

/// `relay serve` serves `POST /<family>`.
pub fn urls_from_base(base_url: &str) -> FamilyUrls {
    let base = base_url.trim_end_matches('/');
    bound_families()
        .map(|family| (family, format!("{base}/{family}")))
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("stack outputs: {0}")]
    StackOutputs(String),
    #[error("Bitrix24 REST call {method} for {event} failed: {source}")]
    Rest {
        method: &'static str,
        event: String,
        #[source]
        source: EnrichError,
    },
    #[error("event.get answered something that is not a list of handlers")]
    UnexpectedList,
    #[error("bind plan store: {0}")]
    Store(#[from] StoreError),
}

/// The `<Family>IngestUrl` outputs of the SAM stack, from any of the JSON shapes the tools
/// print: `sam list stack-outputs --output json` (a list of `OutputKey`/`OutputValue`),
/// `aws cloudformation describe-stacks` (`Stacks[0].Outputs`), or a plain `{key: url}` object.
pub fn urls_from_stack_outputs(json_text: &str) -> Result<FamilyUrls, BindError> {
    let doc: Value = serde_json::from_str(json_text)
        .map_err(|e| BindError::StackOutputs(format!("not JSON: {e}")))?;
    let mut pairs: Vec<(String, String)> = Vec::new();
    let outputs = doc
        .pointer("/Stacks/0/Outputs")
        .cloned()
        .unwrap_or_else(|| doc.clone());
    match &outputs {
        Value::Array(items) => {
            for item in items {
                if let (Some(k), Some(v)) = (
                    item.get("OutputKey").and_then(Value::as_str),
                    item.get("OutputValue").and_then(Value::as_str),
                ) {
                    pairs.push((k.to_string(), v.to_string()));
                }
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                if let Some(v) = v.as_str() {
                    pairs.push((k.clone(), v.to_string()));
                }
            }
        }
        _ => {}
    }
    let mut urls = FamilyUrls::new();
    for (key, url) in pairs {
        let Some(name) = key.strip_suffix("IngestUrl") else {
            continue;
        };
        if let Ok(family) = name.parse::<Family>() {
            urls.insert(family, url);
        }
    }
    if urls.is_empty() {
        return Err(BindError::StackOutputs(
            "no <Family>IngestUrl outputs found".into(),
        ));
    }
    Ok(urls)
}

/// One handler registration; stored as JSON in the portal's bind plan.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Binding {
    pub event: String,
    /// `None` for offline bindings: Bitrix24 calls nobody, it keeps a log.
    pub handler: Option<String>,
    pub offline: bool,
}

/// Every registration for these URLs: each family's events to its URL and, with `offline`,
/// the same entity events into the offline log plus ONOFFLINEEVENT to the app URL (the
/// poller's wake-up). Derived from the event catalogue only.
pub fn plan_bindings(urls: &FamilyUrls, offline: bool) -> Vec<Binding> {
    let mut plan = Vec::new();
    for (family, url) in urls {
        for event in bitrix24_events(*family) {
            plan.push(Binding {
                event: event.to_string(),
                handler: Some(url.clone()),
                offline: false,
            });
            if offline && offline_capable(*family) {
                plan.push(Binding {
                    event: event.to_string(),
                    handler: None,
                    offline: true,
                });
            }
        }
    }
    if offline {
        if let Some(app_url) = urls.get(&Family::App) {
            plan.push(Binding {
                event: ONOFFLINEEVENT.to_string(),
                handler: Some(app_url.clone()),
                offline: false,
            });
        }
    }
    plan
}

/// What `relay bind --remove` unregisters: everything any plan for these URLs may have bound,
/// online and offline, ONOFFLINEEVENT included, whether or not `--offline` is given again.
pub fn removal_plan(urls: &FamilyUrls) -> Vec<Binding> {
    plan_bindings(urls, true)
}

/// One row of `event.get`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoundHandler {
    pub event: String,
    pub handler: String,
    pub auth_type: String,
    pub offline: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BindReport {
    pub bound: usize,
    pub already_bound: usize,
    pub removed: usize,
}

/// `event.get`: what the portal has registered for this app.
pub async fn list_bindings(
    rest: &dyn Bitrix24Rest,
    portal: &str,
) -> Result<Vec<BoundHandler>, BindError> {
    let answer = rest
        .call(portal, "event.get", json!({}))
        .await
        .map_err(|source| BindError::Rest {
            method: "event.get",
            event: String::new(),
            source,
        })?;
    let Value::Array(rows) = answer.result else {
        return Err(BindError::UnexpectedList);
    };
    Ok(rows
        .iter()
        .map(|row| BoundHandler {
            event: text(row, "event").to_ascii_uppercase(),
            handler: text(row, "handler"),
            auth_type: text(row, "auth_type"),
            offline: matches!(text(row, "offline").as_str(), "1" | "true"),
        })
        .collect())
}

/// Registers what `plan` lists and is not registered yet.
pub async fn bind_all(
    rest: &dyn Bitrix24Rest,
    portal: &str,
    plan: &[Binding],
) -> Result<BindReport, BindError> {
    let existing = list_bindings(rest, portal).await?;
    let mut report = BindReport::default();
    for binding in plan {
        if existing.iter().any(|h| is_same(h, binding)) {
            report.already_bound += 1;
            continue;
        }
        let mut params = json!({"event": binding.event});
        if let Some(handler) = &binding.handler {
            params["handler"] = json!(handler);
        }
        if binding.offline {
            params["event_type"] = json!("offline");
        }
        match rest.call(portal, "event.bind", params).await {
            Ok(_) => report.bound += 1,
            // Bitrix24's answer to a duplicate is ERROR_CORE "Handler already binded". The
            // REST client may not pass the description on, so a refusal is checked against
            // the portal's list before it counts as a failure.
            Err(EnrichError::Permanent(reason))
                if reason.to_ascii_lowercase().contains("already binded")
                    || list_bindings(rest, portal)
                        .await?
                        .iter()
                        .any(|h| is_same(h, binding)) =>
            {
                report.already_bound += 1
            }
            Err(source) => {
                return Err(BindError::Rest {
                    method: "event.bind",
                    event: binding.event.clone(),
                    source,
                })
            }
        }
    }
    Ok(report)
}

/// Unregisters what `plan` lists (`event.unbind` answers how many it removed).
pub async fn unbind_all(
    rest: &dyn Bitrix24Rest,
    portal: &str,
    plan: &[Binding],
) -> Result<BindReport, BindError> {
    let mut report = BindReport::default();
    for binding in plan {
        let mut params = json!({"event": binding.event});
        if let Some(handler) = &binding.handler {
            params["handler"] = json!(handler);
        }
        if binding.offline {
            params["event_type"] = json!("offline");
        }
        let answer = rest
            .call(portal, "event.unbind", params)
            .await
            .map_err(|source| BindError::Rest {
                method: "event.unbind",
                event: binding.event.clone(),
                source,
            })?;
        report.removed += answer
            .result
            .get("count")
            .and_then(|c| {
                c.as_u64()
                    .or_else(|| c.as_str().and_then(|s| s.parse().ok()))
            })
            .unwrap_or(0) as usize;
    }
    Ok(report)
}

/// `relay bind --again` and the re-bind after an app update: registers the portal's stored
/// plan with `bind_all`. `Ok(None)` when no plan is stored (`relay bind` never ran for it).
pub async fn bind_stored_plan(
    rest: &dyn Bitrix24Rest,
    plans: &dyn BindPlanStore,
    portal: &str,
) -> Result<Option<(Vec<Binding>, BindReport)>, BindError> {
    let Some(plan) = plans.load_plan(portal).await? else {
        return Ok(None);
    };
    let report = bind_all(rest, portal, &plan).await?;
    Ok(Some((plan, report)))
}

/// What the app lifecycle does with a portal's bind plan: binds it again after a verified
/// update (through the portal's REST endpoint, with the tokens the update just stored) and
/// forgets it at uninstall.
#[derive(Clone)]
pub struct PlanRebind {
    rest: Arc<dyn Bitrix24Rest>,
    plans: Arc<dyn BindPlanStore>,
    in_background: bool,
}

impl PlanRebind {
    pub fn new(rest: Arc<dyn Bitrix24Rest>, plans: Arc<dyn BindPlanStore>) -> Self {
        PlanRebind {
            rest,
            plans,
            in_background: false,
        }
    }

    /// Re-bind on a task of its own and answer the update at once (`relay serve`): at the
    /// portal's 2 calls/s a large plan outlasts Bitrix24's patience, and a handler whose
    /// caller hangs up is dropped half-way. Lambda re-binds inline: its process is frozen
    /// once it has answered.
    pub fn in_background(mut self, in_background: bool) -> Self {
        self.in_background = in_background;
        self
    }

    /// Never fails the update: its tokens are stored before this runs, and a plan that could
    /// not be bound is named in the log (event and error, no token) for `relay bind --again`.
    pub async fn after_update(&self, portal: &str) {
        if self.in_background {
            let this = self.clone();
            let portal = portal.to_string();
            tokio::spawn(async move { this.rebind_now(&portal).await });
        } else {
            self.rebind_now(portal).await;
        }
    }

    async fn rebind_now(&self, portal: &str) {
        match bind_stored_plan(self.rest.as_ref(), self.plans.as_ref(), portal).await {
            Ok(Some((plan, report))) => tracing::info!(
                portal = %portal,
                planned = plan.len(),
                bound = report.bound,
                already_bound = report.already_bound,
                "app updated; handlers bound again from the stored bind plan"
            ),
            Ok(None) => tracing::info!(
                portal = %portal,
                "app updated; no bind plan stored for this portal, so nothing to bind again (run `relay bind`)"
            ),
            Err(error) => tracing::error!(
                portal = %portal,
                %error,
                "app updated but its handlers could NOT be bound again: Bitrix24 removed them with the update, so events stop until `relay bind --again` succeeds"
            ),
        }
    }

    /// The portal is gone (uninstall): so is its plan.
    pub async fn forget(&self, portal: &str) -> Result<(), StoreError> {
        self.plans.forget_plan(portal).await
    }
}

fn is_same(existing: &BoundHandler, wanted: &Binding) -> bool {
    existing.event.eq_ignore_ascii_case(&wanted.event)
        && existing.offline == wanted.offline
        && (wanted.offline || Some(existing.handler.as_str()) == wanted.handler.as_deref())
}

fn text(row: &Value, key: &str) -> String {
    match row.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => if *b { "1" } else { "0" }.to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::events::bindable_count;

    #[test]
    fn stack_outputs_in_every_shape() {
        let sam = r#"[{"OutputKey":"DealIngestUrl","OutputValue":"https://d.lambda-url/"},
                      {"OutputKey":"QueueName","OutputValue":"q"}]"#;
        let cfn = r#"{"Stacks":[{"Outputs":[{"OutputKey":"LeadIngestUrl","OutputValue":"https://l/"}]}]}"#;
        let flat = r#"{"AppIngestUrl":"https://a/","TableName":"t"}"#;
        assert_eq!(
            urls_from_stack_outputs(sam).unwrap(),
            FamilyUrls::from([(Family::Deal, "https://d.lambda-url/".to_string())])
        );
        assert_eq!(
            urls_from_stack_outputs(cfn).unwrap()[&Family::Lead],
            "https://l/"
        );
        assert_eq!(
            urls_from_stack_outputs(flat).unwrap()[&Family::App],
            "https://a/"
        );
        assert!(urls_from_stack_outputs(r#"{"TableName":"t"}"#).is_err());
        assert!(urls_from_stack_outputs("nope").is_err());
    }

    #[test]
    fn plan_covers_the_table_once_per_event() {
        let urls = urls_from_base("http://127.0.0.1:3000/");
        assert_eq!(urls[&Family::Deal], "http://127.0.0.1:3000/deal");
        let online = plan_bindings(&urls, false);
        let table_size = bindable_count();
        assert_eq!(online.len(), table_size);
        let with_offline = plan_bindings(&urls, true);
        let app_events = bitrix24_events(Family::App).len();
        assert_eq!(with_offline.len(), 2 * table_size - app_events + 1);
        assert!(with_offline.contains(&Binding {
            event: ONOFFLINEEVENT.into(),
            handler: Some("http://127.0.0.1:3000/app".into()),
            offline: false
        }));
    }
}
