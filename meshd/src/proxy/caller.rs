//! Finding who is calling a local listener: the uid that owns the caller's TCP socket, as the
//! kernel reports it in `/proc/net/tcp{,6}`, so a connection to a virtual IP (a 127.x address)
//! can be attributed to the local service registered with that `user`.
//!
//! The kernel prints an IPv4 address as the 32-bit value of its network-order bytes read as a
//! native integer (`%08X`), so on little-endian hosts 127.0.0.1 reads `0100007F`; an IPv6
//! address is four such words. Ports are plain big-endian hex. Rows are
//! `sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The uid owning the local TCP socket whose own address is `peer` and whose remote address
/// is `local`: the client side of a connection this host accepted with `local_addr() ==
/// local` and `peer_addr() == peer`. `Ok(None)` when no such socket is listed (the caller is
/// on another host, or gone).
pub fn socket_uid(local: SocketAddr, peer: SocketAddr) -> std::io::Result<Option<u32>> {
    let files: &[&str] = match peer {
        SocketAddr::V4(_) => &["/proc/net/tcp", "/proc/net/tcp6"],
        SocketAddr::V6(_) => &["/proc/net/tcp6"],
    };
    for f in files {
        let text = match std::fs::read(f) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if let Some(uid) = find_uid(&String::from_utf8_lossy(&text), peer, local) {
            return Ok(Some(uid));
        }
    }
    Ok(None)
}

/// In the text of `/proc/net/tcp` or `tcp6`, the uid of the row whose local address is
/// `local_of_socket` and remote address `remote_of_socket` (IPv4 rows also match their
/// v4-mapped form in `tcp6`).
pub fn find_uid(
    proc_text: &str,
    local_of_socket: SocketAddr,
    remote_of_socket: SocketAddr,
) -> Option<u32> {
    proc_text.lines().skip(1).find_map(|line| {
        let mut f = line.split_whitespace();
        let _sl = f.next()?;
        let local = parse_addr(f.next()?)?;
        let remote = parse_addr(f.next()?)?;
        if !same(local, local_of_socket) || !same(remote, remote_of_socket) {
            return None;
        }
        // st, tx:rx, tr:when, retrnsmt, then uid.
        f.nth(4)?.parse().ok()
    })
}

/// Whether two addresses are the same, an IPv4 one equal to its v4-mapped IPv6 form.
fn same(a: SocketAddr, b: SocketAddr) -> bool {
    let canon = |s: SocketAddr| match s.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), s.port()),
            None => s,
        },
        IpAddr::V4(_) => s,
    };
    canon(a) == canon(b)
}

/// `0100007F:1F90` → 127.0.0.1:8080 (little-endian host), and the 32-hex-digit IPv6 form.
fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |h: &str| u32::from_str_radix(h, 16).ok().map(u32::to_ne_bytes);
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(ip)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                chunk.copy_from_slice(&word(ip.get(i * 8..i * 8 + 8)?)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// A registration's `user` as a uid: a number is the uid itself, a name is looked up in
/// `/etc/passwd`.
pub fn resolve_user(user: &str) -> Result<u32, String> {
    if let Ok(uid) = user.parse::<u32>() {
        return Ok(uid);
    }
    let passwd = std::fs::read_to_string("/etc/passwd")
        .map_err(|e| format!("reading /etc/passwd to find user {user:?}: {e}"))?;
    passwd
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let uid = f.nth(1)?.parse::<u32>().ok()?;
            (name == user).then_some(uid)
        })
        .next()
        .ok_or_else(|| format!("no user {user:?} in /etc/passwd"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0
   1: 0100007F:C350 0164647F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 2 1 0
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0000000000000000FFFF00000100007F:D431 0000000000000000FFFF00000164647F:1F90 01 00000000:00000000 00:00000000 00000000 65534        0 3 1 0
   1: 00000000000000000000000001000000:0050 00000000000000000000000001000000:D000 01 00000000:00000000 00:00000000 00000000   33        0 4 1 0
";

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    #[test]
    fn rows_are_matched_by_both_ends() {
        assert_eq!(
            find_uid(TCP, a("127.0.0.1:50000"), a("127.100.100.1:8080")),
            Some(1000)
        );
        assert_eq!(find_uid(TCP, a("127.0.0.1:8080"), a("0.0.0.0:0")), Some(0));
        assert_eq!(
            find_uid(TCP, a("127.0.0.1:50001"), a("127.100.100.1:8080")),
            None
        );
        // An IPv4 connection from a dual-stack socket, listed in tcp6 as v4-mapped.
        assert_eq!(
            find_uid(TCP6, a("127.0.0.1:54321"), a("127.100.100.1:8080")),
            Some(65534)
        );
        assert_eq!(find_uid(TCP6, a("[::1]:80"), a("[::1]:53248")), Some(33));
        assert_eq!(
            find_uid("garbage\nnot a row\n", a("127.0.0.1:1"), a("127.0.0.1:2")),
            None
        );
    }

    #[test]
    fn a_real_loopback_connection_is_ours() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let _client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        let me = std::fs::read_to_string("/proc/self/status")
            .expect("status")
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u32>().ok())
            .expect("effective uid");
        let uid = socket_uid(
            accepted.local_addr().expect("local"),
            accepted.peer_addr().expect("peer"),
        )
        .expect("read /proc");
        assert_eq!(uid, Some(me));
        assert_eq!(
            socket_uid(a("127.0.0.1:1"), a("127.0.0.1:2")).expect("read /proc"),
            None
        );
    }

    #[test]
    fn users_resolve_by_number_or_name() {
        assert_eq!(resolve_user("0"), Ok(0));
        assert_eq!(resolve_user("root"), Ok(0));
        let e = resolve_user("no-such-user-xyz").expect_err("unknown");
        assert!(e.contains("no-such-user-xyz"), "{e}");
    }
}
