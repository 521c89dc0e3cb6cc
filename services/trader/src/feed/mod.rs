//! The feed handler: one transport loop (UDP thread, or TCP/WebSocket task) feeding a
//! single [`processor::FeedProcessor`], which does the transport-independent work.

pub mod processor;
pub mod stream;
pub mod udp;
