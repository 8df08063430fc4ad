//! Request bodies as the CRMs send them, for the end-to-end tests: Bitrix24 form-encoded the
//! way PHP's `http_build_query` writes it (brackets percent-encoded), SalesMan flat JSON.

pub const B24_TOKEN: &str = "e2e-application-token";
pub const B24_MEMBER: &str = "e2emember";
pub const SALESMAN_SECRET: &str = "e2e-salesman-secret";
/// `whsec_` + base64 of "e2e-signing-key-0123456789abcdef".
pub const SIGNING_SECRET: &str = "whsec_ZTJlLXNpZ25pbmcta2V5LTAxMjM0NTY3ODlhYmNkZWY=";
pub const SIGNING_KEY: &[u8] = b"e2e-signing-key-0123456789abcdef";

fn php_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

pub fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", php_encode(k), php_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A CRM entity event (`data[FIELDS][ID]`), or a task event (`data[FIELDS_AFTER][ID]`).
pub fn b24_event(event: &str, entity_id: &str, ts: i64, token: &str) -> String {
    let ts = ts.to_string();
    let id_key = if event.starts_with("ONTASK") {
        "data[FIELDS_AFTER][ID]"
    } else {
        "data[FIELDS][ID]"
    };
    let mut pairs = vec![("event", event), ("event_handler_id", "17")];
    if !entity_id.is_empty() {
        pairs.push((id_key, entity_id));
    }
    pairs.extend([
        ("ts", ts.as_str()),
        ("auth[domain]", "e2e.bitrix24.test"),
        ("auth[client_endpoint]", "https://e2e.bitrix24.test/rest/"),
        ("auth[server_endpoint]", "https://oauth.bitrix.info/rest/"),
        ("auth[member_id]", B24_MEMBER),
        ("auth[application_token]", token),
    ]);
    form(&pairs)
}

/// Verifies `webhook-signature` independently of crm-relay's signer (Standard Webhooks:
/// base64 HMAC-SHA256 of "id.timestamp.body").
pub fn signature_is_valid(id: &str, timestamp: &str, body: &[u8], header: &str) -> bool {
    use base64::Engine;
    use hmac::Mac;
    let mut mac = <hmac::Hmac<sha2::Sha256>>::new_from_slice(SIGNING_KEY).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    header
        .split(' ')
        .any(|sig| sig.strip_prefix("v1,") == Some(expected.as_str()))
}
