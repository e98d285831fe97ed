"""clusterplex.worker.codecs, the pure parts: codec list files, URLs and directory names, ELF checks
(minimal headers built here, and a real library of this machine), arch naming from recorded
``uname`` output, prune plans, backoff, the state summary, the EAE API's XML."""

import platform
import shutil

import pytest

import _ctypes
from clusterplex.worker import codecs
from clusterplex.worker import hardware as hw
from tests.fakes.codec_server import ET_EXEC, elf_header, elf_library

X86, ARM64, ARMV7 = "linux-x86_64-standard", "linux-aarch64-standard", "linux-armv7neon-standard"
V_OLD, V_NEW = "8217c1c-4578", "c75335c-a7cfb6836f3ed63280a7eb83"


# --- codec list ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, names", [
    ("libh264_decoder\nlibaac_encoder\n", ["libh264_decoder", "libaac_encoder"]),
    ("# Plex codecs\n\nlibhevc_decoder   # 4K\r\n  liblibx264_encoder  \n", ["libhevc_decoder", "liblibx264_encoder"]),
    ("libac3_decoder.so\nlibac3_decoder\n", ["libac3_decoder"]),             # .so tolerated, dups dropped
    ("libfoo+bar-baz_decoder\n", ["libfoo+bar-baz_decoder"]),
])
def test_load_list(tmp_path, text, names):
    path = tmp_path / "codecs.txt"
    path.write_text(text)
    assert codecs.load_list(str(path)) == names


@pytest.mark.parametrize("text, error", [
    ("libh264_decoder\nlib evil\n", r"codecs.txt:2: bad library name 'lib evil'"),
    ("../../etc/passwd\n", r"codecs.txt:1: bad library name '../../etc/passwd'"),
    ("libx/liby\n", r":1: bad library name 'libx/liby'"),
    ("# nothing\n\n", r"names no library"),
])
def test_load_list_errors(tmp_path, text, error):
    path = tmp_path / "codecs.txt"
    path.write_text(text)
    with pytest.raises(codecs.CodecListError, match=error):
        codecs.load_list(str(path))


def test_load_list_unreadable(tmp_path):
    with pytest.raises(codecs.CodecListError, match=r"cannot read codec list .*missing.txt: No such file"):
        codecs.load_list(str(tmp_path / "missing.txt"))
    assert issubclass(codecs.CodecListError, ValueError)


def test_default_libs():
    libs = codecs.DEFAULT_LIBS
    assert len(libs) == len(set(libs)) == 309
    assert all(codecs.NAME_RE.fullmatch(n) for n in libs)
    for name in ("libh264_decoder", "libhevc_decoder", "libaac_decoder", "libaac_encoder", "libac3_decoder",
                 "libdca_decoder", "libmp3_decoder", "liblibx264_encoder", "liblibmp3lame_encoder",
                 "libmpeg2video_decoder", "libmpeg4_decoder", "libvc1_decoder", "libvp9_decoder"):
        assert name in libs


# --- names and URLs ------------------------------------------------------------------------

@pytest.mark.parametrize("server, version, arch, name, url, vdir", [
    (codecs.DEFAULT_SERVER, V_OLD, X86, "libpam_decoder",
     "https://downloads.plex.tv/codecs/8217c1c-4578/linux-x86_64-standard/libpam_decoder.so",
     "8217c1c-4578-linux-x86_64-standard"),
    ("http://mirror.lan/codecs/", V_NEW, ARM64, "libh264_decoder",
     "http://mirror.lan/codecs/c75335c-a7cfb6836f3ed63280a7eb83/linux-aarch64-standard/libh264_decoder.so",
     "c75335c-a7cfb6836f3ed63280a7eb83-linux-aarch64-standard"),
    ("http://127.0.0.1:1/c", V_OLD, ARMV7, "liblibx264_encoder",
     "http://127.0.0.1:1/c/8217c1c-4578/linux-armv7neon-standard/liblibx264_encoder.so",
     "8217c1c-4578-linux-armv7neon-standard"),
])
def test_urls_and_dirs(server, version, arch, name, url, vdir):
    assert codecs.lib_url(server, version, arch, name) == url
    assert codecs.version_dir(version, arch) == vdir


def test_manager_refuses_path_tricks(tmp_path):
    for version, arch, libs in (("../x", X86, []), (V_OLD, "linux/../..", []), (V_OLD, X86, ["a/b"])):
        with pytest.raises(ValueError):
            codecs.CodecManager(tmp_path, "http://127.0.0.1:1", version, arch, libs)


# --- ELF checks ----------------------------------------------------------------------------

def hdr(machine, elf_class=2, **kw):
    return elf_header(machine, elf_class, **kw) + bytes(200)


ELF_CASES = [
    # data, arch, expected reason (substring; None = valid)
    (hdr(62), X86, None),
    (hdr(183), ARM64, None),
    (hdr(40, 1), ARMV7, None),
    (hdr(62), "linux-ubuntu-x86_64", None),                               # pre-1.15 arch name
    (hdr(62), "linux-x86_64", None),                                      # 2026 dir form, no -standard
    (hdr(183), X86, "not an ELF file for linux-x86_64-standard: built for 64-bit aarch64 (e_machine 183), "
                    "linux-x86_64-standard needs 64-bit x86-64 (e_machine 62)"),
    (hdr(62), ARM64, "not an ELF file for linux-aarch64-standard: built for 64-bit x86-64 (e_machine 62)"),
    (hdr(40, 1), ARM64, "built for 32-bit ARM (e_machine 40), linux-aarch64-standard needs 64-bit aarch64"),
    (hdr(183), ARMV7, "linux-armv7neon-standard needs 32-bit ARM (e_machine 40)"),
    (hdr(40, 2), ARMV7, "built for 64-bit ARM (e_machine 40)"),                  # wrong class
    (hdr(3, 1), X86, "built for 32-bit i386 (e_machine 3)"),
    (elf_header(62, byte_order=2) + bytes(10), X86, "big-endian"),
    (hdr(62, etype=ET_EXEC), X86, "ELF executable, not a shared object"),
    (b"", X86, "empty file"),
    (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", X86, "HTML/XML page instead of a library"),
    (b"  \n<html>", ARM64, "HTML/XML page"),
    (b'<?xml version="1.0"?><Error/>', X86, "HTML/XML page"),
    (b'{"error": "not found"}', X86, "JSON text instead of a library"),
    (b"PK\x03\x04zipzip", X86, "not an ELF file (starts with 504b0304"),
    (b"\x7fELF\x02\x01", X86, "truncated ELF header (6 bytes)"),
    (elf_header(62)[:40], X86, "truncated ELF header (40 bytes)"),
    (hdr(62), "linux-mips-standard", "unknown Plex architecture 'linux-mips-standard'"),
    (hdr(62), "darwin-x86_64", "unknown Plex architecture"),
]


@pytest.mark.parametrize("data, arch, reason", ELF_CASES)
def test_check_elf(data, arch, reason):
    got = codecs.check_elf(data, arch)
    if reason is None:
        assert got is None
    else:
        assert got is not None and reason in got, got


@pytest.mark.parametrize("arch", [X86, ARM64, ARMV7])
def test_check_elf_size_finds_cut_short_files(arch):
    lib = elf_library(arch, 6000, name="libx")
    assert codecs.check_elf(lib, arch, size=len(lib)) is None
    assert codecs.check_elf(lib[:64], arch) is None                      # a head alone: no size check
    for cut in (5999, 3000, 100):
        assert "truncated: " in codecs.check_elf(lib[:cut], arch, size=cut)
    assert "truncated ELF header" in codecs.check_elf(lib[:30], arch, size=30)


def test_check_elf_program_headers_out_of_file():
    data = elf_header(62, phoff=64, phentsize=56, phnum=10) + bytes(100)
    assert "reach byte 624" in codecs.check_elf(data, X86, size=len(data))


def test_check_elf_types_for_executables():
    exe = hdr(183, etype=ET_EXEC)
    assert codecs.check_elf(exe, ARM64, types=(codecs.ET_EXEC, codecs.ET_DYN)) is None
    assert "ELF relocatable object, not an executable or a shared object" in codecs.check_elf(hdr(183, etype=1), ARM64,
                                                                  types=(codecs.ET_EXEC, codecs.ET_DYN))


def test_real_library_of_this_machine(tmp_path):
    """A real shared object (Python's _ctypes extension) passes for this machine's Plex arch,
    fails for the others and when cut short."""
    arch = hw.plex_arch()
    if arch is None:
        pytest.skip(f"no Plex arch for {platform.machine()}")
    path = tmp_path / "libreal.so"
    shutil.copyfile(_ctypes.__file__, path)
    data = path.read_bytes()
    assert codecs.check_elf(data, arch, size=len(data)) is None
    assert codecs.elf_plex_arch(data[:64]) == arch
    for other in {X86, ARM64, ARMV7} - {arch}:
        assert f"not an ELF file for {other}" in codecs.check_elf(data, other)
    cut = len(data) - 1000
    assert "truncated" in codecs.check_elf(data[:cut], arch, size=cut)


# `uname -m` (and the pointer size of the userland) as recorded on real machines, the Plex arch,
# and the ELF class and machine of that arch's codec libraries.
UNAME = [
    # uname -a (reconstructed from the machines named)                                   bits
    ("Linux nuc 6.1.0-18-amd64 #1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1 (2024-02-01) x86_64 GNU/Linux", 64,
     X86, 2, 62),
    ("Linux pi4 6.1.0-rpi7-rpi-v8 #1 SMP PREEMPT Debian 1:6.1.63-1+rpt1 (2023-11-24) aarch64 GNU/Linux", 64,
     ARM64, 2, 183),
    ("Linux altra 6.1.0-18-arm64 #1 SMP Debian 6.1.76-1 (2024-02-01) aarch64 GNU/Linux", 64, ARM64, 2, 183),
    ("Linux pi3 6.1.0-rpi7-rpi-v7 #1 SMP Raspbian 1:6.1.63-1+rpt1 (2023-11-24) armv7l GNU/Linux", 32,
     ARMV7, 1, 40),
    # 32-bit Raspberry Pi OS userland on the 64-bit kernel
    ("Linux pi4 6.1.0-rpi7-rpi-v8 #1 SMP PREEMPT Debian 1:6.1.63-1+rpt1 (2023-11-24) aarch64 GNU/Linux", 32,
     ARMV7, 1, 40),
]


@pytest.mark.parametrize("uname, bits, arch, elf_class, machine", UNAME)
def test_arch_naming_from_uname(uname, bits, arch, elf_class, machine):
    machine_name = uname.split()[-2]
    assert hw.plex_arch(machine_name, bits) == arch
    assert codecs.elf_target(arch) == (elf_class, machine)
    lib = elf_library(arch, 2048, name="libh264_decoder")
    assert codecs.check_elf(lib, arch, size=len(lib)) is None
    assert codecs.elf_plex_arch(lib) == arch                      # the transcoder binary says the same
    for other in {X86, ARM64, ARMV7} - {arch}:
        assert codecs.check_elf(lib, other) is not None


@pytest.mark.parametrize("head, arch", [
    (elf_header(62), X86), (elf_header(183), ARM64), (elf_header(40, 1), ARMV7),
    (elf_header(40, 2), None), (elf_header(3, 1), None), (elf_header(62, byte_order=2), None),
    (b"#!/bin/sh\n", None), (b"", None),
])
def test_elf_plex_arch(head, arch):
    assert codecs.elf_plex_arch(head) == arch


# --- pruning, backoff, state ---------------------------------------------------------------

DAY = 86400
NOW = 1_700_000_000.0
KEEP = f"{V_NEW}-{X86}"


@pytest.mark.parametrize("dirs, keep, grace, expected", [
    ([(KEEP, NOW)], KEEP, 7 * DAY, []),
    ([(KEEP, NOW - 30 * DAY)], KEEP, 7 * DAY, []),                                  # never the current one
    ([(KEEP, NOW), (f"{V_OLD}-{X86}", NOW - 8 * DAY)], KEEP, 7 * DAY, [f"{V_OLD}-{X86}"]),
    ([(KEEP, NOW), (f"{V_OLD}-{X86}", NOW - 6 * DAY)], KEEP, 7 * DAY, []),           # within the grace
    ([(KEEP, NOW), (f"{V_OLD}-{X86}", NOW - 8 * DAY)], KEEP, 0, [f"{V_OLD}-{X86}"]),
    ([(KEEP, NOW), (f"{V_OLD}-{X86}", NOW)], KEEP, 0, []),                          # "more than grace"
    ([(f"{V_OLD}-{ARM64}", NOW - 99 * DAY)], KEEP, 7 * DAY, []),                   # another machine's arch
    ([("eae", 0), ("lost+found", 0), (".lock", 0), ("8217c1c-linux-x86_64-standard", 0), (X86, 0)],
     KEEP, 0, []),                                                                  # not version dirs
    ([("0123abc-99999-" + X86, 0), ("fedcba9-1111-" + X86, NOW), (KEEP, 0)], KEEP, DAY,
     ["0123abc-99999-" + X86]),
    ([(f"{V_OLD}-{ARM64}", 0), (f"{V_OLD}-{X86}", 0)], [KEEP, f"{V_NEW}-{ARM64}"], DAY,
     [f"{V_OLD}-{ARM64}", f"{V_OLD}-{X86}"]),                                         # several kept
])
def test_prune_plan(dirs, keep, grace, expected):
    assert codecs.prune_plan(dirs, keep, NOW, grace) == expected


@pytest.mark.parametrize("attempt, base, cap, lo, hi", [
    (0, 0.5, 30, 0.25, 0.5), (1, 0.5, 30, 0.5, 1.0), (3, 0.5, 30, 2.0, 4.0), (10, 0.5, 30, 15.0, 30.0),
    (0, 30, 300, 15, 30), (5, 30, 300, 150, 300),
])
def test_backoff_delay(attempt, base, cap, lo, hi):
    assert codecs.backoff_delay(attempt, base, cap, rand=lambda: 0.0) == lo
    assert codecs.backoff_delay(attempt, base, cap, rand=lambda: 1.0) == hi
    assert lo <= codecs.backoff_delay(attempt, base, cap) <= hi


@pytest.mark.parametrize("state, summary", [
    (codecs.CodecState(state="downloading", present=120, total=310), "codecs 120/310"),
    (codecs.CodecState(state="ready", present=310, total=310), "codecs 310/310"),
    (codecs.CodecState(state="idle", total=309), "codecs 0/309"),
    (codecs.CodecState(state="error", present=3, total=4, reason="404 for libx.so"), "codecs 3/4: 404 for libx.so"),
])
def test_state_summary(state, summary):
    assert state.summary() == summary
    copy = state.copy()
    copy.failed["x"] = "y"
    assert state.failed == {} and state.as_dict()["present"] == state.present


# --- EasyAudioEncoder API answers ----------------------------------------------------------

LIC = "ABCDEFGHIJ " + "a" * 60 + " " + "b" * 64


@pytest.mark.parametrize("xml, url, license_", [
    (f'<?xml version="1.0" encoding="UTF-8"?><MediaContainer size="1"><Codec url="https://x/eae.zip" '
     f'license="{LIC}" /></MediaContainer>', "https://x/eae.zip", LIC),
    (f'<MediaContainer><Codec url="/codecs/eae.zip"><License>{LIC}</License></Codec></MediaContainer>',
     "https://plex.tv/codecs/eae.zip", LIC),                                       # relative url, license child
    (f'<Codec url="eae.zip" license="  {LIC}\n"/>', "https://plex.tv/api/codecs/eae.zip", LIC),
    (f'<m:MediaContainer xmlns:m="urn:x"><m:Codec url="http://y/z.zip" license="{LIC}"/></m:MediaContainer>',
     "http://y/z.zip", LIC),
])
def test_parse_eae_answer(xml, url, license_):
    assert codecs.parse_eae_answer(xml, "https://plex.tv/api/codecs/easyaudioencoder") == (url, license_)


@pytest.mark.parametrize("xml, error", [
    ("<html><body>502 Bad Gateway", "not XML"),
    ("", "not XML"),
    ("<MediaContainer size='0'/>", "no Codec element"),
    (f"<MediaContainer><Codec license='{LIC}'/></MediaContainer>", "no Codec url"),
    ("<MediaContainer><Codec url='https://x/eae.zip'/></MediaContainer>", "no license"),
    ("<MediaContainer><Codec url='https://x/eae.zip' license=' '/></MediaContainer>", "no license"),
    (f"<MediaContainer><Codec url='file:///etc/passwd' license='{LIC}'/></MediaContainer>", "bad Codec url"),
    (f"<MediaContainer><Codec url='ftp://x/eae.zip' license='{LIC}'/></MediaContainer>", "bad Codec url"),
])
def test_parse_eae_answer_errors(xml, error):
    with pytest.raises(codecs.EAEError, match=error):
        codecs.parse_eae_answer(xml, "https://plex.tv/api/codecs/easyaudioencoder")


def test_eae_query_order():
    assert codecs.eae_query(X86, "uuid-1", "1785", "1.40.3.8555-fef15d30c") == [
        ("build", X86), ("deviceId", "uuid-1"), ("oldestPreviousVersion", "1.40.3.8555-fef15d30c"),
        ("version", "1785")]
    assert codecs.eae_query(ARM64, "u") == [("build", ARM64), ("deviceId", "u")]
