//! `relay routes check FILE` and `relay routes test FILE EVENT.json`: a routes file checked
//! (every problem with its line) and tried on a forwarded body before it is deployed, by the
//! same code `relay serve` and the consumer Lambda load it with.

use crate::cli_error::CliError;
use relay_core::routes::{Projection, Routes};
use serde_json::Value;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct RoutesArgs {
    #[command(subcommand)]
    command: RoutesCommand,
}

#[derive(clap::Subcommand)]
enum RoutesCommand {
    /// Check a routes file: one line per route, or every problem with its line number.
    Check {
        file: PathBuf,
        /// Do not read the environment variables the file names (`secret_env`, `{"env": ...}`
        /// headers): check the file alone, e.g. in CI where the secrets are not.
        #[arg(long)]
        skip_env: bool,
    },
    /// Print which routes match a forwarded body and what each destination would receive.
    Test {
        file: PathBuf,
        /// A forwarded body (what the relay POSTs: envelope, `entity`, `previous`, `changes`).
        event: PathBuf,
        #[arg(long)]
        skip_env: bool,
    },
}

pub fn run(args: RoutesArgs) -> Result<(), CliError> {
    match args.command {
        RoutesCommand::Check { file, skip_env } => {
            let routes = load(&file, skip_env)?;
            for line in describe(&routes) {
                println!("{line}");
            }
            Ok(())
        }
        RoutesCommand::Test {
            file,
            event,
            skip_env,
        } => {
            let routes = load(&file, skip_env)?;
            let body = read_body(&event)?;
            print!("{}", try_on(&routes, &body));
            Ok(())
        }
    }
}

/// A well-formed stand-in for every variable, so `--skip-env` checks names, not values.
const PLACEHOLDER_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn load(file: &Path, skip_env: bool) -> Result<Routes, CliError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::io(format!("cannot read {}", file.display()), e))?;
    let origin = file.display().to_string();
    let loaded = if skip_env {
        Routes::parse_with_env(&text, &origin, &|_| Some(PLACEHOLDER_SECRET.to_string()))
    } else {
        Routes::parse(&text, &origin)
    };
    loaded.map_err(|e| {
        let shown = e.to_string();
        // Every problem on its own line, then one line saying the file was refused.
        eprintln!("{shown}");
        let count = shown.lines().count();
        CliError::Usage(format!(
            "{origin}: refused, {count} problem{}",
            if count == 1 { "" } else { "s" }
        ))
    })
}

fn read_body(path: &Path) -> Result<Value, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::io(format!("cannot read {}", path.display()), e))?;
    match serde_json::from_str::<Value>(&text) {
        Ok(body @ Value::Object(_)) => Ok(body),
        Ok(_) => Err(CliError::Usage(format!(
            "{}: a forwarded body is a JSON object",
            path.display()
        ))),
        Err(e) => Err(CliError::Usage(format!(
            "{}: not valid JSON: {e}",
            path.display()
        ))),
    }
}

/// One line per route: the banner's summary plus the projection. No secret, header value or
/// URL query ever appears.
fn describe(routes: &Routes) -> Vec<String> {
    routes
        .summary()
        .into_iter()
        .zip(&routes.routes)
        .map(|(line, route)| match &route.projection {
            None => line,
            Some(projection) => format!("{line} ({})", describe_projection(projection)),
        })
        .collect()
}

fn describe_projection(projection: &Projection) -> String {
    match projection {
        Projection::Include(fields) => format!("only {}", fields.join(", ")),
        Projection::Exclude(fields) => format!("without {}", fields.join(", ")),
    }
}

fn try_on(routes: &Routes, body: &Value) -> String {
    let mut out = String::new();
    for route in &routes.routes {
        let verdict = if route.pattern.matches(body) {
            "matches"
        } else {
            "does not match"
        };
        out.push_str(&format!("route {}: {verdict}\n", route.name));
    }
    let deliveries = routes.deliveries(body);
    if deliveries.is_empty() {
        out.push_str("no destination would receive this body\n");
    }
    for delivery in deliveries {
        let signing = match delivery.destination.secret {
            Some(_) => "its own secret",
            None => "RELAY_SIGNING_SECRET",
        };
        out.push_str(&format!(
            "\n{} -> POST {} (signed with {signing})\n",
            delivery.route,
            delivery.destination.shown_url()
        ));
        for (name, _) in &delivery.destination.headers {
            out.push_str(&format!("{name}: <set>\n"));
        }
        let pretty = serde_json::to_string_pretty(&delivery.body)
            .unwrap_or_else(|_| delivery.body.to_string());
        out.push_str(&pretty);
        out.push('\n');
    }
    out
}
