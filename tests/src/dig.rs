//! Real `dig` (Debian `bind9-dnsutils`) against meshd's DNS server, and its output parsed.
//!
//! [`Dig`] runs `dig -r @IP -p PORT NAME TYPE +noall +comments +question +answer +authority
//! +additional +tries=1 +time=T [extra options]`, optionally inside a network namespace
//! (`ip netns exec NS dig ...`), and parses what it prints into a [`DigAnswer`]: the status
//! (`NOERROR`, `NXDOMAIN`, ...), the header flags (`qr aa tc rd ...`), the section counts, the EDNS
//! size of the answer, dig's warnings, and the question, answer, authority and additional
//! records as [`DnsRecord`] (name, TTL, class, type, rdata as dig prints it).
//!
//! `-r` keeps a `~/.digrc` out of the picture. Extra options come after the defaults, so a test
//! may override them (`+tcp`, `+notcp +ignore`, `+noedns`, `+bufsize=4096`, `+time=5`).
//!
//! dig exits 0 whenever it got an answer, whatever its rcode; no answer at all (timeout,
//! connection refused) is an `Err` naming the command and its output.

use std::fmt;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The name of the dig binary (on `PATH`).
pub const DIG_BIN: &str = "dig";

/// Options every query gets, before the caller's.
pub const BASE_OPTS: &[&str] = &[
    "+noall",
    "+comments",
    "+question",
    "+answer",
    "+authority",
    "+additional",
    "+tries=1",
];

/// Default `+time=` (seconds per try).
pub const DEFAULT_TIME_SECS: u32 = 2;

/// How to reach one DNS server with dig.
#[derive(Clone, Debug)]
pub struct Dig {
    server: SocketAddr,
    netns: Option<String>,
    time_secs: u32,
}

impl Dig {
    /// dig against `server` (IP:PORT), from this namespace.
    pub fn new(server: SocketAddr) -> Dig {
        Dig {
            server,
            netns: None,
            time_secs: DEFAULT_TIME_SECS,
        }
    }

    /// Runs dig inside network namespace `ns` (`ip netns exec NS dig ...`).
    pub fn in_netns(mut self, ns: &str) -> Dig {
        self.netns = Some(ns.to_string());
        self
    }

    /// Seconds dig waits for an answer (`+time=`).
    pub fn time(mut self, secs: u32) -> Dig {
        self.time_secs = secs.max(1);
        self
    }

    /// The server asked.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The command line for a query (program first).
    pub fn command_line(&self, name: &str, qtype: &str, extra: &[&str]) -> Vec<String> {
        let mut argv: Vec<String> = Vec::new();
        if let Some(ns) = &self.netns {
            argv.extend(["ip".into(), "netns".into(), "exec".into(), ns.clone()]);
        }
        argv.push(DIG_BIN.into());
        argv.push("-r".into());
        argv.push(format!("@{}", self.server.ip()));
        argv.push("-p".into());
        argv.push(self.server.port().to_string());
        argv.push(name.into());
        argv.push(qtype.into());
        argv.extend(BASE_OPTS.iter().map(|s| s.to_string()));
        argv.push(format!("+time={}", self.time_secs));
        argv.extend(extra.iter().map(|s| s.to_string()));
        argv
    }

    /// Runs one query and blocks until dig exits.
    pub fn query_blocking(
        &self,
        name: &str,
        qtype: &str,
        extra: &[&str],
    ) -> anyhow::Result<DigAnswer> {
        let argv = self.command_line(name, qtype, extra);
        let shown = argv.join(" ");
        let out = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .output()
            .with_context(|| {
                format!("run `{shown}` (is dig installed? apt-get install bind9-dnsutils)")
            })?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            bail!(
                "`{shown}` failed ({}):\nstdout:\n{}\nstderr:\n{}",
                out.status,
                stdout.trim_end(),
                stderr.trim_end()
            );
        }
        let mut answer = DigAnswer::parse(&stdout)
            .with_context(|| format!("`{shown}` printed:\n{stdout}\nstderr:\n{stderr}"))?;
        answer.command = shown;
        Ok(answer)
    }

    /// Runs one query on a blocking thread.
    pub async fn query(
        &self,
        name: &str,
        qtype: &str,
        extra: &[&str],
    ) -> anyhow::Result<DigAnswer> {
        let me = self.clone();
        let name = name.to_string();
        let qtype = qtype.to_string();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            me.query_blocking(&name, &qtype, &extra)
        })
        .await
        .context("the dig task failed")?
    }

    /// Queries until `pred` holds for an answer and returns that answer; panics after
    /// `timeout` naming `what` and showing the last answer (or dig's error). Polls every 50 ms
    /// growing to 250 ms.
    pub async fn wait_for<F>(
        &self,
        timeout: Duration,
        what: &str,
        name: &str,
        qtype: &str,
        extra: &[&str],
        mut pred: F,
    ) -> DigAnswer
    where
        F: FnMut(&DigAnswer) -> bool,
    {
        let start = Instant::now();
        let mut poll = Duration::from_millis(50);
        loop {
            let last = match self.query(name, qtype, extra).await {
                Ok(a) if pred(&a) => return a,
                Ok(a) => a.to_string(),
                Err(e) => format!("{e:#}"),
            };
            let elapsed = start.elapsed();
            if elapsed >= timeout {
                panic!("timed out after {timeout:?} waiting until {what}; last answer:\n{last}");
            }
            tokio::time::sleep(poll.min(timeout - elapsed)).await;
            poll = (poll * 2).min(Duration::from_millis(250));
        }
    }

    /// Runs one query; panics (with dig's output) when dig gets no answer.
    pub async fn must(&self, name: &str, qtype: &str, extra: &[&str]) -> DigAnswer {
        match self.query(name, qtype, extra).await {
            Ok(a) => a,
            Err(e) => panic!(
                "dig {name} {qtype} {extra:?} against {}: {e:#}",
                self.server
            ),
        }
    }
}

/// One resource record as dig prints it: `name ttl class type rdata`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsRecord {
    /// The owner name as printed (absolute, with the final dot; case as sent).
    pub name: String,
    pub ttl: u32,
    pub class: String,
    /// `A`, `AAAA`, `SRV`, `TXT`, `SOA`, `NS`, `CNAME`, ...
    pub rtype: String,
    /// The rest of the line, as dig prints it.
    pub rdata: String,
}

/// The rdata of an SRV record.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// The target, with the final dot.
    pub target: String,
}

/// The rdata of an SOA record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Soa {
    pub mname: String,
    pub rname: String,
    pub serial: u32,
    pub refresh: u32,
    pub retry: u32,
    pub expire: u32,
    pub minimum: u32,
}

impl DnsRecord {
    /// Parses one record line; `None` if it is not one.
    pub fn parse(line: &str) -> Option<DnsRecord> {
        let mut rest = line.trim();
        let mut fields = Vec::with_capacity(4);
        for _ in 0..4 {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            if end == 0 {
                return None;
            }
            fields.push(&rest[..end]);
            rest = rest[end..].trim_start();
        }
        Some(DnsRecord {
            name: fields[0].to_string(),
            ttl: fields[1].parse().ok()?,
            class: fields[2].to_string(),
            rtype: fields[3].to_string(),
            rdata: rest.trim_end().to_string(),
        })
    }

    /// The owner name lowercase, without the final dot.
    pub fn owner(&self) -> String {
        self.name.trim_end_matches('.').to_ascii_lowercase()
    }

    /// The SRV rdata, if this is an SRV record.
    pub fn srv(&self) -> Option<Srv> {
        if self.rtype != "SRV" {
            return None;
        }
        let f: Vec<&str> = self.rdata.split_whitespace().collect();
        if f.len() != 4 {
            return None;
        }
        Some(Srv {
            priority: f[0].parse().ok()?,
            weight: f[1].parse().ok()?,
            port: f[2].parse().ok()?,
            target: f[3].to_string(),
        })
    }

    /// The SOA rdata, if this is an SOA record.
    pub fn soa(&self) -> Option<Soa> {
        if self.rtype != "SOA" {
            return None;
        }
        let f: Vec<&str> = self.rdata.split_whitespace().collect();
        if f.len() != 7 {
            return None;
        }
        Some(Soa {
            mname: f[0].to_string(),
            rname: f[1].to_string(),
            serial: f[2].parse().ok()?,
            refresh: f[3].parse().ok()?,
            retry: f[4].parse().ok()?,
            expire: f[5].parse().ok()?,
            minimum: f[6].parse().ok()?,
        })
    }

    /// The character-strings of a TXT record, unquoted and unescaped (`\"`, `\\`, `\DDD`).
    pub fn txt_strings(&self) -> Option<Vec<String>> {
        if self.rtype != "TXT" {
            return None;
        }
        parse_character_strings(&self.rdata)
    }
}

impl fmt::Display for DnsRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} {}",
            self.name, self.ttl, self.class, self.rtype, self.rdata
        )
    }
}

/// Parses dig's presentation of character-strings: `"a b" "c\"d" plain`.
fn parse_character_strings(s: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut chars = s.trim().chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&first) = chars.peek() else {
            return Some(out);
        };
        let quoted = first == '"';
        if quoted {
            chars.next();
        }
        let mut bytes: Vec<u8> = Vec::new();
        let mut closed = !quoted;
        while let Some(c) = chars.next() {
            match c {
                '"' if quoted => {
                    closed = true;
                    break;
                }
                c if !quoted && c.is_whitespace() => break,
                '\\' => {
                    let d1 = chars.next()?;
                    if d1.is_ascii_digit() {
                        let d2 = chars.next()?.to_digit(10)?;
                        let d3 = chars.next()?.to_digit(10)?;
                        let v = d1.to_digit(10)? * 100 + d2 * 10 + d3;
                        bytes.push(u8::try_from(v).ok()?);
                    } else {
                        let mut b = [0u8; 4];
                        bytes.extend_from_slice(d1.encode_utf8(&mut b).as_bytes());
                    }
                }
                c => {
                    let mut b = [0u8; 4];
                    bytes.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                }
            }
        }
        if !closed {
            return None;
        }
        out.push(String::from_utf8_lossy(&bytes).into_owned());
    }
}

/// One question as dig prints it: `;name. IN A`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    pub name: String,
    pub class: String,
    pub rtype: String,
}

/// What dig printed for one answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DigAnswer {
    /// The command that produced it (set by [`Dig`]).
    pub command: String,
    /// `NOERROR`, `NXDOMAIN`, `REFUSED`, `SERVFAIL`, `FORMERR`, ...
    pub status: String,
    pub opcode: String,
    pub id: u16,
    /// Header flags, lowercase: `qr`, `aa`, `tc`, `rd`, `ra`, `ad`, `cd`.
    pub flags: Vec<String>,
    /// The counts from the header line (QUERY, ANSWER, AUTHORITY, ADDITIONAL; ADDITIONAL
    /// includes an OPT pseudo-record).
    pub counts: [u16; 4],
    /// The UDP size of the answer's OPT record (`None`: no EDNS in the answer).
    pub edns_udp: Option<u32>,
    /// dig's `;; WARNING: ...` lines (text after `WARNING: `).
    pub warnings: Vec<String>,
    pub question: Vec<Question>,
    pub answer: Vec<DnsRecord>,
    pub authority: Vec<DnsRecord>,
    pub additional: Vec<DnsRecord>,
    /// How many answers dig printed; the fields above are the last one's.
    pub messages: usize,
    /// dig said `;; Truncated, retrying in TCP mode.` (it got TC over UDP and asked again over
    /// TCP; the UDP answer is not printed, the fields above are the TCP answer's).
    pub retried_tcp: bool,
    /// `;; MSG SIZE  rcvd: N` (with `+stats`): the size of the answer in bytes.
    pub msg_size: Option<usize>,
    /// The transport of `;; SERVER: ... (UDP)` (with `+stats`): `UDP` or `TCP`.
    pub transport: Option<String>,
    /// dig's whole output.
    pub raw: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Section {
    None,
    Question,
    Answer,
    Authority,
    Additional,
    Opt,
}

impl DigAnswer {
    /// Parses dig's output (`+comments` on). Fails when it holds no `->>HEADER<<-` line.
    pub fn parse(output: &str) -> anyhow::Result<DigAnswer> {
        let mut a = DigAnswer {
            raw: output.to_string(),
            ..DigAnswer::default()
        };
        let mut section = Section::None;
        for line in output.lines() {
            let t = line.trim();
            if let Some(h) = t.strip_prefix(";; ->>HEADER<<-") {
                // A new message: start over (dig retried over TCP).
                let raw = std::mem::take(&mut a.raw);
                let messages = a.messages + 1;
                let retried_tcp = a.retried_tcp;
                a = DigAnswer {
                    raw,
                    messages,
                    retried_tcp,
                    ..DigAnswer::default()
                };
                section = Section::None;
                for part in h.split(',') {
                    let Some((k, v)) = part.split_once(':') else {
                        continue;
                    };
                    let v = v.trim();
                    match k.trim() {
                        "opcode" => a.opcode = v.to_string(),
                        "status" => a.status = v.to_string(),
                        "id" => a.id = v.parse().unwrap_or(0),
                        _ => {}
                    }
                }
                continue;
            }
            if let Some(rest) = t.strip_prefix(";; flags:") {
                let (flags, counts) = rest.split_once(';').unwrap_or((rest, ""));
                a.flags = flags
                    .split_whitespace()
                    .map(|f| f.to_ascii_lowercase())
                    .collect();
                for part in counts.split(',') {
                    let Some((k, v)) = part.split_once(':') else {
                        continue;
                    };
                    let n = v.trim().parse().unwrap_or(0);
                    match k.trim() {
                        "QUERY" | "ZONE" => a.counts[0] = n,
                        "ANSWER" | "PREREQ" => a.counts[1] = n,
                        "AUTHORITY" | "UPDATE" => a.counts[2] = n,
                        "ADDITIONAL" => a.counts[3] = n,
                        _ => {}
                    }
                }
                continue;
            }
            if t.starts_with(";; Truncated, retrying in TCP mode") {
                a.retried_tcp = true;
                continue;
            }
            if let Some(n) = t.strip_prefix(";; MSG SIZE") {
                a.msg_size = n.rsplit_once(':').and_then(|(_, v)| v.trim().parse().ok());
                continue;
            }
            if let Some(server) = t.strip_prefix(";; SERVER:") {
                a.transport = server
                    .trim_end()
                    .strip_suffix(')')
                    .and_then(|x| x.rsplit_once('('))
                    .map(|(_, proto)| proto.to_string());
                continue;
            }
            if let Some(w) = t.strip_prefix(";; WARNING:") {
                a.warnings.push(w.trim().to_string());
                continue;
            }
            match t {
                ";; QUESTION SECTION:" => {
                    section = Section::Question;
                    continue;
                }
                ";; ANSWER SECTION:" => {
                    section = Section::Answer;
                    continue;
                }
                ";; AUTHORITY SECTION:" => {
                    section = Section::Authority;
                    continue;
                }
                ";; ADDITIONAL SECTION:" => {
                    section = Section::Additional;
                    continue;
                }
                ";; OPT PSEUDOSECTION:" => {
                    section = Section::Opt;
                    continue;
                }
                "" => {
                    section = Section::None;
                    continue;
                }
                _ => {}
            }
            match section {
                Section::Opt => {
                    if let Some(edns) = t.strip_prefix("; EDNS:") {
                        a.edns_udp = edns
                            .rsplit_once("udp:")
                            .and_then(|(_, v)| v.split_whitespace().next())
                            .and_then(|v| v.parse().ok());
                    }
                }
                Section::Question => {
                    let q = t.trim_start_matches(';');
                    let f: Vec<&str> = q.split_whitespace().collect();
                    if f.len() >= 3 {
                        a.question.push(Question {
                            name: f[0].to_string(),
                            class: f[1].to_string(),
                            rtype: f[2].to_string(),
                        });
                    }
                }
                Section::Answer | Section::Authority | Section::Additional => {
                    if t.starts_with(';') {
                        continue;
                    }
                    let Some(r) = DnsRecord::parse(t) else {
                        bail!("cannot read the record line {line:?}");
                    };
                    match section {
                        Section::Answer => a.answer.push(r),
                        Section::Authority => a.authority.push(r),
                        _ => a.additional.push(r),
                    }
                }
                Section::None => {}
            }
        }
        if a.messages == 0 {
            bail!("no `;; ->>HEADER<<-` line in dig's output");
        }
        Ok(a)
    }

    /// Whether header flag `flag` (`tc`, `aa`, ...) is set.
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f.eq_ignore_ascii_case(flag))
    }

    /// Whether the answer was truncated (TC).
    pub fn truncated(&self) -> bool {
        self.has_flag("tc")
    }

    /// The answer-section records of type `rtype`.
    pub fn answers(&self, rtype: &str) -> Vec<&DnsRecord> {
        self.answer.iter().filter(|r| r.rtype == rtype).collect()
    }

    /// The rdata of the answer-section records of type `rtype`, sorted.
    pub fn rdatas(&self, rtype: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .answers(rtype)
            .into_iter()
            .map(|r| r.rdata.clone())
            .collect();
        v.sort();
        v
    }

    /// The SRV answers, sorted.
    pub fn srvs(&self) -> Vec<Srv> {
        let mut v: Vec<Srv> = self.answer.iter().filter_map(DnsRecord::srv).collect();
        v.sort();
        v
    }

    /// Every character-string of every TXT answer, sorted.
    pub fn txts(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .answer
            .iter()
            .filter_map(DnsRecord::txt_strings)
            .flatten()
            .collect();
        v.sort();
        v
    }

    /// The additional-section records of type `rtype` (the OPT pseudo-record is never here).
    pub fn additionals(&self, rtype: &str) -> Vec<&DnsRecord> {
        self.additional
            .iter()
            .filter(|r| r.rtype == rtype)
            .collect()
    }

    /// The SOA of the authority section, if there is one.
    pub fn authority_soa(&self) -> Option<(DnsRecord, Soa)> {
        self.authority
            .iter()
            .find_map(|r| r.soa().map(|s| (r.clone(), s)))
    }
}

impl fmt::Display for DigAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.command.is_empty() {
            writeln!(f, "$ {}", self.command)?;
        }
        write!(f, "{}", self.raw.trim_end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRV_OUTPUT: &str = "\
;; Got answer:
;; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 15580
;; flags: qr aa rd; QUERY: 1, ANSWER: 1, AUTHORITY: 0, ADDITIONAL: 2
;; WARNING: recursion requested but not available

;; OPT PSEUDOSECTION:
; EDNS: version: 0, flags:; udp: 1232
;; QUESTION SECTION:
;_web._tcp.service.mesh.\t\tIN\tSRV

;; ANSWER SECTION:
_web._tcp.service.mesh.\t0\tIN\tSRV\t1 1 80 0a000001.addr.dc1.mesh.

;; ADDITIONAL SECTION:
0a000001.addr.dc1.mesh.\t0\tIN\tA\t10.0.0.1

";

    const NXDOMAIN_OUTPUT: &str = "\
;; Got answer:
;; ->>HEADER<<- opcode: QUERY, status: NXDOMAIN, id: 42709
;; flags: qr aa rd; QUERY: 1, ANSWER: 0, AUTHORITY: 1, ADDITIONAL: 1
;; WARNING: recursion requested but not available

;; OPT PSEUDOSECTION:
; EDNS: version: 0, flags:; udp: 1232
;; QUESTION SECTION:
;nope.service.mesh.\t\tIN\tA

;; AUTHORITY SECTION:
mesh.\t\t\t0\tIN\tSOA\tns.mesh. hostmaster.mesh. 1795331341 3600 600 86400 0

";

    const TRUNCATED_OUTPUT: &str = "\
;; Got answer:
;; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 37579
;; flags: qr aa tc rd; QUERY: 1, ANSWER: 3, AUTHORITY: 0, ADDITIONAL: 0
;; WARNING: recursion requested but not available

;; QUESTION SECTION:
;big.service.mesh.\t\tIN\tA

;; ANSWER SECTION:
big.service.mesh.\t5\tIN\tA\t10.0.0.18
big.service.mesh.\t5\tIN\tA\t10.0.0.4
big.service.mesh.\t5\tIN\tA\t10.0.0.25

";

    const REFUSED_OUTPUT: &str = "\
;; Got answer:
;; ->>HEADER<<- opcode: QUERY, status: REFUSED, id: 8752
;; flags: qr rd; QUERY: 1, ANSWER: 0, AUTHORITY: 0, ADDITIONAL: 1
;; WARNING: recursion requested but not available

;; OPT PSEUDOSECTION:
; EDNS: version: 0, flags:; udp: 1232
;; QUESTION SECTION:
;example.org.\t\t\tIN\tA

";

    const TXT_OUTPUT: &str = "\
;; Got answer:
;; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 1
;; flags: qr aa rd; QUERY: 1, ANSWER: 2, AUTHORITY: 0, ADDITIONAL: 1

;; QUESTION SECTION:
;n1.node.mesh.\t\t\tIN\tTXT

;; ANSWER SECTION:
n1.node.mesh.\t\t7\tIN\tTXT\t\"rack=r1\"
n1.node.mesh.\t\t7\tIN\tTXT\t\"note=a \\\"b\\\" c\" \"x\\032y\"

";

    const RETRIED_OUTPUT: &str = "\
;; Truncated, retrying in TCP mode.
;; Got answer:
;; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 6
;; flags: qr aa rd; QUERY: 1, ANSWER: 2, AUTHORITY: 0, ADDITIONAL: 0

;; QUESTION SECTION:
;big.service.mesh.\t\tIN\tA

;; ANSWER SECTION:
big.service.mesh.\t0\tIN\tA\t10.0.0.1
big.service.mesh.\t0\tIN\tA\t10.0.0.2

";

    #[test]
    fn parses_an_srv_answer_with_additionals() {
        let a = DigAnswer::parse(SRV_OUTPUT).expect("parses");
        assert_eq!(a.status, "NOERROR");
        assert_eq!(a.opcode, "QUERY");
        assert_eq!(a.id, 15580);
        assert_eq!(a.flags, vec!["qr", "aa", "rd"]);
        assert!(a.has_flag("aa") && !a.truncated());
        assert_eq!(a.counts, [1, 1, 0, 2]);
        assert_eq!(a.edns_udp, Some(1232));
        assert_eq!(a.warnings, vec!["recursion requested but not available"]);
        assert_eq!(
            a.question,
            vec![Question {
                name: "_web._tcp.service.mesh.".into(),
                class: "IN".into(),
                rtype: "SRV".into()
            }]
        );
        assert_eq!(
            a.srvs(),
            vec![Srv {
                priority: 1,
                weight: 1,
                port: 80,
                target: "0a000001.addr.dc1.mesh.".into()
            }]
        );
        assert_eq!(a.answer[0].ttl, 0);
        assert_eq!(a.answer[0].owner(), "_web._tcp.service.mesh");
        assert_eq!(
            a.additional,
            vec![DnsRecord {
                name: "0a000001.addr.dc1.mesh.".into(),
                ttl: 0,
                class: "IN".into(),
                rtype: "A".into(),
                rdata: "10.0.0.1".into()
            }]
        );
        assert!(a.authority.is_empty());
        assert_eq!(a.messages, 1);
    }

    #[test]
    fn parses_a_negative_answer_with_the_soa() {
        let a = DigAnswer::parse(NXDOMAIN_OUTPUT).expect("parses");
        assert_eq!(a.status, "NXDOMAIN");
        assert!(a.answer.is_empty());
        let (rec, soa) = a.authority_soa().expect("an SOA in the authority section");
        assert_eq!(rec.name, "mesh.");
        assert_eq!(soa.mname, "ns.mesh.");
        assert_eq!(soa.rname, "hostmaster.mesh.");
        assert_eq!(soa.serial, 1795331341);
        assert_eq!(
            (soa.refresh, soa.retry, soa.expire, soa.minimum),
            (3600, 600, 86400, 0)
        );
    }

    #[test]
    fn parses_truncation_and_no_edns() {
        let a = DigAnswer::parse(TRUNCATED_OUTPUT).expect("parses");
        assert!(a.truncated());
        assert_eq!(a.edns_udp, None);
        assert_eq!(a.rdatas("A"), vec!["10.0.0.18", "10.0.0.25", "10.0.0.4"]);
        assert!(a.answer.iter().all(|r| r.ttl == 5));
    }

    #[test]
    fn parses_refused() {
        let a = DigAnswer::parse(REFUSED_OUTPUT).expect("parses");
        assert_eq!(a.status, "REFUSED");
        assert!(!a.has_flag("aa"));
        assert!(a.answer.is_empty() && a.authority.is_empty() && a.additional.is_empty());
        assert_eq!(a.question[0].name, "example.org.");
    }

    #[test]
    fn parses_txt_strings() {
        let a = DigAnswer::parse(TXT_OUTPUT).expect("parses");
        assert_eq!(
            a.txts(),
            vec!["note=a \"b\" c".to_string(), "rack=r1".into(), "x y".into()]
        );
        assert_eq!(a.answer[0].txt_strings(), Some(vec!["rack=r1".to_string()]));
        assert_eq!(a.answer[0].ttl, 7);
    }

    const STATS_OUTPUT: &str = "\
;; Got answer:
;; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 59918
;; flags: qr aa tc rd; QUERY: 1, ANSWER: 28, AUTHORITY: 0, ADDITIONAL: 0
;; WARNING: recursion requested but not available
;; WARNING: Message has 13 extra bytes at end

;; Query time: 0 msec
;; SERVER: 127.0.0.1#60555(127.0.0.1) (UDP)
;; WHEN: Sun Nov 22 07:14:36 UTC 2026
;; MSG SIZE  rcvd: 511

";

    #[test]
    fn parses_stats() {
        let a = DigAnswer::parse(STATS_OUTPUT).expect("parses");
        assert_eq!(a.msg_size, Some(511));
        assert_eq!(a.transport.as_deref(), Some("UDP"));
        assert_eq!(a.counts, [1, 28, 0, 0]);
        assert_eq!(
            a.warnings,
            vec![
                "recursion requested but not available",
                "Message has 13 extra bytes at end"
            ]
        );
        assert!(a.truncated());
    }

    #[test]
    fn sees_a_tcp_retry() {
        let a = DigAnswer::parse(RETRIED_OUTPUT).expect("parses");
        assert!(a.retried_tcp);
        assert_eq!(a.messages, 1);
        assert_eq!(a.id, 6);
        assert!(!a.truncated());
        assert_eq!(a.rdatas("A"), vec!["10.0.0.1", "10.0.0.2"]);
    }

    #[test]
    fn rejects_output_without_an_answer() {
        let out = ";; communications error to 127.0.0.1#1: connection refused\n\
                   ;; no servers could be reached\n";
        assert!(DigAnswer::parse(out).is_err());
        assert!(DigAnswer::parse("").is_err());
    }

    #[test]
    fn record_lines() {
        assert!(DnsRecord::parse("x. IN A").is_none());
        assert!(DnsRecord::parse("x. notanumber IN A 1.2.3.4").is_none());
        let r = DnsRecord::parse("Web.Service.Mesh.  30 IN AAAA ::1").expect("a record");
        assert_eq!(r.owner(), "web.service.mesh");
        assert_eq!(r.rdata, "::1");
        assert_eq!(r.srv(), None);
        assert_eq!(parse_character_strings("\"unterminated"), None);
        assert_eq!(
            parse_character_strings("plain \"q\""),
            Some(vec!["plain".to_string(), "q".into()])
        );
    }

    #[test]
    fn command_line() {
        let d = Dig::new("127.0.0.1:8600".parse().unwrap()).in_netns("ns1");
        let argv = d.command_line("web.service.mesh", "SRV", &["+tcp"]);
        assert_eq!(&argv[..5], ["ip", "netns", "exec", "ns1", "dig"]);
        assert!(argv.contains(&"@127.0.0.1".to_string()));
        assert!(argv.contains(&"8600".to_string()));
        assert!(argv.contains(&"+time=2".to_string()));
        assert_eq!(argv.last().map(String::as_str), Some("+tcp"));
    }
}
