//! Prometheus metrics on a small HTTP endpoint (off by default; `127.0.0.1:PORT` when on):
//! events per kind, events lost per ring and reason, alerts per tool, sink deliveries, errors
//! and drops, rule reloads. Encoded by `prometheus-client` (OpenMetrics text) from snapshots of
//! the daemon's own counters at each scrape.

use std::{
    fmt,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use anyhow::{Context, Result};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::{
    detect::DetectStats,
    features::Report,
    sinks::SinkSet,
    stats::{KernelDrops, Stats},
};

/// Everything the metrics are read from.
pub struct Sources {
    pub stats: Arc<Stats>,
    pub drops: Arc<KernelDrops>,
    pub detect: Arc<Mutex<DetectStats>>,
    pub sinks: Arc<SinkSet>,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    pub processes: AtomicU64,
    /// Loss records sent to the sinks.
    pub loss_records: AtomicU64,
    /// The kernel features the programs run with.
    pub kernel: crate::features::Report,
}

impl fmt::Debug for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("metrics::Sources")
    }
}

fn counters<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, u64)>,
) -> Result<(), fmt::Error> {
    let mut family =
        encoder.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
    for (value, n) in values {
        let labels = [(label, value)];
        ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauges<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, u64)>,
) -> Result<(), fmt::Error> {
    let mut family =
        encoder.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
    for (value, n) in values {
        let labels = [(label, value)];
        ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX))
            .encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Sources {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), fmt::Error> {
        let snap = self.stats.snapshot(&self.drops);
        counters(
            &mut e,
            "rmm_events",
            "Events received from the kernel, by kind",
            "kind",
            snap.events.iter().map(|(k, v)| (*k, *v)),
        )?;
        counters(
            &mut e,
            "rmm_events_lost",
            "Events the kernel could not deliver (ring buffer full, map full), by reason",
            "reason",
            snap.kernel_drops.iter().map(|(k, v)| (*k, *v)),
        )?;
        counters(
            &mut e,
            "rmm_kernel_filtered",
            "Packets the kernel left out on purpose (no record was wanted), by reason",
            "reason",
            snap.kernel_filtered.iter().map(|(k, v)| (*k, *v)),
        )?;
        counters(
            &mut e,
            "rmm_records_skipped",
            "Records skipped by the daemon, by reason",
            "reason",
            [
                ("bad_size", snap.decode_bad_size),
                ("unknown_kind", snap.decode_unknown_kind),
                ("dns_malformed", snap.dns_malformed),
            ],
        )?;
        let detect = self.detect.lock().map(|d| d.clone()).unwrap_or_default();
        counters(
            &mut e,
            "rmm_alerts",
            "Alerts raised, by tool",
            "tool",
            detect.alerts.iter().map(|(k, v)| (k.as_str(), *v)),
        )?;
        counters(
            &mut e,
            "rmm_allowed",
            "Matches suppressed by the allowlist, by tool",
            "tool",
            detect.allowed.iter().map(|(k, v)| (k.as_str(), *v)),
        )?;
        counters(
            &mut e,
            "rmm_deduplicated",
            "Matches folded into an earlier alert",
            "kind",
            [("all", detect.deduplicated)],
        )?;
        counters(
            &mut e,
            "rmm_dns_answers",
            "DNS answers to vendor-domain queries, by result (parsed, malformed, rejected: from another server or for another question)",
            "result",
            [
                ("parsed", detect.answers_parsed),
                ("malformed", detect.answers_malformed),
                ("rejected", detect.answers_rejected),
            ],
        )?;
        counters(
            &mut e,
            "rmm_loss_records",
            "Loss records sent to the sinks (events the daemon lost, at most one per reason per stats interval)",
            "kind",
            [("all", self.loss_records.load(Relaxed))],
        )?;
        counters(
            &mut e,
            "rmm_rule_reloads",
            "Rule reloads (SIGHUP), by result",
            "result",
            [
                ("ok", self.reloads_ok.load(Relaxed)),
                ("failed", self.reloads_failed.load(Relaxed)),
            ],
        )?;
        let sinks = self.sinks.reports();
        counters(
            &mut e,
            "rmm_sink_delivered",
            "Alerts delivered, by sink",
            "sink",
            sinks.iter().map(|s| (s.sink.as_str(), s.delivered)),
        )?;
        counters(
            &mut e,
            "rmm_sink_delivered_late",
            "Alerts delivered after waiting over a second (an outage), by sink",
            "sink",
            sinks.iter().map(|s| (s.sink.as_str(), s.delivered_late)),
        )?;
        counters(
            &mut e,
            "rmm_sink_dropped",
            "Alerts dropped because the sink's queue was full, by sink",
            "sink",
            sinks.iter().map(|s| (s.sink.as_str(), s.dropped)),
        )?;
        counters(
            &mut e,
            "rmm_sink_errors",
            "Delivery and connection errors, by sink",
            "sink",
            sinks.iter().map(|s| (s.sink.as_str(), s.errors)),
        )?;
        counters(
            &mut e,
            "rmm_sink_reconnects",
            "Reconnections, by sink",
            "sink",
            sinks.iter().map(|s| (s.sink.as_str(), s.reconnects)),
        )?;
        let t = &detect.tables;
        gauges(
            &mut e,
            "rmm_table_entries",
            "Entries in the daemon's tables that grow with the host's activity (each is capped)",
            "table",
            t.sizes(),
        )?;
        counters(
            &mut e,
            "rmm_table_evictions",
            "What the tables' caps did: entries evicted early or refused, by table and kind",
            "what",
            t.evictions(),
        )?;
        let g = ConstGauge::new(self.processes.load(Relaxed) as i64);
        g.encode(e.encode_descriptor(
            "rmm_processes",
            "Processes in the process table",
            None,
            g.metric_type(),
        )?)?;
        kernel_features(&mut e, &self.kernel)
    }
}

/// `rmm_kernel_feature{feature, kernel}`: 1 when on, 0 when off (the `ready` line says why).
fn kernel_features(e: &mut DescriptorEncoder, report: &Report) -> Result<(), fmt::Error> {
    let mut family = e.encode_descriptor(
        "rmm_kernel_feature",
        "Kernel features the probes use: 1 on, 0 off with a fallback (see the ready log line)",
        None,
        ConstGauge::new(0i64).metric_type(),
    )?;
    for f in &report.features {
        let labels = [("feature", f.name), ("kernel", report.kernel.as_str())];
        ConstGauge::new(i64::from(f.on)).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

pub fn render(sources: &Arc<Sources>) -> Result<String> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(sources.clone()));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).context("encoding metrics")?;
    Ok(out)
}

/// Binds now (a taken port is a start-up error) and serves `GET /metrics` in the background.
pub async fn serve(addr: &str, sources: Arc<Sources>) -> Result<SocketAddr> {
    let addr: SocketAddr = addr
        .parse()
        .with_context(|| format!("metrics address {addr:?} is not ADDRESS:PORT"))?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics endpoint {addr}"))?;
    let local = listener.local_addr().context("metrics endpoint address")?;
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            let sources = sources.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut n = 0;
                // Read the request head, bounded in size and time.
                let read = tokio::time::timeout(Duration::from_secs(5), async {
                    while n < buf.len() {
                        match conn.read(&mut buf[n..]).await {
                            Ok(0) | Err(_) => break,
                            Ok(k) => n += k,
                        }
                        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                })
                .await;
                if read.is_err() {
                    return;
                }
                let head = String::from_utf8_lossy(&buf[..n]);
                let mut parts = head.split_whitespace();
                let response = match (parts.next(), parts.next()) {
                    (Some("GET"), Some("/metrics")) => match render(&sources) {
                        Ok(body) => format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        ),
                        Err(_) => "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
                    },
                    _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\nConnection: close\r\n\r\nnot found\n".into(),
                };
                let _ = conn.write_all(response.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    Ok(local)
}
