//! Talking to one agent: addresses (optionally inside a network namespace), the
//! authentication handshake and the request/reply exchange of the control protocol.
//!
//! The pre-shared key is found, in this order: the `--key-file` option (set once per
//! process with [`set_key_file`]), `$NONSTOP_KEY_FILE`, and for an agent inside a lab
//! namespace the key of that lab (`<lab dir>/key`).

use anyhow::{bail, Context};
use nonstop_shared::auth::{self, Key, NONCE_LEN};
use nonstop_shared::control::{NodeStatus, Reply, Request};
use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

/// Environment variable naming the key file.
pub const KEY_FILE_ENV: &str = "NONSTOP_KEY_FILE";

static KEY_FILE: OnceLock<PathBuf> = OnceLock::new();

/// Sets the key file for every connection of this process (from `--key-file`, or from
/// `--lab`). The first call wins.
pub fn set_key_file(path: PathBuf) {
    let _ = KEY_FILE.set(path);
}

/// The key file to use for `agent` and where it came from.
fn key_file_for(agent: &AgentAddr) -> anyhow::Result<PathBuf> {
    if let Some(path) = KEY_FILE.get() {
        return Ok(path.clone());
    }
    if let Some(path) = std::env::var_os(KEY_FILE_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    if let Some((lab, _)) = agent
        .netns
        .as_deref()
        .and_then(nonstop_lab::naming::parse_namespace)
    {
        return Ok(nonstop_lab::agent_config::key_path(&nonstop_lab::lab_dir(
            &lab,
        )));
    }
    bail!("no key for agent {agent}: give --key-file FILE, set ${KEY_FILE_ENV}, or use --lab NAME")
}

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
        let mut conn = AgentConnection {
            reader: BufReader::new(stream),
            writer,
        };
        let key_file = key_file_for(agent)?;
        let key = Key::load(&key_file).context("control key")?;
        conn.authenticate(&key)
            .with_context(|| format!("authenticating to agent {agent}"))?;
        Ok(conn)
    }

    /// Answers the agent's challenge and checks its proof of the key in turn.
    fn authenticate(&mut self, key: &Key) -> anyhow::Result<()> {
        let server_nonce = match self.read_reply()? {
            Reply::Challenge { version, nonce } => {
                if version != auth::CONTROL_AUTH_VERSION {
                    bail!(
                        "agent speaks control handshake version {version}, we speak {}",
                        auth::CONTROL_AUTH_VERSION
                    );
                }
                auth::parse_nonce(&nonce).context("agent sent a malformed challenge")?
            }
            Reply::Error { message } => bail!("agent refused the connection: {message}"),
            other => bail!("expected a challenge, got {other:?}"),
        };
        let client_nonce: [u8; NONCE_LEN] =
            auth::random_bytes().map_err(|e| anyhow::anyhow!("no random nonce: {e}"))?;
        let request = Request::Auth {
            nonce: client_nonce.iter().map(|b| format!("{b:02x}")).collect(),
            mac: auth::control_client_mac(key, &server_nonce, &client_nonce),
        };
        match self.request(&request)? {
            Reply::Authenticated { mac } => {
                if !auth::control_verify(key, false, &server_nonce, &client_nonce, &mac) {
                    bail!("the agent's proof does not verify: it does not hold our key");
                }
                Ok(())
            }
            Reply::Error { message } => bail!("agent refused authentication: {message}"),
            other => bail!("unexpected reply to auth: {other:?}"),
        }
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
    fn a_lab_namespace_finds_its_lab_key() {
        if std::env::var_os(KEY_FILE_ENV).is_some() || KEY_FILE.get().is_some() {
            return; // an explicit key wins; covered by the lab tests
        }
        let agent: AgentAddr = "nonstop-demo-master@127.0.0.1:7700".parse().expect("addr");
        let path = key_file_for(&agent).expect("lab key");
        assert_eq!(path, nonstop_lab::lab_dir("demo").join("key"));
        let plain: AgentAddr = "127.0.0.1:7700".parse().expect("addr");
        let err = key_file_for(&plain).expect_err("no key").to_string();
        assert!(err.contains("--key-file"), "{err}");
    }

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
