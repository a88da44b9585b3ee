//! A tiny UDP DNS server on a loopback address, so that glibc lookups made by the tests end
//! at once and never reach the machine's real resolver. It answers `A` with 127.0.0.1 and
//! every other type with NODATA, and records each query it got (to compare with the events).

use std::{
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::dnswire;

/// A query as the responder received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub from: SocketAddr,
    pub id: u16,
    pub name: String,
    pub qtype: u16,
}

pub struct Responder {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    received: Arc<Mutex<Vec<Received>>>,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
    /// Binds `addr` (a loopback address; port 53 for a resolver). Fails when it is taken.
    pub fn bind(addr: SocketAddr) -> std::io::Result<Responder> {
        assert!(
            addr.ip().is_loopback(),
            "the responder only ever binds loopback addresses"
        );
        let sock = UdpSocket::bind(addr)?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (stop2, received2) = (stop.clone(), received.clone());
        let thread = std::thread::Builder::new()
            .name(format!("dns-responder-{addr}"))
            .spawn(move || serve(&sock, &stop2, &received2))?;
        Ok(Responder {
            addr,
            stop,
            received,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every query received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits (bounded: 10 s) for a received query matching `pred`; fails the test otherwise.
    pub fn wait_received(&self, what: &str, pred: impl Fn(&Received) -> bool) -> Received {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(r) = self.received().into_iter().find(|r| pred(r)) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "the responder on {} never got {what}; it got {:?}",
                self.addr,
                self.received()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn serve(sock: &UdpSocket, stop: &AtomicBool, received: &Mutex<Vec<Received>>) {
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("dns responder: recv failed: {e}");
                return;
            }
        };
        let msg = &buf[..n];
        let Some(q) = dnswire::parse_question(msg) else {
            continue;
        };
        if q.is_response {
            continue;
        }
        received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Received {
                from,
                id: q.id,
                name: q.name.clone(),
                qtype: q.qtype,
            });
        // Answers go back to the asker only, which is on loopback too.
        if from.ip().is_loopback() || is_mapped_loopback(&from) {
            let _ = sock.send_to(&dnswire::answer(msg, &q, Ipv4Addr::LOCALHOST), from);
        }
    }
}

fn is_mapped_loopback(a: &SocketAddr) -> bool {
    match a {
        SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        SocketAddr::V4(_) => false,
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
