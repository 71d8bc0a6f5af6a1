//! Bodies across a tunnel stream: a body's frames written to the stream as they come
//! ([`pump`]), and a body read back from the stream's frames ([`framed`]). Nothing is gathered
//! whole: each side holds at most one chunk; QUIC's flow control holds a fast sender.

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use tokio::io::AsyncRead;

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
pub async fn pump(mut body: Body, send: &mut quinn::SendStream) -> Result<u64, PumpError> {
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
                send.write_all(&frame::data_header(data.len())).await?;
                send.write_chunk(data).await?;
            }
            Err(f) => {
                if let Ok(t) = f.into_trailers() {
                    send.write_all(&frame::trailers(&t)).await?;
                }
            }
        }
    }
    let _ = send.finish();
    Ok(bytes)
}

/// The body that follows the head in `reader`: DATA frames as data, TRAILERS as trailers,
/// the stream's finish as the end, a reset or malformed frame as an error.
pub fn framed<R>(reader: FrameReader<R>) -> Body
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let frames = futures_util::stream::unfold(Some(reader), |state| async move {
        let mut reader = state?;
        match reader.next().await {
            Ok(Some(Frame::Data(d))) => Some((Ok(http_body::Frame::data(d)), Some(reader))),
            Ok(Some(Frame::Trailers(t))) => Some((Ok(http_body::Frame::trailers(t)), Some(reader))),
            Ok(Some(Frame::Head(_))) => Some((Err(boxed_err("a second head frame")), None)),
            Ok(None) => None,
            Err(e) => Some((Err(Box::new(e) as BoxError), None)),
        }
    });
    StreamBody::new(frames).boxed_unsync()
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
