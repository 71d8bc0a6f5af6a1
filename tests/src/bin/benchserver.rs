//! The backend of the data-plane benchmark (`tests/bench/mesh.sh`): a minimal HTTP/1.1
//! keep-alive server. `GET /bulk` answers `BULK_BYTES` (default 1 GiB) of body; anything else
//! a 100-byte body. `benchserver ADDR` (for example `127.0.0.1:8080`).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SMALL_BODY: &[u8; 100] = b"0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789";
const CHUNK: usize = 256 * 1024;

fn main() -> std::process::ExitCode {
    let Some(addr) = std::env::args().nth(1) else {
        eprintln!("usage: benchserver IP:PORT");
        return std::process::ExitCode::from(2);
    };
    let bulk: u64 = std::env::var("BULK_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("benchserver: runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let listener = match TcpListener::bind(&addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("benchserver: bind {addr}: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        loop {
            match listener.accept().await {
                Ok((conn, _)) => {
                    tokio::spawn(serve(conn, bulk));
                }
                Err(e) => {
                    eprintln!("benchserver: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    })
}

/// Answers requests on one connection until the client closes it.
async fn serve(mut conn: TcpStream, bulk: u64) {
    let _ = conn.set_nodelay(true);
    let small = {
        let mut r = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
            SMALL_BODY.len()
        )
        .into_bytes();
        r.extend_from_slice(SMALL_BODY);
        r
    };
    let mut buf = vec![0u8; 16 * 1024];
    let mut have = 0usize;
    loop {
        // Every complete request head in the buffer gets its answer (pipelining works too).
        while let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
            let is_bulk = buf[..end].starts_with(b"GET /bulk");
            buf.copy_within(end + 4..have, 0);
            have -= end + 4;
            let ok = if is_bulk {
                send_bulk(&mut conn, bulk).await
            } else {
                conn.write_all(&small).await.is_ok()
            };
            if !ok {
                return;
            }
        }
        if have == buf.len() {
            return; // a head larger than 16 KiB: not a client of this benchmark
        }
        match conn.read(&mut buf[have..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => have += n,
        }
    }
}

async fn send_bulk(conn: &mut TcpStream, len: u64) -> bool {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n"
    );
    if conn.write_all(head.as_bytes()).await.is_err() {
        return false;
    }
    let chunk = vec![0x5au8; CHUNK];
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        if conn.write_all(&chunk[..n]).await.is_err() {
            return false;
        }
        left -= n as u64;
    }
    true
}
