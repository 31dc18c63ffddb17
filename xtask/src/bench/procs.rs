//! The bench's own child processes: started with a guard that kills them on any early return,
//! stopped with SIGTERM by pid, and measured from /proc and from `wait4`'s resource usage.

use std::{
    io::{BufRead as _, BufReader, Read},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// A child that is killed (SIGKILL) and reaped when dropped, unless it was stopped already.
pub struct ChildGuard {
    name: &'static str,
    child: Option<Child>,
}

/// What a child used over its whole life, from `wait4`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub cpu: Duration,
    pub max_rss_kib: u64,
}

impl ChildGuard {
    pub fn spawn(name: &'static str, cmd: &mut Command) -> anyhow::Result<ChildGuard> {
        let child =
            cmd.spawn().with_context(|| format!("starting {name}: `{}`", crate::sh::describe(cmd)))?;
        Ok(ChildGuard { name, child: Some(child) })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("child not reaped yet")
    }

    /// Fails if the child has exited already.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child_mut().try_wait()? {
            bail!("{} exited early: {status}", self.name);
        }
        Ok(())
    }

    /// SIGTERM, then wait up to `limit` for the exit (SIGKILL after). Returns the exit code (`None`
    /// when killed by a signal) and the child's total resource usage.
    pub fn terminate(&mut self, limit: Duration) -> anyhow::Result<(Option<i32>, Usage)> {
        let pid = self.pid() as libc::pid_t;
        // SAFETY: signalling our own, not yet reaped, child by its pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + limit;
        loop {
            if let Some(done) = self.try_reap(pid)? {
                return Ok(done);
            }
            if Instant::now() > deadline {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                std::thread::sleep(Duration::from_millis(200));
                let _ = self.try_reap(pid)?;
                bail!("{} did not exit within {limit:?} of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `wait4(WNOHANG)`: std's `Child::wait` does not give the rusage we need.
    fn try_reap(&mut self, pid: libc::pid_t) -> anyhow::Result<Option<(Option<i32>, Usage)>> {
        let mut status = 0;
        // SAFETY: `rusage` is a C struct of integers, for which all-zero bytes are a valid value.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: plain out-parameters that live across the call; `pid` is our child.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r < 0 {
            bail!("waiting for {}: {}", self.name, std::io::Error::last_os_error());
        }
        if r == 0 {
            return Ok(None);
        }
        // Reaped: the guard must not signal a pid that may be reused.
        self.child = None;
        let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
        let usage = Usage { cpu: tv(ru.ru_utime) + tv(ru.ru_stime), max_rss_kib: ru.ru_maxrss as u64 };
        let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
        Ok(Some((code, usage)))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// user+sys CPU time of a live process (all its threads, exited ones included), to the
/// nanosecond: the process's CPU-time clock. /proc/PID/stat counts in 10 ms ticks, too coarse
/// for a few seconds of an agent at low rates; it is the fallback.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let mut clock: libc::clockid_t = 0;
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: both out-pointers are valid for the calls.
    let precise = unsafe {
        libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) == 0
            && libc::clock_gettime(clock, &mut ts) == 0
    };
    if precise {
        return Ok(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
    }
    cpu_time_in_ticks(pid)
}

fn cpu_time_in_ticks(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let total = ticks(14) + ticks(15);
    Ok(Duration::from_nanos(total * 1_000_000_000 / hz))
}

/// A `Vm*` line of /proc/PID/status, in KiB (`VmHWM` = peak RSS, `VmRSS` = current).
pub fn vm_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':')?.trim().strip_suffix(" kB")?.parse().ok())
}

/// Collects a child's output lines in the background.
pub fn collect(stream: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let out = buf.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            let mut b = out.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            b.push_str(&line);
            b.push('\n');
        }
    });
    buf
}

pub fn wait_listening(addr: SocketAddr, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {addr} after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// `GET /status` on 127.0.0.1:`port` over HTTP/1.0: the whole reply, head and body.
pub fn get_status(port: u16) -> anyhow::Result<String> {
    let mut s = TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    std::io::Write::write_all(&mut s, b"GET /status HTTP/1.0\r\n\r\n")?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    Ok(reply)
}

/// `taskset -c CPUS cmd…` when pinning is asked for, else `cmd…`.
pub fn pinned(cpus: Option<&str>, program: &str) -> Command {
    match cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpus, program]);
            c
        }
        None => Command::new(program),
    }
}

/// Runs a load generator to completion (bounded: it stops by itself, and is killed past `limit`).
pub fn run_bounded(name: &'static str, cmd: &mut Command, limit: Duration) -> anyhow::Result<String> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut guard = ChildGuard::spawn(name, cmd)?;
    let stdout = read_all(guard.child_mut().stdout.take().context("piped stdout")?);
    let stderr = read_all(guard.child_mut().stderr.take().context("piped stderr")?);
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = guard.child_mut().try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            bail!("{name} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = stdout.join().unwrap_or_default();
    if !status.success() {
        bail!("{name} failed ({status}):\n{}{out}", stderr.join().unwrap_or_default());
    }
    Ok(out)
}

fn read_all(mut stream: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stream.read_to_string(&mut s);
        s
    })
}

/// Lets the load generators hold 1,000+ sockets (children inherit the limit).
pub fn raise_nofile() {
    // SAFETY: plain get/set of our own limit.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max.min(65536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_time_counts_this_process_to_the_microsecond() {
        let pid = std::process::id();
        let before = super::cpu_time(pid).expect("own CPU time");
        // Busy for 30 ms of this thread's CPU time (not wall time: on a loaded machine the loop may
        // get a fraction of a CPU).
        let thread_cpu = || {
            let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
            std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
        };
        let start = thread_cpu();
        let mut x = 1u64;
        while thread_cpu() - start < std::time::Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let spent = super::cpu_time(pid).expect("own CPU time") - before;
        // A tick-based count would move in 10 ms steps; the busy loop ran 30 ms of CPU.
        assert!(!spent.as_nanos().is_multiple_of(10_000_000), "{spent:?}");
        assert!(spent >= std::time::Duration::from_millis(20), "{spent:?}");
    }
}
