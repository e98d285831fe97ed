"""relay/playlist.py: every URI a playlist PMS serves names stays under the job's capability prefix."""

import pytest

from clusterplex.relay import playlist

P = "/_cp/0123456789abcdef/" + "a" * 32
PMS = "http://127.0.0.1:32400"


@pytest.mark.parametrize("uri,expected", [
    ("/livetv/sessions/l/s/00001.ts", P + "/livetv/sessions/l/s/00001.ts"),          # root-relative: PMS's Live TV
    ("/livetv/sessions/l/s/1.ts?X-Plex-Token=t", P + "/livetv/sessions/l/s/1.ts?X-Plex-Token=t"),
    (P + "/livetv/x.ts", P + "/livetv/x.ts"),                                        # already prefixed
    ("00001.ts", "00001.ts"),                                                         # relative: resolves under it
    ("../s2/index.m3u8", "../s2/index.m3u8"),
    ("http://127.0.0.1:32400/livetv/sessions/l/s/2.ts?a=1", P + "/livetv/sessions/l/s/2.ts?a=1"),   # PMS absolute
    ("HTTP://127.0.0.1:32400/livetv/x.ts", P + "/livetv/x.ts"),
    ("http://127.0.0.1:32401/livetv/x.ts", "http://127.0.0.1:32401/livetv/x.ts"),   # elsewhere: left alone
    ("https://127.0.0.1:32400/livetv/x.ts", "https://127.0.0.1:32400/livetv/x.ts"),
    ("http://cdn.example/livetv/x.ts", "http://cdn.example/livetv/x.ts"),
    ("//cdn.example/livetv/x.ts", "//cdn.example/livetv/x.ts"),
    ("http://127.0.0.1:99999/x.ts", "http://127.0.0.1:99999/x.ts"),                # bad port: not PMS
])
def test_rewrite_uri(uri, expected):
    assert playlist.rewrite_uri(uri, P, PMS) == expected


def test_pms_on_default_port():
    assert playlist.rewrite_uri("http://pms.lan/livetv/x.ts", P, "http://pms.lan:80") == P + "/livetv/x.ts"


MEDIA = """#EXTM3U\r
#EXT-X-VERSION:7\r
#EXT-X-TARGETDURATION:2\r
#EXT-X-MEDIA-SEQUENCE:41\r
#EXT-X-MAP:URI="/livetv/sessions/l/s/init.mp4",BYTERANGE="100@0"\r
#EXT-X-KEY:METHOD=AES-128,URI="http://127.0.0.1:32400/livetv/sessions/l/s/key",IV=0x1\r
#EXTINF:2.000000,\r
/livetv/sessions/l/s/00041.ts\r
#EXTINF:2.000000,\r
00042.ts\r
#EXTINF:2.000000,\r
http://elsewhere.example/00043.ts\r
"""


def test_media_playlist_lines_and_attributes():
    out = playlist.rewrite(MEDIA, P, PMS)
    assert out.count("\r\n") == MEDIA.count("\r\n")
    lines = out.splitlines()
    assert lines[4] == f'#EXT-X-MAP:URI="{P}/livetv/sessions/l/s/init.mp4",BYTERANGE="100@0"'
    assert lines[5] == f'#EXT-X-KEY:METHOD=AES-128,URI="{P}/livetv/sessions/l/s/key",IV=0x1'
    assert lines[7] == P + "/livetv/sessions/l/s/00041.ts"
    assert lines[9] == "00042.ts"
    assert lines[11] == "http://elsewhere.example/00043.ts"
    assert lines[:4] == MEDIA.splitlines()[:4]


def test_master_playlist_variants_and_media():
    master = ('#EXTM3U\n#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="a",NAME="en",URI="/livetv/sessions/l/s/audio.m3u8"\n'
              '#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=1,URI="/livetv/sessions/l/s/iframes.m3u8"\n'
              '#EXT-X-STREAM-INF:BANDWIDTH=2000000,AUDIO="a"\n/livetv/sessions/l/s/index.m3u8?offset=0\n'
              '#EXT-X-STREAM-INF:BANDWIDTH=1000000\nlow/index.m3u8\n')
    out = playlist.rewrite(master, P, PMS).splitlines()
    assert out[1].endswith(f'URI="{P}/livetv/sessions/l/s/audio.m3u8"') and 'GROUP-ID="a"' in out[1]
    assert out[2].endswith(f'URI="{P}/livetv/sessions/l/s/iframes.m3u8"')
    assert out[3] == '#EXT-X-STREAM-INF:BANDWIDTH=2000000,AUDIO="a"'
    assert out[4] == P + "/livetv/sessions/l/s/index.m3u8?offset=0"
    assert out[6] == "low/index.m3u8"


def test_comments_blank_lines_and_no_trailing_newline_kept():
    text = "#EXTM3U\n\n# a comment /livetv/x\n/livetv/a.ts"
    assert playlist.rewrite(text, P, PMS) == f"#EXTM3U\n\n# a comment /livetv/x\n{P}/livetv/a.ts"


def test_rewrite_body_bytes_and_not_utf8():
    assert playlist.rewrite_body(b"/livetv/a.ts\n", P, PMS) == (P + "/livetv/a.ts\n").encode()
    assert playlist.rewrite_body(b"\xff\xfe/livetv", P, PMS) is None


@pytest.mark.parametrize("ctype,path,expected", [
    ("application/vnd.apple.mpegurl", "/livetv/x", True),
    ("application/x-mpegURL; charset=utf-8", "/livetv/x", True),
    ("audio/mpegurl", "/livetv/x", True),
    ("video/MP2T", "/livetv/sessions/l/s/index.m3u8", True),
    (None, "/livetv/sessions/l/s/INDEX.M3U8", True),
    ("video/MP2T", "/livetv/sessions/l/s/00001.ts", False),
    (None, "/video/:/transcode/session/k/u/progress", False),
])
def test_is_playlist(ctype, path, expected):
    assert playlist.is_playlist(ctype, path) is expected
