r"""Renders a report directory's index.html to a PNG with headless Chromium.

Used to check the arena report by eye (overlapping labels, cut tables, tiny fonts) without a
desktop. Chromium is a development tool here, not a runtime dependency of peft_jax; on Debian
install it with::

  apt-get update && apt-get install -y chromium

Usage::

  python scripts/screenshot_report.py REPORT_DIR [--out=REPORT_DIR/screenshot.png]
      [--width=1400] [--height=4000] [--chromium=/usr/bin/chromium]

REPORT_DIR is a directory written by `peft_jax.report.write_report` (it holds index.html and the
PNGs). The page is captured at the given window size (the screenshot is the top `height` pixels
of the page; pass a larger height to capture all of it). Chromium runs with a throw-away profile
directory and with networking features off, so the capture is reproducible and offline.

To make a sample report from the synthetic results of the tests first::

  python -c "import importlib.util as u; \
s = u.spec_from_file_location('t', 'tests/report/test_report.py'); \
m = u.module_from_spec(s); s.loader.exec_module(m); \
import peft_jax.report as r; r.write_report(m.make_results(0), '/tmp/arena_report')"
  python scripts/screenshot_report.py /tmp/arena_report
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

_CHROMIUM_FLAGS = (
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--hide-scrollbars',
)


def screenshot(
  report_dir: str | os.PathLike,
  out: str | os.PathLike,
  *,
  width: int = 1400,
  height: int = 4000,
  chromium: str = '/usr/bin/chromium',
  timeout_s: float = 120.0,
) -> str:
  """Captures `report_dir`/index.html into the PNG `out`.

  Args:
    report_dir: directory holding index.html.
    out: output PNG path.
    width: browser window width in CSS pixels.
    height: browser window height in CSS pixels (the captured height).
    chromium: the Chromium executable.
    timeout_s: give up after this many seconds.

  Returns:
    The absolute path of the screenshot.

  Raises:
    FileNotFoundError: when index.html or the Chromium executable is missing.
    RuntimeError: when Chromium fails or writes no screenshot.
  """
  page = pathlib.Path(report_dir).resolve() / 'index.html'
  if not page.is_file():
    raise FileNotFoundError(f'no index.html in {pathlib.Path(report_dir).resolve()}')
  executable = shutil.which(chromium)
  if executable is None:
    raise FileNotFoundError(
      f'Chromium not found at {chromium!r}; install it with '
      '`apt-get update && apt-get install -y chromium` or pass --chromium'
    )
  out = pathlib.Path(out).resolve()
  out.parent.mkdir(parents=True, exist_ok=True)
  if out.exists():
    out.unlink()
  with tempfile.TemporaryDirectory(prefix='chromium-profile-') as profile:
    command = [
      executable,
      *_CHROMIUM_FLAGS,
      f'--user-data-dir={profile}',
      f'--screenshot={out}',
      f'--window-size={width},{height}',
      page.as_uri(),
    ]
    completed = subprocess.run(
      command, capture_output=True, text=True, timeout=timeout_s, check=False
    )
  if completed.returncode != 0 or not out.is_file():
    raise RuntimeError(
      f'chromium exited with {completed.returncode} and wrote no screenshot:\n'
      f'{completed.stderr[-2000:]}'
    )
  return str(out)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('report_dir', help='directory holding index.html')
  parser.add_argument('--out', default=None, help='PNG path (default REPORT_DIR/screenshot.png)')
  parser.add_argument('--width', type=int, default=1400)
  parser.add_argument('--height', type=int, default=4000)
  parser.add_argument('--chromium', default='/usr/bin/chromium')
  args = parser.parse_args(argv)
  out = args.out or os.path.join(args.report_dir, 'screenshot.png')
  print(
    screenshot(args.report_dir, out, width=args.width, height=args.height, chromium=args.chromium)
  )
  return 0


if __name__ == '__main__':
  sys.exit(main())
