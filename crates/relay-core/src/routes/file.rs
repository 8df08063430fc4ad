//! The routes file (`RELAY_ROUTES`): JSON, read once at start; every mistake is a load error
//! that names its line and route, so a bad file stops the relay before an event is consumed.
//! Secrets never sit in the file (it ships in packages and lives in git): `secret_env` and
//! `{"env": ...}` header values name environment variables, read here; `secret_ssm` names an
//! SSM SecureString (Lambda has no secret in its environment), fetched by the loader
//! (`routes_source`) before this parser runs.
//!
//! ```json
//! {"routes": [{
//!   "name": "warehouse",
//!   "match": {"family": ["deal"]},
//!   "project": {"include": ["ID", "TITLE"]},
//!   "destinations": [{"url": "https://wh.example/hook", "secret_env": "WH_SECRET",
//!                     "headers": {"X-Tenant": "acme", "Authorization": {"env": "WH_AUTH"}}}]
//! }]}
//! ```

use super::pattern::PathStep;
use super::{EventPattern, Projection, Route, RouteDestination, Routes, RoutesError};
use crate::secret::Secret;
use serde_json::Value;
use std::collections::HashSet;
use std::path::Path;

pub fn load(path: &Path) -> Result<Routes, RoutesError> {
    let text = std::fs::read_to_string(path).map_err(|source| RoutesError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// How the `env` answer function is asked for a `secret_ssm` parameter: `ssm:<name>`.
pub const SSM_REFERENCE: &str = "ssm:";

pub fn parse(text: &str, origin: &str) -> Result<Routes, RoutesError> {
    parse_with_env(text, origin, &|name| std::env::var(name).ok())
}

/// `env` answers for environment variables, so tests need not touch the process's own.
pub fn parse_with_env(
    text: &str,
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Routes, RoutesError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // serde_json first: its syntax errors say what was expected where.
    if let Err(e) = serde_json::from_str::<Value>(text) {
        return Err(invalid(origin, e.line(), format!("not valid JSON: {e}")));
    }
    let tree =
        located::parse(text).map_err(|line| invalid(origin, line, "not valid JSON".to_string()))?;
    let mut reader = Reader {
        origin,
        env,
        problems: Vec::new(),
    };
    let routes = reader.file(&tree);
    reader.problems.sort_by_key(|problem| match problem {
        RoutesError::Invalid { line, .. } => *line,
        _ => 0,
    });
    match reader.problems.len() {
        0 => Ok(Routes {
            routes,
            implicit: false,
        }),
        1 => Err(reader.problems.remove(0)),
        _ => Err(RoutesError::Several(reader.problems)),
    }
}

fn invalid(origin: &str, line: usize, message: String) -> RoutesError {
    RoutesError::Invalid {
        origin: origin.to_string(),
        line,
        message,
    }
}

/// Headers the relay itself sets on every forward: a route may not replace them.
const RESERVED_HEADERS: [&str; 8] = [
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
];

const MAX_NAME_LEN: usize = 64;

struct Reader<'a> {
    origin: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
    /// Every problem, not just the first: `relay routes check` lists them all.
    problems: Vec<RoutesError>,
}

use located::{Located, Node};

impl Reader<'_> {
    fn problem(&mut self, line: usize, route: Option<&str>, message: impl Into<String>) {
        let message = match route {
            Some(name) => format!("route `{name}`: {}", message.into()),
            None => message.into(),
        };
        self.problems.push(invalid(self.origin, line, message));
    }

    /// The members of an object node, or a problem.
    fn object<'t>(
        &mut self,
        node: &'t Located,
        route: Option<&str>,
        what: &str,
    ) -> Option<&'t [located::Member]> {
        match &node.node {
            Node::Object(members) => Some(members),
            _ => {
                self.problem(node.line, route, format!("{what} must be a JSON object"));
                None
            }
        }
    }

    fn unknown_keys(
        &mut self,
        members: &[located::Member],
        known: &[&str],
        route: Option<&str>,
        what: &str,
    ) {
        for member in members {
            if !known.contains(&member.key.as_str()) {
                self.problem(
                    member.key_line,
                    route,
                    format!(
                        "unknown key `{}` in {what}; known: {}",
                        member.key,
                        known.join(", ")
                    ),
                );
            }
        }
    }

    /// serde_json keeps the last of two equal keys; in a file someone edits by hand the first
    /// one is then silently ignored, so two are refused instead.
    fn duplicate_keys(&mut self, node: &Located) {
        match &node.node {
            Node::Object(members) => {
                let mut seen = HashSet::new();
                for member in members {
                    if !seen.insert(member.key.as_str()) {
                        self.problem(
                            member.key_line,
                            None,
                            format!("key `{}` given twice in one object", member.key),
                        );
                    }
                    self.duplicate_keys(&member.value);
                }
            }
            Node::Array(items) => items.iter().for_each(|i| self.duplicate_keys(i)),
            Node::Scalar(_) => {}
        }
    }

    fn file(&mut self, tree: &Located) -> Vec<Route> {
        self.duplicate_keys(tree);
        let Some(members) = self.object(tree, None, "a routes file") else {
            return Vec::new();
        };
        self.unknown_keys(members, &["routes"], None, "the file");
        let Some(list) = located::get(members, "routes") else {
            self.problem(tree.line, None, "no `routes` list");
            return Vec::new();
        };
        let Node::Array(items) = &list.node else {
            self.problem(list.line, None, "`routes` must be a list");
            return Vec::new();
        };
        if items.is_empty() {
            self.problem(
                list.line,
                None,
                "`routes` is empty: no event would go anywhere; remove RELAY_ROUTES to use RELAY_DESTINATION_URL",
            );
        }
        let mut names: HashSet<String> = HashSet::new();
        let mut routes = Vec::new();
        for (i, item) in items.iter().enumerate() {
            if let Some(route) = self.route(item, i, &mut names) {
                routes.push(route);
            }
        }
        routes
    }

    fn route(
        &mut self,
        node: &Located,
        index: usize,
        names: &mut HashSet<String>,
    ) -> Option<Route> {
        let members = self.object(node, None, &format!("route #{}", index + 1))?;
        let name = match located::get(members, "name") {
            Some(Located {
                node: Node::Scalar(Value::String(name)),
                line,
            }) => {
                self.check_name(name, *line);
                if !names.insert(name.clone()) {
                    self.problem(*line, None, format!("duplicate route name `{name}`"));
                }
                name.clone()
            }
            Some(other) => {
                self.problem(other.line, None, "a route's `name` must be a string");
                return None;
            }
            None => {
                self.problem(
                    node.line,
                    None,
                    format!("route #{} has no `name`", index + 1),
                );
                return None;
            }
        };
        let route = Some(name.as_str());
        let problems_before = self.problems.len();
        self.unknown_keys(
            members,
            &["name", "match", "destinations", "project"],
            route,
            "a route",
        );
        let pattern = match located::get(members, "match") {
            Some(pattern) => self.pattern(pattern, &name),
            None => {
                self.problem(
                    node.line,
                    route,
                    "no `match`; write \"match\": {} to send it every event",
                );
                None
            }
        };
        let destinations = match located::get(members, "destinations") {
            Some(list) => self.destinations(list, &name),
            None => {
                self.problem(node.line, route, "no `destinations`");
                Vec::new()
            }
        };
        let projection = located::get(members, "project").and_then(|p| self.projection(p, &name));
        (self.problems.len() == problems_before).then_some(Route {
            name,
            pattern: pattern?,
            destinations,
            projection,
        })
    }

    fn check_name(&mut self, name: &str, line: usize) {
        let fine = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !fine {
            self.problem(
                line,
                None,
                format!(
                    "route name `{name}`: 1 to {MAX_NAME_LEN} of A-Z a-z 0-9 - _ . (it names the \
                     route in logs and metrics)"
                ),
            );
        }
    }

    fn pattern(&mut self, node: &Located, route: &str) -> Option<EventPattern> {
        match EventPattern::from_json(&node.to_value()) {
            Ok(pattern) => Some(pattern),
            Err(e) => {
                let line = node.line_of(&e.at);
                self.problem(line, Some(route), format!("match: {e}"));
                None
            }
        }
    }

    fn destinations(&mut self, node: &Located, route: &str) -> Vec<RouteDestination> {
        let Node::Array(items) = &node.node else {
            self.problem(node.line, Some(route), "`destinations` must be a list");
            return Vec::new();
        };
        if items.is_empty() {
            self.problem(
                node.line,
                Some(route),
                "no destinations: a route needs at least one",
            );
        }
        items
            .iter()
            .filter_map(|item| self.destination(item, route))
            .collect()
    }

    fn destination(&mut self, node: &Located, route: &str) -> Option<RouteDestination> {
        let members = self.object(node, Some(route), "a destination")?;
        self.unknown_keys(
            members,
            &["url", "secret_env", "secret_ssm", "headers"],
            Some(route),
            "a destination",
        );
        let url = match located::get(members, "url") {
            Some(Located {
                node: Node::Scalar(Value::String(url)),
                line,
            }) => self.url(url, *line, route),
            Some(other) => {
                self.problem(other.line, Some(route), "`url` must be a string");
                None
            }
            None => {
                self.problem(node.line, Some(route), "a destination without `url`");
                None
            }
        };
        let secret = match (
            located::get(members, "secret_env"),
            located::get(members, "secret_ssm"),
        ) {
            (None, None) => Some(None),
            (Some(_), Some(both)) => {
                self.problem(
                    both.line,
                    Some(route),
                    "`secret_env` and `secret_ssm` both given: name the secret once",
                );
                None
            }
            (
                Some(Located {
                    node: Node::Scalar(Value::String(var)),
                    line,
                }),
                None,
            ) => self.signing_secret(var, *line, route).map(Some),
            (
                None,
                Some(Located {
                    node: Node::Scalar(Value::String(name)),
                    line,
                }),
            ) => self.ssm_signing_secret(name, *line, route).map(Some),
            (Some(other), None) => {
                self.problem(
                    other.line,
                    Some(route),
                    "`secret_env` names an environment variable (a string)",
                );
                None
            }
            (None, Some(other)) => {
                self.problem(
                    other.line,
                    Some(route),
                    "`secret_ssm` names an SSM parameter (a string starting with /)",
                );
                None
            }
        };
        let headers = match located::get(members, "headers") {
            None => Some(Vec::new()),
            Some(headers) => self.headers(headers, route),
        };
        Some(RouteDestination {
            url: url?,
            secret: secret?,
            headers: headers?,
        })
    }

    fn url(&mut self, url: &str, line: usize, route: &str) -> Option<String> {
        let parsed = match reqwest::Url::parse(url) {
            Ok(parsed) => parsed,
            Err(e) => {
                self.problem(line, Some(route), format!("`url` is not a URL: {e}"));
                return None;
            }
        };
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            self.problem(
                line,
                Some(route),
                format!(
                    "`url` must be http:// or https:// with a host, not `{}`",
                    crate::forward::redact_url(url)
                ),
            );
            return None;
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            self.problem(
                line,
                Some(route),
                "`url` carries credentials (user:password@): secrets stay out of the file; \
                 send them in a header with {\"env\": \"VAR\"}",
            );
            return None;
        }
        Some(url.to_string())
    }

    fn env_value(&mut self, var: &str, line: usize, route: &str, what: &str) -> Option<String> {
        let named = !var.is_empty() && var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !named {
            self.problem(
                line,
                Some(route),
                format!("{what}: `{var}` is not an environment variable name"),
            );
            return None;
        }
        match (self.env)(var).filter(|v| !v.is_empty()) {
            Some(value) => Some(value),
            None => {
                self.problem(
                    line,
                    Some(route),
                    format!("{what}: environment variable {var} is not set"),
                );
                None
            }
        }
    }

    fn signing_secret(&mut self, var: &str, line: usize, route: &str) -> Option<Secret> {
        let secret = Secret::new(self.env_value(var, line, route, "secret_env")?);
        self.usable_secret(secret, var, line, route)
    }

    /// On Lambda a secret lives in SSM, never in the environment: the loader fetches every
    /// `secret_ssm` parameter first and answers for it as `ssm:<name>`.
    fn ssm_signing_secret(&mut self, name: &str, line: usize, route: &str) -> Option<Secret> {
        let named = name.starts_with('/')
            && name.len() > 1
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_./-".contains(&b));
        if !named {
            self.problem(
                line,
                Some(route),
                format!("secret_ssm: `{name}` is not an SSM parameter name (/a/b)"),
            );
            return None;
        }
        match (self.env)(&format!("{SSM_REFERENCE}{name}")).filter(|v| !v.is_empty()) {
            Some(value) => self.usable_secret(Secret::new(value), name, line, route),
            None => {
                self.problem(
                    line,
                    Some(route),
                    format!("secret_ssm: SSM parameter {name} does not exist or is empty"),
                );
                None
            }
        }
    }

    fn usable_secret(
        &mut self,
        secret: Secret,
        var: &str,
        line: usize,
        route: &str,
    ) -> Option<Secret> {
        match crate::forward::Signer::from_secret(&secret) {
            Ok(_) => Some(secret),
            Err(e) => {
                // The error names the rule broken, never the value.
                self.problem(line, Some(route), format!("secret_env {var}: {e}"));
                None
            }
        }
    }

    fn headers(&mut self, node: &Located, route: &str) -> Option<Vec<(String, String)>> {
        let members = self.object(node, Some(route), "`headers`")?;
        let mut headers = Vec::new();
        let mut seen = HashSet::new();
        let mut fine = true;
        for member in members {
            let name = member.key.as_str();
            if !self.header_name_allowed(name, member.key_line, route, &mut seen) {
                fine = false;
                continue;
            }
            match self.header_value(name, &member.value, route) {
                Some(value) => headers.push((name.to_string(), value)),
                None => fine = false,
            }
        }
        fine.then_some(headers)
    }

    /// A header name a route may set: a valid name, not one of the relay's own, not given twice.
    fn header_name_allowed(
        &mut self,
        name: &str,
        line: usize,
        route: &str,
        seen: &mut HashSet<String>,
    ) -> bool {
        let lower = name.to_ascii_lowercase();
        if !is_header_name(name) {
            self.problem(line, Some(route), format!("`{name}` is not a header name"));
            return false;
        }
        if RESERVED_HEADERS.contains(&lower.as_str()) {
            self.problem(
                line,
                Some(route),
                format!("header `{name}` is the relay's own (signature and body headers cannot be replaced)"),
            );
            return false;
        }
        if !seen.insert(lower) {
            self.problem(line, Some(route), format!("header `{name}` given twice"));
            return false;
        }
        true
    }

    /// A header's value: a plain string, or `{"env": "VAR"}` (required for credential headers),
    /// without control characters. Problems never echo the value: it may be a secret.
    fn header_value(&mut self, name: &str, value: &Located, route: &str) -> Option<String> {
        let text = match &value.node {
            Node::Scalar(Value::String(_)) if is_credential_header(name) => {
                self.problem(
                    value.line,
                    Some(route),
                    format!(
                        "header `{name}` carries a credential: give it as {{\"env\": \"VAR\"}}, \
                         not in the file"
                    ),
                );
                None
            }
            Node::Scalar(Value::String(text)) => Some(text.clone()),
            Node::Object(inner) if inner.len() == 1 && inner[0].key == "env" => {
                match &inner[0].value.node {
                    Node::Scalar(Value::String(var)) => {
                        self.env_value(var, inner[0].value.line, route, &format!("header `{name}`"))
                    }
                    _ => {
                        self.problem(
                            inner[0].value.line,
                            Some(route),
                            format!(
                                "header `{name}`: `env` names an environment variable (a string)"
                            ),
                        );
                        None
                    }
                }
            }
            _ => {
                self.problem(
                    value.line,
                    Some(route),
                    format!("header `{name}`: a string, or {{\"env\": \"VAR\"}} for a secret"),
                );
                None
            }
        }?;
        let printable = text
            .bytes()
            .all(|b| b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80);
        if !printable {
            self.problem(
                value.line,
                Some(route),
                format!("header `{name}`: its value has control characters"),
            );
            return None;
        }
        Some(text)
    }

    fn projection(&mut self, node: &Located, route: &str) -> Option<Projection> {
        const SHAPE: &str = "`project` is {\"include\": [fields...]} or {\"exclude\": [fields...]}";
        let Node::Object(members) = &node.node else {
            self.problem(node.line, Some(route), SHAPE);
            return None;
        };
        let [member] = members.as_slice() else {
            self.problem(node.line, Some(route), SHAPE);
            return None;
        };
        let Node::Array(items) = &member.value.node else {
            self.problem(member.value.line, Some(route), SHAPE);
            return None;
        };
        let mut fields = Vec::new();
        for item in items {
            match &item.node {
                Node::Scalar(Value::String(field)) if !field.is_empty() => {
                    if fields.contains(field) {
                        self.problem(item.line, Some(route), format!("`{field}` listed twice"));
                    }
                    fields.push(field.clone());
                }
                _ => self.problem(item.line, Some(route), "a field name is a non-empty string"),
            }
        }
        if fields.is_empty() {
            self.problem(member.value.line, Some(route), "an empty field list");
            return None;
        }
        match member.key.as_str() {
            "include" => Some(Projection::Include(fields)),
            "exclude" => Some(Projection::Exclude(fields)),
            _ => {
                self.problem(member.key_line, Some(route), SHAPE);
                None
            }
        }
    }
}

/// Headers whose value is a credential by name: a literal value for one of these would put a
/// secret in a file that ships in packages and sits in git.
fn is_credential_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    matches!(
        name.as_str(),
        "authorization" | "proxy-authorization" | "cookie"
    ) || ["token", "secret", "password", "api-key", "apikey"]
        .iter()
        .any(|word| name.contains(word))
}

/// RFC 9110 `token`.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// JSON with the line of every value and key: serde_json's `Value` forgets where things were.
/// Only ever given text serde_json has already accepted.
mod located {
    use super::PathStep;
    use serde_json::Value;

    #[derive(Debug)]
    pub struct Located {
        pub line: usize,
        pub node: Node,
    }

    #[derive(Debug)]
    pub enum Node {
        Scalar(Value),
        Array(Vec<Located>),
        Object(Vec<Member>),
    }

    #[derive(Debug)]
    pub struct Member {
        pub key: String,
        pub key_line: usize,
        pub value: Located,
    }

    /// The last member of that name, as serde_json keeps it.
    pub fn get<'a>(members: &'a [Member], key: &str) -> Option<&'a Located> {
        members
            .iter()
            .rev()
            .find(|m| m.key == key)
            .map(|m| &m.value)
    }

    impl Located {
        pub fn to_value(&self) -> Value {
            match &self.node {
                Node::Scalar(v) => v.clone(),
                Node::Array(items) => Value::Array(items.iter().map(Located::to_value).collect()),
                Node::Object(members) => Value::Object(
                    members
                        .iter()
                        .map(|m| (m.key.clone(), m.value.to_value()))
                        .collect(),
                ),
            }
        }

        /// The line of the value at `path`, or of the deepest part of it that exists.
        pub fn line_of(&self, path: &[PathStep]) -> usize {
            let Some((step, rest)) = path.split_first() else {
                return self.line;
            };
            let next = match (step, &self.node) {
                (PathStep::Key(key), Node::Object(members)) => {
                    members.iter().rev().find(|m| &m.key == key).map(|m| {
                        if rest.is_empty() {
                            m.key_line
                        } else {
                            m.value.line_of(rest)
                        }
                    })
                }
                (PathStep::Index(i), Node::Array(items)) => items.get(*i).map(|v| v.line_of(rest)),
                _ => None,
            };
            next.unwrap_or(self.line)
        }
    }

    /// The 1-based line where the text stopped making sense, as the error.
    pub fn parse(text: &str) -> Result<Located, usize> {
        let mut parser = Parser {
            text,
            bytes: text.as_bytes(),
            at: 0,
            line: 1,
        };
        let value = parser.value(0)?;
        parser.space();
        if parser.at != parser.bytes.len() {
            return Err(parser.line);
        }
        Ok(value)
    }

    struct Parser<'a> {
        text: &'a str,
        bytes: &'a [u8],
        at: usize,
        line: usize,
    }

    /// serde_json refuses deeper documents itself; this only keeps the recursion bounded.
    const MAX_DEPTH: usize = 128;

    impl Parser<'_> {
        fn space(&mut self) {
            while let Some(&b) = self.bytes.get(self.at) {
                match b {
                    b'\n' => self.line += 1,
                    b' ' | b'\t' | b'\r' => {}
                    _ => return,
                }
                self.at += 1;
            }
        }

        fn value(&mut self, depth: usize) -> Result<Located, usize> {
            if depth > MAX_DEPTH {
                return Err(self.line);
            }
            self.space();
            let line = self.line;
            let node = match self.bytes.get(self.at) {
                Some(b'{') => Node::Object(self.object(depth)?),
                Some(b'[') => Node::Array(self.array(depth)?),
                Some(b'"') => Node::Scalar(Value::String(self.string()?)),
                Some(_) => Node::Scalar(self.literal()?),
                None => return Err(line),
            };
            Ok(Located { line, node })
        }

        fn expect(&mut self, byte: u8) -> Result<(), usize> {
            self.space();
            if self.bytes.get(self.at) == Some(&byte) {
                self.at += 1;
                Ok(())
            } else {
                Err(self.line)
            }
        }

        /// After the opening bracket: true when the container closes here (empty).
        fn closes(&mut self, close: u8) -> bool {
            self.space();
            if self.bytes.get(self.at) == Some(&close) {
                self.at += 1;
                true
            } else {
                false
            }
        }

        fn object(&mut self, depth: usize) -> Result<Vec<Member>, usize> {
            self.expect(b'{')?;
            let mut members = Vec::new();
            if self.closes(b'}') {
                return Ok(members);
            }
            loop {
                self.space();
                let key_line = self.line;
                let key = self.string()?;
                self.expect(b':')?;
                let value = self.value(depth + 1)?;
                members.push(Member {
                    key,
                    key_line,
                    value,
                });
                if self.closes(b'}') {
                    return Ok(members);
                }
                self.expect(b',')?;
            }
        }

        fn array(&mut self, depth: usize) -> Result<Vec<Located>, usize> {
            self.expect(b'[')?;
            let mut items = Vec::new();
            if self.closes(b']') {
                return Ok(items);
            }
            loop {
                items.push(self.value(depth + 1)?);
                if self.closes(b']') {
                    return Ok(items);
                }
                self.expect(b',')?;
            }
        }

        /// A quoted string, unescaped by serde_json.
        fn string(&mut self) -> Result<String, usize> {
            let start = self.at;
            if self.bytes.get(self.at) != Some(&b'"') {
                return Err(self.line);
            }
            self.at += 1;
            loop {
                match self.bytes.get(self.at) {
                    Some(b'\\') => self.at += 2,
                    Some(b'"') => {
                        self.at += 1;
                        break;
                    }
                    Some(_) => self.at += 1,
                    None => return Err(self.line),
                }
            }
            let quoted = self.text.get(start..self.at).ok_or(self.line)?;
            serde_json::from_str(quoted).map_err(|_| self.line)
        }

        /// A number, `true`, `false` or `null`, read by serde_json.
        fn literal(&mut self) -> Result<Value, usize> {
            let start = self.at;
            while let Some(b) = self.bytes.get(self.at) {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.') {
                    self.at += 1;
                } else {
                    break;
                }
            }
            let token = self.text.get(start..self.at).ok_or(self.line)?;
            serde_json::from_str(token).map_err(|_| self.line)
        }
    }
}

#[cfg(test)]
#[path = "file_tests.rs"]
mod tests;
