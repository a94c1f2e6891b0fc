"""A small pure-Python reader of the kernel's BTF (/sys/kernel/btf/vmlinux): it owns struct member
offsets and sizes, so the BPF programs never trust the installed kernel headers, which may not
match the running kernel. Follows include/uapi/linux/btf.h; base (vmlinux) BTF only, not split BTF.
"""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass
from pathlib import Path

from tracetap.errors import TracetapError

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
POINTER_SIZE = 8  # x86_64 / arm64

_MAGIC = 0xEB9F
_HEADER = struct.Struct("<HBBIIIII")  # magic, version, flags, hdr_len, type_off, type_len, str_off, str_len

# Kind numbers from include/uapi/linux/btf.h.
_INT, _PTR, _ARRAY, _STRUCT, _UNION, _ENUM, _FWD, _TYPEDEF, _VOLATILE, _CONST, _RESTRICT = range(1, 12)
_FUNC, _FUNC_PROTO, _VAR, _DATASEC, _FLOAT, _DECL_TAG, _TYPE_TAG, _ENUM64 = range(12, 20)
_KIND_NAMES = {_INT: "int", _PTR: "pointer", _ARRAY: "array", _STRUCT: "struct", _UNION: "union", _ENUM: "enum",
               _FWD: "forward declaration", _TYPEDEF: "typedef", _VOLATILE: "volatile", _CONST: "const",
               _RESTRICT: "restrict", _FUNC: "function", _FUNC_PROTO: "function prototype", _VAR: "variable",
               _DATASEC: "data section", _FLOAT: "float", _DECL_TAG: "decl tag", _TYPE_TAG: "type tag",
               _ENUM64: "enum64"}
# Words (u32) of kind-specific data after the 3-word struct btf_type: (fixed, per vlen item).
_EXTRA_WORDS = {_INT: (1, 0), _PTR: (0, 0), _ARRAY: (3, 0), _STRUCT: (0, 3), _UNION: (0, 3), _ENUM: (0, 2),
                _FWD: (0, 0), _TYPEDEF: (0, 0), _VOLATILE: (0, 0), _CONST: (0, 0), _RESTRICT: (0, 0),
                _FUNC: (0, 0), _FUNC_PROTO: (0, 2), _VAR: (1, 0), _DATASEC: (0, 3), _FLOAT: (0, 0),
                _DECL_TAG: (1, 0), _TYPE_TAG: (0, 0), _ENUM64: (0, 3)}
_MODIFIERS = frozenset({_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG})
_SIZED = frozenset({_INT, _STRUCT, _UNION, _ENUM, _ENUM64, _FLOAT})
_MAX_CHAIN = 64  # modifier chains and anonymous nesting deeper than this mean a corrupt blob


class BtfError(TracetapError):
    """The BTF blob is unreadable, or a struct or member the agent needs is not in it."""


@dataclass(slots=True, frozen=True)
class Member:
    """Where a struct member lives: `offset` in bytes from the start of the outermost struct asked
    about, `size` in bytes of its type (of the underlying integer for a bitfield), `bit_offset` in
    bits from the start of that struct, and `bit_size` the bitfield width (0 if not a bitfield)."""

    offset: int
    size: int
    bit_offset: int
    bit_size: int


class Btf:
    """The parsed type section of one BTF blob; types are decoded on demand by id (0 is void)."""

    __slots__ = ("_source", "_words", "_starts", "_strings", "_by_name")

    def __init__(self, source: str, words: array, starts: list[int], strings: bytes, by_name: dict[str, int]) -> None:
        self._source = source
        self._words = words
        self._starts = starts  # _starts[type_id] = index of its btf_type in _words; _starts[0] is void
        self._strings = strings
        self._by_name = by_name  # struct/union name -> type id

    @classmethod
    def load(cls, path: str | Path = VMLINUX_BTF) -> Btf:
        """Read and index the raw BTF blob at `path` (by default the running kernel's)."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise BtfError(f"cannot read BTF from {path}: {exc.strerror}; the kernel needs "
                           f"CONFIG_DEBUG_INFO_BTF=y and the agent needs read access to {path}") from exc
        return _parse(data, str(path))

    def struct_size(self, name: str) -> int:
        """sizeof(struct `name`) (or union) in this kernel."""
        return self._words[self._starts[self._struct_id(name)] + 2]

    def member(self, struct_name: str, path: str) -> Member:
        """The member at dotted `path` ("__sk_common.skc_daddr", "skc_daddr") of struct `struct_name`;
        members of anonymous structs and unions are found as if they were the struct's own."""
        found = self._find(struct_name, path)
        if isinstance(found, str):
            raise BtfError(found)
        return found

    def has_member(self, struct_name: str, path: str) -> bool:
        """Whether struct `struct_name` has a member at `path`; an unknown struct still raises BtfError,
        so a misspelt struct name is not mistaken for an old kernel."""
        return not isinstance(self._find(struct_name, path), str)

    def _struct_id(self, name: str) -> int:
        type_id = self._by_name.get(name)
        if type_id is None:
            raise BtfError(f"struct {name} is not in this kernel's BTF ({self._source}); check the name with "
                           f"`bpftool btf dump file {self._source} format raw | grep \"STRUCT '{name}'\"`")
        return type_id

    def _find(self, struct_name: str, path: str) -> Member | str:
        """The member, or the message of the BtfError explaining why there is none."""
        type_id = self._struct_id(struct_name)
        parts = path.split(".")
        if not all(parts):
            raise BtfError(f"member path {path!r} of struct {struct_name} is malformed; use names joined by dots")
        bit_offset = 0
        for depth, part in enumerate(parts):
            where = f"member {'.'.join(parts[:depth])} of struct {struct_name}" if depth else f"struct {struct_name}"
            container = self._resolve(type_id)
            kind = self._kind(container)
            if kind not in (_STRUCT, _UNION):
                return (f"{where} is a {_KIND_NAMES.get(kind, 'void')}, not a struct or union, so it has no member "
                        f"{part}; read it (dereference pointers in the BPF program) and look up its type separately")
            hit = self._search(container, part, 0)
            if hit is None:
                return (f"{where} has no member {part} in this kernel's BTF ({self._source}); check the name with "
                        f"bpftool or guard the feature with Btf.has_member")
            type_id, member_bits, bit_size = hit
            bit_offset += member_bits
        size, int_bits, int_bit_offset = self._size_and_int_bits(type_id)
        if bit_size == 0 and int_bits and int_bits != size * 8:  # old-style bitfield encoded in the INT type
            bit_size, bit_offset = int_bits, bit_offset + int_bit_offset
        return Member(offset=bit_offset // 8, size=size, bit_offset=bit_offset, bit_size=bit_size)

    def _search(self, type_id: int, name: str, depth: int) -> tuple[int, int, int] | None:
        """(member type id, bit offset, bitfield size) of `name` in struct/union `type_id`, descending
        into anonymous struct/union members depth-first, in declaration order."""
        if depth > _MAX_CHAIN:
            raise BtfError(f"anonymous members nest deeper than {_MAX_CHAIN} in {self._source}; the BTF is corrupt")
        words, strings = self._words, self._strings
        start = self._starts[type_id]
        info = words[start + 1]
        kind_flag = info >> 31
        wanted = name.encode() + b"\0"
        for item in range(start + 3, start + 3 + 3 * (info & 0xFFFF), 3):
            name_off, member_type, offset = words[item], words[item + 1], words[item + 2]
            bit_offset, bit_size = (offset & 0xFFFFFF, offset >> 24) if kind_flag else (offset, 0)
            if name_off == 0:
                inner = self._resolve(member_type)
                if self._kind(inner) in (_STRUCT, _UNION):
                    hit = self._search(inner, name, depth + 1)
                    if hit is not None:
                        return hit[0], bit_offset + hit[1], hit[2]
            elif strings.startswith(wanted, name_off):
                return member_type, bit_offset, bit_size
        return None

    def _kind(self, type_id: int) -> int:
        return 0 if type_id == 0 else (self._words[self._starts[type_id] + 1] >> 24) & 0x1F

    def _check_id(self, type_id: int) -> None:
        if not 0 <= type_id < len(self._starts):
            raise BtfError(f"type id {type_id} is out of range in {self._source} ({len(self._starts) - 1} types); "
                           f"the BTF is corrupt or is split (module) BTF, which needs the vmlinux base")

    def _resolve(self, type_id: int) -> int:
        """Follow typedef, const, volatile, restrict and type tags to the underlying type id."""
        for _ in range(_MAX_CHAIN):
            self._check_id(type_id)
            if self._kind(type_id) not in _MODIFIERS:
                return type_id
            type_id = self._words[self._starts[type_id] + 2]
        raise BtfError(f"a typedef/modifier chain is longer than {_MAX_CHAIN} in {self._source}; the BTF is corrupt")

    def _size_and_int_bits(self, type_id: int) -> tuple[int, int, int]:
        """(size in bytes, INT width in bits or 0, INT bit offset or 0) of `type_id`."""
        type_id = self._resolve(type_id)
        kind = self._kind(type_id)
        start = self._starts[type_id]
        if kind == _INT:
            encoding = self._words[start + 3]
            return self._words[start + 2], encoding & 0xFF, (encoding >> 16) & 0xFF
        if kind in _SIZED:
            return self._words[start + 2], 0, 0
        if kind == _PTR:
            return POINTER_SIZE, 0, 0
        if kind == _ARRAY:  # struct btf_array { type, index_type, nelems }
            return self._words[start + 5] * self._size_and_int_bits(self._words[start + 3])[0], 0, 0
        raise BtfError(f"type id {type_id} is a {_KIND_NAMES.get(kind, 'void')}, which has no size; "
                       f"it cannot be a struct member in a well-formed {self._source}")


def kernel_offsets(btf: Btf, wanted: dict[str, tuple[str, str]]) -> dict[str, int]:
    """Byte offsets for the BPF program's #defines, e.g. {"OFF_TASK_FILES": ("task_struct", "files")};
    bitfields are refused, since a byte offset alone cannot read them."""
    offsets = {}
    for define, (struct_name, path) in wanted.items():
        member = btf.member(struct_name, path)
        if member.bit_size:
            raise BtfError(f"{define}: {struct_name}.{path} is a {member.bit_size}-bit bitfield at bit "
                           f"{member.bit_offset}; read it with Btf.member and mask it instead of a byte offset")
        offsets[define] = member.offset
    return offsets


def _parse(data: bytes, source: str) -> Btf:
    """Check the header, take the type and string sections in native byte order, index the types."""
    if len(data) < _HEADER.size:
        raise BtfError(f"{source} is {len(data)} bytes, too short for a BTF header; it is not a BTF blob")
    order = "<"
    if struct.unpack_from("<H", data)[0] != _MAGIC:
        if struct.unpack_from(">H", data)[0] != _MAGIC:
            raise BtfError(f"{source} does not start with the BTF magic 0xeb9f; it is not a raw BTF blob "
                           f"(an ELF file needs its .BTF section extracted first)")
        order = ">"
    _, version, _, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(order + "HBBIIIII", data)
    if version != 1:
        raise BtfError(f"{source} is BTF version {version}; only version 1 is understood")
    if hdr_len < _HEADER.size or type_off % 4 or type_len % 4 \
            or hdr_len + max(type_off + type_len, str_off + str_len) > len(data):
        raise BtfError(f"{source} is truncated or its BTF header is corrupt ({len(data)} bytes, header says types "
                       f"{type_off}+{type_len} and strings {str_off}+{str_len} after {hdr_len}); re-read the file")
    types_start = hdr_len + type_off
    words = array("I", data[types_start:types_start + type_len])
    if words.itemsize != 4:
        raise BtfError("this Python's array('I') is not 32-bit; BTF cannot be read on this platform")
    if (order == "<") != (struct.pack("=H", 1) == b"\x01\x00"):
        words.byteswap()
    strings = data[hdr_len + str_off:hdr_len + str_off + str_len]
    starts, by_name = _index(words, strings, source)
    return Btf(source, words, starts, strings, by_name)


def _index(words: array, strings: bytes, source: str) -> tuple[list[int], dict[str, int]]:
    """One pass over the type section: where each type id starts, and the named structs and unions
    (a struct wins over a union of the same name, otherwise the first one wins)."""
    starts = [0]
    by_name: dict[str, int] = {}
    extra = [_EXTRA_WORDS.get(kind) for kind in range(32)]
    count = len(words)
    i = 0
    while i < count:
        if i + 3 > count:
            raise BtfError(f"type {len(starts)} in {source} is cut short; the BTF is truncated")
        info = words[i + 1]
        kind = (info >> 24) & 0x1F
        sizes = extra[kind]
        if sizes is None:
            raise BtfError(f"type {len(starts)} in {source} has unknown BTF kind {kind}; this reader knows "
                           f"kinds 1-19 (up to ENUM64) and needs updating for this kernel")
        if (kind == _STRUCT or kind == _UNION) and words[i]:
            name_off = words[i]
            end = strings.find(b"\0", name_off)
            name = strings[name_off:end if end >= 0 else len(strings)].decode(errors="replace")
            if name not in by_name or (kind == _STRUCT and (words[starts[by_name[name]] + 1] >> 24) & 0x1F == _UNION):
                by_name[name] = len(starts)
        starts.append(i)
        i += 3 + sizes[0] + sizes[1] * (info & 0xFFFF)
    if i != count:
        raise BtfError(f"the last type in {source} runs past the type section; the BTF is truncated")
    return starts, by_name
