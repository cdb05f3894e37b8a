//! Global addresses: a region id in the high 32 bits and a byte offset in the low 32, printed and
//! parsed as `r3+0x1f40`.

use std::fmt;
use std::str::FromStr;

/// Identifies a region in the cluster's global address space.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct RegionId(pub u32);

impl fmt::Display for RegionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

/// Identifies a node (one process that contributes memory) in the cluster.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct NodeId(pub u16);

impl NodeId {
    /// The id of an observer: a read-only tool such as `acre cluster status` that probes nodes.
    /// No member ever has it, several observers may use it at once, and the tcp transport's
    /// fence ([`crate::fabric::tcp::server`]) does not apply to it, so an observer must never
    /// write anything: a tcp NIC thread serves it READs only
    /// ([`crate::fabric::membership::Admission::Observer`]).
    pub const OBSERVER: NodeId = NodeId(u16::MAX);
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// A global address: `(region, offset)` packed in a `u64`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Addr(u64);

impl Addr {
    pub const fn new(region: RegionId, offset: u32) -> Addr {
        Addr((region.0 as u64) << 32 | offset as u64)
    }

    pub const fn from_u64(packed: u64) -> Addr {
        Addr(packed)
    }

    pub const fn to_u64(self) -> u64 {
        self.0
    }

    pub const fn region(self) -> RegionId {
        RegionId((self.0 >> 32) as u32)
    }

    pub const fn offset(self) -> u32 {
        self.0 as u32
    }

    /// The address `bytes` further into the same region, if it stays inside the 4 GiB offset space.
    pub fn checked_add(self, bytes: u32) -> Option<Addr> {
        self.offset()
            .checked_add(bytes)
            .map(|offset| Addr::new(self.region(), offset))
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}+{:#x}", self.region().0, self.offset())
    }
}

impl fmt::Debug for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a string is not an address.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid address {input:?}: {reason} (expected the form r3+0x1f40)")]
pub struct AddrParseError {
    pub input: String,
    pub reason: &'static str,
}

impl FromStr for Addr {
    type Err = AddrParseError;

    fn from_str(input: &str) -> Result<Addr, AddrParseError> {
        let fail = |reason| AddrParseError {
            input: input.to_string(),
            reason,
        };
        let rest = input
            .strip_prefix('r')
            .ok_or_else(|| fail("missing leading 'r'"))?;
        let (region, offset) = rest.split_once('+').ok_or_else(|| fail("missing '+'"))?;
        if region.is_empty() || !region.bytes().all(|b| b.is_ascii_digit()) {
            return Err(fail("region is not a decimal number"));
        }
        let region: u32 = region
            .parse()
            .map_err(|_| fail("region does not fit 32 bits"))?;
        let hex = offset
            .strip_prefix("0x")
            .or_else(|| offset.strip_prefix("0X"))
            .ok_or_else(|| fail("offset must start with 0x"))?;
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(fail("offset is not hexadecimal"));
        }
        let offset =
            u32::from_str_radix(hex, 16).map_err(|_| fail("offset does not fit 32 bits"))?;
        Ok(Addr::new(RegionId(region), offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_region_high_and_offset_low() {
        let a = Addr::new(RegionId(3), 0x1f40);
        assert_eq!(a.to_u64(), 0x0000_0003_0000_1f40);
        assert_eq!(a.region(), RegionId(3));
        assert_eq!(a.offset(), 0x1f40);
        assert_eq!(Addr::from_u64(a.to_u64()), a);
    }

    #[test]
    fn prints_and_parses_round_trip() {
        for a in [
            Addr::new(RegionId(0), 0),
            Addr::new(RegionId(3), 0x1f40),
            Addr::new(RegionId(u32::MAX), u32::MAX),
        ] {
            let text = a.to_string();
            assert_eq!(text.parse::<Addr>().unwrap(), a, "{text}");
        }
        assert_eq!(Addr::new(RegionId(3), 0x1f40).to_string(), "r3+0x1f40");
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        let cases = [
            ("3+0x10", "missing leading 'r'"),
            ("r3", "missing '+'"),
            ("r+0x10", "region is not a decimal number"),
            ("r-1+0x10", "region is not a decimal number"),
            ("r99999999999+0x10", "region does not fit 32 bits"),
            ("r3+10", "offset must start with 0x"),
            ("r3+0x", "offset is not hexadecimal"),
            ("r3+0xg1", "offset is not hexadecimal"),
            ("r3+0x100000000", "offset does not fit 32 bits"),
        ];
        for (input, reason) in cases {
            let err = input.parse::<Addr>().unwrap_err();
            assert_eq!(err.reason, reason, "{input}");
            assert!(err.to_string().contains("r3+0x1f40"), "{err}");
        }
    }
}
