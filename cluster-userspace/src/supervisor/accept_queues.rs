//! How many connections wait in the accept queue of each listening TCP socket on the pool's
//! port, read from the kernel's sock_diag without blocking: for a listener, `idiag_rqueue` is
//! the accept-queue length (`sk_ack_backlog`, net/ipv4/tcp_diag.c `tcp_diag_get_info`), and
//! `idiag_inode` names the socket. A listener dump filters on the source port in the kernel
//! (`inet_diag_dump_icsk`), so the answer stays small on a busy host.

use std::{collections::HashMap, io, time::Duration};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};
use netlink_sys::{AsyncSocket, AsyncSocketExt, TokioSocket, protocols::NETLINK_SOCK_DIAG};
use tokio::sync::mpsc;
use tracing::warn;

/// Accept-queue lengths by socket inode, at one instant.
pub type QueueLengths = HashMap<u32, u32>;

/// Why the queues could not be read.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("opening a sock_diag netlink socket failed: {0}")]
    Open(#[source] io::Error),
    #[error("sending the sock_diag listener dump request failed: {0}")]
    Send(#[source] io::Error),
    #[error("reading the sock_diag listener dump failed: {0}")]
    Receive(#[source] io::Error),
    #[error("the kernel refused the sock_diag listener dump: {0}")]
    Refused(String),
    #[error("decoding a sock_diag answer failed: {0}")]
    Decode(String),
}

/// Reads the accept queues of the TCP listeners on one port.
pub struct AcceptQueues {
    socket: TokioSocket,
    port: u16,
    sequence: u32,
}

impl std::fmt::Debug for AcceptQueues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcceptQueues")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl AcceptQueues {
    /// A sock_diag socket in the caller's network namespace, for listeners on `port`.
    pub fn open(port: u16) -> Result<Self, QueueError> {
        let mut socket = TokioSocket::new(NETLINK_SOCK_DIAG).map_err(QueueError::Open)?;
        socket.socket_mut().bind_auto().map_err(QueueError::Open)?;
        socket
            .socket_mut()
            .connect(&netlink_sys::SocketAddr::new(0, 0))
            .map_err(QueueError::Open)?;
        Ok(Self {
            socket,
            port,
            sequence: 0,
        })
    }

    /// The accept-queue length of every IPv4 and IPv6 TCP listener on the port.
    pub async fn read(&mut self) -> Result<QueueLengths, QueueError> {
        let mut lengths = QueueLengths::new();
        for family in [AF_INET, AF_INET6] {
            self.dump(family, &mut lengths).await?;
        }
        Ok(lengths)
    }

    async fn dump(&mut self, family: u8, lengths: &mut QueueLengths) -> Result<(), QueueError> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut socket_id = if family == AF_INET {
            SocketId::new_v4()
        } else {
            SocketId::new_v6()
        };
        socket_id.source_port = self.port;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        header.sequence_number = self.sequence;
        let mut request = NetlinkMessage::new(
            header,
            SockDiagMessage::InetRequest(InetRequest {
                family,
                protocol: IPPROTO_TCP,
                extensions: ExtensionFlags::empty(),
                states: StateFlags::LISTEN,
                socket_id,
            })
            .into(),
        );
        request.finalize();
        let mut buffer = vec![0; request.buffer_len()];
        request.serialize(&mut buffer);
        self.socket.send(&buffer).await.map_err(QueueError::Send)?;
        loop {
            let (datagram, _) = self
                .socket
                .recv_from_full()
                .await
                .map_err(QueueError::Receive)?;
            let mut rest = &datagram[..];
            while !rest.is_empty() {
                let message = NetlinkMessage::<SockDiagMessage>::deserialize(rest)
                    .map_err(|e| QueueError::Decode(e.to_string()))?;
                let length = usize::try_from(message.header.length).unwrap_or(usize::MAX);
                if message.header.sequence_number == self.sequence {
                    match message.payload {
                        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(answer)) => {
                            lengths.insert(answer.header.inode, answer.header.recv_queue);
                        }
                        NetlinkPayload::Done(_) => return Ok(()),
                        NetlinkPayload::Error(error) => {
                            return Err(QueueError::Refused(error.to_string()));
                        }
                        _ => {}
                    }
                }
                if length == 0 || length > rest.len() {
                    break;
                }
                rest = &rest[length..];
            }
        }
    }
}

/// Reads the queues every `every` on a task of its own and hands each reading over; the event
/// loop takes them as they come and never waits for the kernel. Stops when the receiver is
/// dropped, or after a failure (logged once).
pub fn watch(mut queues: AcceptQueues, every: Duration) -> mpsc::Receiver<QueueLengths> {
    let (sender, receiver) = mpsc::channel(1);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match queues.read().await {
                Ok(lengths) => {
                    if sender.send(lengths).await.is_err() {
                        return;
                    }
                }
                Err(err) => {
                    warn!(error = %err, "cannot read accept queues; stall and hang detection is off");
                    return;
                }
            }
        }
    });
    receiver
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    fn inode(listener: &TcpListener) -> u32 {
        let fd = std::os::fd::AsRawFd::as_raw_fd(listener);
        let meta = std::fs::metadata(format!("/proc/self/fd/{fd}")).expect("stat the socket");
        u32::try_from(meta.ino()).expect("socket inodes fit 32 bits")
    }

    #[tokio::test]
    async fn counts_connections_waiting_to_be_accepted() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("address");
        let mut queues = AcceptQueues::open(addr.port()).expect("open sock_diag");
        let before = queues.read().await.expect("read");
        assert_eq!(before.get(&inode(&listener)), Some(&0));
        let _clients: Vec<TcpStream> = (0..3)
            .map(|_| TcpStream::connect(addr).expect("connect"))
            .collect();
        let waiting = queues.read().await.expect("read");
        assert_eq!(waiting.get(&inode(&listener)), Some(&3));
        let _accepted = listener.accept().expect("accept");
        let after = queues.read().await.expect("read");
        assert_eq!(after.get(&inode(&listener)), Some(&2));
        assert_eq!(after.len(), 1, "only the listeners on this port: {after:?}");
    }
}
