//! `relay bind`: registers each family's URL for that family's Bitrix24 events on a portal
//! (`event.bind`) and stores that plan for the portal, binds the stored plan again (`--again`,
//! what an app update also does), lists (`--list`, `event.get`) or removes (`--remove`,
//! `event.unbind`) them. The plan comes from `relay_core::lifecycle::bind`; this module only reads
//! arguments and prints.

use crate::backend::Backend;
use crate::cli_error::CliError;
use relay_core::compose::ProcessParts;
use relay_core::config::RelayConfig;
use relay_core::lifecycle::bind::{
    bind_all, bind_stored_plan, list_bindings, plan_bindings, removal_plan, unbind_all,
    urls_from_base, urls_from_stack_outputs, FamilyUrls,
};
use relay_core::ports::{BindPlanStore, Bitrix24Rest, TokenStore};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct BindArgs {
    /// The portal (member_id) whose stored OAuth tokens are used. Optional when exactly one
    /// portal is installed, or when only RELAY_B24_WEBHOOK_URL is configured.
    #[arg(long)]
    member_id: Option<String>,
    /// Where `relay serve` is reachable from Bitrix24: each family binds `<base-url>/<family>`.
    #[arg(long, conflicts_with_all = ["stack_outputs", "again"])]
    base_url: Option<String>,
    /// SAM stack outputs (`sam list stack-outputs --output json`): `<Family>IngestUrl` keys.
    #[arg(long, conflicts_with = "again")]
    stack_outputs: Option<PathBuf>,
    /// Also record the events in the portal's offline log and bind ONOFFLINEEVENT.
    #[arg(long, conflicts_with = "again")]
    offline: bool,
    /// Bind again what the last `relay bind` stored for this portal (events, handler URLs,
    /// online and offline): Bitrix24 removes an app's handlers when the app is updated.
    #[arg(long, conflicts_with_all = ["list", "remove"])]
    again: bool,
    /// Show what the portal has bound (`event.get`) and change nothing.
    #[arg(long, conflicts_with = "remove")]
    list: bool,
    /// Unbind everything `relay bind` may have bound, offline log and ONOFFLINEEVENT included.
    #[arg(long)]
    remove: bool,
}

/// Used when no portal is installed and the inbound webhook URL authenticates instead.
const WEBHOOK_PORTAL: &str = "webhook";

pub async fn run(args: BindArgs, data_dir: &Path) -> Result<(), CliError> {
    crate::logs::init_readable_logs();
    let config = RelayConfig::from_env()?;
    let backend = Backend::from_env(data_dir).await?;
    let (tokens, plans) = backend.bind_stores()?;
    let portal = portal_to_bind(args.member_id.clone(), &config, tokens.as_ref()).await?;
    let rest = ProcessParts::new(config, tokens)?.bitrix24();
    let rest = rest.as_ref();
    if args.list {
        return list(rest, &portal).await;
    }
    if args.again {
        return bind_again(rest, plans.as_ref(), &portal).await;
    }
    let urls = family_urls(&args)?;
    if args.remove {
        return remove(rest, plans.as_ref(), &portal, &urls).await;
    }
    let plan = plan_bindings(&urls, args.offline);
    // Stored before binding: a run that fails half-way still leaves the plan `--again` and
    // the next app update complete.
    plans.save_plan(&portal, &plan).await?;
    let report = bind_all(rest, &portal, &plan).await.map_err(handler)?;
    println!(
        "{portal}: bound {} handler(s), {} already bound",
        report.bound, report.already_bound
    );
    Ok(())
}

/// The portal `--member-id` names; else the one installed portal; else, with only an inbound
/// webhook configured, the webhook's.
async fn portal_to_bind(
    member_id: Option<String>,
    config: &RelayConfig,
    tokens: &dyn TokenStore,
) -> Result<String, CliError> {
    if let Some(member_id) = member_id {
        return Ok(member_id);
    }
    let installed = tokens.list().await?;
    match (installed.as_slice(), &config.b24_webhook_url) {
        ([one], _) => Ok(one.member_id.clone()),
        ([], Some(_)) => Ok(WEBHOOK_PORTAL.to_string()),
        ([], None) => Err(CliError::Usage(
            "no portal installed and RELAY_B24_WEBHOOK_URL not set: install the app first (README.md, section 'Bitrix24: outgoing webhook or app')".into(),
        )),
        (many, _) => {
            let names: Vec<&str> = many.iter().map(|t| t.member_id.as_str()).collect();
            Err(CliError::Usage(format!(
                "several portals installed ({}): choose one with --member-id",
                names.join(", ")
            )))
        }
    }
}

/// `--list`: what the portal has bound (`event.get`).
async fn list(rest: &dyn Bitrix24Rest, portal: &str) -> Result<(), CliError> {
    let rows = list_bindings(rest, portal).await.map_err(handler)?;
    if rows.is_empty() {
        println!("{portal}: no handlers bound");
    }
    for row in rows {
        let target = if row.offline {
            "(offline log)".to_string()
        } else {
            row.handler
        };
        println!("{:<28} {target}", row.event);
    }
    Ok(())
}

/// `--again`: binds the stored plan again.
async fn bind_again(
    rest: &dyn Bitrix24Rest,
    plans: &dyn BindPlanStore,
    portal: &str,
) -> Result<(), CliError> {
    let Some((plan, report)) = bind_stored_plan(rest, plans, portal)
        .await
        .map_err(handler)?
    else {
        return Err(CliError::Usage(format!(
            "{portal}: no bind plan stored; run `relay bind --base-url …` or `--stack-outputs …` first"
        )));
    };
    println!(
        "{portal}: bound {} handler(s) again, {} already bound, of {} in the stored plan",
        report.bound,
        report.already_bound,
        plan.len()
    );
    Ok(())
}

/// `--remove`: unbinds everything `relay bind` may have bound and forgets the stored plan.
async fn remove(
    rest: &dyn Bitrix24Rest,
    plans: &dyn BindPlanStore,
    portal: &str,
    urls: &FamilyUrls,
) -> Result<(), CliError> {
    let plan = removal_plan(urls);
    let report = unbind_all(rest, portal, &plan).await.map_err(handler)?;
    // Nothing is bound any more, so an app update must not bind it back.
    plans.forget_plan(portal).await?;
    println!(
        "{portal}: removed {} handler(s) of {} planned",
        report.removed,
        plan.len()
    );
    Ok(())
}

fn family_urls(args: &BindArgs) -> Result<FamilyUrls, CliError> {
    match (&args.base_url, &args.stack_outputs) {
        (Some(base), None) => Ok(urls_from_base(base)),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| CliError::io(format!("reading {}", path.display()), e))?;
            urls_from_stack_outputs(&text).map_err(handler)
        }
        _ => Err(CliError::Usage(
            "say where the families are served: --base-url <url> or --stack-outputs <file>".into(),
        )),
    }
}

fn handler(e: impl std::fmt::Display) -> CliError {
    CliError::Handler(e.to_string())
}
