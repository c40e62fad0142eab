"""Telling paths, base64, data URIs and URLs apart, and naming bad inputs."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from helpers import make_png

from assetcache import InvalidImage, Source, SourceError

PNG = make_png(1)
B64 = base64.b64encode(PNG).decode()


@pytest.mark.parametrize(
    "text, kind",
    [
        ("photo.png", "path"),
        ("photos/cat", "path"),
        ("/abs/path/to/file.jpg", "path"),
        ("C:\\Users\\me\\pic.png", "path"),
        ("Qk", "path"),  # too short to be data; a file name like any other
        ("QkLogo2024", "path"),
        ("iVBORw0KGgo", "path"),
        ("data:image/png;base64," + B64, "data_uri"),
        ("DATA:image/png;base64," + B64, "data_uri"),
        (B64, "base64"),
        ("https://example.com/a.png", "url"),
        ("HTTP://Example.COM/a.png?sig=abc", "url"),
    ],
)
def test_classification(text, kind):
    assert Source.coerce(text).kind == kind


def test_existing_file_wins_over_base64_lookalike(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = B64[:40]
    Path(name).write_bytes(PNG)
    assert Source.coerce(name).kind == "path"
    Path(name).unlink()
    assert Source.coerce(name).kind == "base64"


def test_jpeg_base64_is_not_mistaken_for_an_absolute_path():
    jpeg_b64 = "/9j/4AAQSkZJRgABAQAAAQABAAD/" + "A" * 40
    assert Source.coerce(jpeg_b64).kind == "base64"


def test_pathlike_bytes_and_files():
    assert Source.coerce(Path("x.png")).kind == "path"
    assert Source.coerce(PNG).kind == "bytes"
    assert Source.coerce(bytearray(PNG)).kind == "bytes"
    assert Source.coerce(io.BytesIO(PNG)).kind == "file"


def test_paths_are_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Source.coerce("a.png").path == str(tmp_path / "a.png")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://host/a.png", "s3://bucket/key"])
def test_unsupported_url_schemes(url):
    with pytest.raises(SourceError) as info:
        Source.coerce(url)
    assert "not supported" in str(info.value)


def test_url_label_hides_query_and_credentials():
    src = Source.coerce("https://user:pw@cdn.example.com/a.png?token=SECRET")
    assert "SECRET" not in src.label and "pw" not in src.label
    assert src.url == "https://user:pw@cdn.example.com/a.png?token=SECRET"


def test_url_normalisation_keys_scheme_and_host_case_insensitively():
    a = Source.coerce("HTTPS://CDN.Example.com/A.png")
    b = Source.coerce("https://cdn.example.com/A.png")
    assert a.url == b.url


@pytest.mark.parametrize(
    "text, reason",
    [
        ("data:image/png;base64,@@@not base64@@@", "invalid base64"),
        ("data:image/png;base64", "no comma"),
        ("data:image png;base64,AAAA", "media type"),
        ("iVBORw0KGgo*", None),  # not base64 characters: a (missing) path
    ],
)
def test_malformed_data(text, reason):
    if reason is None:
        assert Source.coerce(text).kind == "path"
        return
    with pytest.raises(SourceError) as info:
        Source.coerce(text)
    assert reason in str(info.value)
    assert len(str(info.value)) < 300  # names the input without dumping it


def test_invalid_base64_body_is_invalid_image():
    with pytest.raises(InvalidImage):
        Source.from_base64("iVBORw0KGgo=A")


def test_unknown_object():
    with pytest.raises(SourceError) as info:
        Source.coerce(42)  # type: ignore[arg-type]
    assert "<int>" in str(info.value)


def test_non_utf8_path_label(tmp_path):
    raw = bytes(tmp_path) + b"/caf\xe9.png"
    src = Source.coerce(raw.decode("utf-8", "surrogateescape"))
    assert "\\xe9" in src.label
    src.label.encode("utf-8")  # printable
