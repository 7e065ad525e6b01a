"""OCR engines on real pages: how many of a page's words they read back, and how fast, on this CPU.

    .venv/bin/python bench/bench_ocr.py [--dpi 300] [--repeats 3]

Pages: text PDFs from ../shared/data/pdfs rendered to images (PDFium), so each page's own text layer is the
answer key. Accuracy is word recall: the share of the text layer's words (lower-cased, 2+ letters or digits,
counted with repeats) that the OCR output has too, which is what keyword search and the embedder need. Engines:
RapidOCR (PP-OCRv4 ONNX models shipped in the rapidocr_onnxruntime wheel) and Tesseract (Debian's tesseract-ocr),
each where installed; Tesseract as the engine runs it (core/ocr.py: one thread) and with its own default threads.
Pages/s is the median over `--repeats` passes of all pages, rendering not counted.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import ocr  # noqa: E402
PDFS = ROOT.parent / "shared" / "data" / "pdfs"
PAGES = [("UC_Berkeley_short.pdf", range(5)), ("federal-register-2020-17221.pdf", range(3)),
         ("United_States_PDF.pdf", range(2, 5)), ("crazyones.pdf", range(1))]
_WORD = re.compile(r"\w\w+")


def words(text: str) -> Counter:
    return Counter(_WORD.findall(text.lower()))


def recall(truth: str, read: str) -> float:
    want, got = words(truth), words(read)
    return sum(min(n, got[w]) for w, n in want.items()) / max(1, sum(want.values()))


def rendered_pages(dpi: int) -> list[tuple[str, object, str]]:
    """(label, PIL image, text layer) for each page."""
    import pypdfium2 as pdfium

    out = []
    for name, numbers in PAGES:
        document = pdfium.PdfDocument(PDFS / name)
        for i in numbers:
            page = document[i]
            text = page.get_textpage().get_text_range()
            out.append((f"{name} p{i + 1}", page.render(scale=dpi / 72).to_pil().convert("L"), text))
        document.close()
    return out


def rapidocr_engine():
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError:
        return None
    import numpy as np

    engine = RapidOCR()

    def read(image) -> str:
        result, _ = engine(np.asarray(image.convert("RGB")))
        return "\n".join(line[1] for line in result or [])

    return read


def engine_tesseract():
    """What the engine runs (core/ocr.py)."""
    if not ocr.available():
        return None
    return lambda image: ocr.read_image(image, "bench")


def tesseract_default_threads():
    if not shutil.which("tesseract"):
        return None
    folder = Path(tempfile.mkdtemp(prefix="bench-ocr-"))
    env = {k: v for k, v in os.environ.items() if k != "OMP_THREAD_LIMIT"}

    def read(image) -> str:
        path = folder / "page.png"
        image.save(path)
        return subprocess.run(["tesseract", str(path), "-", "-l", "eng"], capture_output=True, text=True,
                              check=True, env=env).stdout

    return read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dpi", type=int, default=ocr.DPI)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not PDFS.exists():
        raise SystemExit(f"{PDFS} is missing")
    pages = rendered_pages(args.dpi)
    print(f"# {os.cpu_count()} CPUs · {time.strftime('%Y-%m-%d')} · {len(pages)} pages at {args.dpi} dpi · "
          f"median of {args.repeats}")
    print("| engine | word recall, mean (lowest page) | pages/s | s/page |")
    print("|---|---:|---:|---:|")
    engines = (("RapidOCR (rapidocr_onnxruntime)", rapidocr_engine), ("Tesseract, as core/ocr.py runs it", engine_tesseract),
               ("Tesseract, its default threads", tesseract_default_threads))
    for name, make in engines:
        read = make()
        if read is None:
            print(f"| {name} | not installed | | |")
            continue
        read(pages[0][1])  # loads its models outside the clock
        rates, recalls = [], {}
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for label, image, truth in pages:
                recalls[label] = recall(truth, read(image))
            rates.append(len(pages) / (time.perf_counter() - t0))
        rate = statistics.median(rates)
        low = min(recalls, key=recalls.get)
        print(f"| {name} | {statistics.mean(recalls.values()):.3f} ({recalls[low]:.3f}, {low}) | {rate:.2f} | "
              f"{1 / rate:.2f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
