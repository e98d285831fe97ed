"""Plex's codec libraries and EasyAudioEncoder on a worker.

Plex's transcoder loads most decoders and encoders as ``<name>.so`` files from the directory in
``FFMPEG_EXTERNAL_LIBS``; a worker that is not a running Plex server has none, so
:class:`CodecManager` fetches them from Plex's download server into ``<root>/<version>-<arch>/``,
and :func:`fetch_eae` gets EasyAudioEncoder through Plex's codec API. Pure modules: :mod:`.libs`
(lists, URLs, prune plan, state), :mod:`.elf` (ELF checks). I/O: :mod:`.manager`, :mod:`.eae`,
:mod:`.files` (atomic writes). Nothing downloaded is ever executed; the codec version and arch
come from the caller (:func:`clusterplex.worker.hardware.codec_version`,
:func:`clusterplex.worker.hardware.plex_arch`). Details in docs/codecs.md.
"""

from .eae import (DEFAULT_EAE_API, EAE_BINARY, EAE_LICENSE, MAX_EAE_ZIP_BYTES, MAX_XML_BYTES, eae_query, fetch_eae,
                  parse_eae_answer)
from .elf import EM_AARCH64, EM_ARM, EM_X86_64, ET_DYN, ET_EXEC, check_elf, elf_plex_arch, elf_target
from .files import CHUNK, TMP_SUFFIX
from .libs import (DEFAULT_LIBS, DEFAULT_SERVER, DOWNLOADING, ERROR, IDLE, NAME_RE, READY, CodecError, CodecListError,
                   CodecState, EAEError, backoff_delay, lib_url, load_list, prune_plan, version_dir)
from .manager import LOCK_NAME, MAX_LIB_BYTES, CodecManager

__all__ = [
    "DEFAULT_SERVER", "DEFAULT_EAE_API", "DEFAULT_LIBS", "CodecError", "CodecListError", "EAEError",
    "load_list", "version_dir", "lib_url", "elf_target", "elf_plex_arch", "check_elf", "prune_plan",
    "backoff_delay", "CodecState", "CodecManager", "eae_query", "parse_eae_answer", "fetch_eae",
    "NAME_RE", "IDLE", "DOWNLOADING", "READY", "ERROR", "EM_ARM", "EM_X86_64", "EM_AARCH64", "ET_EXEC", "ET_DYN",
    "MAX_LIB_BYTES", "MAX_EAE_ZIP_BYTES", "MAX_XML_BYTES", "CHUNK", "TMP_SUFFIX", "LOCK_NAME", "EAE_BINARY",
    "EAE_LICENSE",
]
