//! Scrapes of the daemon's Prometheus endpoint (`--metrics`) over real HTTP.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{Ipv4Addr, TcpStream},
    time::Duration,
};

/// `GET path` on 127.0.0.1:port; returns (status, headers, body).
pub fn get(port: u16, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .unwrap_or_else(|e| panic!("connecting to the metrics port {port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: */*\r\n\r\n"
    )
    .expect("sending the request");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("reading the response");
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {raw:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status code in {head:?}"));
    (status, head.to_owned(), body.to_owned())
}

/// The samples of an OpenMetrics text: `name{labels}` -> value.
pub fn samples(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad sample line {l:?}"));
            let v: f64 = v
                .parse()
                .unwrap_or_else(|_| panic!("bad sample value in {l:?}"));
            (k.to_owned(), v)
        })
        .collect()
}

/// One scrape of /metrics: checked for status, content type and the OpenMetrics terminator.
pub fn scrape(port: u16) -> BTreeMap<String, f64> {
    let (status, head, body) = get(port, "/metrics");
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "OpenMetrics content type: {head}"
    );
    assert!(
        body.ends_with("# EOF\n"),
        "OpenMetrics ends with # EOF: {body}"
    );
    samples(&body)
}

pub fn value(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(key).unwrap_or_else(|| {
        let keys: Vec<&String> = m.keys().collect();
        panic!("no sample {key} among {keys:?}")
    })
}

/// `name{label="v"}`: the key of one labelled sample in [`samples`].
pub fn labelled(name: &str, label: &str, v: &str) -> String {
    format!("{name}{{{label}=\"{v}\"}}")
}
