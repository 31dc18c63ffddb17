//! sonde's kernel maps, read from outside as an operator would: the maps a process holds are the
//! `map_id:` lines of its /proc/PID/fdinfo/*, their names and sizes come from `bpftool map show`,
//! and how many entries one holds now is the length of `bpftool map dump`.

use std::process::Command;

use anyhow::Context as _;
use serde::Serialize;

/// The maps that hold per-connection or per-call state: each should stay near what the traffic
/// keeps open, however long sonde runs (the others are fixed-size arrays and the ring buffer).
pub const WATCHED: &[&str] = &["CONNS", "ACTIVE_IO", "ACTIVE_CONNECT", "TLS_CALLS", "TLS_SOCKETS"];

#[derive(Clone, Debug, Serialize)]
pub struct MapInfo {
    pub name: String,
    pub id: u32,
    pub max_entries: u64,
}

/// The watched maps `pid` holds, in `WATCHED` order.
pub fn watched_of(pid: u32) -> anyhow::Result<Vec<MapInfo>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut ids = Vec::new();
    for fd in std::fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        // An fd closed since the listing is not a map we care about.
        let Ok(info) = std::fs::read_to_string(fd?.path()) else { continue };
        if let Some(id) = info.lines().find_map(|l| l.strip_prefix("map_id:")?.trim().parse::<u32>().ok()) {
            ids.push(id);
        }
    }
    // Several fds may point at one map.
    ids.sort_unstable();
    ids.dedup();
    let mut maps = Vec::new();
    for id in ids {
        let shown = bpftool(&["map", "show", "id", &id.to_string()])?;
        let Some(name) = shown["name"].as_str().filter(|n| WATCHED.contains(n)) else { continue };
        maps.push(MapInfo {
            name: name.to_owned(),
            id,
            max_entries: shown["max_entries"].as_u64().unwrap_or(0),
        });
    }
    maps.sort_by_key(|m| WATCHED.iter().position(|w| *w == m.name));
    Ok(maps)
}

/// How many entries map `id` holds now.
pub fn entries(id: u32) -> anyhow::Result<u64> {
    let dump = bpftool(&["map", "dump", "id", &id.to_string()])?;
    Ok(dump.as_array().map_or(0, |a| a.len() as u64))
}

fn bpftool(args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let out = crate::sh::output(Command::new("bpftool").arg("-j").args(args))
        .context("bpftool (`cargo xtask setup` installs it)")?;
    serde_json::from_str(&out).with_context(|| format!("bpftool {args:?} printed no JSON"))
}
