//! Decoding mirrored traffic down to ticklab's feed and order messages, and the
//! latency the wire shows: VXLAN as AWS VPC Traffic Mirroring sends it, link and
//! transport headers, TCP streams, WebSocket and HTTP, TLS decrypted with the
//! client's key log. Pure functions over bytes: no sockets, nothing here panics on
//! input.

pub mod analyzer;
pub mod file;
pub mod http;
pub mod link;
pub mod messages;
pub mod pcapng;
pub mod resync;
pub mod tcp;
pub mod vxlan;
pub mod websocket;
pub mod wire;
