//! `relay invoke <function> <event.json>`: what `sam local invoke` does, without Docker. The
//! event goes through the same Lambda glue as on AWS (`ingest-<family>`: a Function URL
//! request; `consumer`: an SQS event) and the handler's response is printed as JSON.

use crate::backend::Backend;
use crate::cli_error::CliError;
use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::{Context, LambdaEvent};
use relay_core::compose::{AppStores, ProcessParts};
use relay_core::config::RelayConfig;
use relay_core::event::Family;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The consumer Lambda's timeout in the template: the deadline `invoke` gives the handler.
const CONSUMER_DEADLINE: Duration = Duration::from_secs(30);

#[derive(clap::Args)]
pub struct InvokeArgs {
    /// `ingest-<family>` (deal, lead, contact, company, requisite, invoice, document,
    /// activity, app) or `consumer`.
    function: String,
    /// The event file, e.g. events/ingest-deal/bitrix24-form.json.
    event: PathBuf,
}

enum Function {
    Ingest(Family),
    Consumer,
}

fn parse_function(name: &str) -> Result<Function, CliError> {
    if name == "consumer" {
        return Ok(Function::Consumer);
    }
    name.strip_prefix("ingest-")
        .and_then(|family| family.parse::<Family>().ok())
        .map(Function::Ingest)
        .ok_or_else(|| {
            CliError::Usage(format!(
                "unknown function {name:?}: expected ingest-<family> (deal, lead, contact, company, requisite, invoice, document, activity, app) or consumer"
            ))
        })
}

pub async fn run(args: InvokeArgs, data_dir: &Path) -> Result<(), CliError> {
    crate::logs::init_readable_logs();
    let function = parse_function(&args.function)?;
    let raw = std::fs::read_to_string(&args.event)
        .map_err(|e| CliError::io(format!("reading {}", args.event.display()), e))?;
    let config = RelayConfig::from_env()?;
    let backend = Backend::from_env(data_dir).await?;
    let response = match function {
        Function::Ingest(family) => invoke_ingest(&backend, config, family, &raw).await?,
        Function::Consumer => invoke_consumer(&backend, config, &raw).await?,
    };
    let pretty = serde_json::to_string_pretty(&response)
        .map_err(|e| CliError::Handler(format!("printing the response: {e}")))?;
    println!("{pretty}");
    Ok(())
}

async fn invoke_ingest(
    backend: &Backend,
    config: RelayConfig,
    family: Family,
    raw: &str,
) -> Result<serde_json::Value, CliError> {
    let request = lambda_http::request::from_str(raw)
        .map_err(|e| CliError::Usage(format!("not a Function URL request event: {e}")))?;
    // App mode, as `relay serve` and the functions build it: stored application tokens are
    // accepted and app events go through the lifecycle (no ONOFFLINEEVENT wake here).
    let (tokens, snapshots, bind_plans) = backend.lifecycle_stores()?;
    let ingress = ProcessParts::new(config, tokens.clone())?.app_ingress(
        backend.queue()?,
        AppStores {
            tokens,
            snapshots,
            bind_plans,
        },
        // One request, then the process ends: a background task would not finish.
        false,
        None,
    );
    let response =
        relay_lambda::ingest::handle_function_url_request(&ingress, family, request).await;
    Ok(function_url_response_json(response))
}

/// The response as the Function URL runtime serializes it.
fn function_url_response_json(
    response: lambda_http::Response<lambda_http::Body>,
) -> serde_json::Value {
    let (parts, body) = response.into_parts();
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .filter_map(|(name, value)| {
            value
                .to_str()
                .ok()
                .map(|v| (name.as_str().to_string(), serde_json::Value::from(v)))
        })
        .collect();
    let (body, base64) = match body {
        lambda_http::Body::Empty => (String::new(), false),
        lambda_http::Body::Text(text) => (text, false),
        lambda_http::Body::Binary(bytes) => match String::from_utf8(bytes) {
            Ok(text) => (text, false),
            Err(e) => {
                use base64::Engine;
                (
                    base64::engine::general_purpose::STANDARD.encode(e.into_bytes()),
                    true,
                )
            }
        },
        _ => (String::new(), false),
    };
    serde_json::json!({
        "statusCode": parts.status.as_u16(),
        "headers": headers,
        "body": body,
        "isBase64Encoded": base64,
    })
}

async fn invoke_consumer(
    backend: &Backend,
    config: RelayConfig,
    raw: &str,
) -> Result<serde_json::Value, CliError> {
    let event: SqsEvent =
        serde_json::from_str(raw).map_err(|e| CliError::Usage(format!("not an SQS event: {e}")))?;
    let routes = relay_aws::routes_source::load_routes(&config).await?;
    let consumer = backend.consumer(config, routes)?;
    let mut context = Context::default();
    let deadline = relay_core::clock::now() + CONSUMER_DEADLINE;
    context.deadline = u64::try_from(crate::drain::unix_ms(deadline)).unwrap_or(0);
    context.request_id = "relay-invoke".to_string();
    let response =
        relay_lambda::consumer::handle_sqs_event(&consumer, LambdaEvent::new(event, context)).await;
    serde_json::to_value(&response)
        .map_err(|e| CliError::Handler(format!("printing the response: {e}")))
}
