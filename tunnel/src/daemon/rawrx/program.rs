//! The XDP program that steers raw ESP to the AF_XDP socket, as eBPF bytecode written here (28 instructions,
//! no compiler, no libbpf), and the `bpf(2)` calls that load and attach it.
//!
//! The program redirects to the XSKMAP entry of the frame's receive queue exactly the frames that are:
//! Ethernet, IPv4 with a 20-byte header (no options), protocol 50 (ESP), not a fragment (MF clear and offset
//! zero) and addressed to our IPv4 address. Everything else, and ESP arriving on a queue with no socket in the
//! map, passes to the kernel's stack unchanged (`XDP_PASS`), where the raw ESP socket still receives it:
//! fragments (the kernel reassembles them), IPv4 with options, IPv6, and ESP for another address.
//!
//! It is attached through a BPF link (`BPF_LINK_CREATE`): the kernel detaches it when the last descriptor of
//! the link closes, so when the daemon exits or is killed, and the attach fails (EBUSY) rather than replace a
//! program someone else attached to the interface.
//!
//! This file uses only std, libc and thiserror: the `raw_esp_tx` example (benches/raw_tx.sh) includes it as it is.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `enum bpf_cmd` (uapi/linux/bpf.h).
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_LINK_CREATE: libc::c_long = 28;
/// `BPF_MAP_TYPE_XSKMAP`, `BPF_PROG_TYPE_XDP`, attach type `BPF_XDP`.
const MAP_TYPE_XSKMAP: u32 = 17;
const PROG_TYPE_XDP: u32 = 6;
const ATTACH_XDP: u32 = 37;
/// `XDP_FLAGS_SKB_MODE` (generic XDP, after the skb is built) and `XDP_FLAGS_DRV_MODE` (in the driver).
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// XDP verdicts (the tests load the program with `XDP_DROP` as the verdict of a queue with no socket).
#[allow(dead_code)]
pub(crate) const XDP_DROP: u32 = 1;
pub(crate) const XDP_PASS: u32 = 2;

/// The helpers `bpf_redirect_map(map, key, flags)` and `bpf_xdp_get_buff_len(ctx)`: their numbers in
/// `enum bpf_func_id`.
const HELPER_REDIRECT_MAP: i32 = 51;
const HELPER_GET_BUFF_LEN: i32 = 188;
/// `BPF_F_XDP_HAS_FRAGS`: the program handles frames in several buffers (it reads only the first 34 bytes,
/// which the first buffer holds, and the total length through the helper). Without it, native XDP on a veth
/// turns off GSO on its peer (veth_xdp_set), which would cost ESP in UDP its GSO batches.
const F_XDP_HAS_FRAGS: u32 = 1 << 5;

/// One eBPF instruction (`struct bpf_insn`): opcode, destination register in the low nibble and source in the
/// high one, signed offset, signed immediate.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

// Opcodes: class | size/op | source.
/// `BPF_ALU64 | BPF_MOV | BPF_X`: dst = src.
const MOV64_X: u8 = 0xbf;
/// `BPF_ALU64 | BPF_MOV | BPF_K`: dst = imm.
const MOV64_K: u8 = 0xb7;
/// `BPF_ALU64 | BPF_ADD | BPF_K`: dst += imm.
const ADD64_K: u8 = 0x07;
/// `BPF_ALU | BPF_AND | BPF_K`: w(dst) &= imm (32 bits).
const AND32_K: u8 = 0x54;
/// `BPF_LDX | BPF_MEM | BPF_W / BPF_H / BPF_B`: dst = *(u32 / u16 / u8 *)(src + off), zero-extended.
const LDX_W: u8 = 0x61;
const LDX_H: u8 = 0x69;
const LDX_B: u8 = 0x71;
/// `BPF_LD | BPF_DW | BPF_IMM`: a 64-bit immediate over two instructions (a map with `BPF_PSEUDO_MAP_FD`).
const LD_IMM64: u8 = 0x18;
const PSEUDO_MAP_FD: u8 = 1;
/// `BPF_JMP | BPF_JGT | BPF_X / BPF_K`: if dst > src / imm (unsigned, 64 bits) jump.
const JGT_X: u8 = 0x2d;
const JGT_K: u8 = 0x25;
/// `BPF_JMP32 | BPF_JNE | BPF_K`: if w(dst) != imm (32 bits) jump.
const JNE32_K: u8 = 0x56;
/// `BPF_JMP | BPF_CALL`, `BPF_JMP | BPF_EXIT`.
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;

/// Registers: r0 return value, r1-r5 arguments (scratch), r6 callee-saved.
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;
const R6: u8 = 6;

/// `struct xdp_md` offsets: data, data_end, rx_queue_index.
const MD_DATA: i16 = 0;
const MD_DATA_END: i16 = 4;
const MD_RX_QUEUE: i16 = 16;

/// Index of the `pass` label (the last two instructions) in the program [`instructions`] builds.
const PASS_AT: i16 = 26;

/// The program for our IPv4 address `local` and the map descriptor `map`; frames longer than `max_len` (the
/// socket's frame size) pass to the stack, since the socket would drop them. `miss` is the verdict when the
/// receive queue has no socket in the map: `XDP_PASS` in the daemon (the stack and its raw socket get the
/// frame); the tests load it with `XDP_DROP` to see which frames the program sends to the map.
pub(crate) fn instructions(local: Ipv4Addr, map: RawFd, max_len: u32, miss: u32) -> Vec<Insn> {
    // Loads read memory in the host's byte order: compare against the wire bytes read the same way.
    let ne16 = |b: [u8; 2]| i32::from(u16::from_ne_bytes(b));
    let ne32 = |b: [u8; 4]| u32::from_ne_bytes(b) as i32;
    // A forward jump from instruction `at` to `pass`.
    let to_pass = |at: i16| PASS_AT - at - 1;
    let p = vec![
        /* 0 */ insn(MOV64_X, R6, R1, 0, 0), // r6 = ctx, kept across the helper call
        /* 1 */ insn(LDX_W, R2, R1, MD_DATA, 0), // r2 = data
        /* 2 */ insn(LDX_W, R3, R1, MD_DATA_END, 0), // r3 = data_end
        /* 3 */ insn(MOV64_X, R4, R2, 0, 0), // r4 = data
        /* 4 */
        insn(ADD64_K, R4, 0, 0, 34), // r4 = data + Ethernet (14) + IPv4 header (20)
        /* 5 */
        insn(JGT_X, R4, R3, to_pass(5), 0), // shorter than that: pass (bounds for the verifier)
        /* 6 */ insn(LDX_H, R5, R2, 12, 0), // r5 = EtherType
        /* 7 */ insn(JNE32_K, R5, 0, to_pass(7), ne16([0x08, 0x00])), // not IPv4: pass
        /* 8 */ insn(LDX_B, R5, R2, 14, 0), // r5 = version and header length
        /* 9 */
        insn(JNE32_K, R5, 0, to_pass(9), 0x45), // not IPv4 with a 20-byte header: pass
        /* 10 */ insn(LDX_B, R5, R2, 14 + 9, 0), // r5 = protocol
        /* 11 */ insn(JNE32_K, R5, 0, to_pass(11), 50), // not ESP: pass
        /* 12 */ insn(LDX_H, R5, R2, 14 + 6, 0), // r5 = flags and fragment offset
        /* 13 */
        insn(AND32_K, R5, 0, 0, ne16([0x3f, 0xff])), // keep MF and the offset (not DF)
        /* 14 */
        insn(JNE32_K, R5, 0, to_pass(14), 0), // a fragment: pass (the kernel reassembles)
        /* 15 */ insn(LDX_W, R5, R2, 14 + 16, 0), // r5 = destination address
        /* 16 */
        insn(JNE32_K, R5, 0, to_pass(16), ne32(local.octets())), // not ours: pass
        /* 17 */ insn(MOV64_X, R1, R6, 0, 0), // r1 = ctx
        /* 18 */
        insn(CALL, 0, 0, 0, HELPER_GET_BUFF_LEN), // r0 = the frame's length, all its buffers
        /* 19 */
        insn(JGT_K, R0, 0, to_pass(19), max_len as i32), // larger than a socket frame: pass
        /* 20 */
        insn(LDX_W, R2, R6, MD_RX_QUEUE, 0), // r2 = the receive queue: the map's key
        /* 21 */
        insn(LD_IMM64, R1, PSEUDO_MAP_FD, 0, map), // r1 = the XSKMAP (low half: its descriptor)
        /* 22 */ insn(0, 0, 0, 0, 0), // (high half of the 64-bit immediate)
        /* 23 */
        insn(MOV64_K, R3, 0, 0, miss as i32), // r3 = the verdict if the queue has no socket
        /* 24 */
        insn(CALL, 0, 0, 0, HELPER_REDIRECT_MAP), // r0 = bpf_redirect_map(r1, r2, r3)
        /* 25 */ insn(EXIT, 0, 0, 0, 0), // return r0
        /* 26 pass */ insn(MOV64_K, R0, 0, 0, XDP_PASS as i32), // r0 = XDP_PASS
        /* 27 */ insn(EXIT, 0, 0, 0, 0), // return r0
    ];
    debug_assert_eq!(p.len(), PASS_AT as usize + 2);
    p
}

/// Why the program could not be set up: each says what a sysadmin can do.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AttachError {
    #[error("creating the XSKMAP failed: {0} (bpf(2) needs CAP_BPF and CAP_NET_ADMIN, or root)")]
    Map(io::Error),
    #[error("the kernel refused the XDP program: {err}; verifier: {log}")]
    Load { err: io::Error, log: String },
    #[error(
        "another XDP program is already attached to {iface}; vmsecd leaves it in place (`ip link show {iface}` \
         shows it)"
    )]
    Busy { iface: String },
    #[error("attaching the XDP program to {iface} in {mode} mode failed: {err}")]
    Attach {
        iface: String,
        mode: &'static str,
        err: io::Error,
    },
    #[error("putting the AF_XDP socket into the XSKMAP failed: {0}")]
    MapUpdate(io::Error),
}

/// Native (driver) XDP or generic XDP (on the skb, any interface).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Native,
    Generic,
}

impl Mode {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::Native => "native",
            Mode::Generic => "generic",
        }
    }
}

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a zeroed, 128-byte `union bpf_attr` filled for `cmd`; the kernel reads (and for some
    // commands writes) at most that many bytes, as the size argument says.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn fd(r: libc::c_long) -> OwnedFd {
    // SAFETY: the bpf(2) commands this is called for return a new descriptor, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(r as RawFd) }
}

/// Two 32-bit fields in one 64-bit word of `bpf_attr` (the first at the lower address).
fn pair(a: u32, b: u32) -> u64 {
    let mut w = [0u8; 8];
    w[..4].copy_from_slice(&a.to_ne_bytes());
    w[4..].copy_from_slice(&b.to_ne_bytes());
    u64::from_ne_bytes(w)
}

/// An XSKMAP of `entries` queues (key: queue index, value: an AF_XDP socket).
pub(crate) fn create_map(entries: u32) -> Result<OwnedFd, AttachError> {
    let mut a = [0u64; 16];
    a[0] = pair(MAP_TYPE_XSKMAP, 4); // map_type, key_size
    a[1] = pair(4, entries); // value_size, max_entries
    bpf(BPF_MAP_CREATE, &mut a)
        .map(fd)
        .map_err(AttachError::Map)
}

/// Puts the socket `xsk` at `queue` in the map.
pub(crate) fn map_socket(map: &OwnedFd, queue: u32, xsk: RawFd) -> Result<(), AttachError> {
    let key = queue;
    let value = xsk as u32;
    let mut a = [0u64; 16];
    a[0] = pair(map.as_raw_fd() as u32, 0); // map_fd
    a[1] = &key as *const u32 as u64;
    a[2] = &value as *const u32 as u64;
    bpf(BPF_MAP_UPDATE_ELEM, &mut a)
        .map(drop)
        .map_err(AttachError::MapUpdate)
}

/// Loads the program (see [`instructions`]); the verifier's log is in the error.
pub(crate) fn load(
    local: Ipv4Addr,
    map: &OwnedFd,
    max_len: u32,
    miss: u32,
) -> Result<OwnedFd, AttachError> {
    let prog = instructions(local, map.as_raw_fd(), max_len, miss);
    let license = c"GPL"; // bpf_redirect_map is not GPL-only, but a license string is required
    let mut log = vec![0u8; 64 * 1024];
    let mut a = [0u64; 16];
    a[0] = pair(PROG_TYPE_XDP, prog.len() as u32); // prog_type, insn_cnt
    a[1] = prog.as_ptr() as u64; // insns
    a[2] = license.as_ptr() as u64; // license
    a[3] = pair(1, log.len() as u32); // log_level, log_size
    a[4] = log.as_mut_ptr() as u64; // log_buf
    a[5] = pair(0, F_XDP_HAS_FRAGS); // kern_version, prog_flags; then prog_name
    let name = b"vmsecd_esp\0\0\0\0\0\0";
    let mut n = [0u8; 8];
    n.copy_from_slice(&name[..8]);
    a[6] = u64::from_ne_bytes(n);
    n.copy_from_slice(&name[8..]);
    a[7] = u64::from_ne_bytes(n);
    a[8] = pair(0, ATTACH_XDP); // prog_ifindex, expected_attach_type
    bpf(BPF_PROG_LOAD, &mut a).map(fd).map_err(|err| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(log.get(..end).unwrap_or_default());
        AttachError::Load {
            err,
            log: text.trim().replace('\n', " | "),
        }
    })
}

/// Attaches `prog` to the interface through a BPF link, which the caller keeps: the program stays attached
/// while the returned descriptor is open. Fails with [`AttachError::Busy`] if the interface already has an
/// XDP program (the kernel never replaces one for a link).
pub(crate) fn attach(
    prog: &OwnedFd,
    iface: &str,
    ifindex: u32,
    mode: Mode,
) -> Result<OwnedFd, AttachError> {
    let flags = match mode {
        Mode::Native => XDP_FLAGS_DRV_MODE,
        Mode::Generic => XDP_FLAGS_SKB_MODE,
    };
    let mut a = [0u64; 16];
    a[0] = pair(prog.as_raw_fd() as u32, ifindex); // prog_fd, target_ifindex
    a[1] = pair(ATTACH_XDP, flags); // attach_type, flags
    bpf(BPF_LINK_CREATE, &mut a).map(fd).map_err(|err| {
        if err.raw_os_error() == Some(libc::EBUSY) || err.raw_os_error() == Some(libc::EEXIST) {
            AttachError::Busy {
                iface: iface.to_string(),
            }
        } else {
            AttachError::Attach {
                iface: iface.to_string(),
                mode: mode.name(),
                err,
            }
        }
    })
}

/// Runs `prog` once on `frame` (`BPF_PROG_TEST_RUN`) and returns its verdict.
#[allow(dead_code)] // the tests' only caller
pub(crate) fn test_run(prog: &OwnedFd, frame: &[u8]) -> io::Result<u32> {
    let mut out = vec![0u8; frame.len() + 256];
    let mut a = [0u64; 16];
    a[0] = pair(prog.as_raw_fd() as u32, 0); // prog_fd, retval (out)
    a[1] = pair(frame.len() as u32, out.len() as u32); // data_size_in, data_size_out
    a[2] = frame.as_ptr() as u64; // data_in
    a[3] = out.as_mut_ptr() as u64; // data_out
    a[4] = pair(1, 0); // repeat, duration (out)
    bpf(BPF_PROG_TEST_RUN, &mut a)?;
    let w = a[0].to_ne_bytes();
    let mut r = [0u8; 4];
    r.copy_from_slice(w.get(4..8).unwrap_or(&[0; 4]));
    Ok(u32::from_ne_bytes(r))
}
