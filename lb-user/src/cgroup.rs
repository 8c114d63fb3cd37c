//! Where the cgroup v2 hierarchy is mounted: the socket load balancer's programs attach to its root, which covers
//! every process of the node (each program then leaves alone the connects of other network namespaces).
use std::path::PathBuf;

/// The mount point of the cgroup v2 hierarchy's root, from `/proc/self/mountinfo`: `/sys/fs/cgroup` on a unified
/// system, `/sys/fs/cgroup/unified` on a hybrid one. `None` when cgroup v2 is not mounted in this mount namespace.
///
/// # Errors
/// When `/proc/self/mountinfo` cannot be read.
pub fn v2_root() -> std::io::Result<Option<PathBuf>> {
    Ok(v2_root_in(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// [`v2_root`] from the text of a `mountinfo` file (proc(5): `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS
/// [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS`): the first `cgroup2` mount of the hierarchy's root (a bind mount of a
/// subdirectory would only cover that subtree).
pub fn v2_root_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        if after.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mut fields = before.split_whitespace();
        let root = fields.nth(3)?;
        let mount_point = fields.next()?;
        (root == "/").then(|| PathBuf::from(unescape(mount_point)))
    })
}

/// Mount points escape space, tab, newline and backslash as octal (`\040`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Some(code) =
                std::str::from_utf8(&bytes[i + 1..i + 4]).ok().and_then(|d| u8::from_str_radix(d, 8).ok())
        {
            out.push(code);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_unified_and_the_hybrid_mount_and_nothing_without_one() {
        let unified = "24 30 0:22 / /sys ro,nosuid - sysfs sysfs rw\n\
                       28 24 0:25 / /sys/fs/cgroup rw,nosuid,nodev,noexec shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(v2_root_in(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        let hybrid = "30 24 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755\n\
                      31 30 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n\
                      40 30 0:35 / /sys/fs/cgroup/unified rw shared:9 - cgroup2 cgroup2 rw\n";
        assert_eq!(v2_root_in(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let v1_only = "31 30 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(v2_root_in(v1_only), None);
        assert_eq!(v2_root_in(""), None);
    }

    #[test]
    fn a_bind_mount_of_a_subtree_is_not_the_root_and_escapes_are_undone() {
        let text = "50 24 0:25 /kubepods /mnt/pods rw - cgroup2 cgroup2 rw\n\
                    51 24 0:25 / /run/my\\040cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(v2_root_in(text), Some(PathBuf::from("/run/my cgroup")));
    }
}
