//! Hostile DNS input never crashes meshd and never stalls other clients.
//!
//! From a seeded RNG (`DNS_FUZZ_SEED`, printed; a fixed default), 10,000 UDP datagrams: random
//! bytes of random length (0..600), valid queries cut at random points, valid queries with
//! flipped bits, valid headers with absurd section counts, compression-pointer loops and
//! chains, bad labels and over-long names, odd opcodes, classes and types, malformed EDNS.
//! They go out in bursts from several sockets; after each burst a valid query from the same
//! socket must be answered (the server is still serving, having read the burst). Datagrams
//! that claim to be answers (QR=1) get no reply.
//!
//! Then a few hundred TCP connections: garbage then close, and connections that stall (nothing
//! sent, half a length prefix, a length prefix and part of a message, a huge length prefix).
//! While the stalled ones are open, dig over TCP and UDP and a raw TCP query are answered; the
//! server closes the stalled connections after its idle timeout; and at the end the process
//! is alive and answers dig.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::json;
use tests::dig::Dig;
use tests::Meshd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const DEFAULT_SEED: u64 = 0x6d65_7368_646e_7321;
const UDP_PACKETS: usize = 10_000;
const BURST: usize = 100;
const SENDERS: usize = 8;
/// How long a probe answer may take (per attempt; 3 attempts: UDP may drop under load).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const PROBE_ATTEMPTS: usize = 3;
/// The server's TCP idle timeout is 10 s; how long we wait for it to close a stalled
/// connection.
const IDLE_CLOSE_BOUND: Duration = Duration::from_secs(40);

const T_A: u16 = 1;
const T_NS: u16 = 2;
const T_SOA: u16 = 6;
const T_TXT: u16 = 16;
const T_AAAA: u16 = 28;
const T_SRV: u16 = 33;
const T_OPT: u16 = 41;
const T_IXFR: u16 = 251;
const T_AXFR: u16 = 252;
const T_ANY: u16 = 255;

const NAMES: &[&str] = &[
    "web.service.mesh",
    "_web._tcp.service.mesh",
    "v1.web.service.mesh",
    "fz1.node.mesh",
    "fz1.node.dc1.mesh",
    "7f000001.addr.dc1.mesh",
    "web.virtual.mesh",
    "web.service.dc1.mesh",
    "mesh",
    "ns.mesh",
    "nosuch.service.mesh",
    "example.org",
    "",
];

const QTYPES: &[u16] = &[
    T_A, T_AAAA, T_SRV, T_TXT, T_SOA, T_NS, T_ANY, T_AXFR, T_IXFR, T_OPT, 0, 65535, 99,
];

/// Wire form of a name (no compression); labels longer than 63 bytes are cut.
fn encode_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.split('.').filter(|l| !l.is_empty()) {
        let l = &label.as_bytes()[..label.len().min(63)];
        out.push(l.len() as u8);
        out.extend_from_slice(l);
    }
    out.push(0);
    out
}

fn header(id: u16, flags: u16, counts: [u16; 4]) -> Vec<u8> {
    let mut h = Vec::with_capacity(12);
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&flags.to_be_bytes());
    for c in counts {
        h.extend_from_slice(&c.to_be_bytes());
    }
    h
}

/// An OPT record: root owner, UDP size in the class, extended rcode/version/flags in the TTL.
fn opt(udp: u16, version: u8, rdata: &[u8]) -> Vec<u8> {
    let mut r = vec![0];
    r.extend_from_slice(&T_OPT.to_be_bytes());
    r.extend_from_slice(&udp.to_be_bytes());
    r.extend_from_slice(&[0, version, 0, 0]);
    r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    r.extend_from_slice(rdata);
    r
}

/// A well-formed query (RD set), with an OPT record when `edns` is given.
fn query(id: u16, name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
    let mut p = header(id, 0x0100, [1, 0, 0, u16::from(edns.is_some())]);
    p.extend(encode_name(name));
    p.extend_from_slice(&qtype.to_be_bytes());
    p.extend_from_slice(&1u16.to_be_bytes());
    if let Some(udp) = edns {
        p.extend(opt(udp, 0, &[]));
    }
    p
}

fn random_name(rng: &mut StdRng) -> String {
    if rng.random_bool(0.6) {
        return NAMES[rng.random_range(0..NAMES.len())].to_string();
    }
    let labels = rng.random_range(1..6);
    let mut parts = Vec::new();
    for _ in 0..labels {
        let len = rng.random_range(1..20);
        let s: String = (0..len)
            .map(|_| {
                let c = rng.random_range(0x21u8..0x7f);
                if c == b'.' {
                    '_'
                } else {
                    c as char
                }
            })
            .collect();
        parts.push(s);
    }
    if rng.random_bool(0.5) {
        parts.push("mesh".into());
    }
    parts.join(".")
}

fn random_query(rng: &mut StdRng) -> Vec<u8> {
    let name = random_name(rng);
    let qtype = QTYPES[rng.random_range(0..QTYPES.len())];
    let edns = rng
        .random_bool(0.5)
        .then(|| [0u16, 1, 512, 1232, 4096, 65535][rng.random_range(0..6)]);
    query(rng.random(), &name, qtype, edns)
}

fn random_bytes(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

/// One hostile datagram (never with QR set: those are checked separately).
fn fuzz_packet(rng: &mut StdRng) -> Vec<u8> {
    let mut p = match rng.random_range(0..10) {
        // Random bytes, random length.
        0 => {
            let len = rng.random_range(0..600);
            random_bytes(rng, len)
        }
        // A valid query cut at a random point.
        1 => {
            let q = random_query(rng);
            let cut = rng.random_range(0..q.len());
            q[..cut].to_vec()
        }
        // A valid header with absurd counts, a question, random bytes after it.
        2 => {
            let mut counts = [0u16; 4];
            for c in &mut counts {
                *c = [0xFFFF, 0x8000, 0x0100, 2, 0][rng.random_range(0..5)];
            }
            let mut p = header(rng.random(), 0x0100, counts);
            p.extend(encode_name(&random_name(rng)));
            p.extend_from_slice(&T_A.to_be_bytes());
            p.extend_from_slice(&1u16.to_be_bytes());
            let tail = rng.random_range(0..100);
            p.extend(random_bytes(rng, tail));
            p
        }
        // Compression pointers: loops, chains, out of range, in the question or a record.
        3 => compression_trap(rng),
        // A valid query with a few flipped bits.
        4 => {
            let mut q = random_query(rng);
            for _ in 0..rng.random_range(1..9) {
                let i = rng.random_range(0..q.len());
                q[i] ^= 1 << rng.random_range(0..8);
            }
            q
        }
        // Bad labels and over-long names.
        5 => bad_labels(rng),
        // Odd header bits: opcodes, no question, two questions, Z and rcode bits set.
        6 => {
            let opcode: u16 = rng.random_range(0..16);
            let flags = (opcode << 11) | (rng.random::<u16>() & 0x07FF);
            let qd = [0u16, 1, 2, 3][rng.random_range(0..4)];
            let mut p = header(rng.random(), flags, [qd, 0, 0, 0]);
            for _ in 0..qd.min(2) {
                p.extend(encode_name(&random_name(rng)));
                p.extend_from_slice(&QTYPES[rng.random_range(0..QTYPES.len())].to_be_bytes());
                p.extend_from_slice(&1u16.to_be_bytes());
            }
            p
        }
        // Malformed EDNS.
        7 => bad_edns(rng),
        // Odd classes and zone-transfer types.
        8 => {
            let mut p = header(rng.random(), 0x0100, [1, 0, 0, 0]);
            p.extend(encode_name(&random_name(rng)));
            let qtype = [T_AXFR, T_IXFR, T_ANY, T_A, T_SOA][rng.random_range(0..5)];
            p.extend_from_slice(&qtype.to_be_bytes());
            let class: u16 = [3, 4, 254, 255, 0, 65535][rng.random_range(0..6)];
            p.extend_from_slice(&class.to_be_bytes());
            p
        }
        // A well-formed query for a random name and type.
        _ => random_query(rng),
    };
    // Clear QR: a datagram with QR set is an answer, which the server must not answer.
    if p.len() > 2 {
        p[2] &= 0x7F;
    }
    p
}

fn compression_trap(rng: &mut StdRng) -> Vec<u8> {
    let id = rng.random();
    let tail = |p: &mut Vec<u8>| {
        p.extend_from_slice(&T_A.to_be_bytes());
        p.extend_from_slice(&1u16.to_be_bytes());
    };
    match rng.random_range(0..7) {
        // The question name points at itself.
        0 => {
            let mut p = header(id, 0x0100, [1, 0, 0, 0]);
            p.extend_from_slice(&[0xC0, 12]);
            tail(&mut p);
            p
        }
        // A label, then a pointer back to that label.
        1 => {
            let mut p = header(id, 0x0100, [1, 0, 0, 0]);
            p.extend_from_slice(&[1, b'a', 0xC0, 12]);
            tail(&mut p);
            p
        }
        // Two pointers pointing at each other.
        2 => {
            let mut p = header(id, 0x0100, [1, 0, 0, 0]);
            p.extend_from_slice(&[0xC0, 14, 0xC0, 12]);
            tail(&mut p);
            p
        }
        // A pointer past the end of the message.
        3 => {
            let mut p = header(id, 0x0100, [1, 0, 0, 0]);
            p.extend_from_slice(&[0xFF, 0xFF]);
            tail(&mut p);
            p
        }
        // A long chain of pointers, each to the one before, ending at the question name; a
        // record in the additional section is owned by the last one.
        4 => {
            let mut p = header(id, 0x0100, [1, 0, 0, 1]);
            p.extend(encode_name("web.service.mesh"));
            tail(&mut p);
            let mut prev = 12u16;
            for _ in 0..rng.random_range(10..150) {
                let here = p.len() as u16;
                p.extend_from_slice(&(0xC000 | prev).to_be_bytes());
                prev = here;
            }
            p.extend_from_slice(&(0xC000 | prev).to_be_bytes());
            p.extend_from_slice(&T_A.to_be_bytes());
            p.extend_from_slice(&1u16.to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, 0, 0, 4, 10, 0, 0, 1]);
            p
        }
        // A valid question, then an answer record whose owner loops.
        5 => {
            let mut p = query(id, "web.service.mesh", T_A, None);
            p[7] = 1; // ANCOUNT = 1
            let at = p.len() as u16;
            p.extend_from_slice(&(0xC000 | at).to_be_bytes());
            p.extend_from_slice(&T_A.to_be_bytes());
            p.extend_from_slice(&1u16.to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, 0, 0, 4, 10, 0, 0, 1]);
            p
        }
        // A pointer into the header (offset 0..11) or to a random place.
        _ => {
            let mut p = header(id, 0x0100, [1, 0, 0, 0]);
            let target: u16 = rng.random_range(0..40);
            p.extend_from_slice(&(0xC000 | target).to_be_bytes());
            tail(&mut p);
            p
        }
    }
}

fn bad_labels(rng: &mut StdRng) -> Vec<u8> {
    let mut p = header(rng.random(), 0x0100, [1, 0, 0, 0]);
    match rng.random_range(0..5) {
        // A label length with the reserved 0x40 / 0x80 bits.
        0 => {
            let len = [0x40u8, 0x41, 0x7F, 0x80, 0xBF][rng.random_range(0..5)];
            p.push(len);
            let n = rng.random_range(0..80);
            p.extend(random_bytes(rng, n));
        }
        // A name of more than 255 bytes (five 63-byte labels).
        1 => {
            for _ in 0..5 {
                p.push(63);
                p.extend(std::iter::repeat_n(b'x', 63));
            }
            p.push(0);
        }
        // 200 one-character labels.
        2 => {
            for _ in 0..200 {
                p.extend_from_slice(&[1, b'a']);
            }
            p.push(0);
        }
        // Binary bytes in labels (NUL, dots, 0xFF), then the domain.
        3 => {
            let n = rng.random_range(1..64);
            p.push(n as u8);
            p.extend(random_bytes(rng, n));
            p.extend(encode_name("service.mesh"));
        }
        // A label length beyond the end of the packet.
        _ => {
            p.push(63);
            p.extend_from_slice(b"short");
        }
    }
    p.extend_from_slice(&T_A.to_be_bytes());
    p.extend_from_slice(&1u16.to_be_bytes());
    p
}

fn bad_edns(rng: &mut StdRng) -> Vec<u8> {
    let id = rng.random();
    let mut p = query(id, &random_name(rng), T_A, None);
    match rng.random_range(0..6) {
        // Version > 0 (BADVERS).
        0 => {
            p[11] = 1;
            p.extend(opt(1232, rng.random_range(1..=255), &[]));
        }
        // Two OPT records.
        1 => {
            p[11] = 2;
            p.extend(opt(1232, 0, &[]));
            p.extend(opt(4096, 0, &[]));
        }
        // An option whose length runs past the record.
        2 => {
            p[11] = 1;
            p.extend(opt(1232, 0, &[0, 10, 0xFF, 0xF0, 1, 2, 3]));
        }
        // RDLENGTH past the end of the packet.
        3 => {
            p[11] = 1;
            let mut o = opt(1232, 0, &[]);
            let n = o.len();
            o[n - 2] = 0xFF;
            o[n - 1] = 0xFF;
            p.extend(o);
        }
        // OPT in the answer section, with a non-root owner.
        4 => {
            p[7] = 1;
            p.extend(encode_name("x.mesh"));
            p.extend_from_slice(&T_OPT.to_be_bytes());
            p.extend_from_slice(&1232u16.to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        }
        // A tiny or huge UDP size, random options.
        _ => {
            p[11] = 1;
            let udp = [0u16, 1, 511, 65535][rng.random_range(0..4)];
            let n = rng.random_range(0..40);
            let rdata = random_bytes(rng, n);
            p.extend(opt(udp, 0, &rdata));
        }
    }
    p
}

/// Reads answers on `sock` until the one with `id`; `true` if it is a NOERROR answer with at
/// least one record, `false` on timeout.
async fn await_answer(sock: &UdpSocket, id: u16, deadline: Instant) -> bool {
    let mut buf = vec![0u8; 65535];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        match tokio::time::timeout(left, sock.recv(&mut buf)).await {
            Err(_) => return false,
            Ok(Err(_)) => continue, // ICMP from an earlier send
            Ok(Ok(n)) => {
                if n >= 12 && u16::from_be_bytes([buf[0], buf[1]]) == id {
                    let qr = buf[2] & 0x80 != 0;
                    let rcode = buf[3] & 0x0F;
                    let ancount = u16::from_be_bytes([buf[6], buf[7]]);
                    return qr && rcode == 0 && ancount >= 1;
                }
            }
        }
    }
}

/// A valid query from `sock` is answered (3 attempts of [`PROBE_TIMEOUT`]).
async fn probe(sock: &UdpSocket, id_base: u16) -> bool {
    for attempt in 0..PROBE_ATTEMPTS {
        let id = id_base.wrapping_add(attempt as u16);
        let q = query(id, "web.service.mesh", T_A, None);
        if sock.send(&q).await.is_err() {
            continue;
        }
        if await_answer(sock, id, Instant::now() + PROBE_TIMEOUT).await {
            return true;
        }
    }
    false
}

async fn tcp_query(addr: SocketAddr, id: u16) -> anyhow::Result<bool> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await??;
    let q = query(id, "web.service.mesh", T_A, None);
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend(q);
    s.write_all(&framed).await?;
    let mut len = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut len)).await??;
    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut msg)).await??;
    Ok(msg.len() >= 12
        && u16::from_be_bytes([msg[0], msg[1]]) == id
        && msg[3] & 0x0F == 0
        && u16::from_be_bytes([msg[6], msg[7]]) >= 1)
}

fn alive(meshd: &mut Meshd, when: &str) {
    if let Some(status) = meshd.exited() {
        panic!("meshd exited ({status}) {when}");
    }
}

async fn dig_answers(dig: &Dig, transport: &str, when: &str) {
    let a = dig
        .query("web.service.mesh", "A", &[transport])
        .await
        .unwrap_or_else(|e| panic!("dig {transport} got no answer {when}: {e:#}"));
    assert_eq!(a.status, "NOERROR", "{when}:\n{a}");
    assert_eq!(a.rdatas("A"), vec!["10.20.0.1"], "{when}:\n{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_packets_never_crash_or_stall_the_dns_server() {
    let seed = std::env::var("DNS_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    eprintln!("DNS fuzz seed: {seed} (set DNS_FUZZ_SEED to replay)");
    let mut rng = StdRng::seed_from_u64(seed);

    let mut meshd = Meshd::start(tests::MeshdOptions::default().node("fz1")).await;
    meshd
        .api()
        .put_json(
            "/v1/agent/service/register",
            &json!({"ID": "web-1", "Name": "web", "Port": 80, "Address": "10.20.0.1"}),
        )
        .await
        .expect_status(200);
    let addr = meshd.dns_addr();
    let dig = Dig::new(addr);
    dig.wait_for(
        Duration::from_secs(10),
        "web answers",
        "web.service.mesh",
        "A",
        &[],
        |a| a.rdatas("A") == ["10.20.0.1"],
    )
    .await;

    // --- UDP ---
    let mut senders = Vec::new();
    for _ in 0..SENDERS {
        let s = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        s.connect(addr).await.expect("connect");
        senders.push(s);
    }
    let mut sent = 0usize;
    let mut probe_id: u16 = 0xA000;
    let started = Instant::now();
    while sent < UDP_PACKETS {
        let sock = &senders[(sent / BURST) % SENDERS];
        for _ in 0..BURST.min(UDP_PACKETS - sent) {
            let p = fuzz_packet(&mut rng);
            // A send error (ICMP from an earlier one) does not matter.
            let _ = sock.send(&p).await;
            sent += 1;
        }
        probe_id = probe_id.wrapping_add(PROBE_ATTEMPTS as u16);
        if !probe(sock, probe_id).await {
            alive(&mut meshd, &format!("after {sent} hostile datagrams"));
            panic!(
                "meshd is alive but did not answer a valid query after {sent} hostile datagrams \
                 (seed {seed})"
            );
        }
    }
    eprintln!(
        "{sent} hostile datagrams sent, a probe answered after every {BURST}, in {:?}",
        started.elapsed()
    );
    alive(&mut meshd, "after the UDP fuzz");
    dig_answers(&dig, "+notcp", "after the UDP fuzz").await;
    // The server did read them: it counted the queries it could parse.
    let text = meshd.api().metrics().await;
    let queries = tests::sys::metric_value(&text, "meshd_dns_queries_total").unwrap_or(0.0);
    eprintln!("meshd_dns_queries_total after the UDP fuzz: {queries}");
    assert!(
        queries >= 1000.0,
        "only {queries} DNS queries counted after {sent} datagrams (a tenth are valid queries)"
    );

    // Answers (QR=1) are never answered: send some, then a query, from one socket; only the
    // query's answer comes back.
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    sock.connect(addr).await.expect("connect");
    for i in 0..50u16 {
        let mut p = query(0x5000 + i, "web.service.mesh", T_A, None);
        p[2] |= 0x80;
        if i % 2 == 1 {
            p[3] = 0x03; // NXDOMAIN
        }
        let _ = sock.send(&p).await;
    }
    let q = query(0x6000, "web.service.mesh", T_A, None);
    sock.send(&q).await.expect("send");
    let mut buf = vec![0u8; 65535];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = match tokio::time::timeout(left, sock.recv(&mut buf)).await {
            Err(_) => panic!("no answer to a valid query sent after 50 answers"),
            Ok(Err(_)) => continue,
            Ok(Ok(n)) => n,
        };
        let id = u16::from_be_bytes([buf[0], buf[1]]);
        assert!(
            !(0x5000..0x5032).contains(&id),
            "meshd answered a datagram that was itself an answer (id {id:#x}, {n} bytes)"
        );
        if id == 0x6000 {
            break;
        }
    }

    // --- TCP ---
    let mut garbage_closed = 0;
    for i in 0..100 {
        let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await
        else {
            panic!("TCP connect {i} to {addr} failed during the garbage round");
        };
        let len = rng.random_range(1..600);
        let mut g = random_bytes(&mut rng, len);
        if i % 4 == 0 {
            // A plausible length prefix before the garbage.
            let l = (g.len() as u16).saturating_sub(2).to_be_bytes();
            g[0] = l[0];
            if g.len() > 1 {
                g[1] = l[1];
            }
        }
        let _ = s.write_all(&g).await;
        let _ = s.shutdown().await;
        // Read whatever comes back until the server closes (bounded).
        let mut sink = vec![0u8; 4096];
        let until = Instant::now() + Duration::from_secs(2);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, s.read(&mut sink)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    garbage_closed += 1;
                    break;
                }
                Ok(Ok(_)) => continue,
                Err(_) => break,
            }
        }
    }
    eprintln!("100 garbage TCP connections sent; the server closed {garbage_closed} of them within 2 s each");
    alive(&mut meshd, "after the TCP garbage");

    // Stalled connections, held open.
    let mut stalled: Vec<(&str, TcpStream)> = Vec::new();
    let partial_query = {
        let q = query(0x7777, "web.service.mesh", T_A, None);
        let mut f = (q.len() as u16).to_be_bytes().to_vec();
        f.extend_from_slice(&q[..q.len() / 2]);
        f
    };
    for i in 0..250 {
        let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await
        else {
            panic!(
                "TCP connect failed with {} stalled connections open",
                stalled.len()
            );
        };
        let (kind, bytes): (&str, Vec<u8>) = match i % 5 {
            0 => ("nothing sent", Vec::new()),
            1 => ("half a length prefix", vec![0x00]),
            2 => ("a length prefix only", vec![0x00, 0x22]),
            3 => ("half a query", partial_query.clone()),
            _ => (
                "a 65535-byte length prefix and 3 bytes",
                vec![0xFF, 0xFF, 1, 2, 3],
            ),
        };
        if !bytes.is_empty() {
            s.write_all(&bytes)
                .await
                .expect("write to a new connection");
        }
        stalled.push((kind, s));
    }
    eprintln!("{} stalled TCP connections open", stalled.len());

    // Other clients are served meanwhile.
    dig_answers(&dig, "+tcp", "with 250 stalled TCP connections open").await;
    dig_answers(&dig, "+notcp", "with 250 stalled TCP connections open").await;
    for i in 0..20u16 {
        match tcp_query(addr, 0x8000 + i).await {
            Ok(true) => {}
            Ok(false) => panic!("a raw TCP query got a wrong answer with stalled connections open"),
            Err(e) => panic!("a raw TCP query failed with stalled connections open: {e:#}"),
        }
    }
    let sock = &senders[0];
    assert!(
        probe(sock, 0x9000).await,
        "a UDP query was not answered with stalled TCP connections open"
    );
    alive(&mut meshd, "with stalled TCP connections open");

    // The server closes the stalled connections after its idle timeout.
    let start = Instant::now();
    let mut open: Vec<(&str, TcpStream)> = stalled;
    let mut buf = vec![0u8; 1024];
    while !open.is_empty() && start.elapsed() < IDLE_CLOSE_BOUND {
        let mut still = Vec::new();
        for (kind, mut s) in open {
            match tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {}
                Ok(Ok(_)) | Err(_) => still.push((kind, s)),
            }
        }
        open = still;
        if !open.is_empty() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    if !open.is_empty() {
        let mut kinds: Vec<&str> = open.iter().map(|(k, _)| *k).collect();
        kinds.sort();
        kinds.dedup();
        panic!(
            "{} stalled TCP connections still open after {IDLE_CLOSE_BOUND:?} (kinds: {kinds:?})",
            open.len()
        );
    }
    eprintln!(
        "the server closed every stalled connection after {:?}",
        start.elapsed()
    );

    // Still alive, still answering.
    alive(&mut meshd, "at the end");
    dig_answers(&dig, "+notcp", "at the end").await;
    dig_answers(&dig, "+tcp", "at the end").await;
    let r = meshd.api().get("/v1/agent/self").await;
    r.expect_status(200);
}
