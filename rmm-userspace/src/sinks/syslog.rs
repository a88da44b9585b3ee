//! Alerts to syslog: RFC 5424 with a structured-data element carrying the key fields and the
//! JSON alert as the message (or RFC 3164), over the local `/dev/log` socket, UDP, TCP with
//! octet-counting framing (RFC 6587) or TCP+TLS (RFC 5425, rustls).
//!
//! The formatter is our own rather than the `syslog` crate's: that one stamps the send time
//! instead of the event's, only takes numeric MSGIDs, and its TCP transport frames with
//! newlines rather than octet counting.

use std::{
    io::{ErrorKind, Write},
    net::{TcpStream, ToSocketAddrs, UdpSocket},
    os::unix::net::UnixDatagram,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};

use super::Deliver;
use crate::alert::Alert;

/// Example enterprise number of RFC 5612, for the private SD-ID `rmm@32473`.
pub const SD_ID: &str = "rmm@32473";
pub const APP_NAME: &str = "rmm-monitor";
const IO_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    Unix(PathBuf),
    Udp(String),
    Tcp(String),
    Tls(String),
}

impl Transport {
    /// `unix:///dev/log`, `udp://HOST:PORT`, `tcp://HOST:PORT`, `tls://HOST:PORT`.
    pub fn parse(url: &str) -> Result<Transport> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            anyhow!("syslog URL {url:?} has no scheme (unix://, udp://, tcp://, tls://)")
        })?;
        if scheme == "unix" {
            if !rest.starts_with('/') {
                bail!("syslog URL {url:?}: unix:// takes an absolute socket path");
            }
            return Ok(Transport::Unix(PathBuf::from(rest)));
        }
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| anyhow!("syslog URL {url:?} has no port"))?;
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            bail!("syslog URL {url:?}: expected HOST:PORT");
        }
        let addr = rest.to_owned();
        match scheme {
            "udp" => Ok(Transport::Udp(addr)),
            "tcp" => Ok(Transport::Tcp(addr)),
            "tls" => Ok(Transport::Tls(addr)),
            other => bail!("syslog URL {url:?}: unknown scheme {other:?} (unix, udp, tcp, tls)"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Rfc5424,
    Rfc3164,
}

/// Facility names of RFC 5424 section 6.2.1.
pub fn facility_code(name: &str) -> Result<u8> {
    const NAMES: [&str; 24] = [
        "kern",
        "user",
        "mail",
        "daemon",
        "auth",
        "syslog",
        "lpr",
        "news",
        "uucp",
        "cron",
        "authpriv",
        "ftp",
        "ntp",
        "security",
        "console",
        "solaris-cron",
        "local0",
        "local1",
        "local2",
        "local3",
        "local4",
        "local5",
        "local6",
        "local7",
    ];
    NAMES
        .iter()
        .position(|n| *n == name)
        .map(|i| i as u8)
        .ok_or_else(|| {
            anyhow!(
                "unknown syslog facility {name:?} (one of {})",
                NAMES.join(", ")
            )
        })
}

/// RFC 5424 severity from the alert's severity.
fn severity_code(s: &str) -> u8 {
    match s {
        "critical" => 2,
        "high" => 3,
        "medium" => 4,
        _ => 5,
    }
}

fn sd_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// RFC 5424 TIMESTAMP: at most 6 fractional digits.
fn timestamp_5424(ts: &str) -> String {
    match ts.split_once('.') {
        Some((secs, frac)) => {
            let digits: String = frac
                .chars()
                .take_while(char::is_ascii_digit)
                .take(6)
                .collect();
            format!("{secs}.{digits}Z")
        }
        None => ts.to_owned(),
    }
}

pub fn format_5424(a: &Alert, facility: u8, hostname: &str, pid: u32) -> Result<String> {
    let pri = u32::from(facility) * 8 + u32::from(severity_code(a.rmm.severity));
    let mut sd = vec![
        ("tool", a.rmm.tool.clone()),
        ("indicator", a.rmm.indicator_name().to_owned()),
        ("matched", a.rmm.matched.clone()),
        (
            "action",
            serde_json::to_value(a.event.action)?
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ),
        ("severity", a.rmm.severity.to_owned()),
        ("rule", a.rule.id.clone()),
        ("technique", a.threat.technique.id.clone()),
        ("pid", a.process.pid.to_string()),
    ];
    if !a.process.executable.is_empty() {
        sd.push(("exe", a.process.executable.clone()));
    }
    if let Some(l) = &a.rmm.loss {
        sd.push(("lost", l.count.to_string()));
    }
    if let Some(d) = &a.destination {
        sd.push(("dst_ip", d.ip.to_string()));
        sd.push(("dst_port", d.port.to_string()));
        if let Some(dom) = &d.domain {
            sd.push(("dst_domain", dom.clone()));
        }
    }
    if let Some(q) = &a.dns {
        sd.push(("dns_name", q.question.name.clone()));
    }
    if let Some(c) = &a.container {
        sd.push(("container", c.id.clone()));
    }
    let params: Vec<String> = sd
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", sd_escape(v)))
        .collect();
    let msgid = serde_json::to_value(a.event.action)?
        .as_str()
        .unwrap_or("alert")
        .to_owned();
    let host = if hostname.is_empty() { "-" } else { hostname };
    Ok(format!(
        "<{pri}>1 {} {host} {APP_NAME} {pid} {msgid} [{SD_ID} {}] {}",
        timestamp_5424(&a.timestamp),
        params.join(" "),
        serde_json::to_string(a)?
    ))
}

pub fn format_3164(a: &Alert, facility: u8, hostname: &str, pid: u32) -> Result<String> {
    let pri = u32::from(facility) * 8 + u32::from(severity_code(a.rmm.severity));
    // SAFETY: time(NULL) and localtime_r with valid pointers.
    let stamp = unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&t, &mut tm);
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        format!(
            "{} {:>2} {:02}:{:02}:{:02}",
            MONTHS[(tm.tm_mon.clamp(0, 11)) as usize],
            tm.tm_mday,
            tm.tm_hour,
            tm.tm_min,
            tm.tm_sec
        )
    };
    let host = if hostname.is_empty() {
        "localhost"
    } else {
        hostname
    };
    Ok(format!(
        "<{pri}>{stamp} {host} {APP_NAME}[{pid}]: {}",
        serde_json::to_string(a)?
    ))
}

#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// CA bundle that signs the server's certificate (default: the system bundle).
    pub ca: Option<PathBuf>,
    /// Client certificate and key, for servers that require them.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

pub fn tls_config(files: &TlsFiles) -> Result<Arc<ClientConfig>> {
    let ca = files
        .ca
        .clone()
        .unwrap_or_else(|| PathBuf::from(SYSTEM_CA_BUNDLE));
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&ca)
        .with_context(|| format!("reading CA bundle {}", ca.display()))?
    {
        roots
            .add(cert.with_context(|| format!("parsing CA bundle {}", ca.display()))?)
            .with_context(|| format!("adding a CA from {}", ca.display()))?;
    }
    if roots.is_empty() {
        bail!("CA bundle {} holds no certificate", ca.display());
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots);
    let config = match (&files.cert, &files.key) {
        (Some(c), Some(k)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(c)
                .with_context(|| format!("reading client certificate {}", c.display()))?
                .collect::<Result<_, _>>()
                .with_context(|| format!("parsing client certificate {}", c.display()))?;
            let key = PrivateKeyDer::from_pem_file(k)
                .with_context(|| format!("reading client key {}", k.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .context("client certificate and key do not match")?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => bail!("a TLS client certificate needs both a certificate and a key"),
    };
    Ok(Arc::new(config))
}

enum Conn {
    Unix(UnixDatagram),
    Udp(UdpSocket),
    Tcp(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

pub struct SyslogSink {
    url: String,
    transport: Transport,
    format: Format,
    facility: u8,
    hostname: String,
    pid: u32,
    tls: Option<Arc<ClientConfig>>,
    conn: Option<Conn>,
}

impl SyslogSink {
    pub fn new(url: &str, format: Format, facility: u8, tls: &TlsFiles) -> Result<SyslogSink> {
        let transport = Transport::parse(url)?;
        let tls = match transport {
            Transport::Tls(_) => Some(tls_config(tls)?),
            _ => None,
        };
        Ok(SyslogSink {
            url: url.to_owned(),
            transport,
            format,
            facility,
            hostname: crate::detect::hostname(),
            pid: std::process::id(),
            tls,
            conn: None,
        })
    }

    fn tcp(addr: &str) -> Result<TcpStream> {
        let mut last = None;
        for a in addr
            .to_socket_addrs()
            .with_context(|| format!("resolving {addr}"))?
        {
            match TcpStream::connect_timeout(&a, IO_TIMEOUT) {
                Ok(s) => {
                    s.set_write_timeout(Some(IO_TIMEOUT))?;
                    s.set_nodelay(true)?;
                    return Ok(s);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.map_or_else(
            || anyhow!("{addr} resolves to no address"),
            |e| anyhow!(e).context(format!("connecting to {addr}")),
        ))
    }
}

/// True when the peer has closed the connection (a FIN is waiting): a write would vanish.
fn peer_closed(s: &TcpStream) -> bool {
    if s.set_nonblocking(true).is_err() {
        return false;
    }
    let mut b = [0u8; 1];
    let closed = matches!(s.peek(&mut b), Ok(0))
        || matches!(s.peek(&mut b), Err(ref e) if e.kind() != ErrorKind::WouldBlock);
    let _ = s.set_nonblocking(false);
    closed
}

impl Deliver for SyslogSink {
    fn describe(&self) -> String {
        format!("syslog:{}", self.url)
    }

    fn connect(&mut self) -> Result<()> {
        self.conn = None;
        let conn = match &self.transport {
            Transport::Unix(p) => {
                let s = UnixDatagram::unbound().context("creating a unix datagram socket")?;
                s.connect(p)
                    .with_context(|| format!("connecting to {}", p.display()))?;
                Conn::Unix(s)
            }
            Transport::Udp(addr) => {
                let target = addr
                    .to_socket_addrs()
                    .with_context(|| format!("resolving {addr}"))?
                    .next()
                    .ok_or_else(|| anyhow!("{addr} resolves to no address"))?;
                let s = UdpSocket::bind(if target.is_ipv4() {
                    "0.0.0.0:0"
                } else {
                    "[::]:0"
                })
                .context("binding a UDP socket")?;
                s.connect(target)
                    .with_context(|| format!("connecting to {addr}"))?;
                Conn::Udp(s)
            }
            Transport::Tcp(addr) => Conn::Tcp(Self::tcp(addr)?),
            Transport::Tls(addr) => {
                let config = self.tls.clone().context("TLS configuration missing")?;
                let host = addr
                    .rsplit_once(':')
                    .map_or(addr.as_str(), |(h, _)| h)
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                let name = ServerName::try_from(host.to_owned())
                    .with_context(|| format!("{host:?} is not a valid TLS server name"))?;
                let tcp = Self::tcp(addr)?;
                tcp.set_read_timeout(Some(IO_TIMEOUT))?;
                let mut tls = StreamOwned::new(
                    ClientConnection::new(config, name).context("starting TLS")?,
                    tcp,
                );
                // Complete the handshake now, so that certificate errors surface at connect.
                while tls.conn.is_handshaking() {
                    tls.conn
                        .complete_io(&mut tls.sock)
                        .with_context(|| format!("TLS handshake with {addr}"))?;
                }
                Conn::Tls(Box::new(tls))
            }
        };
        self.conn = Some(conn);
        Ok(())
    }

    fn send(&mut self, alert: &Alert) -> Result<()> {
        let msg = match self.format {
            Format::Rfc5424 => format_5424(alert, self.facility, &self.hostname, self.pid)?,
            Format::Rfc3164 => format_3164(alert, self.facility, &self.hostname, self.pid)?,
        };
        let conn = self.conn.as_mut().context("not connected")?;
        let framed = || format!("{} {msg}", msg.len());
        match conn {
            Conn::Unix(s) => {
                s.send(msg.as_bytes())
                    .context("sending to the syslog socket")?;
            }
            Conn::Udp(s) => {
                s.send(msg.as_bytes()).context("sending a UDP datagram")?;
            }
            Conn::Tcp(s) => {
                if peer_closed(s) {
                    self.conn = None;
                    bail!("the syslog server closed the connection");
                }
                s.write_all(framed().as_bytes())
                    .context("writing to the TCP connection")?;
            }
            Conn::Tls(s) => {
                if peer_closed(&s.sock) {
                    self.conn = None;
                    bail!("the syslog server closed the connection");
                }
                s.write_all(framed().as_bytes())
                    .context("writing to the TLS connection")?;
                s.flush().context("flushing the TLS connection")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            Transport::parse("unix:///dev/log").unwrap(),
            Transport::Unix("/dev/log".into())
        );
        assert_eq!(
            Transport::parse("udp://127.0.0.1:514").unwrap(),
            Transport::Udp("127.0.0.1:514".into())
        );
        assert_eq!(
            Transport::parse("tcp://[::1]:601").unwrap(),
            Transport::Tcp("[::1]:601".into())
        );
        assert_eq!(
            Transport::parse("tls://logs.example.net:6514").unwrap(),
            Transport::Tls("logs.example.net:6514".into())
        );
        for bad in [
            "127.0.0.1:514",
            "http://x:1",
            "udp://x",
            "udp://:514",
            "tcp://h:0",
            "unix://dev/log",
            "udp://h:99999",
        ] {
            assert!(Transport::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn facilities() {
        assert_eq!(facility_code("auth").unwrap(), 4);
        assert_eq!(facility_code("local7").unwrap(), 23);
        assert!(facility_code("bogus").is_err());
    }

    #[test]
    fn structured_data_escaping_and_timestamp() {
        assert_eq!(sd_escape(r#"a"b\c]d"#), r#"a\"b\\c\]d"#);
        assert_eq!(
            timestamp_5424("2026-11-24T05:09:32.962834542Z"),
            "2026-11-24T05:09:32.962834Z"
        );
        assert_eq!(
            timestamp_5424("2026-11-24T05:09:32Z"),
            "2026-11-24T05:09:32Z"
        );
    }
}
