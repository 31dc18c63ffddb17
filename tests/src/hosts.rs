//! Hosts on one kernel, for the cross-host tests: each a network namespace of its own with a
//! cgroup of its own (named as a container runtime names one, so that a sonde can be told to leave
//! another host's processes out), joined by veth pairs in 198.18.0.0/15, the benchmarking range.
//! Everything is removed when dropped.

use std::{
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use crate::harness::{ContainerCgroup, eventually, patience};

/// Names unique within this test process.
static NEXT: AtomicU32 = AtomicU32::new(0);

fn unique() -> u32 {
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("running ip (iproute2)");
    assert!(status.success(), "ip {}", args.join(" "));
}

pub struct Host {
    /// The network namespace's name.
    pub netns: String,
    /// The container id its cgroup is named with.
    pub id: String,
    pub cgroup: ContainerCgroup,
}

/// Kernel modules the hosts need, where they are modules (a distribution kernel): veth pairs, and
/// nftables' NAT for a Service address. Loading one that is built in, or missing, is not an error
/// here: the step that needs it fails and says so.
fn load_modules() {
    for module in ["veth", "nf_tables", "nft_chain_nat", "nf_nat"] {
        let _ = Command::new("modprobe").arg(module).stderr(Stdio::null()).status();
    }
}

impl Host {
    pub fn create() -> Host {
        load_modules();
        let n = unique();
        let netns = format!("sonde-h{}-{n}", std::process::id());
        ip(&["netns", "add", &netns]);
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        let id = format!("{:08x}{:056x}", n, std::process::id());
        let cgroup = ContainerCgroup::create("docker", &id);
        Host { netns, id, cgroup }
    }

    /// `program` run in this host: in its cgroup from the start (before it can make a socket: a
    /// socket belongs to the cgroup its maker was in, and so do the connections a listener
    /// accepts), in its network namespace. Arguments added to the command go to `program`.
    /// (The cgroup is joined first: `ip netns exec` mounts a sysfs of the namespace's own, without
    /// the cgroup hierarchy.)
    pub fn command(&self, program: &str) -> Command {
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec ip netns exec {} \"$@\"",
            self.cgroup.path().display(),
            self.netns
        );
        let mut command = Command::new("sh");
        command.args(["-c", &script, "sh", program]);
        command
    }

    /// Spawns `command` (from `command`), its output discarded.
    pub fn spawn(&self, command: &mut Command) -> Child {
        command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawning in a host")
    }

    /// Runs `script` with `sh` in this host and waits for it; true when it exits 0.
    pub fn run(&self, script: &str) -> bool {
        self.command("sh").args(["-c", script]).status().expect("running sh in a host").success()
    }

    /// Waits until something accepts connections on `addr`:`port` as seen from this host.
    pub fn wait_listening(&self, addr: &str, port: u16) {
        let probe = format!("exec 3<>/dev/tcp/{addr}/{port}");
        let listening = eventually(patience(Duration::from_secs(20)), || {
            self.command("bash")
                .args(["-c", &probe])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        assert!(listening, "nothing listens on {addr}:{port} in {}", self.netns);
    }

    /// Loads nftables `rules` (`nft -f -` syntax) into this host's network namespace.
    pub fn nft(&self, rules: &str) {
        use std::io::Write as _;
        let mut nft = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("running nft (apt-get install nftables; `cargo xtask setup` does it)");
        nft.stdin.take().expect("piped stdin").write_all(rules.as_bytes()).unwrap();
        assert!(nft.wait().unwrap().success(), "nft rejected:\n{rules}");
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Its veth ends go with it, and their peers with them.
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).status();
    }
}

/// A veth pair between two hosts: `a` gets `a_addr`/30, `b` gets `b_addr`/30.
pub fn link(a: &Host, a_addr: &str, b: &Host, b_addr: &str) {
    let n = unique();
    let (end_a, end_b) = (format!("sv{}a{n}", std::process::id()), format!("sv{}b{n}", std::process::id()));
    ip(&["link", "add", &end_a, "type", "veth", "peer", "name", &end_b]);
    for (host, end, addr) in [(a, &end_a, a_addr), (b, &end_b, b_addr)] {
        ip(&["link", "set", end, "netns", &host.netns]);
        ip(&["-n", &host.netns, "addr", "add", &format!("{addr}/30"), "dev", end]);
        ip(&["-n", &host.netns, "link", "set", end, "up"]);
    }
}
