//! How many order-event streams may be open: `[server] max_event_streams` in all and
//! `max_event_streams_per_address` from one client address.
//!
//! A stream holds a connection, a task and a place in the poller's read for as long as
//! the client stays, so without a cap any client holding the token (or a leaking
//! backend that never closes its streams) could hold them without end. The slot is
//! taken before the order is read, so a refused stream costs no database read.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Why a stream was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// `server.max_event_streams` streams are open.
    #[error("too many order-event streams are open (the limit is {max}, `server.max_event_streams`); close one or raise the limit")]
    Global {
        /// The limit.
        max: usize,
    },
    /// `server.max_event_streams_per_address` streams are open from this address.
    #[error("too many order-event streams are open from {address} (the limit is {max}, `server.max_event_streams_per_address`); close one or raise the limit")]
    PerAddress {
        /// The client's address.
        address: IpAddr,
        /// The limit.
        max: usize,
    },
}

impl Refused {
    /// The `reason` label of `paynotify_event_streams_refused_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::Global { .. } => "global",
            Refused::PerAddress { .. } => "per_address",
        }
    }
}

/// The open streams of one host, counted in all and by client address.
#[derive(Default)]
pub struct Slots {
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    open: usize,
    by_address: HashMap<IpAddr, usize>,
}

impl Slots {
    /// Takes a slot for a stream from `address`, or says which limit is reached. The
    /// limits are passed at each call rather than kept, so the configuration stays the
    /// one place they live.
    pub fn take(
        self: &Arc<Self>,
        address: IpAddr,
        max: usize,
        max_per_address: usize,
    ) -> Result<Slot, Refused> {
        // An IPv4 client on a dual-stack listener arrives as `::ffff:a.b.c.d`: one
        // client, one count.
        let address = address.to_canonical();
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let from_address = counts.by_address.get(&address).copied().unwrap_or(0);
        // The address's own limit first: a client at its limit is told about its own
        // streams, not about everybody's.
        if from_address >= max_per_address {
            return Err(Refused::PerAddress {
                address,
                max: max_per_address,
            });
        }
        if counts.open >= max {
            return Err(Refused::Global { max });
        }
        counts.open += 1;
        counts.by_address.insert(address, from_address + 1);
        Ok(Slot {
            slots: self.clone(),
            address,
        })
    }

    /// Streams open now: in all, and from `address`.
    pub fn open(&self, address: IpAddr) -> (usize, usize) {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let from = counts.by_address.get(&address.to_canonical()).copied();
        (counts.open, from.unwrap_or(0))
    }
}

/// One open stream's place; given back when dropped (the stream ended, or the request
/// failed before it began).
pub struct Slot {
    slots: Arc<Slots>,
    address: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self
            .slots
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        counts.open = counts.open.saturating_sub(1);
        if let Some(n) = counts.by_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                // No entry per address ever seen: the map stays as small as the set of
                // clients with a stream open.
                counts.by_address.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_refuse_beyond_and_dropping_frees_the_slot() {
        let slots = Arc::new(Slots::default());
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let a1 = slots.take(a, 3, 2).expect("first");
        let _a2 = slots.take(a, 3, 2).expect("second");
        assert_eq!(
            slots.take(a, 3, 2).err(),
            Some(Refused::PerAddress { address: a, max: 2 })
        );
        let _b1 = slots.take(b, 3, 2).expect("another address");
        assert_eq!(slots.take(b, 3, 2).err(), Some(Refused::Global { max: 3 }));
        assert_eq!(slots.open(a), (3, 2));
        drop(a1);
        assert_eq!(slots.open(a), (2, 1));
        let _b2 = slots.take(b, 3, 2).expect("a freed slot is taken again");
        // An IPv4-mapped IPv6 address is the same client.
        let mapped: IpAddr = "::ffff:10.0.0.2".parse().expect("address");
        assert!(matches!(
            slots.take(mapped, 10, 2),
            Err(Refused::PerAddress { .. })
        ));
    }

    #[test]
    fn the_refusal_names_the_key() {
        let global = Refused::Global { max: 7 }.to_string();
        assert!(global.contains("server.max_event_streams") && global.contains('7'));
        let per = Refused::PerAddress {
            address: [127, 0, 0, 1].into(),
            max: 2,
        }
        .to_string();
        assert!(
            per.contains("server.max_event_streams_per_address"),
            "{per}"
        );
    }
}
