//! Which connections are parsed: `--pid` (also enforced in the kernel), `--port` (either end of the
//! connection), `--exe` (glob on the executable's name or full path). No selector means all.

use super::ConnInfo;
use crate::process::ProcInfo;

#[derive(Debug, thiserror::Error)]
#[error("--exe {pattern:?} is not a valid glob: {source}")]
pub struct SelectError {
    pattern: String,
    source: glob::PatternError,
}

#[derive(Debug, Default)]
pub struct Selector {
    pids: Vec<u32>,
    ports: Vec<u16>,
    exes: Vec<glob::Pattern>,
}

impl Selector {
    pub fn new(pids: Vec<u32>, ports: Vec<u16>, exes: &[String]) -> Result<Self, SelectError> {
        let exes = exes
            .iter()
            .map(|p| glob::Pattern::new(p).map_err(|source| SelectError { pattern: p.clone(), source }))
            .collect::<Result<_, _>>()?;
        Ok(Self { pids, ports, exes })
    }

    /// Every given criterion must match (they narrow each other); an absent one matches all.
    pub fn accepts(&self, conn: &ConnInfo, process: impl FnOnce() -> ProcInfo) -> bool {
        if !self.pids.is_empty() && !self.pids.contains(&conn.pid) {
            return false;
        }
        if !self.ports.is_empty() {
            let ends = [conn.local_port(), conn.remote_port()];
            if !ends.iter().flatten().any(|p| self.ports.contains(p)) {
                return false;
            }
        }
        if !self.exes.is_empty() {
            let info = process();
            let names = [info.exe_name.as_deref(), info.exe_path.as_deref()];
            if !names.iter().flatten().any(|n| self.exes.iter().any(|p| p.matches(n))) {
                return false;
            }
        }
        true
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

        let by_port = Selector::new(vec![], vec![80], &[]).unwrap();
        assert!(by_port.accepts(&conn(1, 80, 5000), ProcInfo::default));
        assert!(by_port.accepts(&conn(1, 5000, 80), ProcInfo::default));
        assert!(!by_port.accepts(&conn(1, 81, 5000), ProcInfo::default));

        let by_exe = Selector::new(vec![], vec![], &["/usr/sbin/*".into()]).unwrap();
        assert!(by_exe.accepts(&conn(1, 80, 5000), nginx));
        assert!(!by_exe.accepts(&conn(1, 80, 5000), ProcInfo::default));
        let by_name = Selector::new(vec![], vec![80], &["ngin?".into()]).unwrap();
        assert!(by_name.accepts(&conn(1, 80, 5000), nginx));
        assert!(!by_name.accepts(&conn(1, 81, 5000), nginx));

        let by_pid = Selector::new(vec![7], vec![], &[]).unwrap();
        assert!(by_pid.accepts(&conn(7, 1, 2), ProcInfo::default));
        assert!(!by_pid.accepts(&conn(8, 1, 2), ProcInfo::default));

        assert!(Selector::new(vec![], vec![], &["[".into()]).is_err());
    }
}
