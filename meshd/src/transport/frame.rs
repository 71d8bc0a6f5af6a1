//! Length-prefixed JSON frames on QUIC streams: a big-endian `u32` length, then that many
//! bytes of serde_json. Every message between hosts (Raft RPC, agent RPC, watch stream,
//! enrollment) is one frame; a frame over [`MAX_FRAME`] or that does not decode is an error that
//! names the cause, and the stream is dropped.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest frame accepted: a snapshot install or a restore carries the whole registry.
pub const MAX_FRAME: usize = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("stream ended inside a frame")]
    Truncated,
    #[error("undecodable frame: {0}")]
    Decode(#[from] serde_json::Error),
    /// The message says why the connection was lost (a peer refusing our certificate closes
    /// it with a TLS alert right after the handshake).
    #[error("stream write: {0}")]
    Write(String),
    #[error("stream read: {0}")]
    Read(String),
    #[error("stream closed: {0}")]
    Closed(#[from] quinn::ClosedStream),
}

impl From<quinn::WriteError> for FrameError {
    fn from(e: quinn::WriteError) -> Self {
        FrameError::Write(match e {
            quinn::WriteError::ConnectionLost(c) => format!("connection lost: {c}"),
            other => other.to_string(),
        })
    }
}

impl From<quinn::ReadError> for FrameError {
    fn from(e: quinn::ReadError) -> Self {
        FrameError::Read(match e {
            quinn::ReadError::ConnectionLost(c) => format!("connection lost: {c}"),
            other => other.to_string(),
        })
    }
}

/// A frame body above this size is encoded and decoded on the blocking pool, so a large
/// snapshot does not stall the async workers (and with them Raft heartbeats).
pub const LARGE_FRAME: usize = 1024 * 1024;

/// Encodes one frame: the length prefix and the JSON body.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; 4];
    serde_json::to_writer(&mut out, msg)?;
    let body = out.len() - 4;
    if body > MAX_FRAME {
        return Err(FrameError::TooLarge(body));
    }
    let len = u32::try_from(body).map_err(|_| FrameError::TooLarge(body))?;
    out[..4].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// Writes one frame.
pub async fn write_frame<T: Serialize>(
    send: &mut quinn::SendStream,
    msg: &T,
) -> Result<(), FrameError> {
    write_encoded(send, &encode(msg)?).await
}

/// Writes a frame made by [`encode`].
pub async fn write_encoded(send: &mut quinn::SendStream, frame: &[u8]) -> Result<(), FrameError> {
    send.write_all(frame).await?;
    Ok(())
}

/// Reads one frame; `None` when the stream ended cleanly before a new frame began. A large
/// body is decoded on the blocking pool.
pub async fn read_frame<T: DeserializeOwned + Send + 'static>(
    recv: &mut quinn::RecvStream,
) -> Result<Option<T>, FrameError> {
    let Some(body) = read_body(recv).await? else {
        return Ok(None);
    };
    if body.len() < LARGE_FRAME {
        return Ok(Some(serde_json::from_slice(&body)?));
    }
    match tokio::task::spawn_blocking(move || serde_json::from_slice::<T>(&body)).await {
        Ok(r) => Ok(Some(r?)),
        Err(e) => Err(FrameError::Read(format!("decoding task failed: {e}"))),
    }
}

async fn read_body(recv: &mut quinn::RecvStream) -> Result<Option<Vec<u8>>, FrameError> {
    let mut len = [0u8; 4];
    match read_exact_or_eof(recv, &mut len).await? {
        0 => return Ok(None),
        4 => {}
        _ => return Err(FrameError::Truncated),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    if read_exact_or_eof(recv, &mut body).await? != len {
        return Err(FrameError::Truncated);
    }
    Ok(Some(body))
}

/// Fills `buf` unless the stream ends first; returns how many bytes were read.
async fn read_exact_or_eof(
    recv: &mut quinn::RecvStream,
    buf: &mut [u8],
) -> Result<usize, FrameError> {
    let mut filled = 0;
    while filled < buf.len() {
        match recv.read(&mut buf[filled..]).await? {
            Some(n) => filled += n,
            None => break,
        }
    }
    Ok(filled)
}
