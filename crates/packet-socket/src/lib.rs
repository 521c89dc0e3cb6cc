//! The two things about AF_PACKET sockets nix does not wrap. How many frames the kernel
//! dropped before the socket read them: packet sockets do not report drops with
//! `SO_RXQ_OVFL` (the cmsg never comes, whatever the loss), only through
//! `getsockopt(SOL_PACKET, PACKET_STATISTICS)`; without it the mirror would lose frames
//! silently. And binding to one interface, so the kernel does not copy every other
//! interface's frames (the mirror's own VXLAN among them) only for the mirror to drop
//! them: nix has no public way to build the `sockaddr_ll`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Counts since the previous read: the kernel resets them on every read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacketStats {
    /// Frames the socket was offered (queued and dropped together).
    pub packets: u32,
    /// Frames dropped because the socket's receive buffer was full.
    pub drops: u32,
}

/// Reads and resets the counters of the packet socket `fd`.
#[allow(unsafe_code)]
pub fn take_stats(fd: BorrowedFd<'_>) -> io::Result<PacketStats> {
    let mut stats = libc::tpacket_stats {
        tp_packets: 0,
        tp_drops: 0,
    };
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::tpacket_stats>())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `fd` is open for the borrow's lifetime; the kernel writes at most `len`
    // bytes into `stats`, a plain struct of two u32 of exactly that size, and stores the
    // length it wrote in `len`. Nothing else is read or written.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&raw mut stats).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(PacketStats {
        packets: stats.tp_packets,
        drops: stats.tp_drops,
    })
}

/// Binds the packet socket `fd` to the interface `ifindex`, all protocols: from then on
/// it receives only that interface's frames.
#[allow(unsafe_code)]
pub fn bind_to_interface(fd: BorrowedFd<'_>, ifindex: u32) -> io::Result<()> {
    let ifindex =
        i32::try_from(ifindex).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let family =
        u16::try_from(libc::AF_PACKET).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let protocol =
        u16::try_from(libc::ETH_P_ALL).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let address = libc::sockaddr_ll {
        sll_family: family,
        sll_protocol: protocol.to_be(),
        sll_ifindex: ifindex,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 0,
        sll_addr: [0; 8],
    };
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_ll>())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `fd` is open for the borrow's lifetime; `address` is a fully initialised
    // sockaddr_ll that lives across the call, and `len` is its exact size; the kernel
    // only reads it.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const address).cast::<libc::sockaddr>(),
            len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockProtocol, SockType, SockaddrIn, sendto, setsockopt, socket,
        sockopt,
    };
    use std::os::fd::AsFd;

    /// Needs CAP_NET_RAW (CI runs as root): a packet socket with a tiny buffer on every
    /// interface, loopback datagrams it does not read, and the kernel's count of the ones
    /// it dropped.
    #[test]
    fn drops_of_a_full_packet_socket_are_counted() {
        let packets = socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::EthAll,
        )
        .expect("a packet socket (needs CAP_NET_RAW)");
        setsockopt(&packets, sockopt::RcvBuf, &4096).unwrap();
        take_stats(packets.as_fd()).unwrap();
        let udp = socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        let to = SockaddrIn::new(127, 0, 0, 1, 9);
        for _ in 0..500 {
            // Discard port: nothing listens, the datagram still crosses loopback.
            let _ = sendto(
                udp.as_raw_fd(),
                &[0u8; 64],
                &to,
                nix::sys::socket::MsgFlags::empty(),
            );
        }
        let stats = take_stats(packets.as_fd()).unwrap();
        assert!(stats.packets >= 500, "{stats:?}");
        assert!(stats.drops > 0 && stats.drops < stats.packets, "{stats:?}");
    }

    #[test]
    fn a_socket_of_another_kind_is_an_error_not_a_crash() {
        let udp = socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        assert!(take_stats(udp.as_fd()).is_err());
    }

    #[test]
    fn a_socket_bound_to_loopback_sees_loopback_frames_and_a_bad_index_is_refused() {
        let packets = socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::EthAll,
        )
        .expect("a packet socket (needs CAP_NET_RAW)");
        let lo = nix::net::if_::if_nametoindex("lo").unwrap();
        bind_to_interface(packets.as_fd(), lo).unwrap();
        take_stats(packets.as_fd()).unwrap();
        let udp = socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        let to = SockaddrIn::new(127, 0, 0, 1, 9);
        let _ = sendto(
            udp.as_raw_fd(),
            &[0u8; 64],
            &to,
            nix::sys::socket::MsgFlags::empty(),
        );
        assert!(take_stats(packets.as_fd()).unwrap().packets >= 1);
        assert!(bind_to_interface(packets.as_fd(), u32::MAX - 7).is_err());
    }
}
