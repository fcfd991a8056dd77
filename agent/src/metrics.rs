//! Prometheus metrics at `http://[metrics] listen/metrics` (off unless configured).
//!
//! Every scrape renders the same [`NodeStatus`] the control API's `status` returns
//! (asked from the failover driver through the same command channel), plus the session
//! counts by phase from the same list `sessions` returns, so the two never disagree.
//! [`render`] is a pure function of those two snapshots (unit-tested here); [`serve`]
//! is the thin HTTP driver (hyper, one connection at a time per task, at most
//! [`MAX_CONNECTIONS`] at once, each bounded in time).
//!
//! The format is the Prometheus text exposition format 0.0.4, encoded by the
//! `prometheus-client` crate. Every name starts with `nonstop_`; counters end in
//! `_total`.

use crate::control::ControlCommand;
use crate::shutdown::Shutdown;
use anyhow::Context;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use nonstop_shared::control::{NodeStatus, SessionList};
use nonstop_shared::session::Phase;
use nonstop_shared::Mode;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Most scrape connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 16;
/// Longest a scrape connection may stay open (request, render, response).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a scrape waits for the status from the failover driver.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// Every phase, in the order the series are written (all of them, zeros included,
/// so a series never vanishes between scrapes).
const PHASES: [Phase; 6] = [
    Phase::Handshake,
    Phase::Established,
    Phase::LocalClosed,
    Phase::PeerClosed,
    Phase::Closing,
    Phase::Closed,
];
/// Every mode, for the `nonstop_mode` state set.
const MODES: [Mode; 4] = [Mode::Startup, Mode::Backup, Mode::Master, Mode::Fault];

/// `Content-Type` of the response.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Renders one exposition from a status and (if the session manager runs) its
/// session list.
pub fn render(
    status: &NodeStatus,
    sessions: Option<&SessionList>,
) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("nonstop");
    registry.register_collector(Box::new(Snapshot {
        status: status.clone(),
        sessions: sessions.cloned(),
    }));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?;
    Ok(out)
}

/// One scrape's data.
#[derive(Debug)]
struct Snapshot {
    status: NodeStatus,
    sessions: Option<SessionList>,
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Handshake => "handshake",
        Phase::Established => "established",
        Phase::LocalClosed => "local_closed",
        Phase::PeerClosed => "peer_closed",
        Phase::Closing => "closing",
        Phase::Closed => "closed",
    }
}

/// Writes one unlabelled gauge.
fn gauge<V>(enc: &mut DescriptorEncoder, name: &str, help: &str, value: V) -> std::fmt::Result
where
    V: prometheus_client::encoding::EncodeGaugeValue + Send + Sync + std::fmt::Debug + 'static,
{
    let metric = ConstGauge::new(value);
    let encoder = enc.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(encoder)
}

/// Writes one unlabelled counter (`<name>_total`).
fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let metric = ConstCounter::new(value);
    let encoder = enc.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(encoder)
}

/// Writes a gauge family with one label.
fn gauge_family<V>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &[(&str, V)],
) -> std::fmt::Result
where
    V: prometheus_client::encoding::EncodeGaugeValue
        + Copy
        + Send
        + Sync
        + std::fmt::Debug
        + 'static,
{
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (value_label, value) in values {
        let labels = [(label, *value_label)];
        let encoder = family.encode_family(&labels)?;
        ConstGauge::new(*value).encode(encoder)?;
    }
    Ok(())
}

/// Writes a counter family with one label.
fn counter_family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &[(&str, u64)],
) -> std::fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value_label, value) in values {
        let labels = [(label, *value_label)];
        let encoder = family.encode_family(&labels)?;
        ConstCounter::new(*value).encode(encoder)?;
    }
    Ok(())
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.status;
        let e = &mut enc;
        // Identity: constant labels an alert can join on.
        {
            let mut info = e.encode_descriptor(
                "node",
                "This agent: node id, VIP and replication mode (value 1)",
                None,
                MetricType::Gauge,
            )?;
            let labels = [
                ("node_id", s.node_id.as_str()),
                ("vip", s.vip.as_str()),
                ("replication", s.replication.mode.as_str()),
            ];
            ConstGauge::new(1u64).encode(info.encode_family(&labels)?)?;
        }
        let modes: Vec<(&str, u64)> = MODES
            .iter()
            .map(|m| (mode_name(*m), u64::from(s.mode == *m)))
            .collect();
        gauge_family(e, "mode", "1 for the node's current mode", "mode", &modes)?;
        gauge(
            e,
            "epoch",
            "Current epoch (term, +1 per promotion)",
            s.epoch,
        )?;
        gauge(e, "priority", "Election priority", u64::from(s.priority))?;
        gauge(
            e,
            "vip_held",
            "1 while the VIP is on the service interface",
            u64::from(s.vip_held),
        )?;
        gauge(
            e,
            "agent_uptime_seconds",
            "Seconds since the agent started",
            s.uptime_ms as f64 / 1000.0,
        )?;

        // Failover manager.
        gauge(
            e,
            "heartbeat_interval_seconds",
            "Configured heartbeat interval",
            s.heartbeat_ms as f64 / 1000.0,
        )?;
        gauge(
            e,
            "heartbeat_misses_limit",
            "Missed heartbeats before failover",
            u64::from(s.misses),
        )?;
        gauge(
            e,
            "heartbeat_missed",
            "Heartbeat intervals since the peer was last heard (0 while healthy)",
            u64::from(s.missed_heartbeats),
        )?;
        if let Some(rtt) = s.peer.rtt_us {
            gauge(
                e,
                "heartbeat_rtt_seconds",
                "Last measured heartbeat round-trip time",
                rtt as f64 / 1e6,
            )?;
        }
        if let Some(ms) = s.peer.last_heard_ms {
            gauge(
                e,
                "peer_last_heard_seconds",
                "Seconds since the peer's last heartbeat",
                ms as f64 / 1000.0,
            )?;
        }
        if let Some(epoch) = s.peer.epoch {
            gauge(e, "peer_epoch", "The peer's epoch as last heard", epoch)?;
        }
        let c = &s.counters;
        counter(e, "heartbeats_sent", "Heartbeats sent", c.heartbeats_sent)?;
        counter(
            e,
            "heartbeats_received",
            "Valid heartbeats received from the peer",
            c.heartbeats_received,
        )?;
        counter(
            e,
            "heartbeats_malformed",
            "Datagrams on the heartbeat port that were not heartbeats",
            c.malformed_heartbeats,
        )?;
        counter(
            e,
            "heartbeats_foreign",
            "Valid heartbeats from an unexpected source or node id",
            c.foreign_heartbeats,
        )?;
        counter(
            e,
            "heartbeats_unconfirmed",
            "Authentic heartbeats from a peer boot not yet confirmed",
            c.heartbeats_unconfirmed,
        )?;
        counter_family(
            e,
            "auth_rejections",
            "Messages or connections refused as unauthenticated, forged or damaged, by channel",
            "channel",
            &[
                ("heartbeat", c.heartbeats_rejected),
                ("replication", c.replication_rejected),
                ("control", c.control_rejected),
            ],
        )?;
        counter_family(
            e,
            "auth_replays",
            "Authentic messages refused as replays, by channel",
            "channel",
            &[
                ("heartbeat", c.heartbeats_replayed),
                ("replication", c.replication_replayed),
            ],
        )?;
        counter(
            e,
            "control_malformed_lines",
            "Control request lines that could not be parsed",
            c.malformed_control_lines,
        )?;
        counter(
            e,
            "promotions",
            "Promotions to master since the agent started",
            c.promotions,
        )?;
        counter(e, "garps_sent", "Gratuitous ARP frames sent", c.garps_sent)?;

        // Session manager and replication.
        let r = &s.replication;
        gauge(
            e,
            "replication_connected",
            "1 while the replication connection is up",
            u64::from(r.connected),
        )?;
        gauge(
            e,
            "replication_position",
            "Last record sequence number issued (master) or applied (backup)",
            r.position,
        )?;
        gauge(
            e,
            "replication_acked",
            "Last record sequence number the backup acknowledged",
            r.acked,
        )?;
        gauge(
            e,
            "replication_lag_records",
            "Records sent and not yet acknowledged",
            r.lag_records,
        )?;
        gauge(
            e,
            "replication_lag_seconds",
            "Age of the oldest unacknowledged record",
            r.lag_ms as f64 / 1000.0,
        )?;
        counter(
            e,
            "replication_snapshots",
            "Snapshots sent or received",
            r.snapshots,
        )?;
        counter(
            e,
            "replication_errors",
            "Records that could not be applied or stored",
            r.errors,
        )?;
        gauge(
            e,
            "sessions",
            "Sessions in this node's table (tracker on the master, replica on the backup)",
            r.sessions,
        )?;
        if let Some(list) = &self.sessions {
            let by_phase: Vec<(&str, u64)> = PHASES
                .iter()
                .map(|p| {
                    let n = list.sessions.iter().filter(|x| x.phase == *p).count() as u64;
                    (phase_name(*p), n)
                })
                .collect();
            gauge_family(
                e,
                "sessions_by_phase",
                "Sessions by TCP phase",
                "phase",
                &by_phase,
            )?;
        }
        gauge(
            e,
            "held_packets",
            "Outbound packets held until the backup has their state",
            r.held_packets,
        )?;
        counter_family(
            e,
            "packets",
            "Packets intercepted, by direction",
            "direction",
            &[("in", r.packets.0), ("out", r.packets.1)],
        )?;
        counter(
            e,
            "restored_sessions",
            "Sessions restored into the local service",
            r.restored,
        )?;
        gauge(
            e,
            "restore_pending",
            "Restores queued or waiting for the service's SYN-ACK",
            r.restore_pending,
        )?;
        counter(e, "restore_failures", "Restores given up", r.restore_failed)?;
        gauge(
            e,
            "restore_last_seconds",
            "Last restore: command to last session restored",
            r.restore_ms as f64 / 1000.0,
        )?;
        gauge(
            e,
            "restore_since_promotion_seconds",
            "Last promotion (or service crash) to last session restored",
            r.restore_since_promotion_ms as f64 / 1000.0,
        )?;
        gauge_family(
            e,
            "restore_session_seconds",
            "Per-session restore time of the last restore, by quantile",
            "quantile",
            &[
                ("0.5", r.restore_session_p50_us as f64 / 1e6),
                ("0.99", r.restore_session_p99_us as f64 / 1e6),
            ],
        )?;
        counter(
            e,
            "sessions_reset",
            "Restored sessions reset because the peer saw state the replica lacked",
            r.sessions_reset,
        )?;
        counter(
            e,
            "segments_out_of_window",
            "Peer segments the kernel would refuse (RFC 5961), passed on without changing a session",
            r.segments_out_of_window,
        )?;
        counter(
            e,
            "app_crashes",
            "Times the service died on this master and its sessions were restored",
            r.app_crashes,
        )?;
        counter(
            e,
            "dropped_malformed",
            "Packets dropped because they could not be parsed (fail-closed)",
            r.dropped_malformed,
        )?;
        counter(
            e,
            "dropped_truncated",
            "Packets dropped because the queue captured only part of them (fail-closed)",
            r.dropped_truncated,
        )?;
        gauge(
            e,
            "held_bytes",
            "Bytes of outbound packets held until the backup has their state",
            r.held_bytes,
        )?;
        counter_family(
            e,
            "bound_drops",
            "Packets dropped at a memory bound (backpressure: sent again later)",
            "bound",
            &[
                ("held", r.bound_drops.held),
                ("unacked", r.bound_drops.unacked),
                ("backlog", r.bound_drops.backlog),
            ],
        )?;
        gauge(
            e,
            "record_backlog_bytes",
            "Record bytes waiting for the replication task",
            r.record_backlog_bytes,
        )?;
        counter(
            e,
            "persist_waits",
            "Times a writer waited for the persistence thread (the disk set the pace)",
            r.persist_waits,
        )?;
        counter(
            e,
            "resyncs",
            "Fresh snapshots because a replicated record did not apply",
            r.resyncs,
        )?;
        counter(
            e,
            "handed_over_sessions",
            "Sessions whose socket queues planned switchovers handed over",
            r.handed_over_sessions,
        )?;
        counter(
            e,
            "handed_over_bytes",
            "Bytes of unsent output and unread input handed over",
            r.handed_over_bytes,
        )?;
        gauge(
            e,
            "sessions_at_risk",
            "Sessions whose service holds output not sent or input not read (a crash resets them)",
            r.sessions_at_risk,
        )?;
        counter(
            e,
            "reset_at_risk",
            "Sessions reset at a takeover because the crashed master had them at risk",
            r.reset_at_risk,
        )?;

        // Resources and the managed service.
        let res = &s.resources;
        gauge(
            e,
            "agent_cpu_percent",
            "Agent CPU use over the last sample, percent of one core",
            f64::from(res.agent_cpu_percent),
        )?;
        gauge(
            e,
            "agent_resident_memory_bytes",
            "Agent resident memory",
            res.agent_rss_kib * 1024,
        )?;
        if let Some(cpu) = res.app_cpu_percent {
            gauge(
                e,
                "app_cpu_percent",
                "Service CPU use, percent of one core",
                f64::from(cpu),
            )?;
        }
        if let Some(rss) = res.app_rss_kib {
            gauge(
                e,
                "app_resident_memory_bytes",
                "Service resident memory",
                rss * 1024,
            )?;
        }
        if let Some(app) = &s.app {
            gauge(
                e,
                "app_running",
                "1 while the managed service runs",
                u64::from(app.pid.is_some()),
            )?;
            counter(
                e,
                "app_restarts",
                "Times the service was restarted after exiting on its own",
                app.restarts,
            )?;
        }
        Ok(())
    }
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Startup => "startup",
        Mode::Backup => "backup",
        Mode::Master => "master",
        Mode::Fault => "fault",
    }
}

/// Where a scrape gets its figures: the same sources as the control API.
#[derive(Clone)]
pub struct MetricsSource {
    /// Channel to the failover driver (status).
    pub commands: mpsc::Sender<ControlCommand>,
    /// Every other manager's part of the status (the session manager's view gives
    /// the sessions by phase).
    pub status: crate::status::StatusSources,
}

impl MetricsSource {
    /// One exposition, or why there is none.
    pub async fn scrape(&self) -> Result<String, String> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(ControlCommand::Status(tx))
            .await
            .map_err(|_| "agent is shutting down".to_owned())?;
        let status = tokio::time::timeout(STATUS_TIMEOUT, rx)
            .await
            .map_err(|_| "the failover manager did not answer in time".to_owned())?
            .map_err(|_| "agent is shutting down".to_owned())?;
        let status = self.status.assemble(status);
        let sessions = match &self.status.sessions {
            Some(view) => Some(view.list().await),
            None => None,
        };
        render(&status, sessions.as_ref()).map_err(|e| format!("cannot encode metrics: {e}"))
    }
}

/// Binds the metrics listener (a startup error if the address is taken or foreign).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("metrics cannot listen on {addr} ([metrics] listen)"))?;
    tracing::info!(%addr, "metrics listening");
    Ok(listener)
}

/// Serves `GET /metrics` on `listener` until shutdown.
pub async fn serve(listener: TcpListener, source: MetricsSource, mut shutdown: Shutdown) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = tokio::select! {
            _ = shutdown.wait() => return,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        let (stream, from) = tokio::select! {
            _ = shutdown.wait() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let source = source.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let source = source.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&source, request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%from, error = %e, "metrics connection failed"),
                Err(_) => tracing::debug!(%from, "metrics connection timed out"),
            }
            drop(slot);
        });
    }
}

async fn respond<B>(source: &MetricsSource, request: Request<B>) -> Response<Full<Bytes>> {
    let reply = |code: StatusCode, content_type: &str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = code;
        if let Ok(value) = content_type.parse() {
            response
                .headers_mut()
                .insert(hyper::header::CONTENT_TYPE, value);
        }
        response
    };
    const PLAIN: &str = "text/plain; charset=utf-8";
    if request.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found: try /metrics\n".into(),
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "only GET\n".into());
    }
    match source.scrape().await {
        Ok(text) => reply(StatusCode::OK, CONTENT_TYPE, text),
        Err(message) => {
            tracing::warn!(%message, "metrics scrape failed");
            reply(
                StatusCode::SERVICE_UNAVAILABLE,
                PLAIN,
                format!("{message}\n"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nonstop_shared::control::{
        AppView, Counters, PeerView, ReplicationView, Resources, SessionInfo,
    };

    fn status() -> NodeStatus {
        NodeStatus {
            node_id: "master".into(),
            mode: Mode::Master,
            epoch: 7,
            priority: 110,
            vip: "198.18.1.100/24".into(),
            vip_held: true,
            heartbeat_ms: 100,
            misses: 3,
            missed_heartbeats: 0,
            peer: PeerView {
                node_id: Some("backup".into()),
                mode: Some(Mode::Backup),
                epoch: Some(7),
                last_heard_ms: Some(40),
                rtt_us: Some(250),
                healthy: None,
            },
            uptime_ms: 12_500,
            pid: 42,
            last_transition: None,
            counters: Counters {
                heartbeats_sent: 125,
                heartbeats_received: 120,
                heartbeats_rejected: 3,
                replication_rejected: 1,
                control_rejected: 2,
                promotions: 1,
                garps_sent: 5,
                ..Counters::default()
            },
            replication: ReplicationView {
                mode: "sync".into(),
                connected: true,
                position: 900,
                acked: 898,
                lag_records: 2,
                lag_ms: 1,
                sessions: 2,
                held_packets: 4,
                packets: (1000, 1100),
                restored: 2,
                restore_session_p50_us: 59,
                restore_session_p99_us: 120,
                segments_out_of_window: 9,
                ..ReplicationView::default()
            },
            resources: Resources {
                agent_cpu_percent: 1.5,
                agent_rss_kib: 9000,
                app_cpu_percent: Some(0.5),
                app_rss_kib: Some(2000),
            },
            app: Some(AppView {
                command: "echo".into(),
                pid: Some(99),
                restarts: 1,
                last_exit: None,
            }),
            check: None,
        }
    }

    fn session(phase: Phase, port: u16) -> SessionInfo {
        SessionInfo {
            peer: format!("198.18.1.10:{port}"),
            local: "198.18.1.100:7000".into(),
            phase,
            bytes_in: 0,
            bytes_out: 0,
            rcv_nxt: 0,
            snd_nxt: 0,
            snd_una: 0,
            unacked_bytes: 0,
            record_seq: 0,
            last_activity_ms: 0,
            replica: None,
        }
    }

    /// Sample lines as (name with labels, value), comments skipped.
    fn samples(text: &str) -> Vec<(String, String)> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (name, value) = l.rsplit_once(' ').expect("name value");
                (name.to_owned(), value.to_owned())
            })
            .collect()
    }

    fn value(text: &str, name: &str) -> String {
        samples(text)
            .into_iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
            .1
    }

    #[test]
    fn exposition_carries_the_status_figures() {
        let list = SessionList {
            node_id: "master".into(),
            mode: Mode::Master,
            source: "tracker".into(),
            sessions: vec![
                session(Phase::Established, 1),
                session(Phase::Established, 2),
                session(Phase::PeerClosed, 3),
            ],
        };
        let text = render(&status(), Some(&list)).expect("render");
        assert_eq!(value(&text, "nonstop_epoch"), "7");
        assert_eq!(value(&text, "nonstop_mode{mode=\"master\"}"), "1");
        assert_eq!(value(&text, "nonstop_mode{mode=\"backup\"}"), "0");
        assert_eq!(value(&text, "nonstop_heartbeat_rtt_seconds"), "0.00025");
        assert_eq!(value(&text, "nonstop_heartbeats_sent_total"), "125");
        assert_eq!(
            value(
                &text,
                "nonstop_auth_rejections_total{channel=\"heartbeat\"}"
            ),
            "3"
        );
        assert_eq!(
            value(&text, "nonstop_auth_rejections_total{channel=\"control\"}"),
            "2"
        );
        assert_eq!(value(&text, "nonstop_replication_position"), "900");
        assert_eq!(value(&text, "nonstop_replication_lag_records"), "2");
        assert_eq!(value(&text, "nonstop_sessions"), "2");
        assert_eq!(
            value(&text, "nonstop_sessions_by_phase{phase=\"established\"}"),
            "2"
        );
        assert_eq!(
            value(&text, "nonstop_sessions_by_phase{phase=\"peer_closed\"}"),
            "1"
        );
        assert_eq!(
            value(&text, "nonstop_sessions_by_phase{phase=\"closed\"}"),
            "0"
        );
        assert_eq!(value(&text, "nonstop_held_packets"), "4");
        assert_eq!(
            value(&text, "nonstop_packets_total{direction=\"out\"}"),
            "1100"
        );
        assert_eq!(value(&text, "nonstop_restored_sessions_total"), "2");
        assert_eq!(
            value(&text, "nonstop_restore_session_seconds{quantile=\"0.99\"}"),
            "0.00012"
        );
        assert_eq!(
            value(&text, "nonstop_agent_resident_memory_bytes"),
            (9000 * 1024).to_string()
        );
        assert_eq!(value(&text, "nonstop_app_restarts_total"), "1");
        assert_eq!(value(&text, "nonstop_segments_out_of_window_total"), "9");
        assert!(text.contains(
            "nonstop_node{node_id=\"master\",vip=\"198.18.1.100/24\",replication=\"sync\"} 1"
        ));
    }

    #[test]
    fn every_sample_has_a_type_and_a_numeric_value() {
        let text = render(&status(), None).expect("render");
        let mut typed = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(["gauge", "counter"].contains(&kind), "{line}");
                assert!(typed.insert(name.to_owned()), "duplicate TYPE {name}");
            }
        }
        for (name, value) in samples(&text) {
            let bare = name.split('{').next().expect("name");
            assert!(typed.contains(bare), "{bare} has no TYPE line");
            assert!(value.parse::<f64>().is_ok(), "{name} = {value}");
        }
        // Without a peer RTT or a session list, those series are absent, not zero.
        let mut quiet = status();
        quiet.peer = PeerView::default();
        let text = render(&quiet, None).expect("render");
        assert!(!text.contains("heartbeat_rtt_seconds"));
        assert!(!text.contains("sessions_by_phase"));
    }
}
