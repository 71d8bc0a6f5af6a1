//! HTTP exchanges on tunnel streams: the framing both hosts speak after the tunnel header and
//! answer, for one exchange per stream ([`Mode::Http`](crate::proxy::tunnel::Mode)) or
//! several in turn ([`Mode::Exchanges`](crate::proxy::tunnel::Mode)).
//!
//! Each message (a request, or its response) is a sequence of frames,
//! `type (u8) | length (u32, big endian) | payload`:
//! - `HEAD` (1), first and once: a request's method, path-and-query and headers, or a
//!   response's status and headers; and whether a body follows (a message without one ends
//!   with its head: gRPC's trailers-only responses must reach the caller as one HTTP/2
//!   `HEADERS` frame with `END_STREAM`);
//! - `DATA` (0), any number: body bytes, passed on as they arrive (never gathered whole);
//! - `TRAILERS` (2), at most once, last: trailer fields (gRPC's status travels in them).
//!
//! With one exchange per stream, the sender's stream finish ends its message. With several,
//! a message ends with a head that says no body follows, with its trailers, with a `LAST`
//! data frame (4: the body's last bytes, when the sender knows them to be last) or with an
//! `END` frame (3, empty); a finish between messages ends the stream's exchanges, one inside a
//! message is an error. Either way a stream reset is an aborted message (the receiving host
//! resets its side in turn: HTTP/2 `RST_STREAM`, or an aborted HTTP/1.1 connection), and the
//! stream is not used again. A header block (name u8-length, value u16-length, count u16) is
//! at most [`MAX_HEAD`] bytes, allocated only after its length is checked; data is read in
//! chunks of at most [`CHUNK`] bytes, whatever length a frame declares.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The largest header or trailer block accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most body bytes read at once.
pub const CHUNK: usize = 64 * 1024;

const DATA: u8 = 0;
const HEAD: u8 = 1;
const TRAILERS: u8 = 2;
const END: u8 = 3;
const DATA_LAST: u8 = 4;

/// The frame that ends a message whose head said a body follows and that has no trailers
/// (several exchanges per stream only).
pub const END_FRAME: [u8; 5] = [END, 0, 0, 0, 0];

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("reading a frame: {0}")]
    Io(#[from] std::io::Error),
    #[error("unknown frame type {0}")]
    Type(u8),
    #[error("a {what} of {len} bytes is over the {MAX_HEAD}-byte limit")]
    TooLarge { what: &'static str, len: usize },
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("expected a HEAD frame first")]
    NoHead,
    #[error("a frame after the trailers")]
    AfterTrailers,
    #[error("the message ended before its head")]
    Ended,
    #[error("the stream finished inside a message")]
    Truncated,
}

/// A request's head as framed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Method,
    /// Path and query (origin form).
    pub path: String,
    pub headers: HeaderMap,
    /// No body follows.
    pub end: bool,
}

/// A response's head as framed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// No body follows.
    pub end: bool,
}

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn put_headers(out: &mut Vec<u8>, headers: &HeaderMap) {
    let n = headers.len().min(usize::from(u16::MAX));
    out.extend_from_slice(&(n as u16).to_be_bytes());
    for (name, value) in headers.iter().take(n) {
        let name = name.as_str().as_bytes();
        let value = value.as_bytes();
        out.push(name.len().min(255) as u8);
        out.extend_from_slice(&name[..name.len().min(255)]);
        let vlen = value.len().min(usize::from(u16::MAX));
        out.extend_from_slice(&(vlen as u16).to_be_bytes());
        out.extend_from_slice(&value[..vlen]);
    }
}

/// The frame of a request head.
pub fn request_head(head: &RequestHead) -> Vec<u8> {
    encode_request_head(&head.method, &head.path, &head.headers, head.end)
}

/// The frame of a request head, from its parts.
pub fn encode_request_head(method: &Method, path: &str, headers: &HeaderMap, end: bool) -> Vec<u8> {
    let mut p = Vec::with_capacity(256);
    let m = method.as_str().as_bytes();
    p.push(m.len().min(255) as u8);
    p.extend_from_slice(&m[..m.len().min(255)]);
    let path = path.as_bytes();
    let plen = path.len().min(usize::from(u16::MAX));
    p.extend_from_slice(&(plen as u16).to_be_bytes());
    p.extend_from_slice(&path[..plen]);
    p.push(u8::from(end));
    put_headers(&mut p, headers);
    frame(HEAD, &p)
}

/// The frame of a response head.
pub fn response_head(head: &ResponseHead) -> Vec<u8> {
    let mut p = Vec::with_capacity(256);
    p.extend_from_slice(&head.status.as_u16().to_be_bytes());
    p.push(u8::from(head.end));
    put_headers(&mut p, &head.headers);
    frame(HEAD, &p)
}

/// The header of a DATA frame of `len` bytes (the bytes follow it unframed).
pub fn data_header(len: usize) -> [u8; 5] {
    let mut h = [DATA, 0, 0, 0, 0];
    h[1..].copy_from_slice(&(len as u32).to_be_bytes());
    h
}

/// The header of a DATA frame of `len` bytes that ends its message (several exchanges per
/// stream only).
pub fn data_last_header(len: usize) -> [u8; 5] {
    let mut h = data_header(len);
    h[0] = DATA_LAST;
    h
}

pub fn trailers(t: &HeaderMap) -> Vec<u8> {
    let mut p = Vec::with_capacity(64);
    put_headers(&mut p, t);
    frame(TRAILERS, &p)
}

/// A parser over a payload.
struct Cursor<'a>(&'a [u8], &'static str);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.0.len() < n {
            return Err(FrameError::Malformed(self.1));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn headers(&mut self) -> Result<HeaderMap, FrameError> {
        let n = self.u16()?;
        let mut map = HeaderMap::with_capacity(usize::from(n).min(64));
        for _ in 0..n {
            let nl = usize::from(self.u8()?);
            let name = HeaderName::from_bytes(self.take(nl)?)
                .map_err(|_| FrameError::Malformed("header name"))?;
            let vl = usize::from(self.u16()?);
            let value = HeaderValue::from_bytes(self.take(vl)?)
                .map_err(|_| FrameError::Malformed("header value"))?;
            map.append(name, value);
        }
        if !self.0.is_empty() {
            return Err(FrameError::Malformed(self.1));
        }
        Ok(map)
    }
}

pub fn parse_request_head(p: &[u8]) -> Result<RequestHead, FrameError> {
    let mut c = Cursor(p, "request head");
    let ml = usize::from(c.u8()?);
    let method =
        Method::from_bytes(c.take(ml)?).map_err(|_| FrameError::Malformed("request method"))?;
    let pl = usize::from(c.u16()?);
    let path = std::str::from_utf8(c.take(pl)?)
        .map_err(|_| FrameError::Malformed("request path"))?
        .to_string();
    let end = c.u8()? != 0;
    let headers = c.headers()?;
    Ok(RequestHead {
        method,
        path,
        headers,
        end,
    })
}

pub fn parse_response_head(p: &[u8]) -> Result<ResponseHead, FrameError> {
    let mut c = Cursor(p, "response head");
    let status =
        StatusCode::from_u16(c.u16()?).map_err(|_| FrameError::Malformed("response status"))?;
    let end = c.u8()? != 0;
    let headers = c.headers()?;
    Ok(ResponseHead {
        status,
        headers,
        end,
    })
}

/// What [`FrameReader::next`] yields.
#[derive(Debug)]
pub enum Frame {
    Head(Bytes),
    Data(Bytes),
    Trailers(HeaderMap),
}

/// Reads frames from one direction of a stream.
pub struct FrameReader<R> {
    r: R,
    /// Body bytes of the current DATA frame still to read.
    left: usize,
    seen_head: bool,
    done: bool,
    /// Messages end with their own frames (several exchanges per stream).
    delimited: bool,
    /// The current DATA frame ends the message.
    last: bool,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader of one message, which the stream's finish ends.
    pub fn new(r: R) -> FrameReader<R> {
        FrameReader {
            r,
            left: 0,
            seen_head: false,
            done: false,
            delimited: false,
            last: false,
        }
    }

    /// A reader of messages one after another, each ending with its own frame.
    pub fn delimited(r: R) -> FrameReader<R> {
        FrameReader {
            delimited: true,
            ..FrameReader::new(r)
        }
    }

    /// Whether messages end with their own frames (several exchanges per stream).
    pub fn is_delimited(&self) -> bool {
        self.delimited
    }

    /// Ends the current message (its head said no body follows); the next frame read is the
    /// head of the next one.
    pub fn end_message(&mut self) {
        self.seen_head = false;
        self.done = false;
        self.left = 0;
        self.last = false;
    }

    /// Whether the frame just read ended the message (a delimited reader's trailers or last
    /// data): the message is whole, and [`end_message`](Self::end_message) readies the reader
    /// for the next one.
    pub fn message_ended(&self) -> bool {
        self.delimited && self.done && self.left == 0
    }

    /// The next frame (a DATA frame comes in chunks of at most [`CHUNK`]); `None` at the end
    /// of the message: the sender's finish, or (delimited) its last frame.
    pub async fn next(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.delimited && self.done && self.left == 0 {
            self.end_message();
            return Ok(None);
        }
        loop {
            if self.left > 0 {
                let n = self.left.min(CHUNK);
                let mut buf = BytesMut::zeroed(n);
                let got = self.r.read(&mut buf).await?;
                if got == 0 {
                    return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
                buf.truncate(got);
                self.left -= got;
                if self.left == 0 && self.last {
                    self.last = false;
                    self.done = true;
                }
                return Ok(Some(Frame::Data(buf.freeze())));
            }
            let mut h = [0u8; 5];
            match self.r.read(&mut h[..1]).await? {
                0 if self.delimited && self.seen_head => return Err(FrameError::Truncated),
                0 => return Ok(None),
                _ => self.r.read_exact(&mut h[1..]).await?,
            };
            if self.done {
                return Err(FrameError::AfterTrailers);
            }
            let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
            match h[0] {
                DATA if !self.seen_head => return Err(FrameError::NoHead),
                DATA => {
                    self.left = len;
                    continue;
                }
                DATA_LAST if self.delimited => {
                    if !self.seen_head {
                        return Err(FrameError::NoHead);
                    }
                    if len == 0 {
                        return Err(FrameError::Malformed("empty last data frame"));
                    }
                    self.left = len;
                    self.last = true;
                    continue;
                }
                HEAD | TRAILERS => {
                    let what = if h[0] == HEAD {
                        "head"
                    } else {
                        "trailer block"
                    };
                    if len > MAX_HEAD {
                        return Err(FrameError::TooLarge { what, len });
                    }
                    let mut p = vec![0u8; len];
                    self.r.read_exact(&mut p).await?;
                    if h[0] == HEAD {
                        if self.seen_head {
                            return Err(FrameError::Malformed("second head"));
                        }
                        self.seen_head = true;
                        return Ok(Some(Frame::Head(p.into())));
                    }
                    if !self.seen_head {
                        return Err(FrameError::NoHead);
                    }
                    self.done = true;
                    let t = Cursor(&p, "trailers").headers()?;
                    return Ok(Some(Frame::Trailers(t)));
                }
                END if self.delimited => {
                    if len != 0 {
                        return Err(FrameError::Malformed("end frame"));
                    }
                    if !self.seen_head {
                        return Err(FrameError::NoHead);
                    }
                    self.end_message();
                    return Ok(None);
                }
                other => return Err(FrameError::Type(other)),
            }
        }
    }

    /// The head frame's payload; an error if the stream starts otherwise.
    pub async fn head(&mut self) -> Result<Bytes, FrameError> {
        match self.next().await? {
            Some(Frame::Head(p)) => Ok(p),
            Some(_) => Err(FrameError::NoHead),
            None => Err(FrameError::Ended),
        }
    }

    pub fn into_inner(self) -> R {
        self.r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_garbage_is_an_error() {
        let mut headers = HeaderMap::new();
        headers.insert("x-canary", HeaderValue::from_static("1"));
        headers.append("set-cookie", HeaderValue::from_static("a=1"));
        headers.append("set-cookie", HeaderValue::from_static("b=2"));
        let req = RequestHead {
            method: Method::POST,
            path: "/api/v2/x?y=1".into(),
            headers: headers.clone(),
            end: false,
        };
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("14"));
        let mut wire = request_head(&req);
        wire.extend_from_slice(&data_header(100_000));
        wire.extend(std::iter::repeat_n(7u8, 100_000));
        wire.extend_from_slice(&trailers(&t));
        let mut r = FrameReader::new(wire.as_slice());
        let head = parse_request_head(&r.head().await.unwrap()).unwrap();
        assert_eq!(head, req);
        let mut body = 0;
        let got_trailers = loop {
            match r.next().await.unwrap() {
                Some(Frame::Data(d)) => {
                    assert!(d.len() <= CHUNK);
                    body += d.len();
                }
                Some(Frame::Trailers(t)) => break t,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!((body, got_trailers), (100_000, t));
        assert!(r.next().await.unwrap().is_none());

        let resp = ResponseHead {
            status: StatusCode::SERVICE_UNAVAILABLE,
            headers,
            end: true,
        };
        let w = response_head(&resp);
        let mut r = FrameReader::new(w.as_slice());
        assert_eq!(parse_response_head(&r.head().await.unwrap()).unwrap(), resp);

        // Cut anywhere: an error or a short message, never a panic.
        for cut in 0..wire.len().min(400) {
            let mut r = FrameReader::new(&wire[..cut]);
            while let Ok(Some(_)) = r.next().await {}
        }
        // A head over the limit is refused before anything is allocated for it.
        let big = [HEAD, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            FrameReader::new(&big[..]).next().await,
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            FrameReader::new(&[9u8, 0, 0, 0, 0][..]).next().await,
            Err(FrameError::Type(9))
        ));
        assert!(matches!(
            FrameReader::new(&data_header(1)[..]).next().await,
            Err(FrameError::NoHead)
        ));
        assert!(parse_request_head(&[3, b'G', b'E']).is_err());
        assert!(parse_response_head(&[0, 99, 0, 0, 0]).is_err());
    }

    #[tokio::test]
    async fn delimited_messages_follow_one_another_on_one_stream() {
        let req = |end| RequestHead {
            method: Method::GET,
            path: "/".into(),
            headers: HeaderMap::new(),
            end,
        };
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        let mut wire = request_head(&req(true));
        wire.extend_from_slice(&request_head(&req(false)));
        wire.extend_from_slice(&data_header(3));
        wire.extend_from_slice(b"abc");
        wire.extend_from_slice(&data_last_header(2));
        wire.extend_from_slice(b"de");
        wire.extend_from_slice(&request_head(&req(false)));
        wire.extend_from_slice(&data_header(1));
        wire.extend_from_slice(b"f");
        wire.extend_from_slice(&END_FRAME);
        wire.extend_from_slice(&request_head(&req(false)));
        wire.extend_from_slice(&trailers(&t));

        let mut r = FrameReader::delimited(wire.as_slice());
        // 1: a head that says no body follows.
        assert!(parse_request_head(&r.head().await.unwrap()).unwrap().end);
        r.end_message();
        // 2: data, then last data: the message ends with it.
        assert!(!parse_request_head(&r.head().await.unwrap()).unwrap().end);
        assert!(matches!(r.next().await.unwrap(), Some(Frame::Data(d)) if &d[..] == b"abc"));
        assert!(!r.message_ended());
        assert!(matches!(r.next().await.unwrap(), Some(Frame::Data(d)) if &d[..] == b"de"));
        assert!(r.message_ended());
        r.end_message();
        // 3: data, then an END frame.
        r.head().await.unwrap();
        assert!(matches!(r.next().await.unwrap(), Some(Frame::Data(d)) if &d[..] == b"f"));
        assert!(r.next().await.unwrap().is_none());
        // 4: trailers end it.
        r.head().await.unwrap();
        assert!(matches!(r.next().await.unwrap(), Some(Frame::Trailers(x)) if x == t));
        assert!(r.message_ended());
        assert!(r.next().await.unwrap().is_none());
        // The finish between messages ends the stream's exchanges.
        assert!(matches!(r.head().await, Err(FrameError::Ended)));

        // A finish inside a message is an error, not an end.
        let mut cut = request_head(&req(false));
        cut.extend_from_slice(&data_header(1));
        cut.extend_from_slice(b"x");
        let mut r = FrameReader::delimited(cut.as_slice());
        r.head().await.unwrap();
        r.next().await.unwrap();
        assert!(matches!(r.next().await, Err(FrameError::Truncated)));
        // END and last data belong to delimited streams only; an empty last frame is bad.
        let mut one = request_head(&req(false));
        one.extend_from_slice(&END_FRAME);
        let mut r = FrameReader::new(one.as_slice());
        r.head().await.unwrap();
        assert!(matches!(r.next().await, Err(FrameError::Type(3))));
        let mut empty = request_head(&req(false));
        empty.extend_from_slice(&data_last_header(0));
        let mut r = FrameReader::delimited(empty.as_slice());
        r.head().await.unwrap();
        assert!(matches!(r.next().await, Err(FrameError::Malformed(_))));
    }
}
