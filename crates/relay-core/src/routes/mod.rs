//! Routes: which destinations receive a forwarded body, and which part of it.
//! The consumer builds one body per event (enrich, diff); `Routes::deliveries` turns it into
//! one delivery per matching destination. Without a routes file, `Routes::implicit` is
//! today's `RELAY_DESTINATION_URL[_<FAMILY>]`, so existing deployments keep working.

mod file;
pub use file::SSM_REFERENCE;
mod pattern;
mod projection;

pub use pattern::EventPattern;
pub use projection::Projection;

use crate::config::RelayConfig;
use crate::event::Family;
use crate::secret::Secret;
use serde_json::{json, Value};
use std::borrow::Cow;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    #[error("cannot read routes file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// `line` is 1-based; 0 when the error has no place in the file.
    #[error("{origin}:{line}: {message}")]
    Invalid {
        origin: String,
        line: usize,
        message: String,
    },
    /// More than one problem in one file, each an `Invalid`, in file order.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Several(Vec<RoutesError>),
}

/// Every route, in file order. A body goes to every route whose pattern matches it.
#[derive(Clone, Debug)]
pub struct Routes {
    pub routes: Vec<Route>,
    /// True when built from `RELAY_DESTINATION_URL[_<FAMILY>]`, not from a file.
    pub implicit: bool,
}

#[derive(Clone, Debug)]
pub struct Route {
    /// Unique in the file; names the route in logs, metrics and `relay attempts`.
    pub name: String,
    pub pattern: EventPattern,
    pub destinations: Vec<RouteDestination>,
    pub projection: Option<Projection>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RouteDestination {
    pub url: String,
    /// `None`: signed with the relay's own `RELAY_SIGNING_SECRET`.
    pub secret: Option<Secret>,
    /// Extra request headers (never one of the Standard Webhooks headers).
    pub headers: Vec<(String, String)>,
}

/// What one destination receives for one body.
#[derive(Clone, Debug)]
pub struct Delivery<'a> {
    pub route: &'a str,
    pub destination: &'a RouteDestination,
    /// The forwarded body after the route's projection; without one, the body itself,
    /// borrowed: a deep copy of every forwarded body was 1-2% of the consumers' CPU.
    pub body: Cow<'a, Value>,
}

impl Routes {
    /// Reads and checks a routes file; every error names its line.
    pub fn load(path: &Path) -> Result<Routes, RoutesError> {
        file::load(path)
    }

    /// Parses routes text; `origin` names it in errors (a path, or an SSM parameter).
    pub fn parse(text: &str, origin: &str) -> Result<Routes, RoutesError> {
        file::parse(text, origin)
    }

    /// `parse`, with `env` answering for environment variables (`secret_env`, `{"env": ...}`
    /// header values) instead of the process's own.
    pub fn parse_with_env(
        text: &str,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Routes, RoutesError> {
        file::parse_with_env(text, origin, env)
    }

    /// The routes `RELAY_DESTINATION_URL` and `RELAY_DESTINATION_URL_<FAMILY>` mean: a family
    /// with its own URL goes there only; every other family goes to the general URL.
    pub fn implicit(config: &RelayConfig) -> Routes {
        let mut routes = Vec::new();
        for (family, url) in &config.destination_per_family {
            routes.push(Route {
                name: format!("default-{}", family.as_str()),
                pattern: EventPattern::exact_family(*family),
                destinations: vec![RouteDestination::plain(url)],
                projection: None,
            });
        }
        if let Some(url) = &config.destination_url {
            let own: Vec<Family> = config.destination_per_family.keys().copied().collect();
            routes.push(Route {
                name: "default".into(),
                pattern: EventPattern::family_not_in(&own),
                destinations: vec![RouteDestination::plain(url)],
                projection: None,
            });
        }
        Routes {
            routes,
            implicit: true,
        }
    }

    /// One delivery per destination of every matching route, in file order.
    pub fn deliveries<'a>(&'a self, body: &'a Value) -> Vec<Delivery<'a>> {
        let mut out = Vec::new();
        for route in self.routes.iter().filter(|r| r.pattern.matches(body)) {
            let mut shaped = match &route.projection {
                Some(projection) => Cow::Owned(projection.apply(body)),
                None => Cow::Borrowed(body),
            };
            // The last destination takes the shaped body itself: one deep copy fewer per
            // delivery, where almost every route has one destination.
            let mut destinations = route.destinations.iter().peekable();
            while let Some(destination) = destinations.next() {
                let body = match destinations.peek() {
                    Some(_) => shaped.clone(),
                    None => std::mem::take(&mut shaped),
                };
                out.push(Delivery {
                    route: &route.name,
                    destination,
                    body,
                });
            }
        }
        out
    }

    /// One line per route for the `relay serve` banner: name, pattern, destination hosts.
    /// Never a secret, a header value or a URL's path (paths often carry tokens).
    pub fn summary(&self) -> Vec<String> {
        self.routes
            .iter()
            .map(|route| {
                let hosts: Vec<String> = route
                    .destinations
                    .iter()
                    .map(RouteDestination::shown_url)
                    .collect();
                format!(
                    "{} {} -> {}",
                    route.name,
                    route.pattern.as_json(),
                    hosts.join(", ")
                )
            })
            .collect()
    }
}

impl RouteDestination {
    pub fn plain(url: &str) -> RouteDestination {
        RouteDestination {
            url: url.to_string(),
            secret: None,
            headers: Vec::new(),
        }
    }

    /// The URL as banners and `relay routes` show it: scheme, host and port; a path becomes
    /// `/…` (receivers often put a token in it), a query and credentials are dropped.
    pub fn shown_url(&self) -> String {
        match reqwest::Url::parse(&self.url) {
            Ok(url) => {
                let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
                let path = if url.path().len() > 1 { "/…" } else { "" };
                format!(
                    "{}://{}{port}{path}",
                    url.scheme(),
                    url.host_str().unwrap_or("")
                )
            }
            Err(_) => "<invalid url>".to_string(),
        }
    }
}

impl EventPattern {
    fn exact_family(family: Family) -> EventPattern {
        EventPattern::from_json(&json!({"family": [family.as_str()]}))
            .unwrap_or_else(|_| EventPattern::match_all())
    }

    fn family_not_in(families: &[Family]) -> EventPattern {
        if families.is_empty() {
            return EventPattern::match_all();
        }
        let names: Vec<&str> = families.iter().map(|f| f.as_str()).collect();
        EventPattern::from_json(&json!({"family": [{"anything-but": names}]}))
            .unwrap_or_else(|_| EventPattern::match_all())
    }
}
