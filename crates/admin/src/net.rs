//! Listening sockets for every ticklab service. `[::]` listens dual-stack (IPv6 and
//! IPv4-mapped), so one configuration serves IPv4-only, dual-stack and IPv6-only
//! clusters; on a kernel without IPv6 it falls back to `0.0.0.0`, same port. Any
//! other address binds as given.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

/// Listen backlog of TCP listeners (the kernel caps it at somaxconn).
const BACKLOG: i32 = 1024;

/// A non-blocking TCP listener on `addr` (see the module documentation).
pub fn tcp_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = bind_with_fallback(addr, Type::STREAM, Protocol::TCP, |socket| {
        // As std and tokio do: a restarted service rebinds its port at once.
        socket.set_reuse_address(true)
    })?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// A UDP socket connected to `peer` (it then receives only from there), bound to
/// an ephemeral port of `peer`'s address family; `configure` runs before the bind.
pub fn connected_udp_socket(
    peer: SocketAddr,
    configure: impl Fn(&Socket) -> io::Result<()>,
) -> io::Result<Socket> {
    let bind: SocketAddr = if peer.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = Socket::new(Domain::for_address(peer), Type::DGRAM, Some(Protocol::UDP))?;
    configure(&socket)?;
    socket.bind(&bind.into())?;
    socket.connect(&peer.into())?;
    Ok(socket)
}

/// A UDP socket bound to `addr` (see the module documentation); `configure` runs
/// before the bind (buffer sizes and the like).
pub fn bind_udp_socket(
    addr: SocketAddr,
    configure: impl Fn(&Socket) -> io::Result<()>,
) -> io::Result<UdpSocket> {
    Ok(bind_with_fallback(addr, Type::DGRAM, Protocol::UDP, configure)?.into())
}

fn bind_with_fallback(
    addr: SocketAddr,
    kind: Type,
    protocol: Protocol,
    configure: impl Fn(&Socket) -> io::Result<()>,
) -> io::Result<Socket> {
    let bind = |addr: SocketAddr| -> io::Result<Socket> {
        let socket = Socket::new(Domain::for_address(addr), kind, Some(protocol))?;
        if addr.is_ipv6() && addr.ip().is_unspecified() {
            socket.set_only_v6(false)?;
        }
        configure(&socket)?;
        socket.bind(&addr.into())?;
        Ok(socket)
    };
    match bind(addr) {
        Err(error) if addr.is_ipv6() && addr.ip().is_unspecified() && no_ipv6(&error) => {
            tracing::info!(%addr, %error, "no IPv6 here: listening on IPv4 only");
            bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, addr.port())))
        }
        other => other,
    }
}

/// The errors of a kernel booted without IPv6 (`ipv6.disable=1`).
fn no_ipv6(error: &io::Error) -> bool {
    const EAFNOSUPPORT: i32 = 97;
    const EADDRNOTAVAIL: i32 = 99;
    matches!(error.raw_os_error(), Some(EAFNOSUPPORT | EADDRNOTAVAIL))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{Ipv6Addr, TcpStream};

    use super::*;

    #[test]
    fn unspecified_ipv6_accepts_both_families() {
        let listener = tcp_listener(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))).unwrap();
        listener.set_nonblocking(false).unwrap();
        let port = listener.local_addr().unwrap().port();
        for client in [
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
        ] {
            let mut stream = TcpStream::connect(client).unwrap();
            stream.write_all(b"x").unwrap();
            let (mut accepted, _) = listener.accept().unwrap();
            let mut byte = [0u8; 1];
            accepted.read_exact(&mut byte).unwrap();
            assert_eq!(&byte, b"x", "from {client}");
        }
    }

    #[test]
    fn unspecified_ipv6_udp_receives_both_families() {
        let socket =
            bind_udp_socket(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)), |_| Ok(())).unwrap();
        socket
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let port = socket.local_addr().unwrap().port();
        for (bind, to) in [
            (
                SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            ),
            (
                SocketAddr::from((Ipv6Addr::LOCALHOST, 0)),
                SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
            ),
        ] {
            let sender = UdpSocket::bind(bind).unwrap();
            sender.send_to(b"y", to).unwrap();
            let mut buf = [0u8; 4];
            let (n, _) = socket.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"y", "to {to}");
        }
    }
}
