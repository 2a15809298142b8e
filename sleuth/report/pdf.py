"""PDF export: the HTML report printed by headless Chromium (Debian's ``chromium``), scripts run first, so
the mind map and charts are drawn on the page. ``SLEUTH_CHROMIUM`` names another binary."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_path() -> str:
    env = os.environ.get("SLEUTH_CHROMIUM")
    if env:
        return env
    for name in _CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    raise FileNotFoundError("PDF export needs headless Chromium: install it (apt-get install chromium) or set "
                            "SLEUTH_CHROMIUM to its path")


def write_pdf(html_path: Path, pdf_path: Path, timeout: float = 120.0) -> Path:
    """Print ``html_path`` to ``pdf_path`` (written to a temporary name, then renamed: never half a PDF)."""
    html_path, pdf_path = Path(html_path).resolve(), Path(pdf_path)
    if not html_path.is_file():
        raise FileNotFoundError(f"no HTML report at {html_path}")
    pdf_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{pdf_path.name}.", suffix=".pdf", dir=pdf_path.parent)
    os.close(fd)
    profile = tempfile.mkdtemp(prefix="sleuth-chromium-")
    cmd = [chromium_path(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--no-pdf-header-footer",
           "--run-all-compositor-stages-before-draw", "--virtual-time-budget=5000",
           f"--print-to-pdf={tmp}", html_path.as_uri()]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or os.path.getsize(tmp) == 0:
            raise RuntimeError(f"Chromium could not print {html_path} (exit {proc.returncode}): "
                               f"{proc.stderr.strip()[-500:]}")
        os.replace(tmp, pdf_path)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return pdf_path
