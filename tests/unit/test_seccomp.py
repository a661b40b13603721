"""The job's seccomp filter: its structure, its verdicts (run through a small BPF interpreter
here, for both architectures) and, where the kernel allows, the real kernel's verdicts."""

from __future__ import annotations

import errno
import os
import struct
import subprocess
import sys
import textwrap

import pytest

from gpunet.agent.sandbox import seccomp
from gpunet.agent.sandbox.bwrap import HostView, build_argv
from gpunet.agent.sandbox.seccomp import (
    AUDIT_ARCH,
    CLONE_NEWUSER,
    RET_ALLOW,
    RET_ERRNO,
    RET_KILL_PROCESS,
    SYSCALLS,
    UnsupportedArch,
    program,
)

ARCHES = sorted(AUDIT_ARCH)
EPERM = RET_ERRNO | errno.EPERM
ENOSYS = RET_ERRNO | errno.ENOSYS
CLONE_NEWNS = 0x00020000
READ = {"x86_64": 0, "aarch64": 63}
AUDIT_ARCH_I386 = 0x40000003


def decode(prog: bytes) -> list[tuple[int, int, int, int]]:
    assert len(prog) % 8 == 0  # bubblewrap refuses anything else
    return [struct.unpack_from("=HBBI", prog, i) for i in range(0, len(prog), 8)]


def run_bpf(prog: bytes, nr: int, arch: int, args: tuple[int, ...] = ()) -> int:
    """Classic BPF as the kernel runs a seccomp filter, for the instructions a filter uses."""
    args = (*args, 0, 0, 0, 0, 0, 0)[:6]
    data = struct.pack("<iIQ6Q", nr, arch, 0, *args)
    code = decode(prog)
    pc, a = 0, 0
    while True:
        op, jt, jf, k = code[pc]
        pc += 1
        if op == 0x20:  # ld [k]
            a = struct.unpack_from("<I", data, k)[0]
        elif op == 0x06:  # ret k
            return k
        elif op == 0x05:  # ja k
            pc += k
        elif op in (0x15, 0x35, 0x45):  # jeq, jge, jset
            hit = {0x15: a == k, 0x35: a >= k, 0x45: bool(a & k)}[op]
            pc += jt if hit else jf
        else:
            raise AssertionError(f"unexpected BPF op {op:#x} at {pc - 1}")


@pytest.mark.parametrize("arch", ARCHES)
def test_program_checks_the_arch_first_and_ends_allowing(arch: str) -> None:
    code = decode(program(arch))
    assert 20 < len(code) < 100
    assert code[0] == (0x20, 0, 0, 4)  # load seccomp_data.arch
    assert code[1][0] == 0x15 and code[1][3] == AUDIT_ARCH[arch]
    assert code[-1] == (0x06, 0, 0, RET_ALLOW)
    assert program(arch) == program(arch)  # a pure function


@pytest.mark.parametrize("arch", ARCHES)
def test_user_namespaces_are_refused_and_other_namespace_flags_pass(arch: str) -> None:
    prog, nr, audit = program(arch), SYSCALLS[arch], AUDIT_ARCH[arch]
    assert run_bpf(prog, nr["unshare"], audit, (CLONE_NEWUSER,)) == EPERM
    assert run_bpf(prog, nr["unshare"], audit, (CLONE_NEWUSER | CLONE_NEWNS,)) == EPERM
    assert run_bpf(prog, nr["unshare"], audit, (CLONE_NEWNS,)) == RET_ALLOW
    assert run_bpf(prog, nr["clone"], audit, (CLONE_NEWUSER | 17,)) == EPERM  # | SIGCHLD
    assert run_bpf(prog, nr["clone"], audit, (0x3D0F00,)) == RET_ALLOW  # glibc's thread flags
    # only the low 32 bits hold flags: high garbage neither hides nor fakes CLONE_NEWUSER
    assert run_bpf(prog, nr["clone"], audit, ((1 << 40) | CLONE_NEWUSER,)) == EPERM
    assert run_bpf(prog, nr["clone"], audit, (CLONE_NEWUSER << 32,)) == RET_ALLOW
    assert run_bpf(prog, nr["clone3"], audit) == ENOSYS
    assert run_bpf(prog, nr["setns"], audit) == EPERM


@pytest.mark.parametrize("arch", ARCHES)
def test_each_listed_syscall_is_eperm_and_the_rest_allowed(arch: str) -> None:
    prog, nr, audit = program(arch), SYSCALLS[arch], AUDIT_ARCH[arch]
    for name in seccomp.EPERM:
        assert run_bpf(prog, nr[name], audit) == EPERM, name
    listed = set(nr.values())
    for n in range(460):
        if n not in listed:
            assert run_bpf(prog, n, audit) == RET_ALLOW, n
    assert run_bpf(prog, READ[arch], audit) == RET_ALLOW


def test_another_abi_is_killed() -> None:
    x86, arm = program("x86_64"), program("aarch64")
    assert run_bpf(x86, 0, AUDIT_ARCH_I386) == RET_KILL_PROCESS  # int 0x80 from x86_64
    assert run_bpf(x86, 0, AUDIT_ARCH["aarch64"]) == RET_KILL_PROCESS
    assert run_bpf(arm, 63, AUDIT_ARCH["x86_64"]) == RET_KILL_PROCESS
    # x32: the same audit arch, syscall numbers with bit 30 set (x32's unshare here)
    assert run_bpf(x86, 0x40000000 + 272, AUDIT_ARCH["x86_64"]) == RET_KILL_PROCESS


def test_unsupported_arch_is_refused_by_name() -> None:
    with pytest.raises(UnsupportedArch, match="architecture 'riscv64'"):
        program("riscv64")


def test_pipe_fd_holds_exactly_the_program() -> None:
    prog = program("x86_64")
    fd = seccomp.pipe_fd(prog)
    try:
        assert os.read(fd, 65536) == prog and os.read(fd, 1) == b""  # then end of file
    finally:
        os.close(fd)


def test_argv_passes_the_filter_fd_to_bubblewrap() -> None:
    host = HostView(system={"/usr": None})
    argv = build_argv(["true"], workdir="/w", host=host, gpu_indices=[], ro_paths=[])
    assert "--seccomp" not in argv
    argv = build_argv(
        ["true"], workdir="/w", host=host, gpu_indices=[], ro_paths=[], uid=64000, seccomp_fd=7
    )
    i = argv.index("--seccomp")
    assert argv[i + 1] == "7" and i < argv.index("--")


KERNEL_CHECK = """
import ctypes, errno, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NR = {nr!r}
def call(n, *args):
    r = libc.syscall(n, *args)
    return "ok" if r >= 0 else errno.errorcode[ctypes.get_errno()]
prog = bytes.fromhex(sys.argv[1])
buf = ctypes.create_string_buffer(prog)
class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
fprog = Fprog(len(prog) // 8, ctypes.addressof(buf))
print("before keyctl", call(NR["keyctl"], 0, -3, 0))
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0, ctypes.get_errno()  # SECCOMP_MODE_FILTER
print("unshare NEWUSER", call(NR["unshare"], 0x10000000))
print("unshare FS", call(NR["unshare"], 0x200))
print("clone3", call(NR["clone3"], None, 0))
print("keyctl", call(NR["keyctl"], 0, -3, 0))
print("bpf", call(NR["bpf"], 0, None, 0))
pid = os.fork()
if pid == 0:
    os._exit(7)
print("fork", os.waitpid(pid, 0)[1] >> 8)
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or seccomp.machine() not in AUDIT_ARCH,
    reason="the kernel check needs Linux on x86_64 or aarch64",
)
def test_the_kernel_accepts_the_filter_and_enforces_it() -> None:
    arch = seccomp.machine()
    code = KERNEL_CHECK.format(nr=SYSCALLS[arch])
    r = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), program().hex()],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    if out[0] != "before keyctl ok":
        pytest.skip(f"keyctl is refused here before the filter: {out[0]}")
    assert out[1:] == [
        "unshare NEWUSER EPERM",
        "unshare FS ok",
        "clone3 ENOSYS",
        "keyctl EPERM",
        "bpf EPERM",
        "fork 7",
    ]
