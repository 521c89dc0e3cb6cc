//! Free loopback ports for local mode. The exchange and the trader each need to know
//! the other's addresses before either starts, so ports are chosen first (bind to
//! port 0, read the port, release it) and then bound for real by the services.

use std::net::{SocketAddr, TcpListener, UdpSocket};

pub fn free_tcp() -> std::io::Result<SocketAddr> {
    TcpListener::bind(("127.0.0.1", 0))?.local_addr()
}

pub fn free_udp() -> std::io::Result<SocketAddr> {
    UdpSocket::bind(("127.0.0.1", 0))?.local_addr()
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}
