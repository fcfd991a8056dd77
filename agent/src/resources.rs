//! CPU and memory of the agent, sampled once a second with `sysinfo` for `status`.

use nonstop_shared::control::Resources;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

/// The latest sample, shared with the status report.
#[derive(Debug, Clone, Default)]
pub struct ResourceMonitor(Arc<Mutex<Resources>>);

impl ResourceMonitor {
    /// The latest sample.
    pub fn latest(&self) -> Resources {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Samples this process every second until the task is dropped.
    pub async fn run(self) {
        let pid = Pid::from_u32(std::process::id());
        let mut system = match System::new() {
            Ok(system) => system,
            Err(e) => {
                tracing::warn!(error = %e, "resource sampling unavailable");
                return;
            }
        };
        let kind = ProcessRefreshKind::nothing().with_cpu().with_memory();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            system.refresh_processes_specifics(ProcessesToUpdate::Some(&[pid]), true, kind);
            if let Some(process) = system.process(pid) {
                let mut latest = self.0.lock().unwrap_or_else(PoisonError::into_inner);
                latest.agent_cpu_percent = process.cpu_usage();
                latest.agent_rss_kib = process.memory() / 1024;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn samples_our_own_memory() {
        let monitor = ResourceMonitor::default();
        let task = tokio::spawn(monitor.clone().run());
        tokio::time::sleep(Duration::from_millis(1300)).await;
        task.abort();
        let sample = monitor.latest();
        assert!(sample.agent_rss_kib > 0, "{sample:?}");
        assert!(sample.agent_cpu_percent >= 0.0);
    }
}
