//! A lean HTTP/1.1 client for the streaming requests to plain `http://` servers.
//!
//! Why not reqwest here (it still serves `https://`, proxies and every non-streaming request):
//! with reqwest/hyper each token event costs a read on the connection's own task, a frame sent
//! through a channel to the request's task (a cross-task wake-up), and a poll of the request's
//! total-timeout timer; the token's instant is taken only after all that. On the 2-core machine
//! of docs/performance.md this path measured lower CPU per event and a timestamp taken right
//! after the `read` that delivered the bytes. What it does is small: one request per pooled
//! keep-alive connection (no pipelining), the response head parsed by `httparse` (hyper's own
//! parser), then a body framed by `Transfer-Encoding: chunked`, `Content-Length` or the
//! connection's end, decoded incrementally (split anywhere) by [`Chunked`], which has property
//! tests. The stream's task owns its socket, so nothing else is woken per event.
//!
//! On Linux each socket asks the kernel for receive timestamps (`SO_TIMESTAMPNS`): every read
//! returns, with its bytes, the instant the last of them reached this machine's TCP stack. A
//! token's instant is then when it arrived, not when a busy client got round to reading it,
//! so the client's own CPU queueing (many streams on few cores) stays out of the figures.

use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;

/// Where and how to send: the parts of an `http://` API base the fast path needs.
#[derive(Debug)]
pub struct Target {
    /// `host:port` to connect to (IPv6 in brackets).
    pub authority: String,
    /// Value of the `Host` header (as in the URL: the port only when given).
    pub host_header: String,
    /// Path of the API base, without a trailing `/` (e.g. `/v1`, `/proxy/v1`).
    pub path_prefix: String,
    /// Pre-rendered extra header lines (`Name: value\r\n`), authorization included.
    pub extra_headers: Vec<u8>,
}

impl Target {
    /// The fast path's target for `api_base`, or `None` when reqwest must be used: not plain
    /// `http`, credentials or a query in the URL, or an HTTP proxy configured in the
    /// environment (reqwest honours those; this path does not).
    pub fn for_base(api_base: &str, headers: &reqwest::header::HeaderMap) -> Option<Self> {
        let url = reqwest::Url::parse(api_base).ok()?;
        if url.scheme() != "http"
            || !url.username().is_empty()
            || url.password().is_some()
            || url.query().is_some()
            || url.fragment().is_some()
            || proxy_configured()
        {
            return None;
        }
        // IPv6 addresses come in brackets, as both the authority and `Host` need them.
        let host = url.host_str()?.to_owned();
        let port = url.port_or_known_default()?;
        let host_header = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        let mut extra_headers = Vec::new();
        for (name, value) in headers {
            extra_headers.extend_from_slice(name.as_str().as_bytes());
            extra_headers.extend_from_slice(b": ");
            extra_headers.extend_from_slice(value.as_bytes());
            extra_headers.extend_from_slice(b"\r\n");
        }
        Some(Self {
            authority: format!("{host}:{port}"),
            host_header,
            path_prefix: url.path().trim_end_matches('/').to_owned(),
            extra_headers,
        })
    }

    /// A `GET` of `path` under the API base (the pre-warm request).
    pub fn get(&self, path: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.extra_headers.len());
        out.extend_from_slice(b"GET ");
        out.extend_from_slice(self.path_prefix.as_bytes());
        out.push(b'/');
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        out.extend_from_slice(self.host_header.as_bytes());
        out.extend_from_slice(b"\r\nAccept: application/json\r\n");
        out.extend_from_slice(&self.extra_headers);
        out.extend_from_slice(b"\r\n");
        out
    }

    /// The request head and body in one buffer (one write, one packet for small bodies).
    pub fn request(&self, path: &str, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.extra_headers.len() + body.len());
        out.extend_from_slice(b"POST ");
        out.extend_from_slice(self.path_prefix.as_bytes());
        out.push(b'/');
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        out.extend_from_slice(self.host_header.as_bytes());
        out.extend_from_slice(
            b"\r\nContent-Type: application/json\r\nAccept: text/event-stream\r\nContent-Length: ",
        );
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.extra_headers);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
        out
    }
}

fn proxy_configured() -> bool {
    ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
        .iter()
        .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()))
}

/// One client connection: a non-blocking socket on the runtime's reactor, read with the
/// kernel's receive timestamp when the OS gives one.
#[derive(Debug)]
pub struct Conn {
    fd: AsyncFd<std::net::TcpStream>,
    /// Kernel receive time (`CLOCK_REALTIME`, ns since the Unix epoch) of the last read.
    rx_realtime_ns: Option<i128>,
}

impl Conn {
    /// Opens a connection with `TCP_NODELAY` (a request is one small write that must not wait)
    /// and, on Linux, receive timestamps.
    pub async fn connect(authority: &str) -> io::Result<Self> {
        let conn = tokio::net::TcpStream::connect(authority).await?;
        conn.set_nodelay(true)?;
        let std = conn.into_std()?;
        enable_rx_timestamps(&std);
        // Not tokio's TcpStream: a `recvmsg` through its `try_io` cannot tell the reactor that
        // a short read emptied the socket, which would cost one more system call per read.
        // SAFETY: the std::net::TcpStream owns its descriptor, which stays open and the same
        // until the stream (inside the AsyncFd) is dropped. (No safe constructor exists: tokio
        // deprecated `AsyncFd::new` as unsound.)
        let fd = unsafe { AsyncFd::register(std) }.map_err(io::Error::from)?;
        Ok(Self {
            fd,
            rx_realtime_ns: None,
        })
    }

    /// Writes all of `data`.
    pub async fn send(&mut self, mut data: &[u8]) -> io::Result<()> {
        use std::io::Write;
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|s| s.get_ref().write(data)) {
                Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
        Ok(())
    }

    /// Reads what has arrived after the bytes `buf` holds (growing it when nearly full); `0`
    /// at the end of the stream. Sets [`Conn::rx_realtime_ns`].
    pub async fn read_buf(&mut self, buf: &mut ReadBuf) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            let dst = buf.spare();
            let spare = dst.len();
            match guard.try_io(|s| recvmsg_stamped(std::os::fd::AsRawFd::as_raw_fd(s), dst)) {
                Ok(Ok((n, ts))) => {
                    // A short read emptied the socket: wait for the reactor's next event
                    // instead of a read that would only say so (as tokio's own TcpStream does).
                    if n > 0 && n < spare {
                        guard.clear_ready();
                    }
                    buf.len += n;
                    buf.full = n == spare;
                    self.rx_realtime_ns = ts;
                    return Ok(n);
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
    }

    /// When the last read's bytes reached this machine (the last of them, if several packets
    /// were read at once), by the kernel's clock (`CLOCK_REALTIME`, ns); `None` when the OS
    /// gave no timestamp.
    pub fn rx_realtime_ns(&self) -> Option<i128> {
        self.rx_realtime_ns
    }

    /// Whether an idle connection is still open with nothing unread (one `MSG_PEEK`).
    fn idle_and_open(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.fd.get_ref().peek(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// A read buffer whose memory is all initialised, so that a read fills it through a plain
/// `&mut [u8]`: the first `len` bytes hold what was read. Its room is zeroed only as reads
/// need it (1 KiB at first, doubled when a read fills it, up to [`FULL_ROOM`]), so a stream of
/// small reads keeps little of it resident: zeroing 8 KiB up front cost a page per stream in
/// `kvbench selftest`, and so did reserving 8 KiB and touching its first 1 KiB (the streams'
/// buffers then sat a page or more apart); the client reserves 1 KiB and lets it grow.
#[derive(Debug, Default)]
pub struct ReadBuf {
    /// The initialised memory (it grows within, then beyond, the capacity reserved).
    mem: Vec<u8>,
    len: usize,
    /// The last read filled all the room it was given: more may have been waiting.
    full: bool,
}

/// Room zeroed for the first read.
const FIRST_ROOM: usize = 1024;
/// Room up to which a read that filled its room doubles the next one's.
const FULL_ROOM: usize = 8 * 1024;

impl ReadBuf {
    /// An empty buffer with `n` bytes reserved.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            mem: Vec::with_capacity(n),
            len: 0,
            full: false,
        }
    }

    /// The bytes read so far.
    pub fn filled(&self) -> &[u8] {
        &self.mem[..self.len]
    }

    /// How many bytes were read so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was read since the last [`ReadBuf::clear`].
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets what was read (the memory is kept for the next read).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// The room after the bytes read: the memory doubles (by at least [`FIRST_ROOM`]) when
    /// none is left, or when the last read filled it and it is under [`FULL_ROOM`].
    fn spare(&mut self) -> &mut [u8] {
        let room = self.mem.len() - self.len;
        if room == 0 || (self.full && room < FULL_ROOM) {
            let more = self.mem.len().max(FIRST_ROOM);
            self.mem.resize(self.mem.len() + more, 0);
        }
        &mut self.mem[self.len..]
    }
}

/// Asks the kernel to stamp each received packet (`SO_TIMESTAMPNS`); Linux only. A failure
/// only means no timestamps: reads then fall back to the time of the read.
#[cfg(target_os = "linux")]
pub(crate) fn enable_rx_timestamps(sock: &impl std::os::fd::AsFd) {
    use nix::sys::socket::{setsockopt, sockopt::ReceiveTimestampns};
    let _ = setsockopt(sock, ReceiveTimestampns, &true);
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn enable_rx_timestamps(_sock: &impl std::os::fd::AsFd) {}

/// Room for the control messages of one read (a timestamp, and any other the kernel adds),
/// aligned as the `cmsghdr` read from it must be.
#[cfg(target_os = "linux")]
#[repr(C, align(8))]
struct ControlBuf([u8; 128]);

/// One `recvmsg` on a non-blocking socket into `dst`: the bytes read (the first `n` of
/// `dst`) and the kernel's receive time of the last of them (`CLOCK_REALTIME`, ns), when it
/// gave one.
#[cfg(target_os = "linux")]
pub(crate) fn recvmsg_stamped(
    fd: std::os::fd::RawFd,
    dst: &mut [u8],
) -> io::Result<(usize, Option<i128>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut control = ControlBuf([0; 128]);
    let mut iov = [io::IoSliceMut::new(dst)];
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut control.0), MsgFlags::empty())?;
    let mut ts = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmTimestampns(t) = c {
            ts = Some(t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128);
        }
    }
    Ok((msg.bytes, ts))
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn recvmsg_stamped(
    fd: std::os::fd::RawFd,
    dst: &mut [u8],
) -> io::Result<(usize, Option<i128>)> {
    let n = nix::sys::socket::recv(fd, dst, nix::sys::socket::MsgFlags::empty())?;
    Ok((n, None))
}

/// Idle keep-alive connections, most recently used last.
#[derive(Debug)]
pub struct Pool {
    idle: Mutex<Vec<(Conn, Instant)>>,
    max_idle: usize,
    idle_timeout: Duration,
}

impl Pool {
    /// A pool keeping at most `max_idle` connections for at most `idle_timeout` each.
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            max_idle: max_idle.max(1),
            idle_timeout,
        }
    }

    /// A pooled connection that is still open, if any.
    pub fn take(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().ok()?;
        while let Some((conn, since)) = idle.pop() {
            if since.elapsed() >= self.idle_timeout {
                // Older ones are older still.
                idle.clear();
                return None;
            }
            // Data or an end-of-stream on an idle connection means it cannot be reused.
            if conn.idle_and_open() {
                return Some(conn);
            }
        }
        None
    }

    /// Returns a connection whose response was read to its end.
    pub fn put(&self, conn: Conn) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < self.max_idle {
                idle.push((conn, Instant::now()));
            }
        }
    }
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    /// Status code.
    pub status: u16,
    /// How the body is delimited.
    pub framing: Framing,
    /// Whether the connection may carry another request after this response.
    pub keep_alive: bool,
    /// Bytes of the head (the body starts there in the buffer).
    pub len: usize,
    /// The `Location` header, when given (a redirect is reported, never followed).
    pub location: Option<String>,
}

/// How a response body is delimited.
#[derive(Debug)]
pub enum Framing {
    /// `Transfer-Encoding: chunked`.
    Chunked(Chunked),
    /// `Content-Length`: bytes left.
    Length(u64),
    /// Until the server closes the connection.
    Close,
}

/// Largest response head accepted.
pub const MAX_HEAD: usize = 64 * 1024;

/// Parses a response head at the start of `buf`: `Ok(None)` when more bytes are needed.
/// Interim `1xx` responses (other than 101) are skipped.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let mut start = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(&buf[start..]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_HEAD {
                    return Err("response head too large".into());
                }
                return Ok(None);
            }
            Err(e) => return Err(format!("invalid HTTP response head: {e}")),
        };
        let status = resp.code.unwrap_or(0);
        if (100..200).contains(&status) && status != 101 {
            start += n;
            continue;
        }
        let mut chunked = false;
        let mut length = None;
        let mut close = resp.version != Some(1);
        let mut location = None;
        for h in resp.headers.iter() {
            let value = std::str::from_utf8(h.value).unwrap_or("").trim();
            if h.name.eq_ignore_ascii_case("location") {
                location = Some(value.to_owned());
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value
                    .rsplit(',')
                    .next()
                    .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
            } else if h.name.eq_ignore_ascii_case("content-length") {
                let n: u64 = value
                    .parse()
                    .map_err(|_| format!("invalid Content-Length {value:?}"))?;
                if length.is_some_and(|l| l != n) {
                    return Err("conflicting Content-Length headers".into());
                }
                length = Some(n);
            } else if h.name.eq_ignore_ascii_case("connection") {
                for token in value.split(',') {
                    let t = token.trim();
                    if t.eq_ignore_ascii_case("close") {
                        close = true;
                    } else if t.eq_ignore_ascii_case("keep-alive") && resp.version == Some(0) {
                        close = false;
                    }
                }
            }
        }
        let framing = if status == 204 || status == 304 {
            Framing::Length(0)
        } else if chunked {
            Framing::Chunked(Chunked::default())
        } else if let Some(n) = length {
            Framing::Length(n)
        } else {
            close = true;
            Framing::Close
        };
        return Ok(Some(Head {
            status,
            framing,
            keep_alive: !close,
            len: start + n,
            location,
        }));
    }
}

/// Incremental decoder of a `Transfer-Encoding: chunked` body; input may split anywhere.
/// Chunk extensions and trailers are skipped; a bare LF is accepted where CRLF is expected.
#[derive(Debug, Default)]
pub struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u32,
    /// Bytes of chunk extension or trailer line skipped so far.
    skipped: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    SizeWs,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerEndLf,
    Done,
}

/// Longest chunk extension or trailer line skipped.
const MAX_SKIP: usize = 16 * 1024;

impl Chunked {
    /// Whether the terminating chunk (and trailer) has been read.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Feeds `input`; calls `out` with each piece of payload. Returns the bytes consumed (all
    /// of `input` unless the body ended inside it).
    pub fn decode(
        &mut self,
        input: &[u8],
        out: &mut impl FnMut(&[u8]),
    ) -> Result<usize, &'static str> {
        use ChunkState::*;
        let mut i = 0;
        while i < input.len() {
            match self.state {
                Data => {
                    let n = (self.size as usize).min(input.len() - i);
                    out(&input[i..i + n]);
                    i += n;
                    self.size -= n as u64;
                    if self.size == 0 {
                        self.state = DataCr;
                    }
                    continue;
                }
                Done => return Ok(i),
                _ => {}
            }
            let b = input[i];
            i += 1;
            self.state = match (self.state, b) {
                (Size, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                    if self.digits >= 15 {
                        return Err("chunk size too large");
                    }
                    self.size = self.size * 16 + (b as char).to_digit(16).unwrap_or(0) as u64;
                    self.digits += 1;
                    Size
                }
                (Size | SizeWs, b' ' | b'\t') if self.digits > 0 => SizeWs,
                (Size | SizeWs, b';') if self.digits > 0 => {
                    self.skipped = 0;
                    Ext
                }
                (Size | SizeWs, b'\r') if self.digits > 0 => SizeLf,
                (Size | SizeWs, b'\n') if self.digits > 0 => self.after_size(),
                (Ext, b'\r') => SizeLf,
                (Ext, b'\n') => self.after_size(),
                (Ext, _) => {
                    self.skipped += 1;
                    if self.skipped > MAX_SKIP {
                        return Err("chunk extension too long");
                    }
                    Ext
                }
                (SizeLf, b'\n') => self.after_size(),
                (DataCr, b'\r') => DataLf,
                (DataCr | DataLf, b'\n') => Size,
                (TrailerStart, b'\r') => TrailerEndLf,
                (TrailerStart | TrailerEndLf, b'\n') => {
                    self.state = Done;
                    return Ok(i);
                }
                (Trailer, b'\n') => TrailerStart,
                (TrailerStart | Trailer, _) => {
                    self.skipped += 1;
                    if self.skipped > MAX_SKIP {
                        return Err("chunk trailer too long");
                    }
                    Trailer
                }
                _ => return Err("invalid chunked encoding"),
            };
        }
        Ok(i)
    }

    fn after_size(&mut self) -> ChunkState {
        let state = if self.size == 0 {
            self.skipped = 0;
            ChunkState::TrailerStart
        } else {
            ChunkState::Data
        };
        self.digits = 0;
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(pieces: &[&[u8]]) -> Result<(Vec<u8>, bool), &'static str> {
        let mut d = Chunked::default();
        let mut out = Vec::new();
        for p in pieces {
            d.decode(p, &mut |b| out.extend_from_slice(b))?;
        }
        Ok((out, d.is_done()))
    }

    fn encode(payloads: &[Vec<u8>], ext: bool, upper: bool, trailer: bool) -> Vec<u8> {
        let mut s = Vec::new();
        for p in payloads.iter().filter(|p| !p.is_empty()) {
            let size = if upper {
                format!("{:X}", p.len())
            } else {
                format!("{:x}", p.len())
            };
            s.extend_from_slice(size.as_bytes());
            if ext {
                s.extend_from_slice(b";name=value");
            }
            s.extend_from_slice(b"\r\n");
            s.extend_from_slice(p);
            s.extend_from_slice(b"\r\n");
        }
        s.extend_from_slice(b"0\r\n");
        if trailer {
            s.extend_from_slice(b"X-Trailer: 1\r\n");
        }
        s.extend_from_slice(b"\r\n");
        s
    }

    #[test]
    fn hyper_style_body_and_end() {
        let body = b"1b\r\ndata: {\"a\":1}\n\ndata: [DONE]\r\n0\r\n\r\n";
        let (out, done) = decode_all(&[body]).unwrap();
        assert_eq!(out, b"data: {\"a\":1}\n\ndata: [DONE]");
        assert!(done);
        // Bytes after the end are not consumed.
        let mut d = Chunked::default();
        let mut v = Vec::new();
        let n = d
            .decode(b"1\r\nx\r\n0\r\n\r\nHTTP", &mut |b| v.extend_from_slice(b))
            .unwrap();
        assert_eq!(n, 11);
        assert!(d.is_done());
    }

    #[test]
    fn invalid_framing_is_an_error() {
        assert!(decode_all(&[b"zz\r\n"]).is_err());
        assert!(decode_all(&[b"\r\n"]).is_err());
        assert!(decode_all(&[b"2\r\nabX"]).is_err());
        assert!(decode_all(&[b"fffffffffffffffff\r\n"]).is_err());
        // Truncated: no error, not done.
        assert_eq!(decode_all(&[b"5\r\nab"]).unwrap(), (b"ab".to_vec(), false));
    }

    #[test]
    fn heads() {
        let h = parse_head(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\nrest")
            .unwrap()
            .unwrap();
        assert_eq!(h.status, 200);
        assert!(matches!(h.framing, Framing::Chunked(_)));
        assert!(h.keep_alive);
        assert_eq!(h.len, 80);
        let h = parse_head(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Busy\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbusy")
            .unwrap()
            .unwrap();
        assert_eq!(h.status, 503);
        assert!(matches!(h.framing, Framing::Length(4)));
        assert!(!h.keep_alive);
        let h = parse_head(b"HTTP/1.0 200 OK\r\n\r\n").unwrap().unwrap();
        assert!(matches!(h.framing, Framing::Close));
        assert!(!h.keep_alive);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-")
            .unwrap()
            .is_none());
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
    }

    #[test]
    fn target_from_base() {
        let h = reqwest::header::HeaderMap::new();
        let t = Target::for_base("http://127.0.0.1:8000/proxy/v1", &h).unwrap();
        assert_eq!(t.authority, "127.0.0.1:8000");
        assert_eq!(t.host_header, "127.0.0.1:8000");
        assert_eq!(t.path_prefix, "/proxy/v1");
        let req = String::from_utf8(t.request("chat/completions", b"{}")).unwrap();
        assert!(
            req.starts_with("POST /proxy/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n")
        );
        assert!(req.ends_with("Content-Length: 2\r\n\r\n{}"));
        let t = Target::for_base("http://[::1]/v1", &h).unwrap();
        assert_eq!(t.authority, "[::1]:80");
        assert_eq!(t.host_header, "[::1]");
        assert!(Target::for_base("https://h/v1", &h).is_none());
        assert!(Target::for_base("http://u:p@h/v1", &h).is_none());
    }

    /// On Linux a read carries the kernel's receive time: after the peer wrote, before the read
    /// returned. (The kernel turns timestamping on for the whole machine a moment after the
    /// first socket asks, so the first connection only asks, and the second is measured.)
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn reads_carry_the_kernel_receive_time() {
        use tokio::io::AsyncWriteExt;
        let real = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as i128
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let _first = Conn::connect(&addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut conn = Conn::connect(&addr).await.unwrap();
        let (_, _) = listener.accept().await.unwrap();
        let (mut peer, _) = listener.accept().await.unwrap();
        let before = real();
        peer.write_all(b"data: x\n\n").await.unwrap();
        // Let the bytes wait in the socket: the timestamp must not be the read's.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut buf = ReadBuf::default();
        assert_eq!(conn.read_buf(&mut buf).await.unwrap(), 9);
        let after = real();
        let t = conn.rx_realtime_ns().expect("a receive timestamp on Linux");
        assert!(
            before <= t && t + 10_000_000 < after,
            "{before} {t} {after}"
        );
        drop(peer);
        buf.clear();
        assert_eq!(conn.read_buf(&mut buf).await.unwrap(), 0);
    }

    proptest! {
        #[test]
        fn split_anywhere_decodes_the_same(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..8),
            ext in any::<bool>(), upper in any::<bool>(), trailer in any::<bool>(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            let body = encode(&payloads, ext, upper, trailer);
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(body.len() + 1)).collect();
            points.sort_unstable();
            let mut pieces: Vec<&[u8]> = Vec::new();
            let mut last = 0;
            for p in points {
                pieces.push(&body[last..p]);
                last = p;
            }
            pieces.push(&body[last..]);
            let (out, done) = decode_all(&pieces).unwrap();
            prop_assert_eq!(out, payloads.concat());
            prop_assert!(done);
            let bytes: Vec<&[u8]> = body.chunks(1).collect();
            prop_assert_eq!(decode_all(&bytes).unwrap().0, payloads.concat());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_all(&[&bytes]);
            let _ = parse_head(&bytes);
        }
    }
}
