//! Traffic selectors (RFC 7296 3.13.1): address and port ranges a Child SA carries.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{ParseError, Reader};

/// The selector's address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TsType {
    /// TS_IPV4_ADDR_RANGE (7).
    Ipv4,
    /// TS_IPV6_ADDR_RANGE (8).
    Ipv6,
}

/// One traffic selector: an address range, a port range and an IP protocol (0 = any).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TrafficSelector {
    /// IP protocol, 0 for any.
    pub ip_proto: u8,
    /// First port.
    pub start_port: u16,
    /// Last port.
    pub end_port: u16,
    /// First address.
    pub start: IpAddr,
    /// Last address.
    pub end: IpAddr,
}

impl TrafficSelector {
    /// All traffic between the addresses of a prefix.
    pub fn from_prefix(addr: IpAddr, len: u8) -> TrafficSelector {
        let (start, end) = match addr {
            IpAddr::V4(a) => {
                let bits = u32::from(a);
                let mask = if len == 0 {
                    0
                } else {
                    u32::MAX << (32 - len.min(32))
                };
                (
                    IpAddr::V4(Ipv4Addr::from(bits & mask)),
                    IpAddr::V4(Ipv4Addr::from(bits | !mask)),
                )
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                let mask = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - len.min(128))
                };
                (
                    IpAddr::V6(Ipv6Addr::from(bits & mask)),
                    IpAddr::V6(Ipv6Addr::from(bits | !mask)),
                )
            }
        };
        TrafficSelector {
            ip_proto: 0,
            start_port: 0,
            end_port: 65535,
            start,
            end,
        }
    }

    /// The address family.
    pub fn ts_type(&self) -> TsType {
        match self.start {
            IpAddr::V4(_) => TsType::Ipv4,
            IpAddr::V6(_) => TsType::Ipv6,
        }
    }

    /// True if `addr` lies in the address range (ports and protocol are not looked at).
    pub fn contains_addr(&self, addr: IpAddr) -> bool {
        match (self.start, self.end, addr) {
            (IpAddr::V4(s), IpAddr::V4(e), IpAddr::V4(a)) => s <= a && a <= e,
            (IpAddr::V6(s), IpAddr::V6(e), IpAddr::V6(a)) => s <= a && a <= e,
            _ => false,
        }
    }

    /// The intersection of two selectors, if any (RFC 7296 2.9 narrowing).
    pub fn intersect(&self, other: &TrafficSelector) -> Option<TrafficSelector> {
        if self.ts_type() != other.ts_type() {
            return None;
        }
        let ip_proto = match (self.ip_proto, other.ip_proto) {
            (0, p) | (p, 0) => p,
            (a, b) if a == b => a,
            _ => return None,
        };
        let start_port = self.start_port.max(other.start_port);
        let end_port = self.end_port.min(other.end_port);
        let start = self.start.max(other.start);
        let end = self.end.min(other.end);
        if start_port > end_port || start > end {
            return None;
        }
        Some(TrafficSelector {
            ip_proto,
            start_port,
            end_port,
            start,
            end,
        })
    }

    pub(crate) fn parse(r: &mut Reader<'_>) -> Result<TrafficSelector, ParseError> {
        let ts_type = r.u8()?;
        let ip_proto = r.u8()?;
        let len = r.u16()? as usize;
        let start_port = r.u16()?;
        let end_port = r.u16()?;
        let (start, end) = match (ts_type, len) {
            (7, 16) => {
                let s: [u8; 4] = r.array()?;
                let e: [u8; 4] = r.array()?;
                (IpAddr::V4(s.into()), IpAddr::V4(e.into()))
            }
            (8, 40) => {
                let s: [u8; 16] = r.array()?;
                let e: [u8; 16] = r.array()?;
                (IpAddr::V6(s.into()), IpAddr::V6(e.into()))
            }
            (7 | 8, _) => return Err(ParseError::BadLength("traffic selector")),
            _ => return Err(ParseError::Invalid("traffic selector type")),
        };
        Ok(TrafficSelector {
            ip_proto,
            start_port,
            end_port,
            start,
            end,
        })
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let (t, len) = match self.ts_type() {
            TsType::Ipv4 => (7u8, 16u16),
            TsType::Ipv6 => (8, 40),
        };
        out.push(t);
        out.push(self.ip_proto);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&self.start_port.to_be_bytes());
        out.extend_from_slice(&self.end_port.to_be_bytes());
        for a in [self.start, self.end] {
            match a {
                IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
                IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
            }
        }
    }
}

impl std::fmt::Display for TrafficSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.start, self.end)?;
        if self.ip_proto != 0 || self.start_port != 0 || self.end_port != 65535 {
            write!(
                f,
                "[{}/{}-{}]",
                self.ip_proto, self.start_port, self.end_port
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_and_intersection() {
        let a = TrafficSelector::from_prefix("198.19.1.77".parse().unwrap(), 24);
        assert_eq!(a.to_string(), "198.19.1.0-198.19.1.255");
        let wide = TrafficSelector::from_prefix("198.19.0.0".parse().unwrap(), 16);
        assert_eq!(wide.intersect(&a), Some(a));
        let other = TrafficSelector::from_prefix("198.19.2.0".parse().unwrap(), 24);
        assert_eq!(a.intersect(&other), None);
        let v6 = TrafficSelector::from_prefix("2001:db8::".parse().unwrap(), 64);
        assert_eq!(a.intersect(&v6), None);
        assert!(v6.contains_addr("2001:db8::1".parse().unwrap()));
        let all = TrafficSelector::from_prefix("0.0.0.0".parse().unwrap(), 0);
        assert_eq!(all.end, IpAddr::V4(Ipv4Addr::BROADCAST));
    }
}
