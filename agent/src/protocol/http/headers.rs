//! Headers: what is stripped at each hop, what the backend may answer in
//! on masked rules, and what a record keeps of a request's target and
//! headers (secrets hidden).

use http::Request;
use http::header::{self, HeaderMap, HeaderValue};
use hyper::body::Incoming;

use crate::policy::http::HttpCredentials;

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1), plus
/// the proxy credentials, `Expect` (hyper answered it on our side) and
/// `HTTP2-Settings` (it goes with an `h2c` upgrade, never passed on).
const HOP_BY_HOP: [&str; 11] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "expect",
    "http2-settings",
];

/// Query parameters whose values are not recorded.
const SECRET_PARAMS: [&str; 10] =
    ["token", "access_token", "api_key", "apikey", "key", "secret", "password", "passwd", "sig", "signature"];

pub(super) fn is_upgrade(h: &HeaderMap) -> bool {
    h.get(header::UPGRADE).is_some()
        && h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

/// The protocols an `Upgrade` field names (`websocket`, `h2c`, `SPDY/3.1`),
/// in order, as written; every `Upgrade` field counts.
pub(super) fn upgrade_protocols(h: &HeaderMap) -> Vec<String> {
    h.get_all(header::UPGRADE)
        .iter()
        .flat_map(|v| String::from_utf8_lossy(v.as_bytes()).split(',').map(|t| t.trim().to_owned()).collect::<Vec<_>>())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Protocols a connection may be switched to and then relayed: WebSocket
/// (its frames are recorded), SPDY/3.1 (`kubectl exec` before 1.31) and raw
/// `tcp` (Docker's attach), whose streams carry a command's input and output,
/// not requests. An upgrade to anything else is not passed on — above all
/// `h2c`: after it the connection carries HTTP/2 requests the backend serves
/// and Gatehouse would relay unread, past every path, method and approval
/// rule (h2c smuggling).
pub(super) fn relayable_upgrade(protocol: &str) -> bool {
    ["websocket", "spdy/3.1", "tcp"].iter().any(|p| protocol.eq_ignore_ascii_case(p))
}

/// Removes hop-by-hop headers and those `Connection` names. An upgrade
/// keeps `Connection: upgrade` and `Upgrade`.
pub(super) fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: bool) {
    let named: Vec<String> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty() && t != "upgrade")
        .collect();
    let upgrade_to = h.get(header::UPGRADE).cloned();
    for name in HOP_BY_HOP.iter().map(|s| (*s).to_owned()).chain(named) {
        h.remove(name.as_str());
    }
    if upgrade && let Some(u) = upgrade_to {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, u);
    }
}

/// Headers by which a client claims an address, a scheme or a port on the
/// way to the backend; every `X-Forwarded-*` counts too.
const CLIENT_CLAIMS: [&str; 15] = [
    "forwarded",
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-cluster-client-ip",
    "x-originating-ip",
    "x-remote-ip",
    "x-remote-addr",
    "x-forwarded",
    "forwarded-for",
    "front-end-https",
    "x-url-scheme",
];

/// Drops what the client says about where it connects from (or over what):
/// the backend sees Gatehouse's connection, and an application that trusts
/// the bastion as its proxy would otherwise take `X-Forwarded-For:
/// 203.0.113.7` as the address the request came from (an IP allow list, its
/// own logs). `_` in a name counts as `-` (CGI reads `X_Forwarded_For` as
/// the same). Returns the names dropped.
pub(super) fn strip_client_claims(h: &mut HeaderMap) -> Vec<String> {
    let claims: Vec<header::HeaderName> = h
        .keys()
        .filter(|k| {
            let n = k.as_str().replace('_', "-");
            n.starts_with("x-forwarded-") || CLIENT_CLAIMS.contains(&n.as_str())
        })
        .cloned()
        .collect();
    for k in &claims {
        h.remove(k);
    }
    claims.iter().map(ToString::to_string).collect()
}

/// On masked rules the backend may answer only in codings the pipeline can undo.
pub(super) fn restrict_accept_encoding(h: &mut HeaderMap) {
    let wanted: Vec<String> = h
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_owned())
        .filter(|t| {
            let name = t.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            matches!(name.as_str(), "gzip" | "x-gzip" | "deflate" | "identity")
        })
        .collect();
    let v = if wanted.is_empty() { "identity".to_owned() } else { wanted.join(", ") };
    if let Ok(v) = HeaderValue::from_str(&v) {
        h.insert(header::ACCEPT_ENCODING, v);
    }
}

pub(super) fn host_of(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(ToOwned::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
}

/// Path and query for the record, secret-looking parameter values removed.
/// Parameters are split at `;` as well as `&` (some frameworks read either
/// as a separator) and their names read as frameworks read them (decoded,
/// `api.key` and `api key` as `api_key`), so `x=1;token=…` and
/// `access%5Ftoken=…` lose their values too.
pub(super) fn recorded_target(uri: &http::Uri) -> String {
    let path = uri.path();
    let Some(q) = uri.query() else { return path.to_owned() };
    let mut out = format!("{path}?");
    for piece in q.split_inclusive(['&', ';']) {
        let pair = piece.trim_end_matches(['&', ';']);
        let (k, _) = pair.split_once('=').unwrap_or((pair, ""));
        let name = crate::policy::http::percent_decode(k.as_bytes(), true)
            .map_or_else(|| k.to_ascii_lowercase(), |d| crate::policy::http::param_key(&String::from_utf8_lossy(&d)));
        let secret = SECRET_PARAMS
            .iter()
            .any(|s| name.strip_suffix(s).is_some_and(|before| before.is_empty() || before.ends_with('_')));
        if secret {
            out.push_str(k);
            out.push_str("=[redacted]");
            out.push_str(piece.get(pair.len()..).unwrap_or_default());
        } else {
            out.push_str(piece);
        }
    }
    out
}

/// Request headers for the record: credentials' values hidden.
pub(super) fn recorded_headers(
    h: &HeaderMap,
    backend: Option<&crate::policy::http::HttpBackend>,
) -> Vec<(String, String)> {
    let injected = backend.and_then(|b| b.credentials.as_ref()).map(HttpCredentials::header_name);
    h.iter()
        .map(|(k, v)| {
            let name = k.as_str();
            let secret = matches!(name, "authorization" | "cookie" | "proxy-authorization" | "x-api-key")
                || injected.as_deref() == Some(name)
                || v.is_sensitive();
            let value =
                if secret { "[redacted]".to_owned() } else { String::from_utf8_lossy(v.as_bytes()).into_owned() };
            (name.to_owned(), value)
        })
        .collect()
}

/// Response headers for the record (`Set-Cookie` values hidden).
pub(super) fn header_list(h: &HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(k, v)| {
            let value = if k == header::SET_COOKIE {
                "[redacted]".to_owned()
            } else {
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            };
            (k.as_str().to_owned(), value)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_upgrades_that_carry_no_requests_are_relayable() {
        let mut h = HeaderMap::new();
        h.append(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.append(header::UPGRADE, HeaderValue::from_static(" h2c , SPDY/3.1"));
        assert_eq!(upgrade_protocols(&h), ["websocket", "h2c", "SPDY/3.1"]);
        let relayable: Vec<bool> = upgrade_protocols(&h).iter().map(|p| relayable_upgrade(p)).collect();
        assert_eq!(relayable, [true, false, true]);
        for p in ["h2c", "H2C", "h2", "HTTP/2.0", "TLS/1.2", "websocket2", ""] {
            assert!(!relayable_upgrade(p), "{p}");
        }
        assert!(relayable_upgrade("WebSocket") && relayable_upgrade("tcp"));
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("keep-alive, x-secret-hop"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("accept"));
    }

    #[test]
    fn upgrade_keeps_its_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
    }

    #[test]
    fn client_address_claims_are_dropped() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x-forwarded-for", "203.0.113.1"),
            ("x_real_ip", "203.0.113.2"),
            ("forwarded", "for=203.0.113.3"),
            ("x-forwarded-proto", "https"),
            ("true-client-ip", "203.0.113.4"),
            ("x-tenant", "acme"),
        ] {
            h.insert(header::HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let mut dropped = strip_client_claims(&mut h);
        dropped.sort();
        assert_eq!(dropped, ["forwarded", "true-client-ip", "x-forwarded-for", "x-forwarded-proto", "x_real_ip"]);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-tenant"));
    }

    #[test]
    fn secret_query_values_are_not_recorded() {
        let u: http::Uri = "/x?access_token=abc&page=2&my_password=p".parse().unwrap();
        assert_eq!(recorded_target(&u), "/x?access_token=[redacted]&page=2&my_password=[redacted]");
        let u: http::Uri = "/x?page=2;token=abc&access%5Ftoken=def&&api+key=g;".parse().unwrap();
        assert_eq!(
            recorded_target(&u),
            "/x?page=2;token=[redacted]&access%5Ftoken=[redacted]&&api+key=[redacted];",
            "`;` separates, names are read decoded"
        );
        let u: http::Uri = "/x?".parse().unwrap();
        assert_eq!(recorded_target(&u), "/x?");
    }

    #[test]
    fn accept_encoding_is_limited_to_what_masking_reads() {
        let mut h = HeaderMap::new();
        h.insert("accept-encoding", HeaderValue::from_static("br, gzip;q=0.8, zstd"));
        restrict_accept_encoding(&mut h);
        assert_eq!(h.get("accept-encoding").unwrap(), "gzip;q=0.8");
        h.insert("accept-encoding", HeaderValue::from_static("br"));
        restrict_accept_encoding(&mut h);
        assert_eq!(h.get("accept-encoding").unwrap(), "identity");
    }
}
