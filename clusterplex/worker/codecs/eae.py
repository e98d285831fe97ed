"""Fetching EasyAudioEncoder through Plex's codec API: an XML answer with a ``Codec url=`` (a zip)
and a license, written to ``eae-license.txt``. Nothing is run; the worker's
:mod:`clusterplex.worker.eae` supervises the installed binary. See docs/codecs.md.
"""

import asyncio
import io
import logging
import os
import urllib.parse
import xml.etree.ElementTree as ET
import zipfile

import aiohttp

from ... import __version__
from .elf import ET_DYN, ET_EXEC, check_elf, elf_target
from .files import CHUNK, atomic_write, fsync_dir
from .libs import EAEError, short_error

logger = logging.getLogger("clusterplex.worker.codecs")

DEFAULT_EAE_API = "https://plex.tv/api/codecs/easyaudioencoder"
MAX_EAE_ZIP_BYTES = 256 << 20
MAX_XML_BYTES = 1 << 20
EAE_BINARY = "EasyAudioEncoder"
EAE_LICENSE = "eae-license.txt"


def eae_query(arch, device_id, version=None, oldest_previous_version=None):
    """The codec API's query, in ClusterPlex's order; None values left out."""
    q = [("build", arch), ("deviceId", device_id), ("oldestPreviousVersion", oldest_previous_version),
         ("version", version)]
    return [(k, str(v)) for k, v in q if v is not None]


def parse_eae_answer(text, base_url=None):
    """``(zip url, license)`` from the codec API's XML: the first ``Codec`` element's ``url``
    (resolved against ``base_url``; http/https only) and its ``license`` attribute or child
    element's text. Raises EAEError for bad XML, no Codec, no url, no license."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise EAEError(f"EasyAudioEncoder API answer is not XML ({e}): {text[:120]!r}") from None
    codec = root if _local(root.tag) == "Codec" else next((el for el in root.iter() if _local(el.tag) == "Codec"),
                                                          None)
    if codec is None:
        raise EAEError(f"EasyAudioEncoder API answer has no Codec element: {text[:200]!r}")
    url = (codec.get("url") or "").strip()
    if not url:
        raise EAEError("EasyAudioEncoder API answer has no Codec url (no build for this arch or version?)")
    if base_url:
        url = urllib.parse.urljoin(base_url, url)
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise EAEError(f"EasyAudioEncoder API answer has a bad Codec url {url!r}")
    license_ = codec.get("license")
    if license_ is None:
        child = next((el for el in codec if _local(el.tag).lower() == "license"), None)
        license_ = (child.text or "") if child is not None else None
    license_ = (license_ or "").strip()
    if not license_:
        raise EAEError("EasyAudioEncoder API answer has no license")
    return url, license_


def _local(tag):
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


async def _read_limited(resp, limit, what):
    data = bytearray()
    async for chunk in resp.content.iter_chunked(CHUNK):
        data += chunk
        if len(data) > limit:
            raise EAEError(f"{what} is larger than {limit >> 20} MiB")
    return bytes(data)


async def fetch_eae(session, api_url, arch, dest_dir, *, device_id, version=None, oldest_previous_version=None,
                    timeout=60):
    """Fetch EasyAudioEncoder for ``arch`` through Plex's codec API into ``dest_dir``.

    GET ``api_url?build=<arch>&deviceId=<id>&oldestPreviousVersion=<..>&version=<..>`` (the last two
    only when given), download the zip its ``Codec url`` names, and install the ``EasyAudioEncoder``
    executable found in it (at any depth) as ``<dest_dir>/EasyAudioEncoder`` (mode 0755, atomic
    rename) and the license as ``<dest_dir>/eae-license.txt``. The binary must be an ELF executable
    for ``arch``; nothing is run. ``session`` may be None (one is made and closed). Returns the
    binary's path; raises EAEError with the reason."""
    if session is None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout,
                                                                       sock_read=timeout),
                                         trust_env=True,
                                         headers={"User-Agent": f"clusterplex/{__version__}"}) as own:
            return await _fetch_eae(own, api_url, arch, dest_dir, device_id, version, oldest_previous_version)
    return await _fetch_eae(session, api_url, arch, dest_dir, device_id, version, oldest_previous_version)


async def _fetch_eae(session, api_url, arch, dest_dir, device_id, version, oldest_previous_version):
    if elf_target(arch) is None:
        raise EAEError(f"unknown Plex architecture {arch!r} for EasyAudioEncoder")
    params = eae_query(arch, device_id, version, oldest_previous_version)
    try:
        async with session.get(api_url, params=params) as resp:
            if resp.status != 200:
                raise EAEError(f"EasyAudioEncoder API {api_url} answered HTTP {resp.status}")
            raw = await _read_limited(resp, MAX_XML_BYTES, "EasyAudioEncoder API answer")
            base = str(resp.url)
        zip_url, license_ = parse_eae_answer(raw.decode("utf-8", "replace"), base)
        logger.info("EasyAudioEncoder: downloading %s", zip_url)
        async with session.get(zip_url) as resp:
            if resp.status != 200:
                raise EAEError(f"EasyAudioEncoder download {zip_url} answered HTTP {resp.status}")
            data = await _read_limited(resp, MAX_EAE_ZIP_BYTES, f"EasyAudioEncoder zip {zip_url}")
    except aiohttp.ClientConnectorError as e:
        raise EAEError(f"EasyAudioEncoder: {short_error(e)}") from None
    except asyncio.TimeoutError:
        raise EAEError(f"EasyAudioEncoder: no answer from {api_url} in time") from None
    except aiohttp.ClientError as e:
        raise EAEError(f"EasyAudioEncoder download failed: {short_error(e)}") from None
    try:
        return await asyncio.to_thread(_install_eae, data, zip_url, license_, arch, dest_dir)
    except OSError as e:
        raise EAEError(f"cannot install EasyAudioEncoder into {dest_dir}: {e.strerror or e}") from None


def _install_eae(data, zip_url, license_, arch, dest_dir):
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as e:
        raise EAEError(f"EasyAudioEncoder download {zip_url} is not a zip file ({e})") from None
    with zf:
        members = [i for i in zf.infolist() if not i.is_dir() and i.filename.replace("\\", "/").rsplit("/", 1)[-1]
                   == EAE_BINARY]
        if not members:
            names = ", ".join(i.filename for i in zf.infolist()[:10])
            raise EAEError(f"no {EAE_BINARY} in the zip {zip_url} (it holds: {names or 'nothing'})")
        member = min(members, key=lambda i: i.filename.count("/"))
        if member.file_size > MAX_EAE_ZIP_BYTES:
            raise EAEError(f"{EAE_BINARY} in {zip_url} is too large ({member.file_size} bytes)")
        try:
            binary = zf.read(member)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, RuntimeError, ValueError, OSError) as e:
            raise EAEError(f"cannot extract {member.filename} from {zip_url}: {e}") from None
    why = check_elf(binary, arch, size=len(binary), types=(ET_EXEC, ET_DYN))
    if why is not None:
        raise EAEError(f"{EAE_BINARY} from {zip_url} is not a program for {arch}: {why}")
    os.makedirs(dest_dir, mode=0o755, exist_ok=True)
    path = os.path.join(dest_dir, EAE_BINARY)
    atomic_write(path, binary, 0o755)
    atomic_write(os.path.join(dest_dir, EAE_LICENSE), (license_ + "\n").encode(), 0o644)
    fsync_dir(dest_dir)
    logger.info("EasyAudioEncoder installed in %s", dest_dir)
    return path
