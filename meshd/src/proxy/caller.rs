//! Finding who is calling a local listener: the uid that owns the caller's TCP socket, as the
//! kernel reports it in `/proc/net/tcp{,6}`, so a connection to a virtual IP (a 127.x address)
//! can be attributed to the local service registered with that `user`.
//!
//! Rows are `sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...`. The kernel prints
//! an IPv4 address as its four network-order bytes read as one native `u32` (`%08X`), so the
//! bytes are that number's `to_ne_bytes()`: on little-endian x86_64 127.0.0.1 reads `0100007F`.
//! An IPv6 address is four such words, each decoded the same way. Ports are plain big-endian
//! hex (`%04X`). A socket no process holds any more (TIME_WAIT, or closed and orphaned) has
//! inode 0 and reports uid 0 whoever owned it; such rows are skipped rather than read as root.
//!
//! Each lookup reads a file with one `std::fs::read` and scans its bytes without allocating
//! per row.

use std::net::{IpAddr, SocketAddr};

/// An address as compared here: IPv4 in its v4-mapped IPv6 form, so a row in either file
/// matches an address of either family.
type Key = ([u8; 16], u16);

fn key(addr: SocketAddr) -> Key {
    let ip = match addr.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    (ip.octets(), addr.port())
}

/// The uid owning the local TCP socket whose own address is `peer` and whose remote address
/// is `local`: the client side of a connection this host accepted with `local_addr() ==
/// local` and `peer_addr() == peer`. Looks in the file of the caller's family first, then in
/// the other one where an IPv4 caller can appear (a dual-stack socket lists as
/// `::ffff:a.b.c.d` in `tcp6`; an IPv4 socket calling a dual-stack listener lists in `tcp`).
/// `Ok(None)` when no such socket is listed (the caller is on another host, or gone).
pub fn socket_uid(local: SocketAddr, peer: SocketAddr) -> std::io::Result<Option<u32>> {
    let v4 = match peer.ip() {
        IpAddr::V4(_) => true,
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some(),
    };
    let files: &[&str] = match (peer, v4) {
        (SocketAddr::V4(_), _) => &["/proc/net/tcp", "/proc/net/tcp6"],
        (SocketAddr::V6(_), true) => &["/proc/net/tcp6", "/proc/net/tcp"],
        (SocketAddr::V6(_), false) => &["/proc/net/tcp6"],
    };
    for file in files {
        let text = match std::fs::read(file) {
            Ok(text) => text,
            // No IPv6 (or no IPv4) in this kernel: nothing listed there.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if let Some(uid) = find_uid_in(&text, key(peer), key(local)) {
            return Ok(Some(uid));
        }
    }
    Ok(None)
}

/// In the text of `/proc/net/tcp` or `tcp6`, the uid of the row whose local address is
/// `local_of_socket` and remote address `remote_of_socket` (an IPv4 address also matches its
/// v4-mapped form). Rows of sockets no process holds (inode 0) and malformed rows are skipped.
/// (The tests' entry point; [`socket_uid`] scans the file's bytes directly.)
#[cfg(test)]
pub fn find_uid(
    proc_text: &str,
    local_of_socket: SocketAddr,
    remote_of_socket: SocketAddr,
) -> Option<u32> {
    find_uid_in(
        proc_text.as_bytes(),
        key(local_of_socket),
        key(remote_of_socket),
    )
}

fn find_uid_in(text: &[u8], local: Key, remote: Key) -> Option<u32> {
    // The first line is the header; it never parses as a row.
    text.split(|&b| b == b'\n')
        .skip(1)
        .find_map(|line| row_uid(line, local, remote))
}

/// The uid of one row if its two ends are `local` and `remote` and a process holds it.
fn row_uid(line: &[u8], local: Key, remote: Key) -> Option<u32> {
    let mut fields = line
        .split(|b| b.is_ascii_whitespace())
        .filter(|f| !f.is_empty());
    let _sl = fields.next()?;
    if parse_addr(fields.next()?)? != local || parse_addr(fields.next()?)? != remote {
        return None;
    }
    // st, tx:rx, tr:when, retrnsmt, then uid, timeout, inode.
    let uid = decimal(fields.nth(4)?)?;
    let inode: u64 = decimal(fields.nth(1)?)?;
    (inode != 0).then_some(uid)
}

/// `0100007F:1F90` → 127.0.0.1:8080 (on a little-endian host), or the 32-hex-digit IPv6 form,
/// as a [`Key`].
fn parse_addr(field: &[u8]) -> Option<Key> {
    let colon = field.iter().position(|&b| b == b':')?;
    let (ip, port) = (&field[..colon], &field[colon + 1..]);
    if port.len() != 4 {
        return None;
    }
    let port = u16::try_from(hex(port)?).ok()?;
    let mut bytes = [0u8; 16];
    match ip.len() {
        8 => {
            bytes[10] = 0xff;
            bytes[11] = 0xff;
            bytes[12..].copy_from_slice(&hex(ip)?.to_ne_bytes());
        }
        32 => {
            for (word, out) in ip.chunks_exact(8).zip(bytes.chunks_exact_mut(4)) {
                out.copy_from_slice(&hex(word)?.to_ne_bytes());
            }
        }
        _ => return None,
    }
    Some((bytes, port))
}

/// Up to eight hex digits as a number.
fn hex(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    digits.iter().try_fold(0u32, |n, &b| {
        let d = char::from(b).to_digit(16)?;
        Some(n << 4 | d)
    })
}

/// A decimal number that fits a `u64` (inodes) or `u32` (uids, via `try_from`).
fn decimal<T: TryFrom<u64>>(digits: &[u8]) -> Option<T> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let n = digits.iter().try_fold(0u64, |n, &b| {
        let d = char::from(b).to_digit(10)?;
        Some(n * 10 + u64::from(d))
    })?;
    T::try_from(n).ok()
}

/// A registration's `user` as a uid: a decimal number is the uid itself, a name is looked up
/// in `/etc/passwd` (`name:x:uid:...`; the `nix` user database calls need a feature this
/// crate doesn't enable, and users only known to other NSS sources are not found).
pub fn resolve_user(user: &str) -> Result<u32, String> {
    if !user.is_empty() && user.bytes().all(|b| b.is_ascii_digit()) {
        return user
            .parse::<u32>()
            .map_err(|e| format!("user {user:?} is not a valid uid: {e}"));
    }
    let passwd = std::fs::read_to_string("/etc/passwd")
        .map_err(|e| format!("reading /etc/passwd to find user {user:?}: {e}"))?;
    passwd_uid(&passwd, user).ok_or_else(|| format!("no user {user:?} in /etc/passwd"))
}

/// The uid of `user` in the text of `/etc/passwd`.
fn passwd_uid(passwd: &str, user: &str) -> Option<u32> {
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        if f.next()? != user {
            return None;
        }
        f.nth(1)?.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 11 1 0
   1: 0100007F:C350 0164647F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 12 1 0
   2: 0164647F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000   999        0 13 1 0
   3: 0100007F:C351 0164647F:1F90 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0000000000000000FFFF00000100007F:D431 0000000000000000FFFF00000164647F:1F90 01 00000000:00000000 00:00000000 00000000 65534        0 21 1 0
   1: 00000000000000000000000001000000:0050 00000000000000000000000001000000:D000 01 00000000:00000000 00:00000000 00000000    33        0 22 1 0
";

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    #[test]
    fn rows_are_matched_by_both_ends() {
        let caller = a("127.0.0.1:50000");
        let vip = a("127.100.100.1:8080");
        assert_eq!(find_uid(TCP, caller, vip), Some(1000));
        // The other direction is the accepting side's row.
        assert_eq!(find_uid(TCP, vip, caller), Some(999));
        assert_eq!(find_uid(TCP, a("127.0.0.1:8080"), a("0.0.0.0:0")), Some(0));
        assert_eq!(find_uid(TCP, a("127.0.0.1:50002"), vip), None);
        assert_eq!(find_uid(TCP, caller, a("127.100.100.1:8081")), None);
        // TIME_WAIT: no process holds it, its uid 0 is not the owner's.
        assert_eq!(find_uid(TCP, a("127.0.0.1:50001"), vip), None);
        // An IPv4 connection from a dual-stack socket, listed in tcp6 as v4-mapped, found by
        // either form of the addresses.
        assert_eq!(find_uid(TCP6, a("127.0.0.1:54321"), vip), Some(65534));
        assert_eq!(
            find_uid(
                TCP6,
                a("[::ffff:127.0.0.1]:54321"),
                a("[::ffff:127.100.100.1]:8080")
            ),
            Some(65534)
        );
        // And an IPv4 row found by the v4-mapped form (an IPv4 caller of a dual-stack listener).
        assert_eq!(
            find_uid(
                TCP,
                a("[::ffff:127.0.0.1]:50000"),
                a("[::ffff:127.100.100.1]:8080")
            ),
            Some(1000)
        );
        assert_eq!(find_uid(TCP6, a("[::1]:80"), a("[::1]:53248")), Some(33));
        assert_eq!(find_uid(TCP6, a("[::1]:80"), a("[::1]:53249")), None);
    }

    #[test]
    fn malformed_text_finds_nothing() {
        let (x, y) = (a("127.0.0.1:1"), a("127.0.0.1:2"));
        assert_eq!(find_uid("", x, y), None);
        assert_eq!(find_uid("garbage\nnot a row\n\n   0:\n", x, y), None);
        let row = "h\n 0: 0100007F:0001 0100007F:0002 01 0:0 0:0 0";
        assert_eq!(find_uid(row, x, y), None);
        assert_eq!(find_uid(&format!("{row} uid 0 5"), x, y), None);
        assert_eq!(find_uid(&format!("{row} 99999999999 0 5"), x, y), None);
        assert_eq!(find_uid(&format!("{row} 7 0 5"), x, y), Some(7));
        let bad_hex = "h\n 0: 0100007G:0001 0100007F:0002 01 0:0 0:0 0 7 0 5";
        assert_eq!(find_uid(bad_hex, x, y), None);
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
    }

    #[test]
    fn an_address_with_no_socket_is_none() {
        // Port 1 to port 2 on an address nothing here uses.
        let none = socket_uid(a("127.3.2.1:1"), a("127.3.2.1:2")).expect("read /proc");
        assert_eq!(none, None);
        let none = socket_uid(a("[::1]:1"), a("[::1]:2")).expect("read /proc");
        assert_eq!(none, None);
    }

    #[test]
    fn users_resolve_by_number_or_name() {
        assert_eq!(resolve_user("0"), Ok(0));
        assert_eq!(resolve_user("1000"), Ok(1000));
        assert_eq!(resolve_user("root"), Ok(0));
        let e = resolve_user("no-such-user-xyz").expect_err("unknown");
        assert!(e.contains("no-such-user-xyz"), "{e}");
        assert!(resolve_user("99999999999").is_err());
        let passwd = "# comment\nroot:x:0:0:root:/root:/bin/sh\nsvc:x:1234:1234::/:/bin/false\n";
        assert_eq!(passwd_uid(passwd, "svc"), Some(1234));
        assert_eq!(passwd_uid(passwd, "sv"), None);
        assert_eq!(passwd_uid(passwd, "x"), None);
    }
}
