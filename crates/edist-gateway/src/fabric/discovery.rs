//! Where other gateways are: sources of seed addresses to dial.
//!
//! A seed is only an address; who answers there is learnt from its certificate (any identity
//! the cluster CA signed, [`super::tls::tls_client_config`]). Gateways named in `[[peers]]`
//! with an address are dialled by name instead. Two sources: a static list of addresses and DNS
//! names (every A/AAAA record is a gateway). With `[fabric] membership` they are only where a
//! gateway asks to join; the rest it learns by gossip ([`super::membership`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

/// A source of gateway addresses.
pub trait Discovery: Send + Sync {
    /// The addresses known right now (a failed lookup yields none, and is retried later).
    fn discover(&self) -> Pin<Box<dyn Future<Output = Vec<SocketAddr>> + Send + '_>>;
}

/// A fixed list of addresses.
#[derive(Debug, Clone, Default)]
pub struct StaticSeeds(pub Vec<SocketAddr>);

impl Discovery for StaticSeeds {
    fn discover(&self) -> Pin<Box<dyn Future<Output = Vec<SocketAddr>> + Send + '_>> {
        Box::pin(async move { self.0.clone() })
    }
}

/// `host:port` names resolved on every call (the system resolver: `/etc/hosts`, then DNS).
#[derive(Debug, Clone, Default)]
pub struct DnsSeeds(pub Vec<String>);

impl Discovery for DnsSeeds {
    fn discover(&self) -> Pin<Box<dyn Future<Output = Vec<SocketAddr>> + Send + '_>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for name in &self.0 {
                match tokio::net::lookup_host(name.as_str()).await {
                    Ok(addrs) => out.extend(addrs.filter(|a| !out.contains(a)).collect::<Vec<_>>()),
                    Err(e) => tracing::debug!(seed = %name, "seed lookup failed: {e}"),
                }
            }
            out
        })
    }
}

/// The discovery of a config's `seeds`: IP literals as a static list, the rest through DNS.
pub fn from_config(seeds: &[String]) -> (StaticSeeds, DnsSeeds) {
    let (ips, names): (Vec<&String>, Vec<&String>) = seeds.iter().partition(|s| s.parse::<SocketAddr>().is_ok());
    (StaticSeeds(ips.iter().filter_map(|s| s.parse().ok()).collect()), DnsSeeds(names.into_iter().cloned().collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literals_are_static_and_names_resolve() {
        let (st, dns) = from_config(&["10.0.0.1:4371".into(), "localhost:4371".into(), "[::1]:4371".into()]);
        assert_eq!(st.0, vec!["10.0.0.1:4371".parse().unwrap(), "[::1]:4371".parse().unwrap()]);
        assert_eq!(dns.0, vec!["localhost:4371".to_string()]);
        let found = dns.discover().await;
        assert!(found.iter().any(|a| a.ip().is_loopback() && a.port() == 4371), "{found:?}");
        // A name that does not resolve yields nothing (and no error).
        assert!(DnsSeeds(vec!["no-such-host.invalid:4371".into()]).discover().await.is_empty());
    }
}
