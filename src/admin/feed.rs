//! The admin sockets' feed: each notice of the `/ai` observer becomes the admin-ui
//! event for it (`socket_connected`, `socket_disconnected`, `event_received`,
//! `event_sent`), and every two seconds `server_stats` goes out with the namespaces'
//! counts and the events of those seconds aggregated per second (the UI's dashboard
//! charts), and `socket_updated` for sockets whose transport was upgraded.
//!
//! It is a monitoring feed: an admin socket whose buffer is full misses that event
//! (counted in `undelivered`), and the observer drops notices while this task is behind.

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use serde_json::{Value, json};
use socketioxide::socket::Sid;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{NAMESPACE, Shared, serialize};
use crate::transport::socketio::{self, Notice};

/// How often `server_stats` goes out (as the Node.js server does).
pub const STATS_INTERVAL: Duration = Duration::from_secs(2);
/// The namespaces the stats list.
const NAMESPACES: [&str; 3] = ["/", socketio::NAMESPACE, NAMESPACE];

/// Sends `data` (a tuple for several arguments) to every admin socket; a full buffer
/// loses the event for that socket, counted.
pub fn to_admins<T: Serialize + ?Sized>(shared: &Shared, event: &str, data: &T) {
    let Some(admins) = shared.io.of(NAMESPACE) else { return };
    for admin in admins.sockets() {
        if let Err(e) = admin.emit(event, data) {
            shared.undelivered.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(sid = %admin.id, event, error = %e, "admin event not delivered");
        }
    }
}

/// The UI's per-second event counts, keyed by (second, type, subtype).
#[derive(Default)]
struct Aggregated(HashMap<(u64, &'static str, Option<&'static str>), u64>);

impl Aggregated {
    fn push(&mut self, at: SystemTime, kind: &'static str, sub: Option<&'static str>, count: u64) {
        let second = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() * 1000);
        *self.0.entry((second, kind, sub)).or_default() += count;
    }

    fn take(&mut self) -> Vec<Value> {
        self.0
            .drain()
            .map(|((timestamp, kind, sub), count)| json!({ "timestamp": timestamp, "type": kind, "subType": sub, "count": count }))
            .collect()
    }
}

/// Forwards notices until the observer is gone or `shutdown`.
pub async fn run(shared: Arc<Shared>, mut notices: mpsc::Receiver<Notice>, shutdown: CancellationToken) {
    let mut aggregated = Aggregated::default();
    let mut transports: HashMap<Sid, &'static str> = HashMap::new();
    let mut tick = tokio::time::interval(STATS_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            notice = notices.recv() => match notice {
                Some(notice) => forward(&shared, notice, &mut aggregated),
                None => return,
            },
            _ = tick.tick() => {
                let events = aggregated.take();
                // Nobody to tell: no counting either.
                if shared.io.of(NAMESPACE).is_some_and(|admins| !admins.sockets().is_empty()) {
                    to_admins(&shared, "server_stats", &server_stats(&shared, events));
                    upgrades(&shared, &mut transports);
                }
            }
            _ = shutdown.cancelled() => return,
        }
    }
}

fn forward(shared: &Shared, notice: Notice, aggregated: &mut Aggregated) {
    let ns = socketio::NAMESPACE;
    match notice {
        Notice::Connected { socket, at } => {
            aggregated.push(at, "rawConnection", None, 1);
            to_admins(shared, "socket_connected", &(serialize::socket(&socket), serialize::iso(at)));
        }
        Notice::Disconnected { sid, reason, at } => {
            let reason = serialize::reason(reason);
            aggregated.push(at, "rawDisconnection", Some(reason), 1);
            to_admins(shared, "socket_disconnected", &(ns, sid.to_string(), reason, serialize::iso(at)));
        }
        Notice::Received { sid, event, data, at } => {
            let args: Vec<Value> = std::iter::once(Value::from(event)).chain(data).collect();
            count_packet(aggregated, at, "packetsIn", "bytesIn", &args);
            to_admins(shared, "event_received", &(ns, sid.to_string(), args, serialize::iso(at)));
        }
        Notice::Sent { sid, event, data, at } => {
            let args = vec![Value::from(event), data];
            count_packet(aggregated, at, "packetsOut", "bytesOut", &args);
            to_admins(shared, "event_sent", &(ns, sid.to_string(), args, serialize::iso(at)));
        }
    }
}

/// One packet and its JSON size (the event's, not the transport's framing).
fn count_packet(aggregated: &mut Aggregated, at: SystemTime, packets: &'static str, bytes: &'static str, args: &[Value]) {
    aggregated.push(at, packets, None, 1);
    let size = serde_json::to_string(args).map_or(0, |s| s.len() as u64);
    aggregated.push(at, bytes, None, size);
}

/// The `server_stats` event.
pub fn server_stats(shared: &Shared, aggregated_events: Vec<Value>) -> Value {
    let mut clients = 0;
    let mut polling = 0;
    let mut namespaces = Vec::new();
    for name in NAMESPACES {
        let sockets = shared.io.of(name).map(|ns| ns.sockets()).unwrap_or_default();
        clients += sockets.len();
        polling += sockets.iter().filter(|s| serialize::transport(s) == "polling").count();
        namespaces.push(json!({ "name": name, "socketsCount": sockets.len() }));
    }
    let node = &shared.node;
    json!({
        "serverId": node.id,
        "hostname": node.hostname,
        "pid": node.pid,
        "uptime": node.started.elapsed().as_secs_f64(),
        "clientsCount": clients,
        "pollingClientsCount": polling,
        "aggregatedEvents": aggregated_events,
        "namespaces": namespaces,
    })
}

/// `socket_updated` for the `/ai` sockets whose transport changed (polling, upgraded).
fn upgrades(shared: &Shared, known: &mut HashMap<Sid, &'static str>) {
    let sockets = shared.io.of(socketio::NAMESPACE).map(|ns| ns.sockets()).unwrap_or_default();
    let mut now = HashMap::with_capacity(sockets.len());
    for socket in &sockets {
        let transport = serialize::transport(socket);
        if known.get(&socket.id).is_some_and(|was| *was != transport) {
            to_admins(
                shared,
                "socket_updated",
                &json!({ "id": socket.id.to_string(), "nsp": socketio::NAMESPACE, "transport": transport }),
            );
        }
        now.insert(socket.id, transport);
    }
    *known = now;
}
