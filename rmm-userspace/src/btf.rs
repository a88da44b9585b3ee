//! Kernel struct offsets from BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Rust eBPF has no CO-RE field relocations, so the daemon reads the few offsets the exec probe
//! needs here and hands them to the programs as the global `OFFSETS` (the route kunai takes).
//! Only the parts of the format needed to find struct members are parsed; the type section is
//! validated as it is walked and every malformed record is an error, never a panic.

use std::collections::HashMap;

use anyhow::{Context, Result, anyhow, bail, ensure};
use rmm_common::KernelOffsets;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_PTR: u32 = 2;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

#[derive(Debug, Clone)]
struct Member {
    name: u32,
    ty: u32,
    bit_offset: u32,
}

#[derive(Debug, Clone)]
struct Type {
    name: u32,
    kind: u32,
    /// size for structs and unions, referenced type for modifiers and pointers
    size_or_type: u32,
    members: Vec<Member>,
}

/// The parsed type section: enough to resolve `struct.member` to a byte offset.
pub struct Btf {
    /// Index = type id (0 is `void`).
    types: Vec<Type>,
    /// The whole file; strings are read in place (the string section is a few MB: no copy).
    data: Vec<u8>,
    strings: std::ops::Range<usize>,
    structs_by_name: HashMap<String, u32>,
}

fn u32_at(data: &[u8], off: usize) -> Result<u32> {
    let bytes = data
        .get(off..off + 4)
        .ok_or_else(|| anyhow!("BTF truncated at byte {off}"))?;
    Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

impl Btf {
    pub fn from_file(path: &str) -> Result<Btf> {
        let data = std::fs::read(path).with_context(|| format!("reading BTF from {path}"))?;
        Btf::parse(data).with_context(|| format!("parsing BTF from {path}"))
    }

    pub fn parse(data: Vec<u8>) -> Result<Btf> {
        ensure!(data.len() >= 24, "BTF shorter than its header");
        let magic = u16::from_le_bytes([data[0], data[1]]);
        ensure!(
            magic == BTF_MAGIC,
            "bad BTF magic {magic:#x} (only little-endian BTF is read)"
        );
        let hdr_len = u32_at(&data, 4)? as usize;
        let type_off = u32_at(&data, 8)? as usize;
        let type_len = u32_at(&data, 12)? as usize;
        let str_off = u32_at(&data, 16)? as usize;
        let str_len = u32_at(&data, 20)? as usize;
        let types_data = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or_else(|| anyhow!("BTF type section out of bounds"))?;
        let strings = hdr_len + str_off..hdr_len + str_off + str_len;
        ensure!(
            strings.end <= data.len(),
            "BTF string section out of bounds"
        );

        let mut types = vec![Type {
            name: 0,
            kind: 0,
            size_or_type: 0,
            members: Vec::new(),
        }];
        let mut pos = 0;
        while pos < types_data.len() {
            let name = u32_at(types_data, pos)?;
            let info = u32_at(types_data, pos + 4)?;
            let size_or_type = u32_at(types_data, pos + 8)?;
            pos += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 != 0;
            let mut members = Vec::new();
            let extra = match kind {
                1 | 14 | 17 => 4, // INT, VAR, DECL_TAG
                3 => 12,          // ARRAY
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = pos + i * 12;
                        let offset = u32_at(types_data, m + 8)?;
                        members.push(Member {
                            name: u32_at(types_data, m)?,
                            ty: u32_at(types_data, m + 4)?,
                            bit_offset: if kind_flag {
                                offset & 0x00ff_ffff
                            } else {
                                offset
                            },
                        });
                    }
                    vlen * 12
                }
                6 | 13 => vlen * 8,   // ENUM, FUNC_PROTO
                15 | 19 => vlen * 12, // DATASEC, ENUM64
                KIND_PTR | 7 | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | 12
                | 16 | KIND_TYPE_TAG => 0,
                other => bail!("unknown BTF kind {other} at type {}", types.len()),
            };
            pos += extra;
            types.push(Type {
                name,
                kind,
                size_or_type,
                members,
            });
        }
        ensure!(
            pos == types_data.len(),
            "BTF type section ends inside a record"
        );

        let mut btf = Btf {
            types,
            data,
            strings,
            structs_by_name: HashMap::new(),
        };
        for (id, t) in btf.types.iter().enumerate() {
            if t.kind == KIND_STRUCT && t.name != 0 {
                let name = btf.string(t.name)?.to_owned();
                // The first definition wins; vmlinux BTF is deduplicated.
                btf.structs_by_name.entry(name).or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    fn string(&self, off: u32) -> Result<&str> {
        let rest = self.data[self.strings.clone()]
            .get(off as usize..)
            .ok_or_else(|| anyhow!("BTF string offset {off} out of bounds"))?;
        let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).context("BTF string is not UTF-8")
    }

    fn ty(&self, id: u32) -> Result<&Type> {
        self.types
            .get(id as usize)
            .ok_or_else(|| anyhow!("BTF type id {id} out of range"))
    }

    /// Follows typedefs and modifiers to the underlying type.
    fn strip(&self, mut id: u32) -> Result<u32> {
        for _ in 0..32 {
            let t = self.ty(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return Ok(id),
            }
        }
        bail!("BTF modifier chain too long at type {id}")
    }

    /// Byte offset of `member` in `struct_name`, looking through anonymous structs and unions.
    pub fn member_offset(&self, struct_name: &str, member: &str) -> Result<u32> {
        let id = *self
            .structs_by_name
            .get(struct_name)
            .ok_or_else(|| anyhow!("struct {struct_name} not in kernel BTF"))?;
        let bits = self
            .find_member(id, member, 0)?
            .ok_or_else(|| anyhow!("struct {struct_name} has no member {member} in kernel BTF"))?;
        ensure!(bits % 8 == 0, "{struct_name}.{member} is a bitfield");
        Ok(bits / 8)
    }

    fn find_member(&self, id: u32, member: &str, depth: u32) -> Result<Option<u32>> {
        ensure!(depth < 8, "anonymous members nested too deeply");
        let t = self.ty(id)?;
        for m in &t.members {
            if m.name == 0 {
                let inner = self.strip(m.ty)?;
                if matches!(self.ty(inner)?.kind, KIND_STRUCT | KIND_UNION)
                    && let Some(off) = self.find_member(inner, member, depth + 1)?
                {
                    return Ok(Some(m.bit_offset + off));
                }
            } else if self.string(m.name)? == member {
                return Ok(Some(m.bit_offset));
            }
        }
        Ok(None)
    }
}

/// Reads the offsets the programs need (see `KernelOffsets`).
pub fn kernel_offsets(btf: &Btf) -> Result<KernelOffsets> {
    let o = |s: &str, m: &str| btf.member_offset(s, m);
    Ok(KernelOffsets {
        valid: 1,
        task_real_parent: o("task_struct", "real_parent")?,
        task_tgid: o("task_struct", "tgid")?,
        task_mm: o("task_struct", "mm")?,
        task_exit_code: o("task_struct", "exit_code")?,
        mm_arg_start: o("mm_struct", "arg_start")?,
        mm_arg_end: o("mm_struct", "arg_end")?,
        mm_exe_file: o("mm_struct", "exe_file")?,
        file_f_path: o("file", "f_path")?,
        path_mnt: o("path", "mnt")?,
        path_dentry: o("path", "dentry")?,
        dentry_d_parent: o("dentry", "d_parent")?,
        dentry_d_name: o("dentry", "d_name")?,
        dentry_d_hash_pprev: o("dentry", "d_hash")? + o("hlist_bl_node", "pprev")?,
        qstr_name: o("qstr", "name")?,
        mount_mnt: o("mount", "mnt")?,
        mount_mnt_parent: o("mount", "mnt_parent")?,
        mount_mnt_mountpoint: o("mount", "mnt_mountpoint")?,
        vfsmount_mnt_root: o("vfsmount", "mnt_root")?,
        task_pid: o("task_struct", "pid")?,
        task_comm: o("task_struct", "comm")?,
        task_cred: o("task_struct", "cred")?,
        cred_uid: o("cred", "uid")?,
        cred_gid: o("cred", "gid")?,
        task_cgroups: o("task_struct", "cgroups")?,
        css_set_dfl_cgrp: o("css_set", "dfl_cgrp")?,
        cgroup_kn: o("cgroup", "kn")?,
        kernfs_node_id: o("kernfs_node", "id")?,
        task_signal: o("task_struct", "signal")?,
        signal_live: o("signal_struct", "live")?,
        task_group_leader: o("task_struct", "group_leader")?,
        task_start_boottime: o("task_struct", "start_boottime")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-made BTF blob: `struct outer { int a; union { int b; int c; }; }`.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0b\0c\0".to_vec();
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int (name "int" at 1), size 4, encoding word
        push(&[1, 1 << 24, 4, 32]);
        // 2: anonymous union { b at 0, c at 0 }
        push(&[0, (KIND_UNION << 24) | 2, 4, 13, 1, 0, 15, 1, 0]);
        // 3: struct outer { a at bit 0, <anon> at bit 32 }
        push(&[5, (KIND_STRUCT << 24) | 2, 8, 11, 1, 0, 0, 2, 32]);
        let mut data = Vec::new();
        data.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        data.extend_from_slice(&[1, 0]);
        for w in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            data.extend_from_slice(&w.to_le_bytes());
        }
        data.extend_from_slice(&types);
        data.extend_from_slice(&strings);
        data
    }

    #[test]
    fn finds_members_through_anonymous_unions() {
        let btf = Btf::parse(sample()).expect("sample parses");
        assert_eq!(btf.member_offset("outer", "a").expect("a"), 0);
        assert_eq!(btf.member_offset("outer", "c").expect("c"), 4);
        assert!(btf.member_offset("outer", "zz").is_err());
        assert!(btf.member_offset("nope", "a").is_err());
    }

    #[test]
    fn truncated_input_is_an_error() {
        let data = sample();
        for cut in [0, 10, 30, data.len() - 3] {
            assert!(Btf::parse(data[..cut].to_vec()).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn reads_this_kernels_offsets() {
        if !std::path::Path::new(VMLINUX_BTF).exists() {
            eprintln!("skipped: no {VMLINUX_BTF}");
            return;
        }
        let btf = Btf::from_file(VMLINUX_BTF).expect("vmlinux BTF parses");
        let off = kernel_offsets(&btf).expect("offsets found");
        assert_eq!(off.valid, 1);
        assert!(off.task_mm > 0 && off.mm_arg_end == off.mm_arg_start + 8);
    }
}
