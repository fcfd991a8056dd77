//! Reading the local service's sockets from `/proc/net/tcp` (IPv4): whether it
//! listens, how many handshakes wait in its accept queue, how many bytes it has not
//! read. The text is parsed here, sans-IO; callers read the file.

/// The file these functions parse.
pub const PATH: &str = "/proc/net/tcp";

/// TCP states as `/proc/net/tcp` prints them.
const ESTABLISHED: &str = "01";
const CLOSE_WAIT: &str = "08";
const LISTEN: &str = "0A";

/// One socket line: local port, state, transmit and receive queue.
struct Entry<'a> {
    port: u16,
    state: &'a str,
    rx_queue: u64,
}

/// Every parsable socket line (the header and malformed lines are skipped).
fn entries(table: &str) -> impl Iterator<Item = Entry<'_>> {
    table.lines().skip(1).filter_map(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1)?;
        let state = fields.nth(1)?;
        let queues = fields.next()?;
        Some(Entry {
            port: u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()?,
            state,
            rx_queue: u64::from_str_radix(queues.split_once(':')?.1, 16).ok()?,
        })
    })
}

/// The header and the listening sockets of `/proc/net/tcp`, read from `source` and
/// stopping at the first other socket: the kernel lists listeners first, so a caller
/// that only needs them (the accept backlog) does not make it format every
/// established connection — thousands, right after a restore.
pub fn read_listeners(source: impl std::io::Read) -> std::io::Result<String> {
    use std::io::BufRead;
    let mut text = String::new();
    for (i, line) in std::io::BufReader::new(source).lines().enumerate() {
        let line = line?;
        if i > 0 && line.split_whitespace().nth(3) != Some(LISTEN) {
            break;
        }
        text.push_str(&line);
        text.push('\n');
    }
    Ok(text)
}

/// Whether something listens on one of `ports`.
pub fn listening(table: &str, ports: &[u16]) -> bool {
    entries(table).any(|e| e.state == LISTEN && ports.contains(&e.port))
}

/// Connections completed by the kernel but not yet `accept()`ed by the service (a
/// listening socket's `rx_queue` is its accept backlog).
pub fn accept_backlog(table: &str, ports: &[u16]) -> u64 {
    entries(table)
        .filter(|e| e.state == LISTEN && ports.contains(&e.port))
        .map(|e| e.rx_queue)
        .sum()
}

/// Bytes waiting in the receive queues of established (or close-wait) sockets on
/// `ports`: input the service has not read.
pub fn unread_input(table: &str, ports: &[u16]) -> u64 {
    entries(table)
        .filter(|e| (e.state == ESTABLISHED || e.state == CLOSE_WAIT) && ports.contains(&e.port))
        .map(|e| e.rx_queue)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1B58 00000000:0000 0A 00000000:00000003 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 641212C6:1B58 0A1212C6:A2D4 01 00000000:00000010 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1
   2: 641212C6:1B58 0A1212C6:A2D6 08 00000005:00000100 00:00000000 00000000     0        0 3 1 0000000000000000 20 4 30 10 -1
   3: 641212C6:1B59 0A1212C6:A2D8 01 00000000:00001000 00:00000000 00000000     0        0 4 1 0000000000000000 20 4 30 10 -1
   4: 641212C6:1B58 0A1212C6:A2DA 06 00000000:00000007 00:00000000 00000000     0        0 0 1 0000000000000000 20 4 30 10 -1
garbage line
";

    #[test]
    fn unread_input_sums_the_service_sockets_only() {
        // 0x10 (established) + 0x100 (close-wait) on port 7000; the listener, the
        // other port and the time-wait entry do not count; garbage is skipped.
        assert_eq!(unread_input(TABLE, &[7000]), 0x10 + 0x100);
        assert_eq!(unread_input(TABLE, &[7001]), 0x1000);
        assert_eq!(unread_input(TABLE, &[7000, 7001]), 0x1110);
        assert_eq!(unread_input("", &[7000]), 0);
    }

    #[test]
    fn reading_stops_after_the_listeners() {
        let text = read_listeners(TABLE.as_bytes()).expect("read");
        assert_eq!(
            text.lines().count(),
            2,
            "header and the one listener: {text}"
        );
        assert_eq!(accept_backlog(&text, &[7000]), 3);
        assert_eq!(unread_input(&text, &[7000]), 0);
    }

    #[test]
    fn the_listener_and_its_accept_backlog_are_found() {
        assert!(listening(TABLE, &[7000]));
        assert!(!listening(TABLE, &[7001]));
        assert_eq!(accept_backlog(TABLE, &[7000]), 3);
        assert_eq!(accept_backlog(TABLE, &[7001]), 0);
        assert!(!listening("garbage", &[7000]));
    }
}
