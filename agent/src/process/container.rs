//! `container.id` of a process, from the cgroup paths in /proc/PID/cgroup.
//!
//! Container runtimes put each container in a cgroup named after its 64-hex-digit id:
//! `/docker/<id>` (Docker, cgroup v1), `/system.slice/docker-<id>.scope` (Docker with systemd),
//! `.../cri-containerd-<id>.scope` (containerd), `.../crio-<id>.scope` (CRI-O),
//! `.../libpod-<id>.scope` (Podman), `/kubepods/<qos>/pod<uid>/<id>` (kubelet with cgroupfs). The
//! id is the last run of exactly 64 hex digits in a path: pod uids (with dashes) and shorter
//! hex names (32 digits, as some sandboxes use) are not taken for one.

/// The container id in one cgroup path of /proc/PID/cgroup (any of a process's paths may carry
/// it).
pub fn from_path(path: &str) -> Option<String> {
    last_id(path)
}

/// The container id in /proc/PID/cgroup's text (`hierarchy:controllers:path` lines).
#[cfg(test)]
fn from_cgroup(text: &str) -> Option<String> {
    text.lines().filter_map(|line| line.splitn(3, ':').nth(2)).find_map(last_id)
}

fn last_id(path: &str) -> Option<String> {
    path.rsplit('/').find_map(|segment| {
        // The id, alone or between a runtime's prefix (`docker-`) and `.scope`.
        let name = segment.strip_suffix(".scope").unwrap_or(segment);
        let id = name.rsplit(['-', ':']).next()?;
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4b1c6a2d8e9f0a1b2c3d4e5f60718293a4b5c6d7e8f9012345678901234abc";

    #[test]
    fn ids_of_the_runtimes() {
        for text in [
            format!("12:pids:/docker/{ID}\n0::/docker/{ID}\n"),
            format!("0::/system.slice/docker-{ID}.scope\n"),
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_5678.slice/cri-containerd-{ID}.scope\n"
            ),
            format!("0::/kubepods/besteffort/pod0f2c3c4e-1b2a-4c3d-9e8f-0a1b2c3d4e5f/{ID}\n"),
            format!("0::/machine.slice/libpod-{ID}.scope/container\n"),
            format!("0::/kubepods.slice/crio-{}.scope\n", ID.to_uppercase()),
        ] {
            assert_eq!(from_cgroup(&text).as_deref(), Some(ID), "{text}");
        }
    }

    #[test]
    fn no_container_no_id() {
        for text in [
            "0::/\n",
            "0::/user.slice/user-1000.slice/session-2.scope\n",
            // 32 hex digits: a sandbox's own naming, not a container id.
            "4:memory:/process_api/6e99e57eb14658b435c0174b7a64094d\n0::/\n",
            "0::/kubepods/besteffort/pod0f2c3c4e-1b2a-4c3d-9e8f-0a1b2c3d4e5f\n",
            "",
            "garbage",
        ] {
            assert_eq!(from_cgroup(text), None, "{text}");
        }
    }
}
