//! What a process holds in the kernel, read from outside as an operator would: its BPF maps (found
//! through the map fds in /proc/PID/fdinfo) and how many entries each holds (`bpftool map dump`).

use std::{collections::BTreeMap, process::Command};

/// Map name → id, for every BPF map `pid` holds an fd to.
pub fn maps_of(pid: u32) -> BTreeMap<String, u32> {
    let mut maps = BTreeMap::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return maps;
    };
    for fd in fds.flatten() {
        let Ok(info) = std::fs::read_to_string(fd.path()) else { continue };
        let Some(id) = info.lines().find_map(|l| l.strip_prefix("map_id:")) else { continue };
        let id: u32 = id.trim().parse().expect("a numeric map_id in fdinfo");
        let shown = bpftool(&["map", "show", "id", &id.to_string()]);
        if let Some(name) = shown["name"].as_str() {
            maps.insert(name.to_owned(), id);
        }
    }
    maps
}

/// How many entries map `id` holds now.
pub fn entries(id: u32) -> usize {
    bpftool(&["map", "dump", "id", &id.to_string()]).as_array().map_or(0, Vec::len)
}

/// Entries of `pid`'s map called `name`; panics if it holds no such map.
pub fn entries_of(pid: u32, name: &str) -> usize {
    let maps = maps_of(pid);
    let id = maps.get(name).unwrap_or_else(|| panic!("process {pid} holds no map {name}: {maps:?}"));
    entries(*id)
}

/// Sets `key` to `value` in map `id`, as an operator (or a test standing in for a lost event)
/// would with bpftool.
pub fn update(id: u32, key: &[u8], value: &[u8]) {
    let id = id.to_string();
    let mut args = vec!["map", "update", "id", &id, "key", "hex"];
    let (key, value) = (hex(key), hex(value));
    args.extend(key.iter().map(String::as_str));
    args.push("value");
    args.push("hex");
    args.extend(value.iter().map(String::as_str));
    bpftool(&args);
}

/// Whether map `id` holds `key`.
pub fn holds(id: u32, key: &[u8]) -> bool {
    let id = id.to_string();
    let key = hex(key);
    let mut args = vec!["map", "lookup", "id", &id, "key", "hex"];
    args.extend(key.iter().map(String::as_str));
    // Not `-j`: in JSON a missing key prints only `null`.
    let out = Command::new("bpftool").args(&args).output().expect("running bpftool");
    if out.status.success() {
        return true;
    }
    let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(said.to_lowercase().contains("not found"), "bpftool {args:?}: {said}");
    false
}

fn hex(bytes: &[u8]) -> Vec<String> {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn bpftool(args: &[&str]) -> serde_json::Value {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .expect("running bpftool (apt-get install bpftool)");
    assert!(out.status.success(), "bpftool {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("bpftool -j prints JSON")
}
