//! SPDY/3.1 as `kubectl port-forward` speaks it (through the moby/spdystream
//! library): frames over one byte stream — a plain HTTP upgrade, or a
//! WebSocket tunnel — multiplexing streams that the client opens with
//! SYN_STREAM (headers naming the port and the stream's role) and the server
//! accepts with SYN_REPLY. Header blocks are zlib-compressed with the SPDY/3
//! dictionary, one compression context per direction for the whole
//! connection, each block ending in a sync flush. Only the server side is
//! implemented; flow control is not enforced (the peer does not either), and
//! pings are answered.

use bytes::{Buf, BufMut, Bytes};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const FLAG_FIN: u8 = 0x01;
/// RST_STREAM status: the stream was cancelled.
const CANCEL: u32 = 5;
/// The largest data frame rk sends (the format allows 16 MiB).
const MAX_CHUNK: usize = 32 * 1024;
/// Frames queued for one stream before the connection's reader waits.
const STREAM_BACKLOG: usize = 64;

/// The header names and values of the SPDY/3 compression dictionary, each
/// stored with a 32-bit length in front, followed by a block of common text.
const DICTIONARY_WORDS: &[&str] = &[
    "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset", "accept-encoding", "accept-language",
    "accept-ranges", "age", "allow", "authorization", "cache-control", "connection", "content-base", "content-encoding",
    "content-language", "content-length", "content-location", "content-md5", "content-range", "content-type", "date", "etag",
    "expect", "expires", "from", "host", "if-match", "if-modified-since", "if-none-match", "if-range", "if-unmodified-since",
    "last-modified", "location", "max-forwards", "pragma", "proxy-authenticate", "proxy-authorization", "range", "referer",
    "retry-after", "server", "te", "trailer", "transfer-encoding", "upgrade", "user-agent", "vary", "via", "warning",
    "www-authenticate", "method", "get", "status", "200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive",
    "origin",
];
const DICTIONARY_TEXT: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized",
    "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable",
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,",
    "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
);

fn dictionary() -> &'static [u8] {
    static DICTIONARY: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    DICTIONARY.get_or_init(|| {
        let mut out = Vec::new();
        for word in DICTIONARY_WORDS {
            out.extend_from_slice(&(word.len() as u32).to_be_bytes());
            out.extend_from_slice(word.as_bytes());
        }
        out.extend_from_slice(DICTIONARY_TEXT.as_bytes());
        out
    })
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Header name/value pairs; names are lower case on the wire.
pub type Headers = Vec<(String, String)>;

/// One frame, as far as the server cares.
#[derive(Debug, PartialEq)]
pub enum Frame {
    Data { stream: u32, fin: bool, data: Bytes },
    SynStream { stream: u32, fin: bool, headers: Headers },
    SynReply { stream: u32, fin: bool, headers: Headers },
    RstStream { stream: u32, status: u32 },
    Ping { id: u32 },
    GoAway,
    /// SETTINGS, HEADERS, WINDOW_UPDATE and anything newer: nothing to do.
    Ignored,
}

/// The compression state of one direction of a connection.
pub struct HeaderCodec {
    deflate: Compress,
    inflate: Decompress,
}

impl Default for HeaderCodec {
    fn default() -> Self {
        let mut deflate = Compress::new(Compression::best(), true);
        deflate.set_dictionary(dictionary()).expect("a fresh compressor takes a dictionary");
        Self { deflate, inflate: Decompress::new(true) }
    }
}

impl HeaderCodec {
    fn encode(&mut self, headers: &Headers) -> io::Result<Vec<u8>> {
        let mut block = Vec::new();
        block.put_u32(headers.len() as u32);
        for (name, value) in headers {
            block.put_u32(name.len() as u32);
            block.extend_from_slice(name.to_ascii_lowercase().as_bytes());
            block.put_u32(value.len() as u32);
            block.extend_from_slice(value.as_bytes());
        }
        let start = self.deflate.total_in();
        let mut out = Vec::with_capacity(block.len() + 64);
        loop {
            let offset = (self.deflate.total_in() - start) as usize;
            self.deflate.compress_vec(&block[offset..], &mut out, FlushCompress::Sync).map_err(|e| invalid(e.to_string()))?;
            let consumed_all = (self.deflate.total_in() - start) as usize >= block.len();
            // A sync flush is complete when it left room in the output.
            if consumed_all && out.len() < out.capacity() {
                return Ok(out);
            }
            out.reserve(out.capacity().max(64));
        }
    }

    fn decode(&mut self, compressed: &[u8]) -> io::Result<Headers> {
        let start = self.inflate.total_in();
        let mut block = Vec::with_capacity(compressed.len() * 4 + 64);
        loop {
            let offset = (self.inflate.total_in() - start) as usize;
            let before = (self.inflate.total_in(), self.inflate.total_out());
            match self.inflate.decompress_vec(&compressed[offset..], &mut block, FlushDecompress::Sync) {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate.set_dictionary(dictionary()).map_err(|e| invalid(e.to_string()))?;
                    continue;
                }
                Err(e) => return Err(invalid(format!("header block: {e}"))),
            }
            let consumed_all = (self.inflate.total_in() - start) as usize >= compressed.len();
            if consumed_all && block.len() < block.capacity() {
                break;
            }
            if block.len() == block.capacity() {
                block.reserve(block.capacity().max(256));
            } else if (self.inflate.total_in(), self.inflate.total_out()) == before {
                return Err(invalid("header block: truncated"));
            }
        }
        parse_headers(&block)
    }
}

fn parse_headers(mut block: &[u8]) -> io::Result<Headers> {
    let short = || invalid("header block: truncated");
    let take = |block: &mut &[u8]| -> io::Result<String> {
        if block.remaining() < 4 {
            return Err(short());
        }
        let len = block.get_u32() as usize;
        if block.remaining() < len {
            return Err(short());
        }
        let (text, rest) = block.split_at(len);
        *block = rest;
        Ok(String::from_utf8_lossy(text).into_owned())
    };
    if block.remaining() < 4 {
        return Err(short());
    }
    let count = block.get_u32() as usize;
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let name = take(&mut block)?.to_ascii_lowercase();
        let value = take(&mut block)?;
        headers.push((name, value));
    }
    Ok(headers)
}

/// The value of header `name` (case-insensitive).
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// Reads one frame; `Ok(None)` at a clean end of the connection.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R, codec: &mut HeaderCodec) -> io::Result<Option<Frame>> {
    let mut head = [0u8; 8];
    match reader.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let first = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let flags = head[4];
    let length = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    let mut payload = vec![0u8; length];
    reader.read_exact(&mut payload).await?;
    let fin = flags & FLAG_FIN != 0;
    if first & 0x8000_0000 == 0 {
        return Ok(Some(Frame::Data { stream: first, fin, data: Bytes::from(payload) }));
    }
    let kind = (first & 0xffff) as u16;
    let mut body = payload.as_slice();
    let need = |n: usize| if body.len() < n { Err(invalid(format!("control frame {kind} too short"))) } else { Ok(()) };
    Ok(Some(match kind {
        SYN_STREAM => {
            need(10)?;
            let stream = body.get_u32() & 0x7fff_ffff;
            body.advance(6); // associated stream, priority, slot
            Frame::SynStream { stream, fin, headers: codec.decode(body)? }
        }
        SYN_REPLY => {
            need(4)?;
            let stream = body.get_u32() & 0x7fff_ffff;
            Frame::SynReply { stream, fin, headers: codec.decode(body)? }
        }
        RST_STREAM => {
            need(8)?;
            Frame::RstStream { stream: body.get_u32() & 0x7fff_ffff, status: body.get_u32() }
        }
        PING => {
            need(4)?;
            Frame::Ping { id: body.get_u32() }
        }
        GOAWAY => Frame::GoAway,
        _ => Frame::Ignored,
    }))
}

fn control(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + body.len());
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    out.put_u32((u32::from(flags) << 24) | body.len() as u32);
    out.extend_from_slice(body);
    out
}

/// The bytes of `frame` on the wire.
pub fn encode_frame(frame: &Frame, codec: &mut HeaderCodec) -> io::Result<Vec<u8>> {
    let fin = |f: bool| if f { FLAG_FIN } else { 0 };
    Ok(match frame {
        Frame::Data { stream, fin: f, data } => {
            let mut out = Vec::with_capacity(8 + data.len());
            out.put_u32(stream & 0x7fff_ffff);
            out.put_u32((u32::from(fin(*f)) << 24) | data.len() as u32);
            out.extend_from_slice(data);
            out
        }
        Frame::SynStream { stream, fin: f, headers } => {
            let mut body = Vec::new();
            body.put_u32(*stream);
            body.put_u32(0);
            body.put_u16(0);
            body.extend(codec.encode(headers)?);
            control(SYN_STREAM, fin(*f), &body)
        }
        Frame::SynReply { stream, fin: f, headers } => {
            let mut body = Vec::new();
            body.put_u32(*stream);
            body.extend(codec.encode(headers)?);
            control(SYN_REPLY, fin(*f), &body)
        }
        Frame::RstStream { stream, status } => {
            let mut body = Vec::new();
            body.put_u32(*stream);
            body.put_u32(*status);
            control(RST_STREAM, 0, &body)
        }
        Frame::Ping { id } => control(PING, 0, &id.to_be_bytes()),
        Frame::GoAway => control(GOAWAY, 0, &[0u8; 8]),
        Frame::Ignored => Vec::new(),
    })
}

/// What arrives on a stream the peer opened.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    Data(Bytes),
    /// The peer will send nothing more (FIN).
    Finished,
    /// The peer abandoned the stream (RST_STREAM) or the connection ended.
    Reset,
}

/// One stream the peer opened: its headers, what it sends, and a handle to answer.
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    incoming: mpsc::Receiver<Incoming>,
    pub sender: StreamSender,
}

impl Stream {
    /// The next thing the peer sent; `Reset` once the connection is gone.
    pub async fn recv(&mut self) -> Incoming {
        self.incoming.recv().await.unwrap_or(Incoming::Reset)
    }
}

/// Writes to one stream; cheap to clone.
#[derive(Clone)]
pub struct StreamSender {
    id: u32,
    frames: mpsc::Sender<Frame>,
}

impl StreamSender {
    pub async fn send(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let (chunk, rest) = data.split_at(data.len().min(MAX_CHUNK));
            data = rest;
            let frame = Frame::Data { stream: self.id, fin: false, data: Bytes::copy_from_slice(chunk) };
            self.frames.send(frame).await.map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        }
        Ok(())
    }

    /// Tells the peer nothing more comes on this stream (FIN).
    pub async fn finish(&self) {
        let _ = self.frames.send(Frame::Data { stream: self.id, fin: true, data: Bytes::new() }).await;
    }

    /// Abandons the stream (RST_STREAM, cancel).
    pub async fn reset(&self) {
        let _ = self.frames.send(Frame::RstStream { stream: self.id, status: CANCEL }).await;
    }
}

/// Serves one SPDY connection as the server: accepts every stream the peer
/// opens and hands it to `accept`, answers pings, and returns when the
/// connection ends.
pub async fn serve<IO>(io: IO, accept: mpsc::Sender<Stream>) -> io::Result<()>
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(io);
    let (frames, mut outgoing) = mpsc::channel::<Frame>(256);
    let write_loop = tokio::spawn(async move {
        let mut codec = HeaderCodec::default();
        while let Some(frame) = outgoing.recv().await {
            let bytes = encode_frame(&frame, &mut codec)?;
            writer.write_all(&bytes).await?;
            if outgoing.is_empty() {
                writer.flush().await?;
            }
        }
        let _ = writer.shutdown().await;
        Ok::<_, io::Error>(())
    });
    let streams: Arc<Mutex<HashMap<u32, mpsc::Sender<Incoming>>>> = Arc::default();
    let mut codec = HeaderCodec::default();
    let result = loop {
        let frame = match read_frame(&mut reader, &mut codec).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        match frame {
            Frame::SynStream { stream, fin, headers } => {
                let (tx, rx) = mpsc::channel(STREAM_BACKLOG);
                if fin {
                    let _ = tx.try_send(Incoming::Finished);
                }
                streams.lock().expect("streams lock").insert(stream, tx);
                if frames.send(Frame::SynReply { stream, fin: false, headers: Vec::new() }).await.is_err() {
                    break Ok(());
                }
                let sender = StreamSender { id: stream, frames: frames.clone() };
                if accept.send(Stream { id: stream, headers, incoming: rx, sender }).await.is_err() {
                    break Ok(());
                }
            }
            Frame::Data { stream, fin, data } => {
                let tx = streams.lock().expect("streams lock").get(&stream).cloned();
                if let Some(tx) = tx {
                    if !data.is_empty() {
                        let _ = tx.send(Incoming::Data(data)).await;
                    }
                    if fin {
                        let _ = tx.send(Incoming::Finished).await;
                        streams.lock().expect("streams lock").remove(&stream);
                    }
                }
            }
            Frame::RstStream { stream, .. } => {
                if let Some(tx) = streams.lock().expect("streams lock").remove(&stream) {
                    let _ = tx.try_send(Incoming::Reset);
                }
            }
            Frame::Ping { id } => {
                let _ = frames.send(Frame::Ping { id }).await;
            }
            Frame::GoAway => break Ok(()),
            Frame::SynReply { .. } | Frame::Ignored => {}
        }
    };
    // Every open stream learns the connection is gone (their receivers see Reset).
    streams.lock().expect("streams lock").clear();
    drop(frames);
    drop(accept);
    write_loop.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_the_spdy3_one() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert_eq!(&d[..11], b"\x00\x00\x00\x07options");
        assert!(d.ends_with(b",enq=0."));
    }

    #[test]
    fn header_blocks_round_trip_through_one_compression_context() {
        let mut sender = HeaderCodec::default();
        let mut receiver = HeaderCodec::default();
        for request_id in 0..3 {
            let headers: Headers = vec![
                ("streamtype".into(), "data".into()),
                ("port".into(), "8080".into()),
                ("requestid".into(), request_id.to_string()),
            ];
            let frame = Frame::SynStream { stream: 2 * request_id + 1, fin: false, headers: headers.clone() };
            let bytes = encode_frame(&frame, &mut sender).unwrap();
            let mut reader = bytes.as_slice();
            let read = futures::executor::block_on(read_frame(&mut reader, &mut receiver)).unwrap().unwrap();
            assert_eq!(read, frame);
        }
    }

    #[test]
    fn data_pings_and_resets_keep_their_fields() {
        let mut codec = HeaderCodec::default();
        for frame in [
            Frame::Data { stream: 7, fin: true, data: Bytes::from_static(b"hello") },
            Frame::Ping { id: 3 },
            Frame::RstStream { stream: 5, status: CANCEL },
        ] {
            let bytes = encode_frame(&frame, &mut codec).unwrap();
            let mut reader = bytes.as_slice();
            assert_eq!(futures::executor::block_on(read_frame(&mut reader, &mut codec)).unwrap(), Some(frame));
        }
        let mut empty: &[u8] = &[];
        assert_eq!(futures::executor::block_on(read_frame(&mut empty, &mut codec)).unwrap(), None);
    }

    #[test]
    fn garbage_header_blocks_are_errors_not_panics() {
        let mut codec = HeaderCodec::default();
        let frame = control(SYN_STREAM, 0, &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x78, 0xbb, 1, 2, 3]);
        let mut reader = frame.as_slice();
        assert!(futures::executor::block_on(read_frame(&mut reader, &mut codec)).is_err());
        assert!(parse_headers(&[0, 0, 0, 2, 0, 0, 0, 9]).is_err());
    }
}
