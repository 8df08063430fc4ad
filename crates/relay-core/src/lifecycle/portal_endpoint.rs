//! Which REST endpoint a portal's calls may go to. Install and update learn it from Bitrix24's
//! `app.info` answer, never from the request, and only an `https` URL on the portal's own
//! domain passes: the consumer and the poller send the portal's access token there.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The portal as Bitrix24 confirmed it: where its REST calls go, and its domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfirmedPortal {
    /// `https://<domain>/rest/`, always with the trailing slash.
    pub client_endpoint: String,
    pub domain: String,
}

/// Why an endpoint is refused; logged, never answered to the sender.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EndpointRefused {
    #[error("app.info named no portal domain or endpoint")]
    Missing,
    #[error("the endpoint is not a URL")]
    NotAUrl,
    #[error("the endpoint is not https")]
    NotHttps,
    #[error("the endpoint carries credentials, a query or a fragment")]
    Decorated,
    #[error("the endpoint's host is a loopback, private or link-local address")]
    InternalAddress,
    #[error("the endpoint's host is not the portal's domain")]
    ForeignHost,
}

/// Checks the endpoint `app.info` named (`install.client_endpoint`, else
/// `https://<install.domain>/rest/`). `allow_loopback` (RELAY_ALLOW_LOOPBACK_CRM, for tests)
/// lets `http` on a loopback address through and nothing else.
pub fn confirm_endpoint(
    client_endpoint: Option<&str>,
    domain: Option<&str>,
    allow_loopback: bool,
) -> Result<ConfirmedPortal, EndpointRefused> {
    let domain = domain
        .map(|d| d.trim().to_ascii_lowercase())
        .filter(|d| !d.is_empty());
    let endpoint = match (client_endpoint.filter(|e| !e.is_empty()), &domain) {
        (Some(endpoint), _) => endpoint.to_string(),
        (None, Some(domain)) => format!("https://{domain}/rest/"),
        (None, None) => return Err(EndpointRefused::Missing),
    };
    let url = reqwest::Url::parse(&endpoint).map_err(|_| EndpointRefused::NotAUrl)?;
    if !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(EndpointRefused::Decorated);
    }
    let host = url.host_str().ok_or(EndpointRefused::NotAUrl)?;
    let ip = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok();
    let loopback_allowed = allow_loopback && ip.is_some_and(|ip| ip.is_loopback());
    if loopback_allowed {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(EndpointRefused::NotHttps);
        }
    } else {
        if url.scheme() != "https" {
            return Err(EndpointRefused::NotHttps);
        }
        if let Some(ip) = ip {
            if is_internal(ip) {
                return Err(EndpointRefused::InternalAddress);
            }
            // A bare public IP is no portal domain either.
            return Err(EndpointRefused::ForeignHost);
        }
        let name = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let name = name.trim_end_matches('.');
        if name == "localhost" || name.ends_with(".localhost") {
            return Err(EndpointRefused::InternalAddress);
        }
        let own_domain = domain.as_deref().is_some_and(|d| d == name);
        if !own_domain && !is_bitrix24_cloud(name) {
            return Err(EndpointRefused::ForeignHost);
        }
    }
    let mut client_endpoint = url.to_string();
    if !client_endpoint.ends_with('/') {
        client_endpoint.push('/');
    }
    let domain = domain.unwrap_or_else(|| url.host_str().unwrap_or_default().to_string());
    Ok(ConfirmedPortal {
        client_endpoint,
        domain,
    })
}

/// `<portal>.bitrix24.<tld>` (bitrix24.ru, bitrix24.com, bitrix24.de, bitrix24.com.br …):
/// Bitrix24's cloud portals.
fn is_bitrix24_cloud(host: &str) -> bool {
    let labels: Vec<&str> = host.split('.').collect();
    match labels.iter().position(|l| *l == "bitrix24") {
        // A portal label before it, one or two TLD labels after it.
        Some(at) => at >= 1 && (1..=2).contains(&(labels.len() - at - 1)) && !labels[0].is_empty(),
        None => false,
    }
}

/// Addresses a credentialed request must never go to from a public service.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal_v4(v4);
            }
            is_internal_v6(v6)
        }
    }
}

fn is_internal_v4(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || v4.is_documentation()
        // 100.64.0.0/10, carrier-grade NAT; 0.0.0.0/8; 198.18.0.0/15 benchmarking.
        || (a == 100 && (64..128).contains(&b))
        || a == 0
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240
}

fn is_internal_v6(v6: Ipv6Addr) -> bool {
    let first = v6.segments()[0];
    v6.is_loopback()
        || v6.is_unspecified()
        || v6.is_multicast()
        // fc00::/7 unique local, fe80::/10 link-local.
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cloud_portal_and_its_own_domain_pass() {
        let p = confirm_endpoint(
            Some("https://a.bitrix24.ru/rest"),
            Some("a.bitrix24.ru"),
            false,
        )
        .unwrap();
        assert_eq!(p.client_endpoint, "https://a.bitrix24.ru/rest/");
        assert_eq!(p.domain, "a.bitrix24.ru");
        let p = confirm_endpoint(None, Some("crm.example.com"), false).unwrap();
        assert_eq!(p.client_endpoint, "https://crm.example.com/rest/");
        assert!(confirm_endpoint(Some("https://b.bitrix24.com.br/rest/"), None, false).is_ok());
    }

    #[test]
    fn internal_foreign_or_plain_endpoints_are_refused() {
        let refused = |e: &str, d: Option<&str>| confirm_endpoint(Some(e), d, false).unwrap_err();
        assert_eq!(
            refused("http://a.bitrix24.ru/rest/", None),
            EndpointRefused::NotHttps
        );
        for internal in [
            "https://127.0.0.1/rest/",
            "https://10.0.0.5/rest/",
            "https://169.254.169.254/latest/",
            "https://[::1]/rest/",
            "https://[fe80::1]/rest/",
            "https://[::ffff:192.168.0.1]/rest/",
            "https://100.100.100.200/",
        ] {
            assert_eq!(
                refused(internal, None),
                EndpointRefused::InternalAddress,
                "{internal}"
            );
        }
        assert_eq!(
            refused("https://localhost/rest/", Some("localhost")),
            EndpointRefused::InternalAddress
        );
        assert_eq!(
            refused("https://evil.example/rest/", Some("a.bitrix24.ru")),
            EndpointRefused::ForeignHost
        );
        assert_eq!(
            refused("https://bitrix24.ru.evil.example/rest/", None),
            EndpointRefused::ForeignHost
        );
        assert_eq!(
            refused("https://u:p@a.bitrix24.ru/rest/", None),
            EndpointRefused::Decorated
        );
        assert_eq!(
            refused("https://8.8.8.8/rest/", None),
            EndpointRefused::ForeignHost
        );
        assert_eq!(
            confirm_endpoint(None, None, false).unwrap_err(),
            EndpointRefused::Missing
        );
    }

    #[test]
    fn the_loopback_switch_allows_loopback_http_and_nothing_else() {
        assert!(confirm_endpoint(Some("http://127.0.0.1:8080/rest/"), Some("x"), true).is_ok());
        assert_eq!(
            confirm_endpoint(Some("http://10.0.0.1/rest/"), None, true).unwrap_err(),
            EndpointRefused::NotHttps
        );
        assert_eq!(
            confirm_endpoint(Some("http://a.bitrix24.ru/rest/"), None, true).unwrap_err(),
            EndpointRefused::NotHttps
        );
        assert_eq!(
            confirm_endpoint(Some("https://169.254.169.254/"), None, true).unwrap_err(),
            EndpointRefused::InternalAddress
        );
    }
}
