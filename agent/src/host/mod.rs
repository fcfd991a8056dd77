//! How the agent fits its host: logging ([`logging`]), reloading on SIGHUP
//! ([`reload`]), notify hooks ([`hooks`]) and the service's health check
//! ([`check`]).

pub mod check;
pub mod hooks;
pub mod logging;
pub mod reload;
