"""Read the words in a page image: OCR with Tesseract (Debian's tesseract-ocr package, run as a program).

Why Tesseract: on 12 pages of the shared PDFs rendered to images at 300 dpi it read back 96.7% of their words in
2.1 s a page, against 82.6% in 3.5 s for RapidOCR's PP-OCRv4 models (a pip wheel that ships them), on this
2-core CPU (bench/bench_ocr.py, docs/BENCHMARKS.md). Its English model comes with the Debian package, so nothing is
downloaded at run time. It runs as a separate process per page: a crash there
fails one page's reading, never the app.
"""
from __future__ import annotations

import io
import os
import shutil
import subprocess

from core.errors import InputError

TESSERACT = "tesseract"  # on PATH
DPI = 300  # Tesseract is trained on text of about this resolution; lower reads fewer words right
PAGE_TIMEOUT_S = 120
INSTALL_HINT = ("to read scanned pages, install Tesseract OCR (Debian/Ubuntu: apt install tesseract-ocr; macOS: brew install "
                "tesseract; Windows: the installer from github.com/UB-Mannheim/tesseract)")


def available() -> bool:
    return shutil.which(TESSERACT) is not None


def read_image(image, name: str) -> str:
    """The text of one page image (a PIL image), in reading order, lines kept."""
    png = io.BytesIO()
    image.save(png, format="PNG")
    # One thread: with its default OpenMP threads Tesseract took 16.9 s a page here instead of 2.1 (threads spinning
    # against each other on 2 cores), and the embedder needs the other core meanwhile.
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    try:
        done = subprocess.run([TESSERACT, "stdin", "stdout", "-l", "eng"], input=png.getvalue(), capture_output=True,
                              timeout=PAGE_TIMEOUT_S, env=env)
    except FileNotFoundError:
        raise InputError(f"OCR is not installed; {INSTALL_HINT}", subject=name) from None
    except subprocess.TimeoutExpired:
        raise InputError(f"OCR of a page took over {PAGE_TIMEOUT_S} s and was stopped", subject=name) from None
    if done.returncode != 0:
        reason = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        raise InputError(f"OCR failed ({reason[0]})", subject=name)
    return done.stdout.decode("utf-8", errors="replace")
