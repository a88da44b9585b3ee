//! Resolves a `struct file *` to its path by walking dentries and mounts (no `bpf_d_path`
//! outside fentry/LSM). The path is written leaf first; userspace puts it in order.

use aya_ebpf::helpers::bpf_probe_read_kernel_str_bytes;
use rmm_common::{
    ExecEvent, KernelOffsets, PATH_COMPONENT_MAX, PATH_MAX_DEPTH, PATH_START_LIMIT, exec_flags,
};

use crate::kernel::{read, read_ptr};

#[inline(always)]
pub fn resolve_file_path(ev: &mut ExecEvent, file: u64, off: &KernelOffsets) {
    let path = file + off.file_f_path as u64;
    let (Some(mut dentry), Some(mut vfsmnt)) = (
        read_ptr(path, off.path_dentry),
        read_ptr(path, off.path_mnt),
    ) else {
        ev.flags |= exec_flags::PATH_ERROR;
        return;
    };
    // An unhashed leaf is a deleted file (checked at the end: pseudo files are unhashed too).
    let unhashed = read::<u64>(dentry, off.dentry_d_hash_pprev) == Some(0);
    // The write position lives in the record, not in a register: reloaded each iteration it is
    // an unknown (masked) value to the verifier, so the states after a mount crossing and after
    // a name are the same and the walk verifies in linear time instead of exploding.
    ev.path_len = 0;
    let mut done = false;
    for _ in 0..PATH_MAX_DEPTH {
        let Some(mnt_root) = read_ptr(vfsmnt, off.vfsmount_mnt_root) else {
            ev.flags |= exec_flags::PATH_ERROR;
            done = true;
            break;
        };
        if dentry == mnt_root {
            // At the root of this mount: continue from where it is mounted, or stop at the
            // root of the mount tree.
            let mount = vfsmnt - off.mount_mnt as u64;
            let Some(parent) = read_ptr(mount, off.mount_mnt_parent) else {
                ev.flags |= exec_flags::PATH_ERROR;
                done = true;
                break;
            };
            if parent == mount {
                done = true;
                break;
            }
            let Some(mountpoint) = read_ptr(mount, off.mount_mnt_mountpoint) else {
                ev.flags |= exec_flags::PATH_ERROR;
                done = true;
                break;
            };
            dentry = mountpoint;
            vfsmnt = parent + off.mount_mnt as u64;
            continue;
        }
        let Some(parent) = read_ptr(dentry, off.dentry_d_parent) else {
            ev.flags |= exec_flags::PATH_ERROR;
            done = true;
            break;
        };
        let Some(name) = read_ptr(dentry, off.dentry_d_name + off.qstr_name) else {
            ev.flags |= exec_flags::PATH_ERROR;
            done = true;
            break;
        };
        // SAFETY: a field of the record we own.
        let pos = unsafe { core::ptr::read_volatile(&raw const ev.path_len) } as usize;
        if pos >= PATH_START_LIMIT {
            ev.flags |= exec_flags::PATH_TRUNCATED;
            done = true;
            break;
        }
        let start = pos & (PATH_START_LIMIT - 1);
        let dst = &mut ev.path[start..start + PATH_COMPONENT_MAX];
        // SAFETY: the helper bounds the read by the destination length and NUL-terminates.
        match unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, dst) } {
            Ok(s) => {
                let next = (start + s.len() + 1) as u32;
                // SAFETY: as above.
                unsafe { core::ptr::write_volatile(&raw mut ev.path_len, next) };
            }
            Err(_) => {
                ev.flags |= exec_flags::PATH_ERROR;
                done = true;
                break;
            }
        }
        if parent == dentry {
            // A dentry that is its own parent but not a mount root: a detached tree
            // (memfd, pipe, anonymous inode, or an unlinked directory).
            ev.flags |= exec_flags::PATH_DETACHED;
            done = true;
            break;
        }
        dentry = parent;
    }
    if !done {
        ev.flags |= exec_flags::PATH_TRUNCATED;
    }
    if unhashed && ev.flags & exec_flags::PATH_DETACHED == 0 {
        ev.flags |= exec_flags::PATH_DELETED;
    }
}
