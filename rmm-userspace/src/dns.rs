//! DNS query payloads (copied by the kernel from UDP/53 egress) to names and types, with
//! hickory-proto, the parser the Rust DNS ecosystem is built on.

use std::net::IpAddr;

use hickory_proto::{
    op::{Message, MessageType},
    rr::{Name, RData},
};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DnsQuery {
    /// Transaction id.
    pub txid: u16,
    /// First question's name, as sent (case kept), without the trailing dot.
    pub qname: String,
    /// First question's type (`A`, `AAAA`, `TXT`, ...).
    pub qtype: String,
    /// Number of questions (almost always 1).
    pub qcount: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsError {
    /// hickory could not parse the payload (truncated, bad label, bad pointer, ...).
    Parse(String),
    /// A response was sent to port 53.
    NotAQuery,
    NoQuestion,
    /// A query came from port 53 where an answer was expected.
    NotAnAnswer,
    /// The answer's question is not the one asked (name, type or count): a forged or stray
    /// answer, ignored.
    QuestionMismatch,
}

/// Parses a query. A truncated payload (longer than the 512 bytes copied) usually still holds
/// the question section, but records after it are cut: the header and questions are enough, so
/// a failure past the questions is retried on the questions alone.
pub fn parse_query(payload: &[u8]) -> Result<DnsQuery, DnsError> {
    let msg = match Message::from_vec(payload) {
        Ok(m) => m,
        Err(e) => match questions_only(payload) {
            Some(m) => m,
            None => return Err(DnsError::Parse(e.to_string())),
        },
    };
    if msg.metadata.message_type != MessageType::Query {
        return Err(DnsError::NotAQuery);
    }
    let q = msg.queries.first().ok_or(DnsError::NoQuestion)?;
    let mut qname = q.name().to_ascii();
    if qname.len() > 1 && qname.ends_with('.') {
        qname.pop();
    }
    Ok(DnsQuery {
        txid: msg.metadata.id,
        qname,
        qtype: q.query_type().to_string(),
        qcount: msg.queries.len(),
    })
}

/// A name as compared here: ASCII lower case (resolvers may randomise the case of a query,
/// RFC 5452's 0x20 bits), no trailing dot.
fn norm(name: &Name) -> String {
    let mut n = name.to_ascii().to_ascii_lowercase();
    if n.len() > 1 && n.ends_with('.') {
        n.pop();
    }
    n
}

/// The IPv4 and IPv6 addresses that an answer gives for the question asked (`qname` of type
/// `qtype`, as [`parse_query`] reported them): the answer must echo exactly that question, and
/// only A and AAAA records of `qname` or of the CNAME chain that starts there count, so that an
/// answer cannot tag addresses under names nobody asked for.
pub fn parse_answer(payload: &[u8], qname: &str, qtype: &str) -> Result<Vec<IpAddr>, DnsError> {
    let msg = Message::from_vec(payload).map_err(|e| DnsError::Parse(e.to_string()))?;
    if msg.metadata.message_type != MessageType::Response {
        return Err(DnsError::NotAnAnswer);
    }
    let asked = qname.trim_end_matches('.').to_ascii_lowercase();
    match msg.queries.as_slice() {
        [q] if norm(q.name()) == asked && q.query_type().to_string() == qtype => {}
        _ => return Err(DnsError::QuestionMismatch),
    }
    // The chain of names from the question through its CNAMEs; each pass adds at least one
    // name or ends, so there are at most as many passes as records.
    let mut chain = vec![asked];
    for _ in 0..msg.answers.len() {
        let before = chain.len();
        for r in &msg.answers {
            if let RData::CNAME(target) = &r.data
                && chain.contains(&norm(&r.name))
            {
                let t = norm(&target.0);
                if !chain.contains(&t) {
                    chain.push(t);
                }
            }
        }
        if chain.len() == before {
            break;
        }
    }
    Ok(msg
        .answers
        .iter()
        .filter(|r| chain.contains(&norm(&r.name)))
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect())
}

/// The same message with the answer, authority and additional counts set to zero, so that
/// hickory stops after the questions (EDNS OPT records cut by truncation, for instance).
fn questions_only(payload: &[u8]) -> Option<Message> {
    if payload.len() < 12 {
        return None;
    }
    let mut p = payload.to_vec();
    p[6..12].fill(0);
    Message::from_vec(&p).ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A query as glibc builds it: id, RD, one question, and an EDNS OPT record.
    pub fn query(id: u16, name: &str, qtype: u16, edns: bool) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, if edns { 1 } else { 0 }]);
        for label in name.split('.').filter(|l| !l.is_empty()) {
            p.push(label.len() as u8);
            p.extend_from_slice(label.as_bytes());
        }
        p.push(0);
        p.extend_from_slice(&qtype.to_be_bytes());
        p.extend_from_slice(&[0, 1]);
        if edns {
            p.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
        }
        p
    }

    #[test]
    fn parses_a_and_aaaa() {
        let q = parse_query(&query(0x1234, "relay.RustDesk.com.", 1, true)).expect("parses");
        assert_eq!(
            q,
            DnsQuery {
                txid: 0x1234,
                qname: "relay.RustDesk.com".into(),
                qtype: "A".into(),
                qcount: 1
            }
        );
        let q = parse_query(&query(7, "anydesk.com", 28, false)).expect("parses");
        assert_eq!(
            (q.qname.as_str(), q.qtype.as_str()),
            ("anydesk.com", "AAAA")
        );
    }

    #[test]
    fn truncated_additional_records_still_give_the_question() {
        let mut p = query(9, "teamviewer.com", 1, true);
        p.truncate(p.len() - 4);
        assert_eq!(
            parse_query(&p).expect("questions survive").qname,
            "teamviewer.com"
        );
    }

    #[test]
    fn malformed_payloads_are_errors() {
        assert!(parse_query(&[]).is_err());
        assert!(parse_query(&[0; 5]).is_err());
        let mut p = query(1, "example.org", 1, false);
        p.truncate(15); // inside the name
        assert!(matches!(parse_query(&p), Err(DnsError::Parse(_))));
        let mut resp = query(1, "example.org", 1, false);
        resp[2] |= 0x80; // QR = response
        assert_eq!(parse_query(&resp), Err(DnsError::NotAQuery));
        let mut none = query(1, "example.org", 1, false);
        none[5] = 0;
        none.truncate(12);
        assert_eq!(parse_query(&none), Err(DnsError::NoQuestion));
        // a compression pointer looping on itself
        let mut lp = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        lp.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert!(parse_query(&lp).is_err());
    }

    /// An answer to `query`: the question echoed and one A or AAAA record per address.
    pub fn answer(query: &[u8], addrs: &[IpAddr]) -> Vec<u8> {
        let mut p = query.to_vec();
        p[2] |= 0x80;
        p[10] = 0;
        p[11] = 0; // no additional records
        let qend = 12 + p[12..].iter().position(|b| *b == 0).expect("name end") + 1 + 4;
        p.truncate(qend);
        p[7] = addrs.len() as u8;
        for a in addrs {
            p.extend_from_slice(&[0xc0, 12]);
            match a {
                IpAddr::V4(v4) => {
                    p.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                    p.extend_from_slice(&v4.octets());
                }
                IpAddr::V6(v6) => {
                    p.extend_from_slice(&[0, 28, 0, 1, 0, 0, 0, 60, 0, 16]);
                    p.extend_from_slice(&v6.octets());
                }
            }
        }
        p
    }

    #[test]
    fn answers_give_addresses() {
        let q = query(5, "relay.rustdesk.com", 1, false);
        let addrs: Vec<IpAddr> = vec!["127.0.0.9".parse().unwrap(), "::1".parse().unwrap()];
        let a = answer(&q, &addrs);
        assert_eq!(
            parse_answer(&a, "relay.rustdesk.com", "A"),
            Ok(addrs.clone())
        );
        // 0x20 case randomisation and a trailing dot change nothing.
        assert_eq!(parse_answer(&a, "Relay.RustDesk.com.", "A"), Ok(addrs));
        assert_eq!(
            parse_answer(&q, "relay.rustdesk.com", "A"),
            Err(DnsError::NotAnAnswer)
        );
        assert!(
            parse_answer(
                &answer(&q, &["127.0.0.9".parse().unwrap()])[..20],
                "relay.rustdesk.com",
                "A"
            )
            .is_err()
        );
    }

    #[test]
    fn an_answer_to_another_question_gives_nothing() {
        let q = query(5, "x.anydesk.com", 1, false);
        let a = answer(&q, &["127.0.0.9".parse().unwrap()]);
        for (name, kind) in [("y.anydesk.com", "A"), ("x.anydesk.com", "AAAA")] {
            assert_eq!(
                parse_answer(&a, name, kind),
                Err(DnsError::QuestionMismatch),
                "{name} {kind}"
            );
        }
        // Two questions where one was asked.
        let mut two = a.clone();
        two[5] = 2;
        assert!(parse_answer(&two, "x.anydesk.com", "A").is_err());
    }

    /// Appends a record with an uncompressed owner name to `p` and counts it as an answer.
    fn push_record(p: &mut Vec<u8>, owner: &str, kind: u16, data: &[u8]) {
        for label in owner.split('.') {
            p.push(label.len() as u8);
            p.extend_from_slice(label.as_bytes());
        }
        p.push(0);
        p.extend_from_slice(&kind.to_be_bytes());
        p.extend_from_slice(&[0, 1, 0, 0, 0, 60]);
        p.extend_from_slice(&(data.len() as u16).to_be_bytes());
        p.extend_from_slice(data);
        p[7] += 1;
    }

    fn wire_name(name: &str) -> Vec<u8> {
        let mut w = Vec::new();
        for label in name.split('.') {
            w.push(label.len() as u8);
            w.extend_from_slice(label.as_bytes());
        }
        w.push(0);
        w
    }

    #[test]
    fn only_records_of_the_question_and_its_cname_chain_count() {
        let q = query(6, "relay.anydesk.com", 1, false);
        let mut p = answer(&q, &[]);
        push_record(
            &mut p,
            "relay.anydesk.com",
            5,
            &wire_name("edge.cdn.example"),
        );
        push_record(&mut p, "edge.cdn.example", 1, &[127, 0, 0, 10]);
        // An address for a name nobody asked for, in the same answer.
        push_record(&mut p, "proxy.corp.example", 1, &[127, 0, 0, 11]);
        assert_eq!(
            parse_answer(&p, "relay.anydesk.com", "A"),
            Ok(vec!["127.0.0.10".parse().unwrap()])
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x: u32 = 0x9e37_79b9;
        for len in 0..600usize {
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = parse_query(&buf);
            let _ = parse_answer(&buf, "example.org", "A");
        }
    }
}
