# Sourced by the scripts that drive the web console in a real browser (browser-test.sh,
# bench-console.sh): installs Debian's Chromium and PyPI's Playwright when missing. Playwright is
# pointed at /usr/bin/chromium by the Python scripts; its own browser download is never used.
if ! command -v chromium >/dev/null; then
  echo "installing chromium (Debian)..."
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if ! python3 -c 'import playwright' 2>/dev/null; then
  echo "installing playwright (PyPI)..."
  python3 -m pip install -q playwright
fi
