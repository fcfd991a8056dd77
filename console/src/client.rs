//! Talking to one agent: addresses (optionally inside a network namespace) and the
//! request/reply exchange of the control protocol.

use anyhow::{bail, Context};
use nonstop_shared::control::{NodeStatus, Reply, Request};
use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::str::FromStr;
use std::time::Duration;

/// Where an agent's control API is: `IP:PORT`, or `NETNS@IP:PORT` to connect from
/// inside a network namespace (how the console reaches agents in a lab).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentAddr {
    /// Network namespace to connect from, if any.
    pub netns: Option<String>,
    /// The control address.
    pub addr: SocketAddr,
}

impl FromStr for AgentAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (netns, addr) = match s.split_once('@') {
            Some((ns, addr)) if !ns.is_empty() => (Some(ns.to_owned()), addr),
            Some(_) => return Err(format!("`{s}`: empty namespace before '@'")),
            None => (None, s),
        };
        let addr = addr
            .parse()
            .map_err(|_| format!("`{addr}` is not IP:PORT (e.g. 127.0.0.1:7700)"))?;
        Ok(AgentAddr { netns, addr })
    }
}

impl fmt::Display for AgentAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.netns {
            Some(ns) => write!(f, "{ns}@{}", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// An open control connection.
pub struct AgentConnection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl AgentConnection {
    /// Connects with a timeout; replies are awaited at most `timeout` too.
    pub fn connect(agent: &AgentAddr, timeout: Duration) -> anyhow::Result<AgentConnection> {
        let stream = match &agent.netns {
            Some(ns) => nonstop_lab::connect_in_netns(ns, agent.addr, timeout),
            None => TcpStream::connect_timeout(&agent.addr, timeout),
        }
        .with_context(|| format!("cannot connect to agent {agent}"))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let writer = stream.try_clone()?;
        Ok(AgentConnection {
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends one request and reads one reply.
    pub fn request(&mut self, request: &Request) -> anyhow::Result<Reply> {
        self.writer.write_all(request.to_line().as_bytes())?;
        self.read_reply()
    }

    /// Sends a request that is answered by a stream of replies.
    pub fn request_stream(&mut self, request: &Request) -> anyhow::Result<()> {
        self.writer.write_all(request.to_line().as_bytes())?;
        Ok(())
    }

    /// Reads the next reply line (also used for event streams).
    pub fn read_reply(&mut self) -> anyhow::Result<Reply> {
        let mut line = String::new();
        let read = self.reader.read_line(&mut line).context("reading reply")?;
        if read == 0 {
            bail!("agent closed the connection");
        }
        Reply::parse_line(&line).map_err(anyhow::Error::msg)
    }

    /// Sets how long to wait for the next reply (None waits forever).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> anyhow::Result<()> {
        self.reader.get_ref().set_read_timeout(timeout)?;
        Ok(())
    }

    /// Asks for the node's status.
    pub fn status(&mut self) -> anyhow::Result<NodeStatus> {
        match self.request(&Request::Status)? {
            Reply::Status(status) => Ok(status),
            Reply::Error { message } => bail!("agent refused status: {message}"),
            other => bail!("unexpected reply to status: {other:?}"),
        }
    }
}

/// Connects and asks for status in one go.
pub fn fetch_status(agent: &AgentAddr, timeout: Duration) -> anyhow::Result<NodeStatus> {
    AgentConnection::connect(agent, timeout)?.status()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_namespaced_addresses() {
        let plain: AgentAddr = "127.0.0.1:7700".parse().expect("plain");
        assert_eq!(plain.netns, None);
        let ns: AgentAddr = "nonstop-demo-master@127.0.0.1:7700".parse().expect("netns");
        assert_eq!(ns.netns.as_deref(), Some("nonstop-demo-master"));
        assert_eq!(ns.to_string(), "nonstop-demo-master@127.0.0.1:7700");
        for bad in ["", "@127.0.0.1:1", "ns@nothing", "127.0.0.1"] {
            assert!(bad.parse::<AgentAddr>().is_err(), "{bad}");
        }
    }
}
