//! Node addresses as py2p exchanges them: a host string and a port.

use std::fmt;

use rmpv::Value;

/// A node's address as py2p exchanges it: a host string and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerAddr {
    /// Host name or IP address, as text.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// Longest host name accepted from the network (DNS's limit).
const MAX_HOST_LEN: usize = 255;

impl PeerAddr {
    /// An address from a host and a port.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        PeerAddr { host: host.into(), port }
    }

    /// The address as py2p sends it: `[host, port]`.
    pub fn to_value(&self) -> Value {
        Value::Array(vec![Value::from(self.host.as_str()), Value::from(self.port)])
    }

    /// Parses py2p's `[host, port]` (the host as str or bin); `None` if it
    /// is anything else.
    pub fn from_value(v: &Value) -> Option<Self> {
        let a = v.as_array()?;
        if a.len() != 2 {
            return None;
        }
        let host = match &a[0] {
            Value::String(s) => s.as_str()?.to_owned(),
            Value::Binary(b) => std::str::from_utf8(b).ok()?.to_owned(),
            _ => return None,
        };
        if host.is_empty() || host.len() > MAX_HOST_LEN {
            return None;
        }
        let port = u16::try_from(a[1].as_u64()?).ok()?;
        Some(PeerAddr { host, port })
    }
}

/// The text was not `HOST:PORT` (or `[V6]:PORT`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad address {0:?}: expected HOST:PORT")]
pub struct AddrParseError(pub String);

impl std::str::FromStr for PeerAddr {
    type Err = AddrParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || AddrParseError(s.to_string());
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if host.is_empty() || (host.contains(':') && !s.starts_with('[')) {
            return Err(bad());
        }
        let port: u16 = port.parse().map_err(|_| bad())?;
        Ok(PeerAddr::new(host, port))
    }
}

impl From<std::net::SocketAddr> for PeerAddr {
    fn from(a: std::net::SocketAddr) -> Self {
        PeerAddr::new(a.ip().to_string(), a.port())
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_v4_v6_and_names() {
        for text in ["127.0.0.1:4444", "[::1]:80", "example.org:1"] {
            let a: PeerAddr = text.parse().unwrap();
            assert_eq!(a.to_string(), text);
        }
        assert!("::1:80".parse::<PeerAddr>().is_err(), "bare v6 is ambiguous");
        assert!("host".parse::<PeerAddr>().is_err());
        assert!("host:99999".parse::<PeerAddr>().is_err());
    }

    #[test]
    fn wire_form_round_trips_and_rejects_junk() {
        let a = PeerAddr::new("10.0.0.1", 9);
        assert_eq!(PeerAddr::from_value(&a.to_value()), Some(a));
        let bin_host = Value::Array(vec![Value::Binary(b"h".to_vec()), Value::from(1)]);
        assert_eq!(PeerAddr::from_value(&bin_host), Some(PeerAddr::new("h", 1)));
        for junk in [
            Value::Nil,
            Value::Array(vec![Value::from("h")]),
            Value::Array(vec![Value::from(""), Value::from(1)]),
            Value::Array(vec![Value::from("h"), Value::from(70_000)]),
            Value::Array(vec![Value::from("x".repeat(256)), Value::from(1)]),
        ] {
            assert_eq!(PeerAddr::from_value(&junk), None, "{junk}");
        }
    }
}
