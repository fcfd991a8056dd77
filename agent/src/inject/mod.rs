//! Fault injection on this agent's own host (being written).

use nonstop_shared::control::Fault;

/// Carries out [`Fault`]s on this host.
#[derive(Debug, Clone, Default)]
pub struct Injector {}

impl Injector {
    /// Injects `fault`; the message says what was done.
    pub async fn inject(&self, fault: &Fault) -> Result<String, String> {
        Err(format!("fault injection is not available yet: {fault}"))
    }
}
