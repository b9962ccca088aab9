//! The nfnetlink socket the proxy programs nf_tables through: each update is
//! one batch (NFNL_MSG_BATCH_BEGIN … NFNL_MSG_BATCH_END) that the kernel applies
//! as one transaction or not at all, and dumps read back what rk's table holds
//! when the proxy starts. The same socket lists and deletes conntrack entries
//! (ctnetlink). Messages are the `netlink-packet-netfilter` types.

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_netfilter::conntrack::{ConntrackAttribute, ConntrackMessage};
use netlink_packet_netfilter::nftables::{GenMessage, NfTablesMessage};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};
use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// `res_id` of the batch delimiters: the subsystem the batch is for.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// No answer within this long means the kernel is not answering at all.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("nf_tables is not available: {0}")]
    Unavailable(io::Error),
    #[error("netlink: {0}")]
    Io(#[from] io::Error),
    #[error("the kernel refused {what}: {source}")]
    Refused { what: String, source: io::Error },
    #[error("unreadable netlink reply: {0}")]
    Decode(String),
}

impl Error {
    /// The errno the kernel answered with, if it refused a message.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Refused { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// One message of a batch, with what it does for error reports.
pub struct Op {
    pub message: NfTablesMessage,
    /// `NLM_F_*` beyond `NLM_F_REQUEST` (e.g. `NLM_F_CREATE`).
    pub flags: u16,
    pub what: String,
}

pub struct Nfnetlink {
    socket: Socket,
    sequence: u32,
    send_buffer: usize,
}

impl Nfnetlink {
    /// Opens the socket and checks that nf_tables answers (a GETGEN request).
    pub fn open() -> Result<Self, Error> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(Error::Unavailable)?;
        socket.bind_auto().map_err(Error::Unavailable)?;
        // Acks carry only the original header, not the whole request.
        socket.set_cap_ack(true)?;
        set_timeout(&socket, RECEIVE_TIMEOUT)?;
        let mut nl = Self { socket, sequence: 0, send_buffer: 0 };
        let getgen = NetfilterMessage::new(NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, 0), NfTablesMessage::GetGen(GenMessage { attributes: Vec::new() }));
        nl.request(getgen, NLM_F_ACK, "GETGEN")
            .map_err(|e| match e {
                Error::Refused { source, .. } | Error::Io(source) => Error::Unavailable(source),
                other => other,
            })?;
        Ok(nl)
    }

    fn next_sequence(&mut self) -> u32 {
        self.sequence = self.sequence.wrapping_add(1);
        self.sequence
    }

    /// Applies `ops` as one transaction. Nothing is sent for an empty batch.
    pub fn apply(&mut self, ops: &[Op]) -> Result<(), Error> {
        let Some(last) = ops.len().checked_sub(1) else { return Ok(()) };
        let mut buffer = Vec::with_capacity(ops.len() * 128);
        let begin = self.next_sequence();
        push(&mut buffer, control(ControlMessage::BatchBegin), NLM_F_REQUEST, begin);
        let first = begin.wrapping_add(1);
        for (i, op) in ops.iter().enumerate() {
            // Errors are always reported; an ack on the last message says the
            // kernel is through with the batch.
            let ack = if i == last { NLM_F_ACK } else { 0 };
            let sequence = self.next_sequence();
            push(&mut buffer, nftables(op.message.clone()), NLM_F_REQUEST | ack | op.flags, sequence);
        }
        let end = self.next_sequence();
        push(&mut buffer, control(ControlMessage::BatchEnd), NLM_F_REQUEST, end);
        self.ensure_send_buffer(buffer.len())?;
        self.socket.send(&buffer, 0)?;

        let last_sequence = first.wrapping_add(last as u32);
        let mut failure: Option<Error> = None;
        let mut receive = vec![0u8; 1 << 16];
        loop {
            let n = self.socket.recv(&mut &mut receive[..], 0)?;
            for (header, payload) in messages(&receive[..n])? {
                let NetlinkPayload::Error(e) = payload else { continue };
                if let Some(code) = e.code {
                    let what = header
                        .sequence_number
                        .checked_sub(first)
                        .and_then(|i| ops.get(i as usize))
                        .map_or_else(|| "the batch".to_owned(), |op| op.what.clone());
                    let source = io::Error::from_raw_os_error(-code.get());
                    failure.get_or_insert(Error::Refused { what, source });
                }
                if header.sequence_number == last_sequence || header.sequence_number == begin {
                    return failure.map_or(Ok(()), Err);
                }
            }
        }
    }

    /// Lists objects: a GET request with NLM_F_DUMP, every reply until DONE.
    pub fn dump(&mut self, request: NfTablesMessage) -> Result<Vec<NfTablesMessage>, Error> {
        let replies = self.request(nftables(request), NLM_F_DUMP, "a dump")?;
        Ok(replies.into_iter().filter_map(|m| if let NetfilterMessageInner::NfTables(m) = m { Some(m) } else { None }).collect())
    }

    /// Lists the IPv4 connections conntrack tracks (ctnetlink), each as its attributes.
    pub fn dump_conntrack(&mut self) -> Result<Vec<Vec<ConntrackAttribute>>, Error> {
        let request = NetfilterMessage::new(NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0), ConntrackMessage::Get(Vec::new()));
        let replies = self.request(request, NLM_F_DUMP, "a conntrack dump")?;
        Ok(replies.into_iter().filter_map(|m| if let NetfilterMessageInner::Conntrack(ConntrackMessage::New(a)) = m { Some(a) } else { None }).collect())
    }

    /// Deletes the IPv4 connection `attributes` name (its original tuple, and zone if any).
    pub fn delete_conntrack(&mut self, attributes: Vec<ConntrackAttribute>) -> Result<(), Error> {
        let request = NetfilterMessage::new(NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0), ConntrackMessage::Delete(attributes));
        self.request(request, NLM_F_ACK, "deleting a conntrack entry").map(drop)
    }

    /// Sends one request and collects the replies until DONE or the ack.
    fn request(&mut self, message: NetfilterMessage, flags: u16, what: &str) -> Result<Vec<NetfilterMessageInner>, Error> {
        let sequence = self.next_sequence();
        let mut buffer = Vec::new();
        push(&mut buffer, message, NLM_F_REQUEST | flags, sequence);
        self.socket.send(&buffer, 0)?;
        let mut out = Vec::new();
        let mut receive = vec![0u8; 1 << 20];
        loop {
            let n = self.socket.recv(&mut &mut receive[..], 0)?;
            for (header, payload) in messages(&receive[..n])? {
                if header.sequence_number != sequence {
                    continue;
                }
                match payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            Some(code) => Err(Error::Refused { what: what.to_owned(), source: io::Error::from_raw_os_error(-code.get()) }),
                            None => Ok(out),
                        };
                    }
                    NetlinkPayload::InnerMessage(m) => out.push(m.inner),
                    _ => {}
                }
            }
        }
    }

    /// A batch must reach the kernel in one datagram; grow the socket's send
    /// buffer to fit (as `nft` does, with SO_SNDBUFFORCE since we are root).
    fn ensure_send_buffer(&mut self, len: usize) -> Result<(), Error> {
        if len + 4096 <= self.send_buffer.max(200 * 1024) {
            return Ok(());
        }
        let size = libc::c_int::try_from(len + 4096).map_err(|_| Error::Decode("batch larger than 2 GiB".into()))?;
        for option in [libc::SO_SNDBUFFORCE, libc::SO_SNDBUF] {
            // SAFETY: setsockopt on our own socket with a c_int value of the right size.
            let rc = unsafe {
                libc::setsockopt(
                    self.socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    option,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc == 0 {
                self.send_buffer = len + 4096;
                return Ok(());
            }
        }
        Err(io::Error::last_os_error().into())
    }
}

fn set_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval { tv_sec: timeout.as_secs() as libc::time_t, tv_usec: timeout.subsec_micros() as libc::suseconds_t };
    // SAFETY: setsockopt with a timeval of the right size on our own socket.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

fn control(message: ControlMessage) -> NetfilterMessage {
    NetfilterMessage::new(NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, NFNL_SUBSYS_NFTABLES), message)
}

fn nftables(message: NfTablesMessage) -> NetfilterMessage {
    NetfilterMessage::new(NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0), message)
}

/// Appends one netlink message to `buffer`.
fn push(buffer: &mut Vec<u8>, message: NetfilterMessage, flags: u16, sequence: u32) {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = sequence;
    let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
    message.finalize();
    let start = buffer.len();
    buffer.resize(start + message.buffer_len(), 0);
    message.serialize(&mut buffer[start..]);
}

/// The messages of one datagram.
fn messages(mut data: &[u8]) -> Result<Vec<(NetlinkHeader, NetlinkPayload<NetfilterMessage>)>, Error> {
    let mut out = Vec::new();
    while data.len() >= 16 {
        let len = NetlinkBuffer::new_checked(data).map_err(|e| Error::Decode(e.to_string()))?.length() as usize;
        if len < 16 || len > data.len() {
            return Err(Error::Decode(format!("a message of {len} bytes in a datagram of {}", data.len())));
        }
        let message = NetlinkMessage::<NetfilterMessage>::deserialize(&data[..len]).map_err(|e| Error::Decode(e.to_string()))?;
        out.push(message.into_parts());
        data = &data[((len + 3) & !3).min(data.len())..];
    }
    Ok(out)
}
