//! Just enough of the DNS wire format for the tests: build queries (the probe helper sends
//! them), read the question of a query (the loopback responder) and build its answer.
//!
//! Hand-written on purpose: the daemon parses with hickory-proto, and the tests should not
//! share a parser with the code under test.

use std::net::Ipv4Addr;

pub const TYPE_A: u16 = 1;
pub const TYPE_TXT: u16 = 16;
pub const TYPE_AAAA: u16 = 28;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;
/// EDNS option code of RFC 7830 padding.
const OPTION_PADDING: u16 = 12;

/// A type's mnemonic as the daemon prints it (`qtype`), or the number for other types.
pub fn type_name(qtype: u16) -> String {
    match qtype {
        TYPE_A => "A".into(),
        TYPE_TXT => "TXT".into(),
        TYPE_AAAA => "AAAA".into(),
        other => other.to_string(),
    }
}

/// A type from its mnemonic or number.
pub fn parse_type(s: &str) -> Option<u16> {
    match s {
        "A" => Some(TYPE_A),
        "TXT" => Some(TYPE_TXT),
        "AAAA" => Some(TYPE_AAAA),
        n => n.parse().ok(),
    }
}

/// A standard query (RD set) for one name. With `padding > 0` an EDNS OPT record with a
/// padding option of that many bytes is appended, which makes large payloads on demand.
pub fn query(id: u16, name: &str, qtype: u16, padding: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(64 + padding);
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&[0x01, 0x00]); // flags: RD
    p.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
    p.extend_from_slice(&[0, 0, 0, 0]); // ANCOUNT, NSCOUNT
    p.extend_from_slice(&u16::from(padding > 0).to_be_bytes()); // ARCOUNT
    push_name(&mut p, name);
    p.extend_from_slice(&qtype.to_be_bytes());
    p.extend_from_slice(&CLASS_IN.to_be_bytes());
    if padding > 0 {
        let pad = u16::try_from(padding).expect("padding fits an EDNS option");
        p.push(0); // root name
        p.extend_from_slice(&TYPE_OPT.to_be_bytes());
        p.extend_from_slice(&4096u16.to_be_bytes()); // UDP payload size
        p.extend_from_slice(&[0, 0, 0, 0]); // extended RCODE, version, flags
        p.extend_from_slice(&(pad + 4).to_be_bytes()); // RDLENGTH
        p.extend_from_slice(&OPTION_PADDING.to_be_bytes());
        p.extend_from_slice(&pad.to_be_bytes());
        p.resize(p.len() + padding, 0);
    }
    p
}

fn push_name(p: &mut Vec<u8>, name: &str) {
    for label in name.split('.').filter(|l| !l.is_empty()) {
        let len = u8::try_from(label.len()).expect("a DNS label is at most 63 bytes");
        assert!(len <= 63, "label {label:?} is longer than 63 bytes");
        p.push(len);
        p.extend_from_slice(label.as_bytes());
    }
    p.push(0);
}

/// The first question of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub id: u16,
    /// True when the QR bit is set (a response).
    pub is_response: bool,
    /// Dotted, without the trailing dot.
    pub name: String,
    pub qtype: u16,
    /// Offset just past the question (type and class included).
    pub end: usize,
}

/// Reads the header and the first question; `None` for anything else (compression pointers
/// in a question are not used by real resolvers and are rejected here).
pub fn parse_question(msg: &[u8]) -> Option<Question> {
    if msg.len() < 12 || u16::from_be_bytes([msg[4], msg[5]]) == 0 {
        return None;
    }
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*msg.get(pos)?);
        pos += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(msg.get(pos..pos + len)?).into_owned());
        pos += len;
    }
    let qtype = u16::from_be_bytes([*msg.get(pos)?, *msg.get(pos + 1)?]);
    msg.get(pos + 2..pos + 4)?;
    Some(Question {
        id: u16::from_be_bytes([msg[0], msg[1]]),
        is_response: msg[2] & 0x80 != 0,
        name: labels.join("."),
        qtype,
        end: pos + 4,
    })
}

/// The answer to `query`: `A` questions get `addr`, every other type gets NOERROR without
/// records (NODATA), so a resolver asking A and AAAA finishes at once.
pub fn answer(query: &[u8], q: &Question, addr: Ipv4Addr) -> Vec<u8> {
    let with_record = q.qtype == TYPE_A;
    let mut r = Vec::with_capacity(q.end + 16);
    r.extend_from_slice(&q.id.to_be_bytes());
    // QR, opcode 0, RD copied from the query, RA, RCODE 0.
    r.push(0x80 | (query[2] & 0x01));
    r.push(0x80);
    r.extend_from_slice(&1u16.to_be_bytes());
    r.extend_from_slice(&u16::from(with_record).to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(&query[12..q.end]);
    if with_record {
        r.extend_from_slice(&[0xc0, 12]); // pointer to the question's name
        r.extend_from_slice(&TYPE_A.to_be_bytes());
        r.extend_from_slice(&CLASS_IN.to_be_bytes());
        r.extend_from_slice(&60u32.to_be_bytes());
        r.extend_from_slice(&4u16.to_be_bytes());
        r.extend_from_slice(&addr.octets());
    }
    r
}

/// Lower-case hex, the form the probe helper takes payloads in.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_round_trips_through_the_question_parser() {
        let q = query(0xbeef, "a-1.Example.test.", TYPE_AAAA, 0);
        let parsed = parse_question(&q).expect("parses");
        assert_eq!(
            parsed,
            Question {
                id: 0xbeef,
                is_response: false,
                name: "a-1.Example.test".into(),
                qtype: TYPE_AAAA,
                end: q.len(),
            }
        );
    }

    #[test]
    fn padding_makes_a_large_query_with_the_same_question() {
        let q = query(1, "big.test", TYPE_A, 600);
        assert!(q.len() > 600);
        assert_eq!(
            u16::from_be_bytes([q[10], q[11]]),
            1,
            "one additional record"
        );
        assert_eq!(parse_question(&q).expect("parses").name, "big.test");
    }

    #[test]
    fn answer_echoes_the_question_and_carries_the_address() {
        let q = query(7, "x.test", TYPE_A, 0);
        let question = parse_question(&q).expect("parses");
        let a = answer(&q, &question, Ipv4Addr::LOCALHOST);
        assert_eq!(&a[..2], &[0, 7]);
        assert_eq!(a[2] & 0x80, 0x80, "QR set");
        assert_eq!(u16::from_be_bytes([a[6], a[7]]), 1, "one answer");
        assert_eq!(&a[a.len() - 4..], &[127, 0, 0, 1]);
        let q6 = query(8, "x.test", TYPE_AAAA, 0);
        let a6 = answer(
            &q6,
            &parse_question(&q6).expect("parses"),
            Ipv4Addr::LOCALHOST,
        );
        assert_eq!(u16::from_be_bytes([a6[6], a6[7]]), 0, "NODATA for AAAA");
    }

    #[test]
    fn malformed_questions_are_rejected() {
        assert_eq!(parse_question(&[]), None);
        assert_eq!(parse_question(&[0; 12]), None, "no question");
        let mut q = query(1, "example.org", TYPE_A, 0);
        q.truncate(15);
        assert_eq!(parse_question(&q), None, "cut inside the name");
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(to_hex(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(from_hex("00ab10"), Some(vec![0, 0xab, 0x10]));
        assert_eq!(from_hex("0"), None);
        assert_eq!(from_hex("zz"), None);
        assert_eq!(type_name(TYPE_AAAA), "AAAA");
        assert_eq!(parse_type("TXT"), Some(TYPE_TXT));
        assert_eq!(parse_type("65"), Some(65));
    }
}
