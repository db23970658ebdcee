//! Names for the numbers the kernel reports: user and group names (from `/etc/passwd` and
//! `/etc/group`) and cgroup paths with the container id they imply. Cached; a number that
//! is not known triggers at most one re-read per interval, so a storm of unknown ids cannot
//! turn into a storm of file reads.

use std::collections::HashMap;
use std::time::{Duration, Instant};

const RETRY: Duration = Duration::from_secs(10);
/// Most directories visited when looking for a cgroup.
const CGROUP_WALK_MAX: usize = 20_000;

/// The caches.
#[derive(Debug, Default)]
pub struct Names {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
    ids_loaded: Option<Instant>,
    cgroups: HashMap<u64, String>,
    cgroups_walked: Option<Instant>,
}

fn parse_ids(text: &str) -> HashMap<u32, String> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let id = f.nth(1)?.parse().ok()?;
            Some((id, name.to_string()))
        })
        .collect()
}

/// The container id in a cgroup path: a 64-hex-digit run in its last component (docker,
/// containerd, CRI-O and podman all name scopes this way).
pub fn container_id(cgroup: &str) -> Option<&str> {
    let last = cgroup.rsplit('/').next()?;
    let bytes = last.as_bytes();
    let mut run = 0;
    for (i, b) in bytes.iter().enumerate() {
        if b.is_ascii_hexdigit() && !b.is_ascii_uppercase() {
            run += 1;
            if run == 64 && bytes.get(i + 1).is_none_or(|n| !n.is_ascii_hexdigit()) {
                return Some(&last[i + 1 - 64..=i]);
            }
        } else {
            run = 0;
        }
    }
    None
}

impl Names {
    fn load_ids(&mut self) {
        let now = Instant::now();
        if self
            .ids_loaded
            .is_some_and(|t| now.duration_since(t) < RETRY)
        {
            return;
        }
        self.ids_loaded = Some(now);
        if let Ok(t) = std::fs::read_to_string("/etc/passwd") {
            self.users = parse_ids(&t);
        }
        if let Ok(t) = std::fs::read_to_string("/etc/group") {
            self.groups = parse_ids(&t);
        }
    }

    /// The user name of a uid, if the system knows one.
    pub fn user(&mut self, uid: u32) -> Option<String> {
        if !self.users.contains_key(&uid) {
            self.load_ids();
        }
        self.users.get(&uid).cloned()
    }

    /// The group name of a gid.
    pub fn group(&mut self, gid: u32) -> Option<String> {
        if !self.groups.contains_key(&gid) {
            self.load_ids();
        }
        self.groups.get(&gid).cloned()
    }

    /// The path (below the cgroup-v2 root) of a cgroup id: the id is the inode of the
    /// cgroup's directory.
    pub fn cgroup(&mut self, id: u64) -> Option<String> {
        if id == 0 {
            return None;
        }
        if let Some(p) = self.cgroups.get(&id) {
            return Some(p.clone());
        }
        let now = Instant::now();
        if self
            .cgroups_walked
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return None;
        }
        self.cgroups_walked = Some(now);
        let root = crate::bpf::cgroup_v2_root()?;
        let root = root.as_path();
        let mut stack = vec![root.to_path_buf()];
        let mut seen = 0;
        while let Some(dir) = stack.pop() {
            seen += 1;
            if seen > CGROUP_WALK_MAX {
                break;
            }
            use std::os::unix::fs::MetadataExt;
            if let Ok(m) = std::fs::metadata(&dir) {
                let rel = dir.strip_prefix(root).unwrap_or(&dir);
                self.cgroups.insert(m.ino(), format!("/{}", rel.display()));
            }
            if let Ok(rd) = std::fs::read_dir(&dir) {
                stack.extend(
                    rd.flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
        }
        self.cgroups.get(&id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_from_cgroup_paths() {
        let id = "3f1b2c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809";
        assert_eq!(
            container_id(&format!("/system.slice/docker-{id}.scope")),
            Some(id)
        );
        assert_eq!(
            container_id(&format!("/kubepods/burstable/pod1/{id}")),
            Some(id)
        );
        assert_eq!(
            container_id("/user.slice/user-0.slice/session-1.scope"),
            None
        );
        // 65 hex digits is not an id.
        assert_eq!(container_id(&format!("/x/{id}a")), None);
    }

    #[test]
    fn names_of_root_and_the_root_cgroup() {
        let mut n = Names::default();
        assert_eq!(n.user(0).as_deref(), Some("root"));
        assert_eq!(n.group(0).as_deref(), Some("root"));
        assert_eq!(n.user(4_000_000_000), None);
        use std::os::unix::fs::MetadataExt;
        if let Some(m) = crate::bpf::cgroup_v2_root().and_then(|r| std::fs::metadata(r).ok()) {
            assert_eq!(n.cgroup(m.ino()).as_deref(), Some("/"));
        }
    }
}
