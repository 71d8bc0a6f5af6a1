//! Bodies across a tunnel stream: a body's frames written to the stream as they come
//! ([`pump`], [`pump_delimited`]), and a body read back from the stream's frames ([`framed`],
//! [`framed_then`]). Nothing is gathered whole: each side holds at most one chunk; QUIC's flow
//! control holds a fast sender.

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use tokio::io::AsyncRead;

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use super::frame::{self, Frame, FrameReader};
use super::{Body, BoxError};

/// The error code of a stream reset for an aborted message.
pub const RESET: u32 = 0x10;

/// How writing a body ended.
#[derive(Debug, thiserror::Error)]
pub enum PumpError {
    #[error("the body failed: {0}")]
    Body(BoxError),
    #[error("the stream refused the bytes: {0}")]
    Stream(#[from] quinn::WriteError),
}

/// Writes `body` to `send` as DATA and TRAILERS frames, then finishes the stream; a body
/// error resets the stream instead (the receiver sees an aborted message).
pub async fn pump(body: Body, send: &mut quinn::SendStream) -> Result<u64, PumpError> {
    let (bytes, _) = pump_frames(body, send, false).await?;
    let _ = send.finish();
    Ok(bytes)
}

/// As [`pump`], for a stream that carries more messages: the message ends with its trailers,
/// its last data (when the body says it is) or an `END` frame, and the stream stays open.
pub async fn pump_delimited(body: Body, send: &mut quinn::SendStream) -> Result<u64, PumpError> {
    let (bytes, ended) = pump_frames(body, send, true).await?;
    if !ended {
        send.write_all(&frame::END_FRAME).await?;
    }
    Ok(bytes)
}

/// The body's frames; its byte count and whether a frame ended the message (trailers, or,
/// `delimited`, data the body said was its last).
async fn pump_frames(
    mut body: Body,
    send: &mut quinn::SendStream,
    delimited: bool,
) -> Result<(u64, bool), PumpError> {
    let mut bytes = 0u64;
    while let Some(f) = body.frame().await {
        let f = match f {
            Ok(f) => f,
            Err(e) => {
                let _ = send.reset(RESET.into());
                return Err(PumpError::Body(e));
            }
        };
        match f.into_data() {
            Ok(data) => {
                if data.is_empty() {
                    continue;
                }
                bytes += data.len() as u64;
                let last = delimited && http_body::Body::is_end_stream(&body);
                let header = if last {
                    frame::data_last_header(data.len())
                } else {
                    frame::data_header(data.len())
                };
                send.write_all(&header).await?;
                send.write_chunk(data).await?;
                if last {
                    return Ok((bytes, true));
                }
            }
            Err(f) => {
                if let Ok(t) = f.into_trailers() {
                    send.write_all(&frame::trailers(&t)).await?;
                    return Ok((bytes, true));
                }
            }
        }
    }
    Ok((bytes, false))
}

/// The body that follows the head in `reader`: DATA frames as data, TRAILERS as trailers,
/// the stream's finish as the end, a reset or malformed frame as an error.
pub fn framed<R>(reader: FrameReader<R>) -> Body
where
    R: AsyncRead + Unpin + Send + 'static,
{
    framed_then(reader, drop)
}

/// As [`framed`], and the reader goes to `then` at the message's end (a delimited reader's
/// stream carries the next message). A body whose last frame says so reports its end at once
/// (`is_end_stream`), so that a consumer that stops at a `Content-Length` still hands the
/// stream on. A body dropped before its end, or one that fails, drops `then` with the reader:
/// that stream is not used again.
pub fn framed_then<R, F>(reader: FrameReader<R>, then: F) -> Body
where
    R: AsyncRead + Unpin + Send + 'static,
    F: FnOnce(FrameReader<R>) + Send + 'static,
{
    let ended = Arc::new(AtomicBool::new(false));
    let seen = ended.clone();
    let frames = futures_util::stream::unfold(Some((reader, then)), move |state| {
        let ended = ended.clone();
        async move {
            let (mut reader, then) = state?;
            let frame = match reader.next().await {
                Ok(Some(Frame::Data(d))) => http_body::Frame::data(d),
                Ok(Some(Frame::Trailers(t))) => http_body::Frame::trailers(t),
                Ok(Some(Frame::Head(_))) => {
                    return Some((Err(boxed_err("a second head frame")), None))
                }
                Ok(None) => {
                    ended.store(true, Ordering::Release);
                    then(reader);
                    return None;
                }
                Err(e) => return Some((Err(Box::new(e) as BoxError), None)),
            };
            if reader.message_ended() {
                reader.end_message();
                ended.store(true, Ordering::Release);
                then(reader);
                return Some((Ok(frame), None));
            }
            Some((Ok(frame), Some((reader, then))))
        }
    });
    EndAware {
        inner: StreamBody::new(frames).boxed_unsync(),
        ended: seen,
    }
    .boxed_unsync()
}

/// A body that reports its end as soon as its last frame was read.
struct EndAware {
    inner: Body,
    ended: Arc<AtomicBool>,
}

impl http_body::Body for EndAware {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }
}

fn boxed_err(s: &'static str) -> BoxError {
    s.into()
}

/// An empty body.
pub fn empty() -> Body {
    http_body_util::Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}
