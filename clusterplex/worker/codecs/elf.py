"""ELF header checks, pure: does a file look like a library (or program) for a Plex arch, whole
and not cut short? Nothing is ever loaded or run.
"""

import struct

EM_ARM, EM_X86_64, EM_AARCH64 = 40, 62, 183
ET_EXEC, ET_DYN = 2, 3
_MACHINE_NAMES = {3: "i386", EM_ARM: "ARM", EM_X86_64: "x86-64", EM_AARCH64: "aarch64", 8: "MIPS",
                  20: "PowerPC", 21: "PowerPC64", 243: "RISC-V"}
_TYPE_NAMES = {1: "relocatable object", ET_EXEC: "executable", ET_DYN: "shared object", 4: "core dump"}


def elf_target(arch):
    """``(ELF class, e_machine)`` a Plex arch's binaries have: ``linux-x86_64*`` (and the old
    ``linux-ubuntu-x86_64``) → (64-bit, EM_X86_64), ``linux-aarch64*`` → (64-bit, EM_AARCH64),
    ``linux-armv7*`` → (32-bit, EM_ARM); None for anything else."""
    arch = arch or ""
    if not arch.startswith("linux-"):
        return None
    if "x86_64" in arch:
        return 2, EM_X86_64
    if "aarch64" in arch:
        return 2, EM_AARCH64
    if "armv7" in arch:
        return 1, EM_ARM
    return None


def elf_plex_arch(head):
    """The Plex arch name for an ELF binary's header (the transcoder's, say: a 32-bit Plex on a
    64-bit ARM kernel is armv7), or None if it is not an ELF file for a Plex arch."""
    if len(head) < 20 or head[:4] != b"\x7fELF" or head[5] != 1:
        return None
    machine = struct.unpack_from("<H", head, 18)[0]
    return {(2, EM_X86_64): "linux-x86_64-standard", (2, EM_AARCH64): "linux-aarch64-standard",
            (1, EM_ARM): "linux-armv7neon-standard"}.get((head[4], machine))


def _article(noun):
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def _describe_machine(elf_class, machine):
    return f"{64 if elf_class == 2 else 32}-bit {_MACHINE_NAMES.get(machine, 'machine')} (e_machine {machine})"


def check_elf(data, arch, *, size=None, types=(ET_DYN,)):
    """Why ``data`` (a whole file or its first 64+ bytes) is not a library for Plex arch ``arch``;
    None if it is one.

    Checks: non-empty; not an HTML/XML page (what proxies and error pages send); ELF magic;
    ELF class, byte order and e_machine of the arch (:func:`elf_target`); e_type in ``types``
    (shared objects by default). With ``size`` (the whole file's length), also that the program
    and section header tables the header points at fit in the file (a download cut short).
    """
    if not data:
        return "empty file"
    head = bytes(data[:64])
    if head[:4] != b"\x7fELF":
        sniff = head.lstrip().lower()
        if sniff.startswith(b"<"):
            return "HTML/XML page instead of a library (an error page from the server or a proxy?)"
        if sniff.startswith((b"{", b"[")):
            return "JSON text instead of a library (an error answer from the server?)"
        return f"not an ELF file (starts with {head[:8].hex()})"
    target = elf_target(arch)
    if target is None:
        return f"unknown Plex architecture {arch!r}"
    want_class, want_machine = target
    if len(head) < 20:
        return f"truncated ELF header ({len(head)} bytes)"
    elf_class, byte_order = head[4], head[5]
    if elf_class not in (1, 2):
        return f"bad ELF class {elf_class}"
    if byte_order != 1:
        return f"big-endian ELF file, {arch} is little-endian"
    machine = struct.unpack_from("<H", head, 18)[0]
    if elf_class != want_class or machine != want_machine:
        return (f"not an ELF file for {arch}: built for {_describe_machine(elf_class, machine)}, "
                f"{arch} needs {_describe_machine(want_class, want_machine)}")
    etype = struct.unpack_from("<H", head, 16)[0]
    if etype not in types:
        want = " or ".join(_article(_TYPE_NAMES.get(t, f"type {t}")) for t in types)
        return f"ELF {_TYPE_NAMES.get(etype, f'type {etype}')}, not {want}"
    need = 64 if elf_class == 2 else 52
    if len(head) < need:
        return f"truncated ELF header ({len(head)} bytes)"
    if size is not None:
        if elf_class == 2:
            phoff, shoff = struct.unpack_from("<QQ", head, 0x20)
            phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", head, 0x36)
        else:
            phoff, shoff = struct.unpack_from("<II", head, 0x1C)
            phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", head, 0x2A)
        end = max(phoff + phentsize * phnum if phnum else 0, shoff + shentsize * shnum if shnum else 0, need)
        if end > size:
            return f"truncated: {size} bytes, its ELF headers reach byte {end} (download cut short?)"
    return None
