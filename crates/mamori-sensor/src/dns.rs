//! DNS messages (RFC 1035) as the kernel copied them from UDP port 53: header, questions and
//! answers. The input is hostile (any process can send anything to port 53) and may be cut
//! short by the kernel's copy limit, so parsing never panics, follows at most a bounded
//! number of compression pointers, and keeps whatever parsed before a cut.

use std::net::IpAddr;

/// A parsed DNS message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// Transaction id.
    pub id: u16,
    /// `true` for a response.
    pub response: bool,
    /// Operation code (0: standard query).
    pub opcode: u8,
    /// Response code (0: NOERROR, 3: NXDOMAIN, …).
    pub rcode: u8,
    /// Questions (normally one).
    pub questions: Vec<Question>,
    /// Answer records.
    pub answers: Vec<Answer>,
    /// Whether the message ended before all announced records were read.
    pub truncated: bool,
}

/// One question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// Queried name, without the trailing dot.
    pub name: String,
    /// Record type (1 A, 28 AAAA, …).
    pub qtype: u16,
    /// Class (1 IN).
    pub qclass: u16,
}

/// One answer record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Owner name.
    pub name: String,
    /// Record type.
    pub rtype: u16,
    /// Class.
    pub class: u16,
    /// Time to live, seconds.
    pub ttl: u32,
    /// The data: an address for A/AAAA, a name for CNAME/PTR/NS, text for TXT, hex otherwise.
    pub data: String,
    /// The address, for A and AAAA records.
    pub ip: Option<IpAddr>,
}

/// Why a message could not be parsed at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// Shorter than the 12-byte header.
    #[error("DNS message shorter than its header ({0} bytes)")]
    Short(usize),
}

/// Name of a record type, as ECS writes it (`A`, `AAAA`, …); the number otherwise.
pub fn type_name(t: u16) -> String {
    match t {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        65 => "HTTPS",
        255 => "ANY",
        _ => return t.to_string(),
    }
    .to_string()
}

/// Name of a response code (`NOERROR`, `NXDOMAIN`, …).
pub fn rcode_name(r: u8) -> String {
    match r {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        _ => return r.to_string(),
    }
    .to_string()
}

/// Name of a class (`IN`, …).
pub fn class_name(c: u16) -> String {
    match c {
        1 => "IN".to_string(),
        3 => "CH".to_string(),
        _ => c.to_string(),
    }
}

const MAX_RECORDS: usize = 64;
const MAX_JUMPS: usize = 16;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Reads a (possibly compressed) name at `at`; returns it and the offset after it.
fn name_at(b: &[u8], mut at: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    let mut end = None;
    let mut jumps = 0;
    loop {
        let len = *b.get(at)? as usize;
        match len & 0xC0 {
            0x00 if len == 0 => {
                return Some((name, end.unwrap_or(at + 1)));
            }
            0x00 => {
                let label = b.get(at + 1..at + 1 + len)?;
                if !name.is_empty() {
                    name.push('.');
                }
                for &c in label {
                    // Names are bytes: show the odd ones escaped rather than lose them.
                    if c.is_ascii_graphic() && c != b'.' && c != b'\\' {
                        name.push(c as char);
                    } else {
                        name.push_str(&format!("\\{c:03}"));
                    }
                }
                if name.len() > 1024 {
                    return None;
                }
                at += 1 + len;
            }
            0xC0 => {
                jumps += 1;
                if jumps > MAX_JUMPS {
                    return None;
                }
                let target = (u16_at(b, at)? & 0x3FFF) as usize;
                end.get_or_insert(at + 2);
                at = target;
            }
            _ => return None,
        }
    }
}

fn rdata(b: &[u8], rtype: u16, start: usize, len: usize) -> Option<(String, Option<IpAddr>)> {
    let raw = b.get(start..start + len)?;
    Some(match (rtype, len) {
        (1, 4) => {
            let ip = IpAddr::from([raw[0], raw[1], raw[2], raw[3]]);
            (ip.to_string(), Some(ip))
        }
        (28, 16) => {
            let mut a = [0u8; 16];
            a.copy_from_slice(raw);
            let ip = IpAddr::from(a);
            (ip.to_string(), Some(ip))
        }
        (2 | 5 | 12, _) => (name_at(b, start)?.0, None),
        (16, _) => {
            let mut text = String::new();
            let mut at = 0;
            while at < raw.len() {
                let n = raw[at] as usize;
                let part = raw.get(at + 1..at + 1 + n)?;
                text.push_str(&String::from_utf8_lossy(part));
                at += 1 + n;
            }
            (text, None)
        }
        _ => (raw.iter().map(|c| format!("{c:02x}")).collect(), None),
    })
}

/// Parses a DNS message. Errors only when not even the header is there; a message cut short
/// keeps what was read and sets `truncated`.
pub fn parse(b: &[u8]) -> Result<Message, DnsError> {
    if b.len() < 12 {
        return Err(DnsError::Short(b.len()));
    }
    let flags = u16_at(b, 2).unwrap_or(0);
    let qd = u16_at(b, 4).unwrap_or(0) as usize;
    let an = u16_at(b, 6).unwrap_or(0) as usize;
    let mut m = Message {
        id: u16_at(b, 0).unwrap_or(0),
        response: flags & 0x8000 != 0,
        opcode: ((flags >> 11) & 0xF) as u8,
        rcode: (flags & 0xF) as u8,
        ..Message::default()
    };
    let mut at = 12;
    for _ in 0..qd.min(MAX_RECORDS) {
        let Some((name, next)) = name_at(b, at) else {
            m.truncated = true;
            return Ok(m);
        };
        let (Some(qtype), Some(qclass)) = (u16_at(b, next), u16_at(b, next + 2)) else {
            m.truncated = true;
            return Ok(m);
        };
        m.questions.push(Question {
            name,
            qtype,
            qclass,
        });
        at = next + 4;
    }
    for _ in 0..an.min(MAX_RECORDS) {
        let Some((name, next)) = name_at(b, at) else {
            m.truncated = true;
            return Ok(m);
        };
        let fixed = b.get(next..next + 10);
        let Some(fixed) = fixed else {
            m.truncated = true;
            return Ok(m);
        };
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let class = u16::from_be_bytes([fixed[2], fixed[3]]);
        let ttl = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
        let len = u16::from_be_bytes([fixed[8], fixed[9]]) as usize;
        let Some((data, ip)) = rdata(b, rtype, next + 10, len) else {
            m.truncated = true;
            return Ok(m);
        };
        m.answers.push(Answer {
            name,
            rtype,
            class,
            ttl,
            data,
            ip,
        });
        at = next + 10 + len;
    }
    m.truncated |= qd > MAX_RECORDS || an > MAX_RECORDS;
    Ok(m)
}

/// Builds a query (used by tests and the load generator): one question, recursion desired.
pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut b = Vec::with_capacity(32 + name.len());
    b.extend_from_slice(&id.to_be_bytes());
    b.extend_from_slice(&0x0100u16.to_be_bytes());
    b.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        b.push(label.len().min(63) as u8);
        b.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    b.push(0);
    b.extend_from_slice(&qtype.to_be_bytes());
    b.extend_from_slice(&1u16.to_be_bytes());
    b
}

/// Builds the answer to `query` with one A record per address (compressed owner name).
pub fn answer(query: &[u8], addrs: &[[u8; 4]]) -> Vec<u8> {
    let mut b = query.to_vec();
    if b.len() < 12 {
        return b;
    }
    b[2] = 0x81;
    b[3] = 0x80;
    b[6..8].copy_from_slice(&(addrs.len() as u16).to_be_bytes());
    for a in addrs {
        b.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        b.extend_from_slice(a);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_answer_round_trip() {
        let q = query(0x1234, "evil.example.com", 1);
        let m = parse(&q).unwrap();
        assert_eq!(m.id, 0x1234);
        assert!(!m.response);
        assert_eq!(m.questions.len(), 1);
        assert_eq!(m.questions[0].name, "evil.example.com");
        assert_eq!(type_name(m.questions[0].qtype), "A");
        let a = answer(&q, &[[10, 0, 0, 1], [10, 0, 0, 2]]);
        let m = parse(&a).unwrap();
        assert!(m.response);
        assert_eq!(rcode_name(m.rcode), "NOERROR");
        assert_eq!(m.answers.len(), 2);
        assert_eq!(m.answers[0].name, "evil.example.com");
        assert_eq!(m.answers[1].data, "10.0.0.2");
        assert_eq!(m.answers[0].ttl, 60);
        assert!(!m.truncated);
    }

    #[test]
    fn cut_and_hostile_messages_do_not_panic() {
        let a = answer(&query(1, "a.b.c", 1), &[[1, 2, 3, 4]]);
        for cut in 0..a.len() {
            let r = parse(&a[..cut]);
            if cut < 12 {
                assert_eq!(r, Err(DnsError::Short(cut)));
            } else {
                let m = r.unwrap();
                assert!(m.truncated, "cut at {cut} not reported");
            }
        }
        // A compression loop: the name points at itself.
        let mut lp = query(1, "x", 1);
        lp.truncate(12);
        lp.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
        assert!(parse(&lp).unwrap().truncated);
        // Reserved label type.
        let mut bad = query(1, "x", 1);
        bad[12] = 0x80;
        assert!(parse(&bad).unwrap().truncated);
        // Odd bytes in labels are escaped, not lost.
        let q = query(7, "a\u{1}b", 1);
        assert_eq!(parse(&q).unwrap().questions[0].name, "a\\001b");
    }
}
