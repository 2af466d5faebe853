//! Client source addresses spread over 127.0.0.0/8, so that a steering that keys on the client
//! address (sticky) sees many clients. Linux routes the whole /8 to the loopback device, so
//! every 127.x.y.z can be bound without configuration, but only reaches loopback targets.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::config::ConfigError;

/// The first address handed out.
const FIRST: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
/// Most addresses: 127.0.0.1 to 127.255.255.254.
pub const MAX_SPREAD: u32 = (1 << 24) - 2;

/// `count` source addresses from 127.0.0.1 up, handed out in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceSpread {
    count: u32,
}

impl SourceSpread {
    /// A spread of `count` addresses for connections to `target`.
    ///
    /// # Errors
    ///
    /// A count outside `1..=MAX_SPREAD`, or a target that is not IPv4 loopback.
    pub fn new(count: u32, target: SocketAddr) -> Result<Self, ConfigError> {
        if !(1..=MAX_SPREAD).contains(&count) {
            return Err(ConfigError::SpreadCount(count));
        }
        match target.ip() {
            IpAddr::V4(ip) if ip.is_loopback() => Ok(Self { count }),
            _ => Err(ConfigError::SpreadNeedsLoopback(target)),
        }
    }

    /// The address of the `n`th connection: the spread is walked round and round.
    #[must_use]
    pub fn address(&self, n: u64) -> Ipv4Addr {
        // `n % count` is below `count`, which fits in u32.
        let offset = u32::try_from(n % u64::from(self.count)).unwrap_or(0);
        Ipv4Addr::from(u32::from(FIRST) + offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: &str = "127.0.0.1:18098";

    #[test]
    fn addresses_walk_the_spread_in_turn() {
        let spread = SourceSpread::new(3, TARGET.parse().unwrap()).unwrap();
        let walked: Vec<Ipv4Addr> = (0..4).map(|n| spread.address(n)).collect();
        assert_eq!(
            walked,
            [
                Ipv4Addr::new(127, 0, 0, 1),
                Ipv4Addr::new(127, 0, 0, 2),
                Ipv4Addr::new(127, 0, 0, 3),
                Ipv4Addr::new(127, 0, 0, 1),
            ]
        );
        let widest = SourceSpread::new(MAX_SPREAD, TARGET.parse().unwrap()).unwrap();
        assert_eq!(
            widest.address(u64::from(MAX_SPREAD) - 1),
            Ipv4Addr::new(127, 255, 255, 254)
        );
        assert_eq!(widest.address(300), Ipv4Addr::new(127, 0, 1, 45));
    }

    #[test]
    fn count_and_target_are_checked() {
        let loopback: SocketAddr = TARGET.parse().unwrap();
        assert!(matches!(
            SourceSpread::new(MAX_SPREAD + 1, loopback),
            Err(ConfigError::SpreadCount(_))
        ));
        assert!(SourceSpread::new(4, "127.8.9.10:80".parse().unwrap()).is_ok());
        assert!(matches!(
            SourceSpread::new(4, "192.0.2.1:80".parse().unwrap()),
            Err(ConfigError::SpreadNeedsLoopback(_))
        ));
    }
}
