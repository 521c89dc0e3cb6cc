//! The retransmission ring: the last N messages the exchange published, by sequence
//! number, in fixed 64-byte slots (every feed message is shorter), so storing a
//! packet is one lock and a few memcpys and a lookup is arithmetic.

use parking_lot::Mutex;

const SLOT: usize = 64;
/// Memory the ring takes per retained message (its slot and length byte), for
/// sizing the exchange's memory from `retransmissionBuffer`.
pub const BYTES_PER_MESSAGE: u64 = SLOT as u64 + 1;

struct Inner {
    slots: Vec<[u8; SLOT]>,
    lens: Vec<u8>,
    /// One past the last stored sequence number (sequence numbers start at 1).
    next_seq: u64,
}

pub struct RetransmitRing {
    inner: Mutex<Inner>,
    capacity: u64,
}

/// What a lookup found for a requested range.
#[derive(Debug, PartialEq, Eq)]
pub struct Lookup {
    /// `[first, first + count)` is no longer (or never was) held.
    pub unavailable: Option<(u64, u64)>,
    /// Held messages: first sequence number and each message's bytes.
    pub first_held: u64,
    pub messages: Vec<Vec<u8>>,
}

impl RetransmitRing {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            inner: Mutex::new(Inner {
                slots: vec![[0u8; SLOT]; capacity],
                lens: vec![0u8; capacity],
                next_seq: 1,
            }),
            capacity: capacity as u64,
        }
    }

    /// Stores the messages of packets just built: each entry is (first sequence
    /// number, the packet's message blocks — u16 length + message, repeated).
    pub fn store_packets<'a>(&self, packets: impl IntoIterator<Item = (u64, &'a [u8])>) {
        let mut inner = self.inner.lock();
        for (first_seq, mut blocks) in packets {
            let mut seq = first_seq;
            while let Some((len_bytes, rest)) = blocks.split_first_chunk::<2>() {
                let len = usize::from(u16::from_be_bytes(*len_bytes));
                let Some((message, rest)) = rest.split_at_checked(len) else {
                    break;
                };
                let i = (seq % self.capacity) as usize;
                if len <= SLOT {
                    inner.slots[i][..len].copy_from_slice(message);
                    inner.lens[i] = len as u8;
                } else {
                    inner.lens[i] = 0;
                }
                seq += 1;
                blocks = rest;
            }
            inner.next_seq = inner.next_seq.max(seq);
        }
    }

    /// The messages of `[seq, seq + count)` still held; the part older than the
    /// ring is reported unavailable; the part not yet published is ignored.
    pub fn lookup(&self, seq: u64, count: u64) -> Lookup {
        let inner = self.inner.lock();
        let oldest = inner.next_seq.saturating_sub(self.capacity).max(1);
        let end = seq.saturating_add(count).min(inner.next_seq);
        let start = seq.max(1);
        let unavailable = (start < oldest && start < end).then(|| (start, oldest.min(end) - start));
        let first_held = start.max(oldest);
        let messages = (first_held..end.max(first_held))
            .map(|s| {
                let i = (s % self.capacity) as usize;
                inner.slots[i][..usize::from(inner.lens[i])].to_vec()
            })
            .collect();
        Lookup {
            unavailable,
            first_held,
            messages,
        }
    }

    /// The send timestamp of trade `seq`, if still held.
    pub fn trade_send_ts(&self, seq: u64) -> Option<u64> {
        let l = self.lookup(seq, 1);
        let msg = l.messages.first()?;
        let ts: [u8; 8] = msg.get(34..42)?.try_into().ok()?;
        (msg.first() == Some(&ticklab_wire::Trade::TYPE)).then(|| u64::from_be_bytes(ts))
    }

    pub fn next_seq(&self) -> u64 {
        self.inner.lock().next_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(msgs: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in msgs {
            out.extend_from_slice(&(m.len() as u16).to_be_bytes());
            out.extend_from_slice(m);
        }
        out
    }

    #[test]
    fn holds_the_last_n_and_reports_older_as_unavailable() {
        let ring = RetransmitRing::new(4);
        let b = blocks(&[b"a", b"bb", b"ccc"]);
        ring.store_packets([(1, b.as_slice())]);
        let b2 = blocks(&[b"d", b"e", b"f"]);
        ring.store_packets([(4, b2.as_slice())]);
        assert_eq!(ring.next_seq(), 7);
        let l = ring.lookup(1, 10);
        assert_eq!(l.unavailable, Some((1, 2)));
        assert_eq!(l.first_held, 3);
        assert_eq!(
            l.messages,
            vec![b"ccc".to_vec(), b"d".to_vec(), b"e".to_vec(), b"f".to_vec()]
        );
        let l = ring.lookup(5, 1);
        assert_eq!((l.unavailable, l.messages), (None, vec![b"e".to_vec()]));
        // Not yet published: nothing, and not "unavailable" either.
        let l = ring.lookup(7, 5);
        assert_eq!((l.unavailable, l.messages.len()), (None, 0));
        let l = ring.lookup(0, 0);
        assert_eq!((l.unavailable, l.messages.len()), (None, 0));
    }
}
