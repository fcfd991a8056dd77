//! The local service's sockets, as the kernel sees them (netlink sock_diag, IPv4 and
//! dual-stack IPv6): [`diag`] is the query API; the helpers here run it off the async
//! runtime's threads for the session manager's tasks.

pub mod diag;

use diag::{DestroyReport, Diag, DiagError};
use std::net::Ipv4Addr;

/// Runs `query` on a fresh [`Diag`] in a blocking thread (a dump of thousands of
/// sockets takes milliseconds; it must not hold a runtime worker).
pub async fn query<T: Send + 'static>(
    query: impl FnOnce(&mut Diag) -> Result<T, DiagError> + Send + 'static,
) -> Result<T, DiagError> {
    tokio::task::spawn_blocking(move || query(&mut Diag::open()?))
        .await
        .unwrap_or_else(|e| {
            Err(DiagError::Malformed(format!(
                "socket query task failed: {e}"
            )))
        })
}

/// Waits until something listens on one of `ports` for `vip` (IPv4, or a dual-stack
/// `[::]` socket), polling every 20 ms for at most `limit`.
pub async fn wait_for_listener(vip: Ipv4Addr, ports: &[u16], limit: std::time::Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let mut warned = false;
    loop {
        let ports_owned = ports.to_vec();
        match query(move |d| d.listening(vip, &ports_owned)).await {
            Ok(true) => return true,
            Ok(false) => {}
            Err(e) if !warned => {
                tracing::warn!(error = %e, "cannot list the service's listening sockets");
                warned = true;
            }
            Err(_) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Destroys every TCP socket on `vip`:`ports` except the listeners (logged, never
/// fatal: the caller goes on either way).
pub async fn destroy_stale(vip: Ipv4Addr, ports: &[u16]) -> Option<DestroyReport> {
    let ports = ports.to_vec();
    match query(move |d| d.destroy_on(vip, &ports)).await {
        Ok(report) => {
            if report.destroyed > 0 {
                tracing::info!(
                    destroyed = report.destroyed,
                    "destroyed stale service sockets on the VIP"
                );
            }
            Some(report)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot destroy stale service sockets on the VIP");
            None
        }
    }
}
