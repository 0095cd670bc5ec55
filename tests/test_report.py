"""The listening page: structure, embedding, escaping, and a real browser loading it."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechcodec.report import Clip, Image, Section, Table, make_listen_page, spectrogram_png

RATE = 16000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tone(seconds: float = 0.6, f0: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * f0 * t)).astype(np.float32)


def _sections() -> list[Section]:
    x = _tone()
    table = Table([("label", "codec", -1), ("kbps", "kbps", 2)],
                  [{"label": "a <b>", "kbps": 1.5}, {"label": "c", "kbps": float("nan")}])
    return [
        Section("Results & plots", text="two clips", tables=[table],
                images=[Image("plot", spectrogram_png(x), "a caption")]),
        Section("Sample <1>", clips=[
            Clip("Original", x, kbps=256, compression=1.0, caption="PCM"),
            Clip("Coded", 0.5 * x, kbps=3.0, compression=85.3, caption="PESQ-WB 2.0"),
            Clip("No spectrogram", x, spectrogram=False)]),
    ]


def test_embedded_page_is_one_file_with_decodable_media(tmp_path):
    page = make_listen_page(_sections(), tmp_path / "p.html", title="T <x>", intro="one\ntwo")
    text = page.read_text()
    assert not (tmp_path / "p_files").exists()
    audio = re.findall(r'<audio[^>]* src="data:audio/wav;base64,([^"]+)"', text)
    assert len(audio) == 3
    y, rate = sf.read(io.BytesIO(base64.b64decode(audio[1])))
    assert rate == RATE and len(y) == len(_tone())
    assert np.allclose(y, 0.5 * _tone(), atol=1e-4)
    images = re.findall(r'<img[^>]* src="data:image/png;base64,([^"]+)"', text)
    assert len(images) == 3  # the plot and two spectrograms
    assert all(base64.b64decode(i).startswith(PNG_MAGIC) for i in images)
    # text is escaped, never interpreted
    assert "T &lt;x&gt;" in text and "Sample &lt;1&gt;" in text and "a &lt;b&gt;" in text
    assert "<p>one</p><p>two</p>" in text
    # bitrate and compression beside the player
    assert "3.00 kbps · 85× smaller" in text and "256 kbps · 1.0×" in text
    assert "<td>n/a</td>" in text


def test_linked_page_writes_media_beside_it(tmp_path):
    page = make_listen_page(_sections(), tmp_path / "p.html", embed=False)
    text = page.read_text()
    srcs = re.findall(r' src="([^"]+)"', text)
    assert len(srcs) == 6 and not any(s.startswith("data:") for s in srcs)
    for s in srcs:
        assert (tmp_path / s).is_file() and s.startswith("p_files/")
    # rewriting the page replaces the old media folder
    make_listen_page(_sections()[:1], tmp_path / "p.html", embed=False)
    assert len(list((tmp_path / "p_files").glob("*.png"))) == 1
    assert not list((tmp_path / "p_files").glob("*.wav"))
    # a folder of the same name that a page did not make is never deleted
    (tmp_path / "q_files").mkdir()
    (tmp_path / "q_files" / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError):
        make_listen_page(_sections(), tmp_path / "q.html", embed=False)
    assert (tmp_path / "q_files" / "mine.txt").exists()


def test_spectrogram_png_is_an_image():
    png = spectrogram_png(_tone(0.05))
    assert png.startswith(PNG_MAGIC)
    assert spectrogram_png(np.zeros(0, dtype=np.float32)).startswith(PNG_MAGIC)


# --------------------------------------------------------------------------------------------
# Headless Chromium: load the page, decode every <audio> source, render every image
# --------------------------------------------------------------------------------------------

# Runs first in <head>: records script errors, failed resources, console.error and rejected
# promises; after "load" it fetches and decodes every <audio> source with Web Audio, checks that
# the element itself loaded it, draws every image on a canvas, and writes the results into the
# DOM for --dump-dom to return.
PROBE = r"""
(function () {
  var errors = [];
  window.addEventListener("error", function (e) {
    var t = e.target;
    if (t && t !== window && t.tagName) errors.push("resource failed: " + t.tagName);
    else errors.push("error: " + e.message);
  }, true);
  window.addEventListener("unhandledrejection", function (e) {
    errors.push("rejection: " + e.reason);
  });
  var original = console.error;
  console.error = function () {
    errors.push("console.error: " + Array.prototype.join.call(arguments, " "));
    original.apply(console, arguments);
  };
  function get(url) {
    return new Promise(function (resolve, reject) {
      var x = new XMLHttpRequest();
      x.open("GET", url);
      x.responseType = "arraybuffer";
      x.onload = function () { resolve(x.response); };
      x.onerror = function () { reject("cannot read " + url.slice(0, 40)); };
      x.send();
    });
  }
  function metadata(a) {
    return new Promise(function (resolve) {
      if (a.readyState >= 1 || a.error) return resolve();
      a.addEventListener("loadedmetadata", function () { resolve(); });
      a.addEventListener("error", function () { resolve(); });
    });
  }
  function checkAudio(a) {
    var url = a.currentSrc || a.getAttribute("src");
    if (!url) return Promise.resolve({ok: false, why: "no source"});
    return get(url).then(function (buf) {
      return new OfflineAudioContext(1, 1, 16000).decodeAudioData(buf);
    }).then(function (decoded) {
      return metadata(a).then(function () {
        return {ok: decoded.length > 0 && !a.error && a.duration > 0,
                frames: decoded.length, duration: a.duration};
      });
    }, function (e) { return {ok: false, why: String(e)}; });
  }
  function checkImage(img) {
    if (!img.complete || !img.naturalWidth || !img.naturalHeight) {
      return {ok: false, why: "not loaded"};
    }
    var canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    var ctx = canvas.getContext("2d");
    ctx.drawImage(img, 0, 0);
    var px = ctx.getImageData(0, 0, canvas.width, canvas.height).data, opaque = 0;
    for (var i = 3; i < px.length; i += 4 * 97) if (px[i] > 0) opaque++;
    return {ok: opaque > 0, width: img.naturalWidth, height: img.naturalHeight};
  }
  window.addEventListener("load", function () {
    var audio = Array.prototype.map.call(document.querySelectorAll("audio"), checkAudio);
    var images = Array.prototype.map.call(document.querySelectorAll("img"), checkImage);
    Promise.all(audio).then(function (a) {
      var pre = document.createElement("pre");
      pre.id = "probe-result";
      pre.textContent = JSON.stringify({audio: a, images: images, errors: errors});
      document.body.appendChild(pre);
    });
  });
})();
"""


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


needs_chromium = pytest.mark.skipif(_chromium() is None, reason="chromium not installed")


def probe_page(page: Path, tmp_path: Path) -> dict:
    """Load `page` (a copy with the probe injected, in the same folder) in headless Chromium."""
    probed = page.with_name(f".probe-{page.name}")
    probed.write_text(page.read_text().replace("<head>", f"<head><script>{PROBE}</script>", 1))
    profile = tmp_path / "chromium-profile"
    # Virtual time can run out before media decoding (real threads) finishes on a busy machine,
    # so a run that dumps the DOM before the probe is done is repeated with a larger budget.
    try:
        for budget in (20_000, 60_000, 180_000):
            cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                   "--no-first-run", "--disable-background-networking",
                   "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
                   "--allow-file-access-from-files", "--enable-logging=stderr", "--v=0",
                   f"--virtual-time-budget={budget}", "--dump-dom", probed.resolve().as_uri()]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
            found = re.search(r'<pre id="probe-result">(.*?)</pre>', proc.stdout, re.S)
            if found:
                break
    finally:
        probed.unlink()
    assert found, f"the probe did not finish; chromium said: {proc.stderr[-2000:]}"
    import html

    result = json.loads(html.unescape(found.group(1)))
    # every console message Chromium logged (the page writes none; parse errors show here)
    result["console"] = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return result


def assert_page_is_sound(result: dict, n_audio: int, n_images: int) -> None:
    assert result["errors"] == [] and result["console"] == []
    assert len(result["audio"]) == n_audio and all(a["ok"] for a in result["audio"]), result
    assert len(result["images"]) == n_images and all(i["ok"] for i in result["images"]), result


@needs_chromium
@pytest.mark.parametrize("embed", [True, False])
def test_page_in_headless_chromium(tmp_path, embed):
    page = make_listen_page(_sections(), tmp_path / "page.html", embed=embed)
    result = probe_page(page, tmp_path)
    assert_page_is_sound(result, n_audio=3, n_images=3)
    assert result["audio"][0]["frames"] == len(_tone())


@needs_chromium
def test_probe_catches_a_broken_page(tmp_path):
    """The harness is not blind: a missing image, a missing clip and a script error show."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><head></head><body><img src="missing.png">'
                    '<audio src="missing.wav"></audio><script>console.error("boom");'
                    "notDefined();</script></body></html>")
    result = probe_page(page, tmp_path)
    assert not result["audio"][0]["ok"] and not result["images"][0]["ok"]
    assert any("boom" in e for e in result["errors"])
    assert any("notDefined" in e for e in result["errors"])
    assert len(result["console"]) == 2
