"""The job's seccomp filter: a classic BPF program that bubblewrap installs (``--seccomp FD``)
right before it runs the job, as raw ``struct sock_filter`` instructions in native byte order.

It is a deny list on top of what the uid drop already forbids; every rule is there because the
kernel would otherwise let an unprivileged job reach the code behind it:

- **Architecture first.** A syscall made with another ABI (32-bit ``int 0x80`` on x86_64, arm32
  on aarch64, the x32 ABI's numbers) would be looked up in another table and slip past the
  rules below: the process is killed.
- **No user namespaces.** ``unshare`` and ``clone`` with ``CLONE_NEWUSER`` fail with EPERM: in
  its own user namespace a job is root over fresh mount, network and other namespaces, which
  opens a large part of the kernel to it. Other namespace flags pass (they need capabilities
  the job does not have, and fail in the kernel as before). ``clone3`` fails with ENOSYS: its
  flags sit in memory a filter cannot read, and libc then falls back to ``clone``, whose flags
  it can. ``setns`` fails with EPERM: no entering namespaces either.
- **EPERM for what is not namespaced or is pure attack surface:** the kernel keyring
  (``keyctl``, ``add_key``, ``request_key``, shared by every process of a uid), ``bpf``,
  ``userfaultfd`` (a classic exploit aid), ``perf_event_open``, ``kexec_load``,
  ``kexec_file_load``, ``open_by_handle_at`` (opens files by handle, around path checks),
  kernel modules (``init_module``, ``finit_module``, ``delete_module``), mounts (``mount``,
  ``umount2``, ``pivot_root`` and the newer mount calls ``open_tree``, ``move_mount``,
  ``fsopen``, ``fsconfig``, ``fsmount``, ``fspick``, ``mount_setattr``), ``swapon``,
  ``swapoff``, ``reboot`` and ``acct``. Most need capabilities the job lacks; refusing them
  here keeps them refused should a kernel bug hand one over.
- **Everything else is allowed.** ``ptrace`` is deliberately not blocked: a job may debug its
  own processes, and its pid namespace and own uid already keep it away from the agent and
  from other attempts.
"""

from __future__ import annotations

import errno
import os
import platform
import struct

# struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}, native byte order, as the kernel reads it
INSTRUCTION = struct.Struct("=HBBI")

LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS: A = the u32 at offset k of struct seccomp_data
JEQ = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
JGE = 0x35  # BPF_JMP | BPF_JGE | BPF_K
JSET = 0x45  # BPF_JMP | BPF_JSET | BPF_K
RET = 0x06  # BPF_RET | BPF_K

# struct seccomp_data {int nr; u32 arch; u64 instruction_pointer; u64 args[6]}
OFF_NR = 0
OFF_ARCH = 4
OFF_ARG0_LOW = 16  # the low 32 bits of args[0] on these little-endian architectures

RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000

CLONE_NEWUSER = 0x10000000
X32_SYSCALL_BIT = 0x40000000

AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}

# the syscall numbers, per architecture (x86_64's own table; aarch64's is asm-generic)
_X86_64 = {
    "clone": 56,
    "clone3": 435,
    "unshare": 272,
    "setns": 308,
    "keyctl": 250,
    "add_key": 248,
    "request_key": 249,
    "bpf": 321,
    "userfaultfd": 323,
    "perf_event_open": 298,
    "kexec_load": 246,
    "kexec_file_load": 320,
    "open_by_handle_at": 304,
    "init_module": 175,
    "finit_module": 313,
    "delete_module": 176,
    "mount": 165,
    "umount2": 166,
    "pivot_root": 155,
    "swapon": 167,
    "swapoff": 168,
    "reboot": 169,
    "acct": 163,
}
_AARCH64 = {
    "clone": 220,
    "clone3": 435,
    "unshare": 97,
    "setns": 268,
    "keyctl": 219,
    "add_key": 217,
    "request_key": 218,
    "bpf": 280,
    "userfaultfd": 282,
    "perf_event_open": 241,
    "kexec_load": 104,
    "kexec_file_load": 294,
    "open_by_handle_at": 265,
    "init_module": 105,
    "finit_module": 273,
    "delete_module": 106,
    "mount": 40,
    "umount2": 39,
    "pivot_root": 41,
    "swapon": 224,
    "swapoff": 225,
    "reboot": 142,
    "acct": 89,
}
_NEW_MOUNT_API = {  # the same numbers on both
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "mount_setattr": 442,
}
SYSCALLS = {"x86_64": _X86_64 | _NEW_MOUNT_API, "aarch64": _AARCH64 | _NEW_MOUNT_API}

NEWUSER_CHECKED = ("unshare", "clone")
ENOSYS = ("clone3",)
EPERM = (
    "setns",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "userfaultfd",
    "perf_event_open",
    "kexec_load",
    "kexec_file_load",
    "open_by_handle_at",
    "init_module",
    "finit_module",
    "delete_module",
    "mount",
    "umount2",
    "pivot_root",
    *_NEW_MOUNT_API,
    "swapon",
    "swapoff",
    "reboot",
    "acct",
)


class UnsupportedArch(ValueError):
    """No filter for this machine's architecture."""


def machine() -> str:
    """This host's architecture, as the filter's tables name it."""
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def program(arch: str | None = None) -> bytes:
    """The filter for ``arch`` (default: this host's), as bubblewrap's ``--seccomp`` reads it.
    Raises ``UnsupportedArch`` for an architecture other than x86_64 and aarch64."""
    arch = arch or machine()
    if arch not in AUDIT_ARCH:
        raise UnsupportedArch(f"architecture {arch!r}: the filter supports x86_64 and aarch64")
    nr = SYSCALLS[arch]
    # (code, jump-if-true label, jump-if-false label, k); a label is the name of the target
    # instruction, None the next one. Jumps only go forward, so the shared returns come last.
    code: list[tuple[int, str | None, str | None, int]] = []
    labels: dict[str, int] = {}

    def emit(op: int, k: int, jt: str | None = None, jf: str | None = None) -> None:
        code.append((op, jt, jf, k))

    def label(name: str) -> None:
        labels[name] = len(code)

    emit(LD_W_ABS, OFF_ARCH)
    emit(JEQ, AUDIT_ARCH[arch], jf="kill")
    emit(LD_W_ABS, OFF_NR)
    if arch == "x86_64":  # x32 ABI numbers share x86_64's audit arch
        emit(JGE, X32_SYSCALL_BIT, jt="kill")
    for name in NEWUSER_CHECKED:
        emit(JEQ, nr[name], jt="flags")
    for name in ENOSYS:
        emit(JEQ, nr[name], jt="enosys")
    for i, name in enumerate(EPERM):
        emit(JEQ, nr[name], jt="eperm", jf="allow" if i == len(EPERM) - 1 else None)
    label("flags")
    emit(LD_W_ABS, OFF_ARG0_LOW)
    emit(JSET, CLONE_NEWUSER, jt="eperm", jf="allow")
    label("kill")
    emit(RET, RET_KILL_PROCESS)
    label("enosys")
    emit(RET, RET_ERRNO | errno.ENOSYS)
    label("eperm")
    emit(RET, RET_ERRNO | errno.EPERM)
    label("allow")
    emit(RET, RET_ALLOW)

    def offset(at: int, target: str | None) -> int:
        if target is None:
            return 0
        off = labels[target] - at - 1
        assert 0 <= off <= 255, f"jump to {target} out of reach"
        return off

    return b"".join(
        INSTRUCTION.pack(op, offset(i, jt), offset(i, jf), k)
        for i, (op, jt, jf, k) in enumerate(code)
    )


def pipe_fd(prog: bytes) -> int:
    """A pipe's read end holding ``prog`` and then end of file: bubblewrap reads the filter
    from it once. The caller passes it to the child and closes it."""
    r, w = os.pipe()
    try:
        # a few hundred bytes: far below a pipe's buffer, so this never blocks
        if os.write(w, prog) != len(prog):
            raise OSError(f"seccomp filter: short write to its pipe ({len(prog)} bytes)")
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    return r
