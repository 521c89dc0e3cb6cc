//! Finding the next message boundary in a TCP byte stream whose start, or some bytes, the
//! capture missed: a mirror that joined an open connection, or a gap. Each of ticklab's
//! stream protocols is tried at every offset, and a candidate counts only when it decodes
//! as ticklab's own message and ends where the captured bytes end (a message per segment is
//! the common case) or where another frame of the same protocol begins.

use ticklab_wire::frame::split_frame;

use crate::messages;

/// What a stream resynchronised to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 requests (client side) or responses (server side).
    Http,
    /// WebSocket frames after the upgrade.
    WebSocket,
    /// ticklab's length-prefixed binary channel.
    Binary,
}

/// The answer for a buffer of stream bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// Messages of `protocol` start at `offset`.
    Found { offset: usize, protocol: Protocol },
    /// No boundary yet; bytes before `keep_from` can be dropped (no message starts there),
    /// later ones may still start one once more bytes are in.
    NotYet { keep_from: usize },
}

/// Frames longer than this are not waited for: the boundary is found at a later, shorter
/// message instead, which keeps the bytes held while searching small.
const MAX_WAIT_FRAME: usize = 4096;
/// An HTTP request or status line must end within this many bytes.
const MAX_START_LINE: usize = 2048;

const METHODS: [&[u8]; 7] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"PATCH ",
    b"OPTIONS ",
];

enum Verdict {
    Yes(Protocol),
    No,
    NeedMore,
}

/// Searches `buf` (one direction's bytes; `client`: sent by the connection's client) from
/// offset `from` for the first message boundary.
pub fn find(client: bool, buf: &[u8], from: usize) -> Sync {
    let mut keep_from = None;
    for i in from..buf.len() {
        for verdict in [
            http_at(client, &buf[i..]),
            websocket_at(client, &buf[i..]),
            binary_at(client, &buf[i..]),
        ] {
            match verdict {
                Verdict::Yes(protocol) => {
                    return Sync::Found {
                        offset: i,
                        protocol,
                    };
                }
                Verdict::NeedMore => {
                    keep_from.get_or_insert(i);
                }
                Verdict::No => {}
            }
        }
    }
    Sync::NotYet {
        keep_from: keep_from.unwrap_or(buf.len()),
    }
}

/// A request line (`POST /orders HTTP/1.1`) or a status line (`HTTP/1.1 200`).
fn http_at(client: bool, b: &[u8]) -> Verdict {
    if client {
        let Some(method) = METHODS.iter().find(|m| b.starts_with(m)) else {
            return if METHODS.iter().any(|m| m.starts_with(b)) {
                Verdict::NeedMore
            } else {
                Verdict::No
            };
        };
        let window = &b[..b.len().min(MAX_START_LINE)];
        let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
            return if b.len() < MAX_START_LINE {
                Verdict::NeedMore
            } else {
                Verdict::No
            };
        };
        let line = &b[method.len()..end];
        let ok = line.starts_with(b"/")
            && (line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0"));
        return if ok {
            Verdict::Yes(Protocol::Http)
        } else {
            Verdict::No
        };
    }
    const STATUS: &[u8] = b"HTTP/1.x 200 ";
    if b.len() < STATUS.len() {
        let n = b.len().min(7);
        return if b[..n] == b"HTTP/1."[..n] {
            Verdict::NeedMore
        } else {
            Verdict::No
        };
    }
    let ok = b.starts_with(b"HTTP/1.")
        && matches!(b[7], b'0' | b'1')
        && b[8] == b' '
        && b[9..12].iter().all(u8::is_ascii_digit)
        && b[12] == b' ';
    if ok {
        Verdict::Yes(Protocol::Http)
    } else {
        Verdict::No
    }
}

/// A WebSocket frame header: where its payload starts and ends, or why not.
fn ws_frame(client: bool, b: &[u8]) -> Result<(usize, usize), Verdict> {
    let [b0, b1, ..] = *b else {
        return Err(Verdict::NeedMore);
    };
    let opcode = b0 & 0x0f;
    let fin = b0 & 0x80 != 0;
    let masked = b1 & 0x80 != 0;
    // Clients mask every frame and servers none (RFC 6455 §5.1); no extensions are
    // negotiated, so the reserved bits are clear; control frames are final and short.
    let plausible = b0 & 0x70 == 0
        && masked == client
        && match opcode {
            1 | 2 => true,
            8..=10 => fin && b1 & 0x7f <= 125,
            _ => false,
        };
    if !plausible {
        return Err(Verdict::No);
    }
    let (len, mut header) = match b1 & 0x7f {
        126 => match b.get(2..4) {
            Some(l) => (usize::from(u16::from_be_bytes([l[0], l[1]])), 4),
            None => return Err(Verdict::NeedMore),
        },
        127 => return Err(Verdict::No), // a 64-bit length: never one of ours
        n => (usize::from(n), 2),
    };
    if masked {
        header += 4;
    }
    if b.len() < header + len {
        return Err(if len <= MAX_WAIT_FRAME {
            Verdict::NeedMore
        } else {
            Verdict::No
        });
    }
    Ok((header, header + len))
}

fn websocket_at(client: bool, b: &[u8]) -> Verdict {
    // Only the server's frames carry what ticklab decodes (feed packets); a client's pongs
    // and closes are too short to tell from noise, so a client side is not synced by them.
    if client {
        return Verdict::No;
    }
    let (start, end) = match ws_frame(client, b) {
        Ok(frame) => frame,
        Err(verdict) => return verdict,
    };
    let opcode = b[0] & 0x0f;
    let payload = &b[start..end];
    // The exchange sends one feed packet per binary message; control frames alone are too
    // weak a sign.
    let ours = opcode == 2
        && messages::feed_packet(payload, payload.len()).is_ok_and(|v| v.malformed == 0);
    if !ours {
        return Verdict::No;
    }
    match ws_frame(client, &b[end..]) {
        _ if end == b.len() => Verdict::Yes(Protocol::WebSocket),
        Ok(_) | Err(Verdict::NeedMore) => Verdict::Yes(Protocol::WebSocket),
        Err(_) => Verdict::No,
    }
}

/// A length-prefixed frame that decodes as a ticklab message for this side.
fn binary_frame_at(client: bool, b: &[u8]) -> Verdict {
    let Some(prefix) = b.get(..2) else {
        return Verdict::NeedMore;
    };
    let len = usize::from(u16::from_be_bytes([prefix[0], prefix[1]]));
    let Some((body, _)) = split_frame(b) else {
        return if len <= MAX_WAIT_FRAME {
            Verdict::NeedMore
        } else {
            Verdict::No
        };
    };
    let ours = if client {
        matches!(
            messages::order_channel(body),
            Ok(ticklab_wire::Message::Order(_))
        )
    } else if messages::is_order_channel_size(body.len()) {
        matches!(
            messages::order_channel(body),
            Ok(ticklab_wire::Message::Ack(_) | ticklab_wire::Message::Fill(_))
        )
    } else {
        messages::feed_packet(body, body.len()).is_ok_and(|v| v.malformed == 0)
    };
    if ours {
        Verdict::Yes(Protocol::Binary)
    } else {
        Verdict::No
    }
}

fn binary_at(client: bool, b: &[u8]) -> Verdict {
    match binary_frame_at(client, b) {
        Verdict::Yes(p) => {
            let end = 2 + usize::from(u16::from_be_bytes([b[0], b[1]]));
            if end == b.len() {
                return Verdict::Yes(p);
            }
            match binary_frame_at(client, &b[end..]) {
                Verdict::Yes(_) | Verdict::NeedMore => Verdict::Yes(p),
                Verdict::No => Verdict::No,
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ticklab_wire::{
        Message, PacketBuilder, Price, Quantity, Session, Side, Symbol, Trade, frame::encode_frame,
    };

    fn feed_packet(seq: u64, trades: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut b = PacketBuilder::new(&mut out, Session::from_name("s"), seq, 1400);
        for i in 0..trades {
            assert!(b.push(&Message::Trade(Trade {
                symbol: Symbol::new("ABC").unwrap(),
                price: Price(100 + i as i64),
                quantity: Quantity(1),
                side: Side::Buy,
                trade_id: seq + i,
                send_ts_ns: 5,
            })));
        }
        b.finish();
        out
    }

    fn binary_stream() -> Vec<u8> {
        let mut out = Vec::new();
        for seq in [1, 4, 9] {
            encode_frame(&mut out, &feed_packet(seq, 3)).unwrap();
        }
        out
    }

    fn ws_stream() -> Vec<u8> {
        let mut out = Vec::new();
        for seq in [1, 4] {
            let p = feed_packet(seq, 2);
            out.extend_from_slice(&[0x82, 126]);
            out.extend_from_slice(&(p.len() as u16).to_be_bytes());
            out.extend_from_slice(&p);
        }
        out
    }

    #[test]
    fn a_binary_stream_joined_mid_frame_syncs_at_the_next_frame() {
        let s = binary_stream();
        let first = 2 + usize::from(u16::from_be_bytes([s[0], s[1]]));
        assert_eq!(
            find(false, &s, 0),
            Sync::Found {
                offset: 0,
                protocol: Protocol::Binary
            }
        );
        assert_eq!(
            find(false, &s[7..], 0),
            Sync::Found {
                offset: first - 7,
                protocol: Protocol::Binary
            }
        );
    }

    #[test]
    fn websocket_frames_and_http_messages_are_found_mid_stream() {
        let s = ws_stream();
        let second = 4 + usize::from(u16::from_be_bytes([s[2], s[3]]));
        assert_eq!(
            find(false, &s[3..], 0),
            Sync::Found {
                offset: second - 3,
                protocol: Protocol::WebSocket
            }
        );
        let requests = b"1}POST /orders HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(
            find(true, requests, 0),
            Sync::Found {
                offset: 2,
                protocol: Protocol::Http
            }
        );
        let responses = b"\":1}HTTP/1.1 200 OK\r\n";
        assert_eq!(
            find(false, responses, 0),
            Sync::Found {
                offset: 4,
                protocol: Protocol::Http
            }
        );
    }

    #[test]
    fn an_incomplete_frame_waits_and_other_bytes_are_let_go() {
        let s = binary_stream();
        // The first frame whole, the second cut: the first is confirmed by the
        // plausible start of the second.
        let first = 2 + usize::from(u16::from_be_bytes([s[0], s[1]]));
        assert!(matches!(
            find(false, &s[..first + 10], 0),
            Sync::Found { offset: 0, .. }
        ));
        // Only part of one frame: wait, keeping it.
        assert_eq!(find(false, &s[..20], 0), Sync::NotYet { keep_from: 0 });
        // Text that is no ticklab protocol: what cannot start a message is let go.
        let text = b"SSH-2.0-OpenSSH_9.2p1 Debian-2 some more bytes of something";
        match find(true, text, 0) {
            Sync::NotYet { keep_from } => assert!(keep_from + 2 >= text.len(), "{keep_from}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x = 1u64;
        let bytes: Vec<u8> = (0..20_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for client in [false, true] {
            for start in [0, 1, 5, 999] {
                let _ = find(client, &bytes[start..], 0);
            }
        }
    }
}
