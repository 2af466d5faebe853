//! The URL under load: parsed, checked to be plain `http://`, and resolved once to the one
//! address every connection goes to.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs as _};

use hyper::{Uri, http::uri::PathAndQuery};

use crate::config::ConfigError;

/// Where the requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The address every connection is made to.
    pub addr: SocketAddr,
    /// The `Host` header sent: the URL's host and port as written.
    pub host: String,
    /// The URL's path and query: what is requested unless a path or a mix is given.
    pub path: PathAndQuery,
}

impl Target {
    /// Parses an `http://HOST[:PORT][/PATH]` URL. A host name is resolved here (a blocking
    /// look-up) to its first IPv4 address, or its first address if it has none.
    ///
    /// # Errors
    ///
    /// A URL that does not parse, has another scheme or no host, or a host that does not resolve.
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        let uri: Uri = url.parse().map_err(|err| ConfigError::BadUrl {
            url: url.to_owned(),
            reason: format!("{err}"),
        })?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(scheme) => {
                return Err(ConfigError::Scheme {
                    url: url.to_owned(),
                    scheme: scheme.to_owned(),
                });
            }
            None => {
                return Err(ConfigError::NoScheme {
                    url: url.to_owned(),
                });
            }
        }
        let (Some(authority), Some(host)) = (uri.authority(), uri.host()) else {
            return Err(ConfigError::BadUrl {
                url: url.to_owned(),
                reason: "it names no host".to_owned(),
            });
        };
        let port = uri.port_u16().unwrap_or(80);
        let addr = resolve(host, port)?;
        // The Host header carries no user info (`user@`).
        let host_header = authority.as_str().rsplit('@').next().unwrap_or(host);
        let path = uri
            .path_and_query()
            .filter(|p| p.as_str().starts_with('/'))
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        Ok(Self {
            addr,
            host: host_header.to_owned(),
            path,
        })
    }

    /// A target given by address, for callers that already know it (no look-up): `Host` is the
    /// address, the path `/`.
    #[must_use]
    pub fn from_addr(addr: SocketAddr) -> Self {
        Self {
            addr,
            host: addr.to_string(),
            path: PathAndQuery::from_static("/"),
        }
    }

    /// The target as a URL, for reports.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}{}", self.host, self.path)
    }
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, ConfigError> {
    // `Uri::host` keeps the brackets of an IPv6 literal.
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = literal.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|source| ConfigError::Resolve {
            host: host.to_owned(),
            source,
        })?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| ConfigError::Resolve {
            host: host.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_urls() {
        let target = Target::parse("http://127.0.0.1:18080/work?iterations=5").unwrap();
        assert_eq!(target.addr, "127.0.0.1:18080".parse().unwrap());
        assert_eq!(target.host, "127.0.0.1:18080");
        assert_eq!(target.path, "/work?iterations=5");
        assert_eq!(target.url(), "http://127.0.0.1:18080/work?iterations=5");

        let bare = Target::parse("http://[::1]").unwrap();
        assert_eq!(bare.addr, "[::1]:80".parse().unwrap());
        assert_eq!(bare.path, "/");

        let named = Target::parse("http://localhost:18081/").unwrap();
        assert_eq!(named.addr.port(), 18081);
        assert!(named.addr.ip().is_loopback());
        assert_eq!(named.host, "localhost:18081");
    }

    #[test]
    fn rejects_what_is_not_plain_http() {
        assert!(matches!(
            Target::parse("https://127.0.0.1/"),
            Err(ConfigError::Scheme { .. })
        ));
        assert!(matches!(
            Target::parse("127.0.0.1:8080"),
            Err(ConfigError::NoScheme { .. })
        ));
        assert!(matches!(
            Target::parse("http://exa mple/"),
            Err(ConfigError::BadUrl { .. })
        ));
        assert!(matches!(
            Target::parse("/just/a/path"),
            Err(ConfigError::NoScheme { .. })
        ));
    }
}
