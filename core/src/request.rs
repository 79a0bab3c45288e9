//! The request model: everything borrowed, nothing copied.

use std::net::IpAddr;

/// One header as the host received it: raw name and value bytes.
pub type Header<'a> = (&'a [u8], &'a [u8]);

/// An HTTP request as the host sees it, before any GPU time is spent.
///
/// Every part is borrowed from the host's own buffers; building a `Request` copies nothing.
/// Headers keep their order and repeated names, because smuggling and cache-poisoning checks
/// need to see duplicates.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The method, e.g. `b"POST"`.
    pub method: &'a [u8],
    /// The raw path, percent-encoding kept, without the query.
    pub path: &'a [u8],
    /// The raw query string without the leading `?` (empty if none).
    pub query: &'a [u8],
    /// Headers in the order received.
    pub headers: &'a [Header<'a>],
    /// The body bytes (possibly empty).
    pub body: &'a [u8],
    /// The client address, if the host knows it.
    pub peer: Option<IpAddr>,
    /// An identity the host has already verified (mTLS subject, gateway auth). Edgeward never
    /// takes this from a request header; only the host can set it.
    pub identity: Option<&'a str>,
    /// The end client's address when the host knows it to differ from `peer`: behind a
    /// load balancer, the address the host resolved from `X-Forwarded-For` with its own
    /// list of trusted proxies. `client_ip` limit keys use it (else `peer`);
    /// `trustedHeaders.from` always checks `peer`, the socket the request came from.
    pub client: Option<IpAddr>,
}

impl<'a> Request<'a> {
    /// A request from a method and a raw URI (`/path?query`); an absolute URI
    /// (`http://host/path?q`) is reduced to its path and query.
    pub fn new(method: &'a [u8], uri: &'a [u8]) -> Request<'a> {
        let uri = strip_scheme_authority(uri);
        let (path, query) = match memchr::memchr(b'?', uri) {
            Some(i) => (&uri[..i], &uri[i + 1..]),
            None => (uri, &uri[uri.len()..]),
        };
        // A fragment is never sent by clients; if one is there it is part of the attack
        // surface, so it stays in the query (or path) rather than being dropped.
        Request {
            method,
            path,
            query,
            headers: &[],
            body: &[],
            peer: None,
            identity: None,
            client: None,
        }
    }

    /// Sets the headers.
    pub fn with_headers(mut self, headers: &'a [Header<'a>]) -> Self {
        self.headers = headers;
        self
    }

    /// Sets the body.
    pub fn with_body(mut self, body: &'a [u8]) -> Self {
        self.body = body;
        self
    }

    /// Sets the client address.
    pub fn with_peer(mut self, peer: IpAddr) -> Self {
        self.peer = Some(peer);
        self
    }

    /// Sets a host-verified identity.
    pub fn with_identity(mut self, identity: &'a str) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Sets the end client's address (see [`Request::client`]).
    pub fn with_client_ip(mut self, client: IpAddr) -> Self {
        self.client = Some(client);
        self
    }

    /// The address limits key on: the end client if the host set it, else the peer.
    pub fn client_ip(&self) -> Option<IpAddr> {
        self.client.or(self.peer)
    }

    /// The first header with this name (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| *v)
    }

    /// How many headers have this name (ASCII case-insensitive).
    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .count()
    }

    /// The `Host` header (or `:authority`), without a port.
    pub fn host(&self) -> Option<&'a [u8]> {
        let h = self.header("host").or_else(|| self.header(":authority"))?;
        Some(without_port(h))
    }

    /// Whether the `Referer` names the same host as `Host` (ports ignored). A request
    /// without either header is not same-site: nothing shows the application sent the
    /// client here itself.
    pub fn same_site(&self) -> bool {
        let (Some(host), Some(referer)) = (self.host(), self.header("referer")) else {
            return false;
        };
        referer_host(referer).is_some_and(|r| !r.is_empty() && r.eq_ignore_ascii_case(host))
    }
}

/// `ip` cut to its network: `v4` prefix bits for IPv4 (an IPv4-mapped IPv6 address counts
/// as IPv4), `v6` for IPv6; prefixes above the family's width keep the whole address.
pub(crate) fn network(ip: IpAddr, v4: u8, v6: u8) -> (IpAddr, u8) {
    let ip = match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        a => a,
    };
    match ip {
        IpAddr::V4(a) => {
            let bits = v4.min(32);
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            (IpAddr::V4((u32::from(a) & mask).into()), bits)
        }
        IpAddr::V6(a) => {
            let bits = v6.min(128);
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            (IpAddr::V6((u128::from(a) & mask).into()), bits)
        }
    }
}

/// The host of an absolute URL (`scheme://[user@]host[:port]/…`), without the port.
fn referer_host(url: &[u8]) -> Option<&[u8]> {
    let i = memchr::memmem::find(url, b"://")?;
    let rest = &url[i + 3..];
    let end = rest
        .iter()
        .position(|&c| matches!(c, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let mut auth = &rest[..end];
    if let Some(at) = memchr::memrchr(b'@', auth) {
        auth = &auth[at + 1..];
    }
    Some(without_port(auth))
}

/// `host[:port]` without the port; bracketed IPv6 literals keep their colons.
fn without_port(authority: &[u8]) -> &[u8] {
    if authority.first() == Some(&b'[') {
        return match memchr::memchr(b']', authority) {
            Some(i) => &authority[..=i],
            None => authority,
        };
    }
    match memchr::memrchr(b':', authority) {
        Some(i) => &authority[..i],
        None => authority,
    }
}

fn strip_scheme_authority(uri: &[u8]) -> &[u8] {
    if uri.first() == Some(&b'/') {
        return uri;
    }
    if let Some(i) = memchr::memmem::find(uri, b"://") {
        let rest = &uri[i + 3..];
        return match memchr::memchr2(b'/', b'?', rest) {
            Some(j) => &rest[j..],
            None => &rest[rest.len()..],
        };
    }
    uri
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_uri() {
        let r = Request::new(b"GET", b"/a/b?x=1&y=2");
        assert_eq!(r.path, b"/a/b");
        assert_eq!(r.query, b"x=1&y=2");
        let r = Request::new(b"GET", b"/a");
        assert_eq!(r.query, b"");
        let r = Request::new(b"GET", b"http://h:80/p?q");
        assert_eq!((r.path, r.query), (&b"/p"[..], &b"q"[..]));
        let r = Request::new(b"GET", b"http://h");
        assert_eq!(r.path, b"");
        let r = Request::new(b"OPTIONS", b"*");
        assert_eq!(r.path, b"*");
    }

    #[test]
    fn same_site_compares_referer_and_host() {
        let same = |h: &[Header]| Request::new(b"GET", b"/").with_headers(h).same_site();
        assert!(same(&[
            (b"Host", b"Example.com:8080"),
            (b"Referer", b"https://u@example.COM/a?b")
        ]));
        assert!(same(&[
            (b"Host", b"[::1]"),
            (b"Referer", b"http://[::1]:80/")
        ]));
        assert!(!same(&[
            (b"Host", b"example.com"),
            (b"Referer", b"https://evil.example/")
        ]));
        assert!(!same(&[(b"Host", b"example.com")]));
        assert!(!same(&[(b"Referer", b"https://example.com/")]));
        assert!(!same(&[
            (b"Host", b"example.com"),
            (b"Referer", b"/relative")
        ]));
        assert!(!same(&[(b"Host", b""), (b"Referer", b"http:///x")]));
    }

    #[test]
    fn host_without_port() {
        let h: &[Header] = &[(b"Host", b"api.example.com:8443")];
        assert_eq!(
            Request::new(b"GET", b"/").with_headers(h).host(),
            Some(&b"api.example.com"[..])
        );
        let h: &[Header] = &[(b"host", b"[::1]:80")];
        assert_eq!(
            Request::new(b"GET", b"/").with_headers(h).host(),
            Some(&b"[::1]"[..])
        );
    }
}
