"""The BTF reader, on this machine's real /sys/kernel/btf/vmlinux and on small hand-built blobs.

Every expected kernel value below was read from `bpftool btf dump file /sys/kernel/btf/vmlinux
format raw` (bpftool v7.1.0, kernel 6.18): offset = bits_offset / 8, summing the bits_offset of the
enclosing '(anon)' members; sizes from the member's type (PTR = 8). They are ABI-stable layouts that
BPF tools such as bcc's tcpconnect have relied on for years, so they are not re-derived by the code
under test. The test does not skip when BTF is missing: the agent cannot run without it.
"""

import struct
import time

import pytest

from producers.ebpf.btf import Btf, BtfError, Member, kernel_offsets

VMLINUX = "/sys/kernel/btf/vmlinux"


@pytest.fixture(scope="module")
def btf():
    return Btf.load(VMLINUX)


def test_sock_common_addresses_and_ports_are_at_their_abi_offsets(btf):
    # bpftool: sock_common '(anon)' bits_offset=0 -> '(anon)' struct -> skc_daddr 0, skc_rcv_saddr 32 (__be32);
    # '(anon)' bits_offset=96 -> skc_dport 0 (__be16), skc_num 16 (__u16); skc_family bits_offset=128 (short).
    assert btf.member("sock_common", "skc_daddr") == Member(offset=0, size=4, bit_offset=0, bit_size=0)
    assert btf.member("sock_common", "skc_rcv_saddr") == Member(offset=4, size=4, bit_offset=32, bit_size=0)
    assert btf.member("sock_common", "skc_dport") == Member(offset=12, size=2, bit_offset=96, bit_size=0)
    assert btf.member("sock_common", "skc_num") == Member(offset=14, size=2, bit_offset=112, bit_size=0)
    assert btf.member("sock_common", "skc_family") == Member(offset=16, size=2, bit_offset=128, bit_size=0)


def test_members_inside_anonymous_unions_are_found(btf):
    # skc_daddr sits in an anonymous union (skc_addrpair) holding an anonymous struct: found as if top-level.
    assert btf.has_member("sock_common", "skc_daddr")
    assert btf.member("sock_common", "skc_daddr").offset == 0


def test_dotted_paths_add_the_offsets_of_each_step(btf):
    # bpftool: sock '__sk_common' bits_offset=0, type sock_common (size=136).
    assert btf.member("sock", "__sk_common") == Member(offset=0, size=136, bit_offset=0, bit_size=0)
    assert btf.member("sock", "__sk_common.skc_dport").offset == 12
    assert btf.member("sock", "__sk_common.skc_family").offset == 16


def test_iovec_sockaddr_in_and_msghdr_have_their_uapi_layouts(btf):
    # bpftool: iovec size=16, iov_base bits_offset=0 (PTR), iov_len bits_offset=64 (__kernel_size_t).
    assert btf.struct_size("iovec") == 16
    assert btf.member("iovec", "iov_base") == Member(offset=0, size=8, bit_offset=0, bit_size=0)
    assert btf.member("iovec", "iov_len") == Member(offset=8, size=8, bit_offset=64, bit_size=0)
    # bpftool: sockaddr_in size=16, sin_port bits_offset=16 (__be16), sin_addr bits_offset=32 (struct in_addr).
    assert btf.struct_size("sockaddr_in") == 16
    assert btf.member("sockaddr_in", "sin_port") == Member(offset=2, size=2, bit_offset=16, bit_size=0)
    assert btf.member("sockaddr_in", "sin_addr") == Member(offset=4, size=4, bit_offset=32, bit_size=0)
    # bpftool: msghdr msg_name bits_offset=0 (PTR).
    assert btf.member("msghdr", "msg_name") == Member(offset=0, size=8, bit_offset=0, bit_size=0)


def test_pointer_and_array_sizes_follow_typedefs(btf):
    # bpftool: skc_v6_daddr is struct in6_addr (size=16) at bits_offset=448; skc_net is possible_net_t (PTR) at 384.
    assert btf.member("sock_common", "skc_v6_daddr") == Member(offset=56, size=16, bit_offset=448, bit_size=0)
    assert btf.member("sock_common", "skc_net").size == 8


def test_bitfield_members_report_their_width(btf):
    # bpftool: sock_common 'skc_reuse' type_id=(unsigned char) bits_offset=152 bitfield_size=4,
    # 'skc_reuseport' bits_offset=156 bitfield_size=1; tcp_sock 'nonagle' bits_offset=13128 bitfield_size=4.
    assert btf.member("sock_common", "skc_reuse") == Member(offset=19, size=1, bit_offset=152, bit_size=4)
    assert btf.member("sock_common", "skc_reuseport") == Member(offset=19, size=1, bit_offset=156, bit_size=1)
    assert btf.member("tcp_sock", "nonagle").bit_size == 4
    assert btf.member("sock_common", "skc_family").bit_size == 0


def test_an_unknown_struct_raises_with_its_name(btf):
    with pytest.raises(BtfError, match="struct no_such_struct_xyz"):
        btf.member("no_such_struct_xyz", "x")
    with pytest.raises(BtfError, match="no_such_struct_xyz"):
        btf.struct_size("no_such_struct_xyz")


def test_an_unknown_member_raises_naming_struct_and_member(btf):
    with pytest.raises(BtfError, match="struct sock_common has no member skc_foo in this kernel's BTF"):
        btf.member("sock_common", "skc_foo")
    # skc_dport is only a #define (sk_dport) in struct sock, not a member of it.
    with pytest.raises(BtfError, match="struct sock has no member skc_dport"):
        btf.member("sock", "skc_dport")


def test_has_member_answers_without_raising_for_members_but_not_for_structs(btf):
    assert btf.has_member("sock", "__sk_common.skc_daddr")
    assert not btf.has_member("sock_common", "skc_foo")
    with pytest.raises(BtfError, match="no_such_struct_xyz"):
        btf.has_member("no_such_struct_xyz", "x")


def test_a_path_through_a_pointer_is_refused(btf):
    with pytest.raises(BtfError, match="member sk of struct socket is a pointer"):
        btf.member("socket", "sk.__sk_common")


def test_kernel_offsets_maps_defines_to_byte_offsets_and_refuses_bitfields(btf):
    wanted = {"OFF_SKC_DPORT": ("sock_common", "skc_dport"), "OFF_IOV_LEN": ("iovec", "iov_len")}
    assert kernel_offsets(btf, wanted) == {"OFF_SKC_DPORT": 12, "OFF_IOV_LEN": 8}
    with pytest.raises(BtfError, match="OFF_REUSE: sock_common.skc_reuse is a 4-bit bitfield"):
        kernel_offsets(btf, {"OFF_REUSE": ("sock_common", "skc_reuse")})


def test_loading_the_running_kernels_btf_is_fast():
    start = time.perf_counter()
    Btf.load(VMLINUX)
    assert time.perf_counter() - start < 1.5


def test_a_bad_magic_blob_is_refused(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x7fELF" + bytes(60))
    with pytest.raises(BtfError, match="magic"):
        Btf.load(path)


def test_a_truncated_blob_is_refused(tmp_path):
    with open(VMLINUX, "rb") as real:
        head = real.read(4096)
    path = tmp_path / "truncated"
    path.write_bytes(head)
    with pytest.raises(BtfError, match="truncated"):
        Btf.load(path)
    path.write_bytes(head[:5])
    with pytest.raises(BtfError, match="too short"):
        Btf.load(path)


def test_a_missing_file_raises_btf_error_with_the_path(tmp_path):
    with pytest.raises(BtfError, match="no-btf-here"):
        Btf.load(tmp_path / "no-btf-here")


def _blob(order):
    """A hand-built BTF: struct demo { int x; union { int a; int *p; }; u8 flags:3 (at bit 130); int arr[3]; };
    struct outer { const struct demo inner; }."""
    strings = b"\0int\0unsigned char\0u8\0a\0p\0demo\0x\0flags\0arr\0outer\0inner\0"
    name = {s.decode(): strings.index(b"\0" + s + b"\0") + 1 for s in strings.strip(b"\0").split(b"\0")}

    def btf_type(name_off, kind, vlen, size_or_type, kind_flag=0):
        return struct.pack(order + "III", name_off, kind_flag << 31 | kind << 24 | vlen, size_or_type)

    types = b"".join([
        btf_type(name["int"], 1, 0, 4) + struct.pack(order + "I", 1 << 24 | 32),  # 1: INT int
        btf_type(name["unsigned char"], 1, 0, 1) + struct.pack(order + "I", 8),  # 2: INT unsigned char
        btf_type(name["u8"], 8, 0, 2),  # 3: TYPEDEF u8
        btf_type(0, 3, 0, 0) + struct.pack(order + "III", 1, 1, 3),  # 4: ARRAY int[3]
        btf_type(0, 2, 0, 1),  # 5: PTR int *
        btf_type(0, 5, 2, 8) + struct.pack(order + "6I", name["a"], 1, 0, name["p"], 5, 0),  # 6: anonymous UNION
        btf_type(name["demo"], 4, 4, 32, kind_flag=1) + struct.pack(  # 7: STRUCT demo, kind_flag offsets
            order + "12I", name["x"], 1, 0, 0, 6, 64, name["flags"], 3, 3 << 24 | 130, name["arr"], 4, 160),
        btf_type(0, 10, 0, 7),  # 8: CONST struct demo
        btf_type(name["outer"], 4, 1, 32) + struct.pack(order + "III", name["inner"], 8, 0),  # 9: STRUCT outer
    ])
    header = struct.pack(order + "HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return header + types + strings


@pytest.mark.parametrize("order", ["<", ">"], ids=["little-endian", "big-endian"])
def test_a_hand_built_blob_decodes_every_member_shape(tmp_path, order):
    path = tmp_path / "demo.btf"
    path.write_bytes(_blob(order))
    demo = Btf.load(path)
    assert demo.struct_size("demo") == 32
    assert demo.member("demo", "x") == Member(offset=0, size=4, bit_offset=0, bit_size=0)
    assert demo.member("demo", "p") == Member(offset=8, size=8, bit_offset=64, bit_size=0)
    assert demo.member("demo", "flags") == Member(offset=16, size=1, bit_offset=130, bit_size=3)
    assert demo.member("demo", "arr") == Member(offset=20, size=12, bit_offset=160, bit_size=0)
    assert demo.member("outer", "inner.arr").offset == 20
    assert demo.member("outer", "inner") == Member(offset=0, size=32, bit_offset=0, bit_size=0)


def test_the_raw_syscall_hooks_read_the_x86_64_syscall_arguments_where_the_abi_keeps_them(btf):
    from producers.ebpf.agent import syscall_hook_defines

    # x86_64 struct pt_regs (arch/x86/include/uapi/asm/ptrace.h): r15 r14 r13 r12 bp bx r11 r10 r9 r8 ax cx dx si di
    # orig_ax, 8 bytes each; syscall arguments in di, si, dx, r10, r8; the syscall number in orig_ax.
    defines = syscall_hook_defines(btf, raw=True, machine="x86_64")
    assert (defines["OFF_ARG0"], defines["OFF_ARG1"], defines["OFF_ARG2"], defines["OFF_ARG3"], defines["OFF_ARG4"]) == (112, 104, 96, 56, 72)
    assert defines["OFF_SYSCALL_NR"] == 120 and defines["RAW_SYSCALLS"] == 1
    assert (defines["NR_READ"], defines["NR_WRITE"], defines["NR_SENDTO"], defines["NR_RECVFROM"], defines["NR_ACCEPT4"]) == (0, 1, 44, 45, 288)
    assert syscall_hook_defines(btf, raw=True, machine="aarch64") == {}  # elsewhere: one tracepoint per syscall
    assert syscall_hook_defines(btf, raw=False, machine="x86_64") == {}
