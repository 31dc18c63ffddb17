//! Which connections are parsed. Include criteria narrow each other (a connection must match every
//! one given; one not given matches all): `--pid` (also enforced in the kernel), `--port` (either
//! end of the connection), `--exe` (glob on the executable's name or full path), `--container`
//! (a prefix of the process's container id). Exclude criteria of the same kinds then take out
//! whatever any of them matches. Processes are judged when sonde first sees their connections, so
//! processes started later are selected by the same rules without a restart.

use super::ConnInfo;
use crate::process::ProcInfo;

#[derive(Debug, thiserror::Error)]
#[error("{flag} {pattern:?} is not a valid glob: {source}")]
pub struct SelectError {
    flag: &'static str,
    pattern: String,
    source: glob::PatternError,
}

/// What the flags ask for (`RunArgs`' selection flags).
#[derive(Debug, Default, Clone)]
pub struct Criteria {
    pub pids: Vec<u32>,
    pub ports: Vec<u16>,
    pub exes: Vec<String>,
    pub containers: Vec<String>,
}

#[derive(Debug, Default)]
struct Compiled {
    pids: Vec<u32>,
    ports: Vec<u16>,
    exes: Vec<glob::Pattern>,
    containers: Vec<String>,
}

impl Compiled {
    fn new(c: &Criteria, exe_flag: &'static str) -> Result<Self, SelectError> {
        let exes = c
            .exes
            .iter()
            .map(|p| {
                glob::Pattern::new(p).map_err(|source| SelectError {
                    flag: exe_flag,
                    pattern: p.clone(),
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        let containers = c.containers.iter().map(|id| id.to_ascii_lowercase()).collect();
        Ok(Self { pids: c.pids.clone(), ports: c.ports.clone(), exes, containers })
    }

    fn port(&self, conn: &ConnInfo) -> bool {
        [conn.local_port(), conn.remote_port()].iter().flatten().any(|p| self.ports.contains(p))
    }

    fn exe(&self, info: &ProcInfo) -> bool {
        let names = [info.exe_name.as_deref(), info.exe_path.as_deref()];
        names.iter().flatten().any(|n| self.exes.iter().any(|p| p.matches(n)))
    }

    fn container(&self, info: &ProcInfo) -> bool {
        info.container_id
            .as_deref()
            .is_some_and(|id| self.containers.iter().any(|c| id.starts_with(c.as_str())))
    }

    fn needs_process(&self) -> bool {
        !self.exes.is_empty() || !self.containers.is_empty()
    }
}

#[derive(Debug, Default)]
pub struct Selector {
    include: Compiled,
    exclude: Compiled,
}

impl Selector {
    pub fn new(include: &Criteria, exclude: &Criteria) -> Result<Self, SelectError> {
        Ok(Self {
            include: Compiled::new(include, "--exe")?,
            exclude: Compiled::new(exclude, "--exclude-exe")?,
        })
    }

    /// Whether `conn` is traced; `process` is read only if a criterion needs it.
    pub fn accepts(&self, conn: &ConnInfo, process: impl FnOnce() -> ProcInfo) -> bool {
        let (inc, exc) = (&self.include, &self.exclude);
        if (!inc.pids.is_empty() && !inc.pids.contains(&conn.pid)) || exc.pids.contains(&conn.pid) {
            return false;
        }
        if (!inc.ports.is_empty() && !inc.port(conn)) || (!exc.ports.is_empty() && exc.port(conn)) {
            return false;
        }
        if !inc.needs_process() && !exc.needs_process() {
            return true;
        }
        let info = process();
        (inc.exes.is_empty() || inc.exe(&info))
            && (inc.containers.is_empty() || inc.container(&info))
            && !exc.exe(&info)
            && !exc.container(&info)
    }
}

#[cfg(test)]
mod tests {
    use sonde_common::Role;

    use super::*;

    fn conn(pid: u32, local: u16, remote: u16) -> ConnInfo {
        ConnInfo {
            id: 1,
            pid,
            fd: 3,
            role: Role::Server,
            local: Some(([127, 0, 0, 1], local).into()),
            remote: Some(([127, 0, 0, 1], remote).into()),
            tls: false,
        }
    }

    fn nginx() -> ProcInfo {
        ProcInfo {
            exe_name: Some("nginx".into()),
            exe_path: Some("/usr/sbin/nginx".into()),
            ..Default::default()
        }
    }

    #[test]
    fn criteria_narrow_each_other() {
        let all = Selector::default();
        assert!(all.accepts(&conn(1, 80, 5000), ProcInfo::default));

        let by_port = include(Criteria { ports: vec![80], ..Criteria::default() });
        assert!(by_port.accepts(&conn(1, 80, 5000), ProcInfo::default));
        assert!(by_port.accepts(&conn(1, 5000, 80), ProcInfo::default));
        assert!(!by_port.accepts(&conn(1, 81, 5000), ProcInfo::default));

        let by_exe = include(Criteria { exes: vec!["/usr/sbin/*".into()], ..Criteria::default() });
        assert!(by_exe.accepts(&conn(1, 80, 5000), nginx));
        assert!(!by_exe.accepts(&conn(1, 80, 5000), ProcInfo::default));
        let by_name =
            include(Criteria { ports: vec![80], exes: vec!["ngin?".into()], ..Criteria::default() });
        assert!(by_name.accepts(&conn(1, 80, 5000), nginx));
        assert!(!by_name.accepts(&conn(1, 81, 5000), nginx));

        let by_pid = include(Criteria { pids: vec![7], ..Criteria::default() });
        assert!(by_pid.accepts(&conn(7, 1, 2), ProcInfo::default));
        assert!(!by_pid.accepts(&conn(8, 1, 2), ProcInfo::default));

        let bad = Criteria { exes: vec!["[".into()], ..Criteria::default() };
        assert!(Selector::new(&bad, &Criteria::default()).unwrap_err().to_string().starts_with("--exe"));
        assert!(
            Selector::new(&Criteria::default(), &bad).unwrap_err().to_string().starts_with("--exclude-exe")
        );
    }

    fn include(c: Criteria) -> Selector {
        Selector::new(&c, &Criteria::default()).unwrap()
    }

    fn in_container(id: &str) -> impl Fn() -> ProcInfo {
        let id = id.to_owned();
        move || ProcInfo { container_id: Some(id.clone()), ..nginx() }
    }

    #[test]
    fn containers_by_id_prefix_and_exclusions_win() {
        let id = "3f4b1c6a2d8e".repeat(5) + "abcd";
        let by_container =
            include(Criteria { containers: vec!["3F4B1C6A2D8E".into()], ..Criteria::default() });
        assert!(by_container.accepts(&conn(1, 80, 5000), in_container(&id)));
        assert!(!by_container.accepts(&conn(1, 80, 5000), nginx), "not in a container");
        assert!(!by_container.accepts(&conn(1, 80, 5000), in_container(&"0".repeat(64))));

        let exclude = |c: Criteria| Selector::new(&Criteria::default(), &c).unwrap();
        let no_nginx = exclude(Criteria { exes: vec!["nginx".into()], ..Criteria::default() });
        assert!(!no_nginx.accepts(&conn(1, 80, 5000), nginx));
        assert!(no_nginx.accepts(&conn(1, 80, 5000), ProcInfo::default));
        let no_port = exclude(Criteria { ports: vec![22], ..Criteria::default() });
        assert!(!no_port.accepts(&conn(1, 5000, 22), ProcInfo::default));
        assert!(no_port.accepts(&conn(1, 5000, 80), ProcInfo::default));
        let no_pid = exclude(Criteria { pids: vec![7], ..Criteria::default() });
        assert!(!no_pid.accepts(&conn(7, 1, 2), ProcInfo::default));
        let no_container = exclude(Criteria { containers: vec![id[..12].to_owned()], ..Criteria::default() });
        assert!(!no_container.accepts(&conn(1, 80, 5000), in_container(&id)));
        assert!(no_container.accepts(&conn(1, 80, 5000), nginx));

        // Include and exclude together: port 80, but not nginx.
        let both = Selector::new(
            &Criteria { ports: vec![80], ..Criteria::default() },
            &Criteria { exes: vec!["nginx".into()], ..Criteria::default() },
        )
        .unwrap();
        assert!(!both.accepts(&conn(1, 80, 5000), nginx));
        assert!(both.accepts(&conn(1, 80, 5000), ProcInfo::default));
        assert!(!both.accepts(&conn(1, 81, 5000), ProcInfo::default));
    }
}
