//! CIDR lists and the allow/deny decision at TCP accept.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};

use crate::DenyReason;

/// Treats an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as its IPv4 address.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// A list of networks, normalised: host bits cleared, IPv4-mapped IPv6 networks stored as IPv4.
#[derive(Debug, Clone, Default)]
pub(crate) struct NetList {
    nets: Vec<IpNet>,
}

impl NetList {
    pub(crate) fn new(nets: &[IpNet]) -> NetList {
        NetList { nets: nets.iter().map(|net| canonical_net(*net)).collect() }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// `ip` must already be canonical.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|net| net.contains(&ip))
    }
}

fn canonical_net(net: IpNet) -> IpNet {
    let net = net.trunc();
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && let Ok(v4net) = Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(v4net);
    }
    net
}

/// The static IP rules: deny wins, and an empty allow list allows every address.
#[derive(Debug, Clone)]
pub(crate) struct IpRules {
    allow: NetList,
    deny: NetList,
}

impl IpRules {
    pub(crate) fn new(allow: &[IpNet], deny: &[IpNet]) -> IpRules {
        IpRules { allow: NetList::new(allow), deny: NetList::new(deny) }
    }

    /// `ip` must already be canonical.
    pub(crate) fn check(&self, ip: IpAddr) -> Result<(), DenyReason> {
        if self.deny.contains(ip) {
            Err(DenyReason::IpDenied)
        } else if !self.allow.is_empty() && !self.allow.contains(ip) {
            Err(DenyReason::IpNotAllowed)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests;
