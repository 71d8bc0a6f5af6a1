//! An eBPF `sk_lookup` program that hands every TCP connection to a set of IPv4 prefixes (the
//! virtual-IP range), on any port, to one listening socket: the kernel runs it when it looks for
//! the socket a SYN belongs to, before its own listener lookup. The accepted connection's local
//! address is the one the caller dialled (`<virtual IP>:<port>`), so no NAT, no conntrack entry
//! and no `SO_ORIGINAL_DST` are involved.
//!
//! Three kernel objects, each held by a file descriptor of this process:
//! - `prefixes`: an LPM trie map, key `{prefix length: u32, IPv4 address: 4 bytes}`, value
//!   unused: the destinations to capture;
//! - `sockets`: a one-entry `SOCKMAP`, slot 0 holding the listener;
//! - the program and its link to this process's network namespace.
//!
//! The link is not pinned: when the process exits, however it exits (SIGKILL included), the
//! kernel closes its descriptors, detaches the program and frees the maps, so a crashed meshd
//! leaves nothing behind and a restarted one attaches afresh. Closing the listener removes it
//! from the map by itself.
//!
//! Needs Linux 5.9 or later, `CAP_BPF` (the program and the trie) and `CAP_NET_ADMIN` (the
//! socket map). The program is assembled here instruction by instruction (30 of them); the
//! loader is the `bpf(2)` system call, through `libc`. This file is the only one in meshd with
//! `unsafe` code: the system call reads and writes the buffers passed to it, each of which
//! lives across the call.

#![allow(unsafe_code)]

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A captured destination: an IPv4 network and its prefix length.
pub type Prefix = (Ipv4Addr, u8);

/// Why the program could not be set up or updated.
#[derive(Debug, thiserror::Error)]
pub enum SkLookupError {
    #[error("bpf({what}): {source}{}", hint(source))]
    Syscall {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("the kernel's verifier refused the sk_lookup program: {0}")]
    Verifier(String),
    #[error("opening this process's network namespace: {0}")]
    Netns(std::io::Error),
    #[error("{0} prefixes to capture is more than the map holds ({MAX_PREFIXES})")]
    TooManyPrefixes(usize),
}

fn hint(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            " (meshd needs CAP_BPF and CAP_NET_ADMIN to capture virtual IPs this way)"
        }
        Some(libc::ENOSYS) => " (this kernel has no bpf(2))",
        Some(libc::EINVAL) => " (Linux 5.9 or later is needed for sk_lookup)",
        Some(libc::E2BIG) => " (too many sk_lookup programs in this network namespace)",
        _ => "",
    }
}

/// Entries the prefix map holds: the range, plus addresses still held from earlier ranges.
pub const MAX_PREFIXES: usize = 4096;

// bpf(2) commands, map and program types, attach type (include/uapi/linux/bpf.h).
const BPF_MAP_CREATE: libc::c_int = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_int = 2;
const BPF_MAP_DELETE_ELEM: libc::c_int = 3;
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_LINK_CREATE: libc::c_int = 28;
const BPF_MAP_TYPE_LPM_TRIE: u32 = 11;
const BPF_MAP_TYPE_SOCKMAP: u32 = 15;
const BPF_F_NO_PREALLOC: u32 = 1;
const BPF_PROG_TYPE_SK_LOOKUP: u32 = 30;
const BPF_SK_LOOKUP: u32 = 36;

// Offsets in `struct bpf_sk_lookup`, the program's context.
const CTX_FAMILY: i16 = 8;
const CTX_PROTOCOL: i16 = 12;
const CTX_LOCAL_IP4: i16 = 40;

// Helpers the program calls.
const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
const HELPER_SK_RELEASE: i32 = 86;
const HELPER_SK_ASSIGN: i32 = 124;

/// `SK_PASS`: go on with the kernel's lookup (with the socket assigned, if one was).
const SK_PASS: i32 = 1;

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

/// One `bpf(2)` call; a new descriptor is returned as an owned one by [`bpf_fd`].
fn bpf<T>(what: &'static str, cmd: libc::c_int, attr: &mut T) -> Result<i64, SkLookupError> {
    // SAFETY: `attr` is a live, exclusively borrowed `repr(C)` value of the layout the kernel
    // expects for `cmd`, and its size is passed with it; every pointer stored in it (keys,
    // values, instructions, the log buffer, the license) is borrowed by the caller across
    // this call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(SkLookupError::Syscall {
            what,
            source: std::io::Error::last_os_error(),
        })
    } else {
        Ok(r)
    }
}

fn bpf_fd<T>(what: &'static str, cmd: libc::c_int, attr: &mut T) -> Result<OwnedFd, SkLookupError> {
    let fd = bpf(what, cmd, attr)?;
    // SAFETY: the kernel returned a new descriptor (opened close-on-exec) that nothing else
    // owns; the returned `OwnedFd` becomes its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Insn {
    code: u8,
    /// Destination register in the low nibble, source in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

// Opcodes used below (class | size/op | mode/source).
const MOV64_REG: u8 = 0x07 | 0xb0 | 0x08;
const MOV64_IMM: u8 = 0x07 | 0xb0;
const ADD64_IMM: u8 = 0x07;
const LDX_W: u8 = 0x01 | 0x60;
const ST_W: u8 = 0x02 | 0x60;
const STX_W: u8 = 0x03 | 0x60;
const LD_DW_IMM: u8 = 0x18;
const JNE_IMM: u8 = 0x05 | 0x50;
const JEQ_IMM: u8 = 0x05 | 0x10;
const CALL: u8 = 0x05 | 0x80;
const EXIT: u8 = 0x05 | 0x90;
/// `src_reg` of a 64-bit immediate load that holds a map's file descriptor.
const PSEUDO_MAP_FD: u8 = 1;
/// Marks a jump to the final `return SK_PASS` in [`program`] (resolved there).
const TO_PASS: i16 = i16::MIN;

/// The program, for the two maps' descriptors:
///
/// ```text
/// if ctx.family != AF_INET || ctx.protocol != IPPROTO_TCP: return SK_PASS
/// key = {32, ctx.local_ip4}
/// if prefixes.lookup(key) == NULL: return SK_PASS       // not a captured address
/// sk = sockets.lookup(0); if sk == NULL: return SK_PASS  // no listener yet
/// bpf_sk_assign(ctx, sk, 0); bpf_sk_release(sk)
/// return SK_PASS
/// ```
fn program(prefixes: RawFd, sockets: RawFd) -> Vec<Insn> {
    let mut p = vec![
        insn(MOV64_REG, 6, 1, 0, 0), // r6 = ctx
        insn(LDX_W, 2, 6, CTX_FAMILY, 0),
        insn(JNE_IMM, 2, 0, TO_PASS, libc::AF_INET),
        insn(LDX_W, 2, 6, CTX_PROTOCOL, 0),
        insn(JNE_IMM, 2, 0, TO_PASS, libc::IPPROTO_TCP),
        // The LPM key on the stack: prefix length 32 at fp-8, the address at fp-4 (network
        // order, as the context holds it).
        insn(LDX_W, 2, 6, CTX_LOCAL_IP4, 0),
        insn(STX_W, 10, 2, -4, 0),
        insn(ST_W, 10, 0, -8, 32),
    ];
    p.extend(lookup_or_pass(prefixes, -8));
    // Slot 0 of the socket map (key at fp-12).
    p.push(insn(ST_W, 10, 0, -12, 0));
    p.extend(lookup_or_pass(sockets, -12));
    p.extend([
        insn(MOV64_REG, 7, 0, 0, 0), // r7 = the socket (a reference to release)
        insn(MOV64_REG, 1, 6, 0, 0),
        insn(MOV64_REG, 2, 7, 0, 0),
        insn(MOV64_IMM, 3, 0, 0, 0),
        insn(CALL, 0, 0, 0, HELPER_SK_ASSIGN),
        insn(MOV64_REG, 1, 7, 0, 0),
        insn(CALL, 0, 0, 0, HELPER_SK_RELEASE),
    ]);
    let pass = p.len();
    for (at, i) in p.iter_mut().enumerate() {
        if i.off == TO_PASS {
            i.off = (pass - at - 1) as i16;
        }
    }
    p.push(insn(MOV64_IMM, 0, 0, 0, SK_PASS));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

/// `r0 = map.lookup(fp + key_at)`, then `return SK_PASS` when it found nothing.
fn lookup_or_pass(map: RawFd, key_at: i16) -> [Insn; 6] {
    [
        insn(LD_DW_IMM, 1, PSEUDO_MAP_FD, 0, map),
        insn(0, 0, 0, 0, 0),
        insn(MOV64_REG, 2, 10, 0, 0),
        insn(ADD64_IMM, 2, 0, 0, i32::from(key_at)),
        insn(CALL, 0, 0, 0, HELPER_MAP_LOOKUP_ELEM),
        insn(JEQ_IMM, 0, 0, TO_PASS, 0),
    ]
}

/// The LPM trie key of a prefix.
fn key(prefix: Prefix) -> [u8; 8] {
    let (net, len) = prefix;
    let mut k = [0u8; 8];
    k[..4].copy_from_slice(&u32::from(len).to_ne_bytes());
    k[4..].copy_from_slice(&net.octets());
    k
}

fn name(s: &str) -> [u8; 16] {
    let mut n = [0u8; 16];
    n[..s.len().min(15)].copy_from_slice(&s.as_bytes()[..s.len().min(15)]);
    n
}

/// The attached program and its maps; dropping it detaches the program.
pub struct SkLookup {
    prefixes: OwnedFd,
    sockets: OwnedFd,
    _prog: OwnedFd,
    _link: OwnedFd,
    /// What `prefixes` holds.
    installed: BTreeSet<Prefix>,
}

impl SkLookup {
    /// Loads the program and attaches it to this process's network namespace, capturing
    /// nothing until [`set_prefixes`](Self::set_prefixes) and [`steer_to`](Self::steer_to).
    pub fn attach() -> Result<SkLookup, SkLookupError> {
        let prefixes = bpf_fd(
            "create the prefix map",
            BPF_MAP_CREATE,
            &mut MapCreateAttr {
                map_type: BPF_MAP_TYPE_LPM_TRIE,
                key_size: 8,
                value_size: 4,
                max_entries: MAX_PREFIXES as u32,
                map_flags: BPF_F_NO_PREALLOC,
                map_name: name("meshd_vip"),
                ..Default::default()
            },
        )?;
        let sockets = bpf_fd(
            "create the socket map",
            BPF_MAP_CREATE,
            &mut MapCreateAttr {
                map_type: BPF_MAP_TYPE_SOCKMAP,
                key_size: 4,
                value_size: 8,
                max_entries: 1,
                map_name: name("meshd_listener"),
                ..Default::default()
            },
        )?;
        let insns = program(prefixes.as_raw_fd(), sockets.as_raw_fd());
        let license = c"GPL";
        let mut log = vec![0u8; 64 * 1024];
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_SK_LOOKUP,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 1,
            log_size: log.len() as u32,
            log_buf: log.as_mut_ptr() as u64,
            prog_name: name("meshd_capture"),
            expected_attach_type: BPF_SK_LOOKUP,
            ..Default::default()
        };
        let prog = match bpf_fd("load the sk_lookup program", BPF_PROG_LOAD, &mut attr) {
            Ok(p) => p,
            Err(SkLookupError::Syscall { source, .. })
                if source.raw_os_error() == Some(libc::EACCES) && log.iter().any(|b| *b != 0) =>
            {
                let text = String::from_utf8_lossy(&log);
                return Err(SkLookupError::Verifier(
                    text.trim_end_matches('\0').trim().to_string(),
                ));
            }
            Err(e) => return Err(e),
        };
        let netns = std::fs::File::open("/proc/self/ns/net").map_err(SkLookupError::Netns)?;
        let link = bpf_fd(
            "attach the sk_lookup program to the network namespace",
            BPF_LINK_CREATE,
            &mut LinkCreateAttr {
                prog_fd: prog.as_raw_fd() as u32,
                target_fd: netns.as_raw_fd() as u32,
                attach_type: BPF_SK_LOOKUP,
                flags: 0,
            },
        )?;
        Ok(SkLookup {
            prefixes,
            sockets,
            _prog: prog,
            _link: link,
            installed: BTreeSet::new(),
        })
    }

    /// Makes `listener` (a listening TCP socket) the one every captured connection goes to.
    pub fn steer_to(&self, listener: &impl AsRawFd) -> Result<(), SkLookupError> {
        let slot: u32 = 0;
        let fd: u64 = listener.as_raw_fd() as u64;
        bpf(
            "put the listener in the socket map",
            BPF_MAP_UPDATE_ELEM,
            &mut MapElemAttr {
                map_fd: self.sockets.as_raw_fd() as u32,
                key: &slot as *const u32 as u64,
                value: &fd as *const u64 as u64,
                ..Default::default()
            },
        )?;
        Ok(())
    }

    /// Makes the captured destinations exactly `want` (adds and removes the difference).
    pub fn set_prefixes(&mut self, want: &BTreeSet<Prefix>) -> Result<(), SkLookupError> {
        if want.len() > MAX_PREFIXES {
            return Err(SkLookupError::TooManyPrefixes(want.len()));
        }
        let gone: Vec<Prefix> = self.installed.difference(want).copied().collect();
        for p in gone {
            let k = key(p);
            match bpf(
                "remove a prefix",
                BPF_MAP_DELETE_ELEM,
                &mut MapElemAttr {
                    map_fd: self.prefixes.as_raw_fd() as u32,
                    key: k.as_ptr() as u64,
                    ..Default::default()
                },
            ) {
                Ok(_) => {}
                Err(SkLookupError::Syscall { source, .. })
                    if source.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
            self.installed.remove(&p);
        }
        let new: Vec<Prefix> = want.difference(&self.installed).copied().collect();
        for p in new {
            let k = key(p);
            let v: u32 = 1;
            bpf(
                "add a prefix",
                BPF_MAP_UPDATE_ELEM,
                &mut MapElemAttr {
                    map_fd: self.prefixes.as_raw_fd() as u32,
                    key: k.as_ptr() as u64,
                    value: &v as *const u32 as u64,
                    ..Default::default()
                },
            )?;
            self.installed.insert(p);
        }
        Ok(())
    }

    /// What is captured now.
    pub fn prefixes(&self) -> &BTreeSet<Prefix> {
        &self.installed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_jump_lands_on_the_final_pass() {
        let p = program(7, 8);
        assert_eq!(p.len(), 30);
        let pass = p.len() - 2;
        assert_eq!(p[pass], insn(MOV64_IMM, 0, 0, 0, SK_PASS));
        assert_eq!(p[pass + 1].code, EXIT);
        for (at, i) in p.iter().enumerate() {
            if i.code == JNE_IMM || i.code == JEQ_IMM {
                assert_eq!(
                    at as i64 + 1 + i64::from(i.off),
                    pass as i64,
                    "jump at {at}"
                );
            }
        }
        // The two map loads carry the descriptors, each followed by its second half.
        let loads: Vec<(usize, i32)> = p
            .iter()
            .enumerate()
            .filter(|(_, i)| i.code == LD_DW_IMM)
            .map(|(at, i)| (at, i.imm))
            .collect();
        assert_eq!(loads.iter().map(|l| l.1).collect::<Vec<_>>(), [7, 8]);
        for (at, _) in loads {
            assert_eq!(p[at].regs >> 4, PSEUDO_MAP_FD);
            assert_eq!(p[at + 1], insn(0, 0, 0, 0, 0));
        }
    }

    #[test]
    fn keys_are_length_then_network_order_address() {
        let k = key(("127.100.0.0".parse().unwrap(), 16));
        assert_eq!(&k[..4], &16u32.to_ne_bytes());
        assert_eq!(&k[4..], &[127, 100, 0, 0]);
    }

    /// The real thing, in this test process's network namespace (tests run as root): a
    /// listener on an ephemeral port gets the connections to a captured /16 on any port, with
    /// the dialled address as their local address; an address outside it is refused as usual;
    /// a removed prefix is no longer captured; dropping the program ends the capture.
    #[test]
    fn captured_connections_reach_the_one_listener_with_their_destination() {
        use std::io::{Read, Write};
        // Not the default range, so that a meshd running on this host is not disturbed.
        let net: Ipv4Addr = "127.251.0.0".parse().unwrap();
        let mut c = SkLookup::attach().expect("attach (tests run as root)");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        c.steer_to(&listener).unwrap();
        c.set_prefixes(&BTreeSet::from([(net, 16)])).unwrap();
        let server = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for _ in 0..2 {
                let (mut conn, _) = listener.accept().unwrap();
                seen.push(conn.local_addr().unwrap().to_string());
                conn.write_all(b"ok").unwrap();
            }
            seen
        });
        for to in ["127.251.3.4:80", "127.251.200.9:5432"] {
            let mut conn = std::net::TcpStream::connect(to).unwrap();
            let mut b = [0u8; 2];
            conn.read_exact(&mut b).unwrap();
            assert_eq!(&b, b"ok");
        }
        assert_eq!(
            server.join().unwrap(),
            ["127.251.3.4:80", "127.251.200.9:5432"]
        );
        // Outside the prefix, and (the listener gone) inside it: nothing listens there.
        let refused = |to: &str| {
            std::net::TcpStream::connect(to)
                .err()
                .map(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
        };
        assert_eq!(refused("127.252.0.1:80"), Some(true));
        assert_eq!(refused("127.251.3.4:80"), Some(true));
        // A /32 only, then nothing.
        let l2 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        c.steer_to(&l2).unwrap();
        c.set_prefixes(&BTreeSet::from([("127.251.0.7".parse().unwrap(), 32)]))
            .unwrap();
        assert_eq!(c.prefixes().len(), 1);
        assert!(std::net::TcpStream::connect("127.251.0.7:1").is_ok());
        assert_eq!(refused("127.251.0.8:1"), Some(true));
        drop(c);
        assert_eq!(refused("127.251.0.7:1"), Some(true));
    }

    #[test]
    fn names_are_cut_to_fifteen_bytes_and_nul_ended() {
        let n = name("a_very_long_program_name");
        assert_eq!(&n[..15], b"a_very_long_pro");
        assert_eq!(n[15], 0);
    }
}
